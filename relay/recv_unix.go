//go:build unix

package relay

import (
	"net"
	"sync"
	"syscall"
)

// bufPool lends read buffers to upstream sockets only while a datagram is
// actually being read, so an idle flow holds no buffer at all.
var bufPool = sync.Pool{New: func() any { b := make([]byte, maxDatagram); return &b }}

// reader reads a connected UDP socket through syscall.RawConn: the goroutine
// parks in the netpoller without a buffer and borrows one from bufPool only
// when the socket is readable.
type reader struct {
	rc syscall.RawConn
	fn func(fd uintptr) bool
	n  int
	bp *[]byte
	e  error
}

func newReader(c *net.UDPConn) (*reader, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	r := &reader{rc: rc}
	// One closure per socket, not per datagram.
	r.fn = func(fd uintptr) bool {
		r.bp = bufPool.Get().(*[]byte)
		r.n, r.e = syscall.Read(int(fd), *r.bp)
		if r.e == syscall.EAGAIN || r.e == syscall.EINTR {
			bufPool.Put(r.bp)
			r.bp = nil
			return false // not readable yet: wait in the netpoller
		}
		return true
	}
	return r, nil
}

// read waits for one datagram and passes it to handle; the slice is valid
// only during the call. A receive error (e.g. ECONNREFUSED) is returned.
func (r *reader) read(handle func([]byte)) error {
	if err := r.rc.Read(r.fn); err != nil {
		return err
	}
	bp := r.bp
	r.bp = nil
	defer bufPool.Put(bp)
	if r.e != nil {
		return r.e
	}
	handle((*bp)[:r.n])
	return nil
}
