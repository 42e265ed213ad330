//go:build !unix

package relay

import "net"

// reader falls back to a plain blocking read with a buffer per socket where
// syscall.RawConn reads are not available.
type reader struct {
	c   *net.UDPConn
	buf []byte
}

func newReader(c *net.UDPConn) (*reader, error) {
	return &reader{c: c, buf: make([]byte, maxDatagram)}, nil
}

// read waits for one datagram and passes it to handle.
func (r *reader) read(handle func([]byte)) error {
	n, err := r.c.Read(r.buf)
	if err != nil {
		return err
	}
	handle(r.buf[:n])
	return nil
}
