package relay

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// eventLog rate-limits one kind of per-flow log line on a route (peer
// dead, peer alive again, mapping changed, rebound, reconnected): a burst,
// then one line per period. A line that follows suppressed ones says how
// many were dropped, and flush writes a "suppressed N similar messages"
// summary when a storm ends, so a misbehaving server costs a bounded number
// of log lines and the operator still learns how big it was.
type eventLog struct {
	log    *slog.Logger
	level  slog.Level
	msg    string
	burst  float64
	period time.Duration

	mu         sync.Mutex
	tokens     float64
	last       int64 // mono time tokens were last refilled
	suppressed int64
}

// Defaults for per-flow event logs: 5 lines at once, then one per 2 s per
// kind and route; a storm across 20 flows writes a few dozen lines a minute.
const (
	eventBurst  = 5
	eventPeriod = 2 * time.Second
)

func newEventLog(log *slog.Logger, level slog.Level, msg string) *eventLog {
	return &eventLog{log: log, level: level, msg: msg, burst: eventBurst, period: eventPeriod, tokens: eventBurst}
}

// refill adds the tokens earned since the last call; l.mu is held.
func (l *eventLog) refill(now int64) {
	if l.last != 0 {
		l.tokens = min(l.burst, l.tokens+float64(now-l.last)/float64(l.period))
	}
	l.last = now
}

// emit logs the event with args, or counts it as suppressed.
func (l *eventLog) emit(args ...any) {
	l.mu.Lock()
	l.refill(mono())
	if l.tokens < 1 {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	l.tokens--
	n := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()
	if n > 0 {
		args = append(args, "suppressed", n)
	}
	l.log.Log(context.Background(), l.level, l.msg, args...)
}

// flush writes the summary of suppressed lines, if any and if a token is
// free; the route calls it periodically.
func (l *eventLog) flush() {
	l.mu.Lock()
	l.refill(mono())
	n := l.suppressed
	if n == 0 || l.tokens < 1 {
		l.mu.Unlock()
		return
	}
	l.tokens--
	l.suppressed = 0
	l.mu.Unlock()
	l.log.Log(context.Background(), l.level, "suppressed similar messages", "message", l.msg, "suppressed", n)
}
