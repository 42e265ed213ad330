//go:build !linux

package relay

import (
	"io"
	"net"
	"sync/atomic"
)

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
