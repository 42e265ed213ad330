package relay

// Path learning on a route (interval=auto, ttl=auto): one goroutine per
// route runs the prober, keeps the interval in force in an atomic the
// scheduler reads, verifies the learned value now and then, and learns
// again periodically or at once when a flow shows the value is too long.

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natkeep/natkeep/keepalive"
	"github.com/prometheus/client_golang/prometheus"
)

// verifyEvery is how often a learned route checks, with one probe, that a
// mapping survives the interval in force: on Linux a NAT that expires a
// mapping early usually re-creates it on the same external port, so the
// flows' mapped addresses may never show the loss.
const verifyEvery = 30 * time.Second

// PathOptions turn on path learning for a UDP route.
type PathOptions struct {
	AutoInterval bool          // interval=auto: learn the binding lifetime and heartbeat just under it
	Fallback     time.Duration // the interval while nothing is learned (interval_fallback)
	Relearn      time.Duration // learn again this long after a success (relearn); 0 = never
	AutoTTL      bool          // ttl=auto: learn the NAT distance too and send heartbeats with that TTL
}

// pathLearner is one route's path learning.
type pathLearner struct {
	u       *udpRoute   // the route's first worker: it runs the learner
	workers []*udpRoute // every worker of the route, u first; fixed before start
	opts    PathOptions
	pr      *prober
	st      *pathStats
	ivl     atomic.Int64  // the interval in force, read by the scheduler
	kick    chan struct{} // evidence from a flow
	mu      sync.Mutex    // guards path
	path    *keepalive.Path
	warned  map[keepalive.PathPhase]bool // warned about this phase since the last success; learner goroutine only
	// hopsWarned: said once why ttl=auto keeps the normal TTL; learner goroutine only
	hopsWarned bool
}

func newPathLearner(u *udpRoute, o PathOptions, st *pathStats) *pathLearner {
	l := &pathLearner{
		u: u, opts: o, st: st,
		kick:   make(chan struct{}, 1),
		path:   keepalive.NewPath(o.Fallback, o.Relearn),
		warned: map[keepalive.PathPhase]bool{},
	}
	l.workers = []*udpRoute{u}
	l.pr = &prober{server: u.up.Addr, control: u.dialControl, probes: st.probe, sentC: st.sent, recvC: st.received}
	l.ivl.Store(int64(o.Fallback))
	st.setPhase(keepalive.PathLearning)
	st.interval.Set(o.Fallback.Seconds())
	return l
}

// interval returns the heartbeat interval in force.
func (l *pathLearner) interval() time.Duration { return time.Duration(l.ivl.Load()) }

// evidence reports that a flow's mapping moved: the interval in force may
// be too long. Called from the datagram path: it never blocks.
func (l *pathLearner) evidence() {
	l.mu.Lock()
	start := l.path.Evidence(mono(), keepalive.RelearnMappingChanged)
	iv := l.path.Interval()
	l.mu.Unlock()
	l.apply(iv)
	if start {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
}

// apply puts iv in force; a shorter interval wakes every flow so it takes
// effect now rather than after the old wait.
func (l *pathLearner) apply(iv time.Duration) {
	old := time.Duration(l.ivl.Swap(int64(iv)))
	l.st.interval.Set(iv.Seconds())
	if iv < old {
		for _, w := range l.workers {
			w.sched.wakeAll(mono())
		}
	}
}

// run learns until ctx ends.
func (l *pathLearner) run(ctx context.Context) {
	// Nothing to probe until the upstream name resolves.
	for {
		if _, ok := l.u.up.Addr(); ok {
			break
		}
		if sleepCtx(ctx, time.Second) != nil {
			return
		}
	}
	nextVerify := int64(0)
	for {
		now := mono()
		l.mu.Lock()
		due, why := l.path.Due(now)
		phase := l.path.Phase()
		next := l.path.NextAt()
		l.mu.Unlock()
		switch {
		case due:
			l.learn(ctx, why)
			nextVerify = mono() + int64(verifyEvery)
			continue
		case phase == keepalive.PathLearned && now >= nextVerify:
			nextVerify = mono() + int64(verifyEvery)
			if !l.verify(ctx) {
				nextVerify = mono() // confirm (or clear) a failure at once
			}
			continue
		}
		wake := next
		if phase == keepalive.PathLearned {
			wake = min(wake, nextVerify)
		}
		t := time.NewTimer(time.Duration(max(wake-now, int64(time.Millisecond))))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-l.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// learn runs one learning: the lifetime, then with ttl=auto the distance.
func (l *pathLearner) learn(ctx context.Context, why string) {
	l.mu.Lock()
	l.path.Begin()
	l.mu.Unlock()
	l.st.setPhase(keepalive.PathLearning)
	l.st.relearns(why)
	started := time.Now()
	l.u.log.Debug("learning the path's binding lifetime", "reason", why, "upstream", l.u.up.hostport)
	lt, err := l.pr.learnLifetime(ctx, 0, 0, nil)
	if ctx.Err() != nil {
		return
	}
	if err != nil {
		l.unsupported(err)
		return
	}
	srtt := l.pr.rtt()
	l.mu.Lock()
	old := l.path.Lifetime()
	iv, changed := l.path.Learned(mono(), lt, srtt)
	l.mu.Unlock()
	l.warned = map[keepalive.PathPhase]bool{}
	l.st.setPhase(keepalive.PathLearned)
	l.st.lifetime.Set(lt.Survives.Seconds())
	l.apply(iv)
	attrs := []any{"binding_lifetime", lt.Survives, "expired_at", lt.Expires, "interval", iv, "srtt", srtt.Round(time.Microsecond),
		"took", time.Since(started).Round(time.Millisecond), "reason", why, "upstream", l.u.up.hostport}
	if lt.Expires == 0 {
		attrs = append(attrs, "note", "every probe survived: the lifetime is at least this long")
	}
	if changed || old != lt && (old.Survives == 0 || relChange(old.Survives, lt.Survives) > 0.1) {
		l.u.log.Info("path learned: heartbeats now follow the NAT's binding lifetime", attrs...)
	} else {
		l.u.log.Debug("path re-learned, unchanged", attrs...)
	}
	if l.opts.AutoTTL {
		l.learnHops(ctx, lt)
	}
}

// learnHops finds the NAT distance and puts it in force as the heartbeat TTL.
func (l *pathLearner) learnHops(ctx context.Context, lt keepalive.Lifetime) {
	if lt.Survives < keepalive.LifetimeFloor || lt.Expires == 0 {
		l.hopsUnknown("the binding lifetime is not bounded on both sides, so TTL-limited heartbeats cannot be tested against it")
		return
	}
	started := time.Now()
	k, err := l.pr.learnHops(ctx, lt.Survives)
	if ctx.Err() != nil {
		return
	}
	switch {
	case err != nil:
		l.hopsUnknown("the TTL probes got no answer: " + err.Error())
		return
	case k == 0:
		l.hopsUnknown("no TTL up to 8 kept a probe mapping alive")
		return
	}
	c, err := newTTLControl(k)
	if err != nil {
		l.hopsUnknown(err.Error())
		return
	}
	l.mu.Lock()
	oldHops := l.path.Hops()
	l.path.SetHops(k)
	l.mu.Unlock()
	l.setTTL(c)
	l.st.hops.Set(float64(k))
	lvl := slog.LevelDebug
	if k != oldHops {
		lvl = slog.LevelInfo
	}
	l.u.log.Log(context.Background(), lvl, "NAT distance learned: heartbeats now end at the NAT", "ttl", k,
		"took", time.Since(started).Round(time.Millisecond), "heal", l.u.def.opts.Heartbeat.Heal, "upstream", l.u.up.hostport)
}

// hopsUnknown leaves heartbeats at the normal TTL and says why, once per value.
func (l *pathLearner) hopsUnknown(why string) {
	l.setTTL(nil)
	l.st.hops.Set(0)
	l.mu.Lock()
	old := l.path.Hops()
	l.path.SetHops(0)
	l.mu.Unlock()
	if old != 0 || !l.hopsWarned {
		l.hopsWarned = true
		l.u.log.Warn("ttl=auto: heartbeats keep the normal TTL", "reason", why, "upstream", l.u.up.hostport)
	}
}

// setTTL puts a heartbeat TTL in force on every worker (nil: the normal TTL).
func (l *pathLearner) setTTL(c *ttlControl) {
	for _, w := range l.workers {
		w.def.opts.ttl.Store(c)
	}
}

// unsupported puts the fallback in force after a learning without a usable answer.
func (l *pathLearner) unsupported(err error) {
	phase := keepalive.PathNoSTUN
	msg := "interval=auto: the upstream never answered a STUN Binding Request; heartbeats stay at interval_fallback (is the far end a natkeep responder or an RFC 5780 STUN server?)"
	switch {
	case errors.Is(err, ErrNoResponsePort):
		phase = keepalive.PathNoResponsePort
		msg = "interval=auto: the upstream answers STUN but ignores RESPONSE-PORT (RFC 5780), so binding lifetimes cannot be measured; heartbeats stay at interval_fallback"
	case errors.Is(err, errProbesLost):
		msg = "interval=auto: too many path probes were lost; heartbeats stay at interval_fallback and learning is retried"
	}
	l.mu.Lock()
	l.path.Unsupported(mono(), phase)
	iv := l.path.Interval()
	l.mu.Unlock()
	l.st.setPhase(phase)
	l.apply(iv)
	if !l.warned[phase] {
		l.warned[phase] = true
		l.u.log.Warn(msg, "interval_fallback", iv, "upstream", l.u.up.hostport, "err", err)
	}
}

// verify checks that a fresh mapping survives the interval in force and
// reports false if it did not.
func (l *pathLearner) verify(ctx context.Context) bool {
	iv := l.interval()
	ok, err := l.pr.survives(ctx, iv)
	l.pr.count("verify", ok, err)
	if ctx.Err() != nil || err != nil {
		return true // a lost probe proves nothing
	}
	l.mu.Lock()
	start := l.path.Verified(mono(), ok)
	niv := l.path.Interval()
	l.mu.Unlock()
	if !ok {
		l.u.log.Debug("path verification: a mapping did not survive the interval in force", "interval", iv, "upstream", l.u.up.hostport)
	}
	if start {
		l.u.log.Info("path verification failed twice: the NAT's binding lifetime got shorter; learning again", "interval", niv, "was", iv, "upstream", l.u.up.hostport)
	}
	l.apply(niv)
	return ok
}

// relChange is |a-b|/a.
func relChange(a, b time.Duration) float64 {
	d := float64(a - b)
	if d < 0 {
		d = -d
	}
	return d / float64(a)
}

// pathStats are one route's path-learning collectors.
type pathStats struct {
	lifetime, hops, interval prometheus.Gauge
	phases                   map[keepalive.PathPhase]prometheus.Gauge
	probes                   *prometheus.CounterVec
	relearnVec               *prometheus.CounterVec
	sent, received           prometheus.Counter
	route                    string
}

func (s *pathStats) setPhase(p keepalive.PathPhase) {
	for q, g := range s.phases {
		if q == p {
			g.Set(1)
		} else {
			g.Set(0)
		}
	}
}

func (s *pathStats) probe(kind, result string) {
	s.probes.WithLabelValues(s.route, kind, result).Inc()
}

func (s *pathStats) relearns(reason string) {
	s.relearnVec.WithLabelValues(s.route, reason).Inc()
}
