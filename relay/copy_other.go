//go:build !linux

package relay

import (
	"io"
	"log/slog"
	"net"
	"sync/atomic"
	"time"
)

// tcpPoller parks idle connections on Linux; elsewhere each direction of a
// connection has a goroutine of its own and there is nothing to run.
type tcpPoller struct{}

func newTCPPoller(*slog.Logger) (*tcpPoller, error) { return &tcpPoller{}, nil }

func (*tcpPoller) stop() {}

// proxy copies both ways, one direction in a new goroutine and the other
// in this one, and records the end.
func (t *tcpRoute) proxy(pc *proxyConn, up *net.TCPConn, drainBound time.Duration, active *atomic.Int64) {
	d := &teardown{client: pc.client, up: up, drainBound: drainBound}
	upDone := make(chan struct{})
	go func() {
		n, err := spliceCopy(up, pc.client, active)
		d.finish(copyResult{toUpstream: true, n: n, err: err})
		close(upDone)
	}()
	n, err := spliceCopy(pc.client, up, active)
	d.finish(copyResult{toUpstream: false, n: n, err: err})
	<-upDone
	t.ended(pc, d.done())
}

// spliceCopy is io.Copy where the kernel offers no cheap readiness probe;
// each write stamps active (mono time) when it is not nil.
func spliceCopy(dst, src *net.TCPConn, active *atomic.Int64) (int64, error) {
	if active == nil {
		return io.Copy(dst, src)
	}
	return io.Copy(stampWriter{dst, active}, src)
}

// stampWriter records the time of every write.
type stampWriter struct {
	w      io.Writer
	active *atomic.Int64
}

func (s stampWriter) Write(b []byte) (int, error) {
	s.active.Store(mono())
	return s.w.Write(b)
}
