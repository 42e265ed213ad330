//go:build !linux

package relay

import (
	"log/slog"
	"net"
	"net/netip"
)

// recvBatch reads one datagram at a time where recvmmsg is not available.
type recvBatch struct {
	buf, oob []byte
	n, oobn  int
	flags    int
	src      netip.AddrPort
}

func newRecvBatch(_, oobSize int) (*recvBatch, error) {
	r := &recvBatch{buf: make([]byte, maxDatagram)}
	if oobSize > 0 {
		r.oob = make([]byte, oobSize)
	}
	return r, nil
}

func (r *recvBatch) slots() int { return 1 }

func (r *recvBatch) free() {}

// read blocks for one datagram.
func (r *recvBatch) read(c *net.UDPConn) (int, error) {
	var err error
	r.n, r.oobn, r.flags, r.src, err = c.ReadMsgUDPAddrPort(r.buf, r.oob)
	if err != nil {
		return 0, err
	}
	return 1, nil
}

func (r *recvBatch) datagram(int) ([]byte, bool) { return r.buf[:r.n], r.n < len(r.buf) }

func (r *recvBatch) control(int) []byte { return r.oob[:r.oobn] }

func (r *recvBatch) from(int) netip.AddrPort { return r.src }

// sendBatch sends each datagram at once: without sendmmsg there is
// nothing to gain by holding it, and goReaders' goroutines share it.
type sendBatch struct {
	c    *net.UDPConn
	done func(kind sendKind, to netip.AddrPort, size int, err error)
}

func newSendBatch(c *net.UDPConn, _ int, _ *slog.Logger, done func(sendKind, netip.AddrPort, int, error)) *sendBatch {
	return &sendBatch{c: c, done: done}
}

func (w *sendBatch) queue(kind sendKind, to netip.AddrPort, b []byte) {
	_, err := w.c.WriteToUDPAddrPort(b, to)
	w.done(kind, to, len(b), err)
}

func (w *sendBatch) flush() {}

// logGSO has nothing to say where UDP GSO does not exist.
func logGSO(*slog.Logger) {}
