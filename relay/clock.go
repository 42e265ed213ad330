package relay

import (
	"sync/atomic"
	"time"
)

// epoch anchors mono; time.Since reads the monotonic clock, so wall-clock
// steps never fire or stall heartbeats.
var epoch = time.Now()

// mono returns monotonic nanoseconds since process start: cheap enough for
// the per-datagram path and storable in an atomic.Int64.
func mono() int64 { return int64(time.Since(epoch)) }

// logLimiter lets one message through per period and counts the rest, so a
// flood of refusals or errors cannot flood the log.
type logLimiter struct {
	period     time.Duration
	next       atomic.Int64
	suppressed atomic.Int64
}

// allow reports whether to log now, and how many were suppressed since the last.
func (l *logLimiter) allow() (bool, int64) {
	now := mono()
	next := l.next.Load()
	if now < next || !l.next.CompareAndSwap(next, now+int64(l.period)) {
		l.suppressed.Add(1)
		return false, 0
	}
	return true, l.suppressed.Swap(0)
}
