package keepalive

import "time"

// Path learning: the rules of binding lifetime discovery (RFC 5780 section
// 4.6) and of the NAT distance search, as pure logic over durations and
// monotonic timestamps, so that tests can drive them without sleeping. The
// relay runs the probes (sockets, timers, packets) and reports results here.
//
// One probe of silence T: socket X asks the server for its mapped address
// (twice, 2 s apart, so the NAT holds X's mapping in the state an app flow's
// is in: replied, and for conntrack past the 2 s after which it applies the
// "stream" timeout), stays silent for T, then a fresh socket Y sends a
// Binding Request with RESPONSE-PORT = X's mapped port. If X receives the
// answer, the mapping survived T of silence.

// Bounds of the lifetime search and of the interval derived from it.
const (
	// LifetimeFloor is the shortest silence probed: a mapping that does not
	// survive it gets the shortest interval anyway.
	LifetimeFloor = 2 * time.Second
	// LifetimeCeiling is the longest silence probed: a mapping that
	// survives it is reported as at least this long; 80 % of it is past
	// MaxLearnedInterval, so a longer lifetime would not change a thing.
	LifetimeCeiling = 40 * time.Minute
	// MinLearnedInterval and MaxLearnedInterval clamp a learned interval.
	MinLearnedInterval = time.Second
	MaxLearnedInterval = 30 * time.Minute
	// lifetimeResolution is the finest the search narrows to: the timing of
	// one probe (scheduling, RTT) is not better than this.
	lifetimeResolution = 250 * time.Millisecond
	// MaxHops is the largest NAT distance the hop search tries.
	MaxHops = 8
)

// LifetimeSearch narrows a binding lifetime from probe results: a ladder
// of silences probed at once (2 s, 4 s, ... 2048 s, LifetimeCeiling), then rounds
// of Parallel probes splitting the interval between the longest silence
// known to survive and the shortest known to expire, until that interval is
// within 10 % of its lower end (and never finer than 250 ms). The zero
// value is not ready: use NewLifetimeSearch.
type LifetimeSearch struct {
	floor, ceiling time.Duration
	parallel       int
	lo, hi         time.Duration // longest silence that survived (0 = none), shortest that expired (0 = none)
	started        bool
}

// NewLifetimeSearch returns a search between floor and ceiling (0 = the
// package's LifetimeFloor and LifetimeCeiling) with parallel probes per
// narrowing round (at least 1).
func NewLifetimeSearch(floor, ceiling time.Duration, parallel int) *LifetimeSearch {
	if floor <= 0 {
		floor = LifetimeFloor
	}
	if ceiling < floor {
		ceiling = max(LifetimeCeiling, floor)
	}
	return &LifetimeSearch{floor: floor, ceiling: ceiling, parallel: max(parallel, 1)}
}

// Next returns the silences to probe in the next round, shortest first, or
// nil when the search is done. The first round is the ladder.
func (s *LifetimeSearch) Next() []time.Duration {
	if !s.started {
		s.started = true
		var rungs []time.Duration
		for t := s.floor; t < s.ceiling; t *= 2 {
			rungs = append(rungs, t)
		}
		return append(rungs, s.ceiling)
	}
	if s.Done() {
		return nil
	}
	step := (s.hi - s.lo) / time.Duration(s.parallel+1)
	out := make([]time.Duration, 0, s.parallel)
	for i := 1; i <= s.parallel; i++ {
		out = append(out, (s.lo + time.Duration(i)*step).Round(time.Millisecond))
	}
	return out
}

// Record takes the result of a probe of silence t.
func (s *LifetimeSearch) Record(t time.Duration, survived bool) {
	switch {
	case survived && t > s.lo:
		s.lo = t
	case !survived && (s.hi == 0 || t < s.hi):
		s.hi = t
	}
	if s.hi != 0 && s.lo >= s.hi {
		// Contradictory results (a lost answer, a NAT that changed its
		// mind): trust the failure, the safe side.
		s.lo = 0
		if s.hi > s.floor {
			s.lo = s.hi / 2
		}
	}
}

// Useful reports whether a probe of silence t still running can change the
// result: one longer than a silence already known to expire cannot (a
// mapping that died after T is dead after 2T), nor one not longer than a
// silence known to survive. The relay cancels such probes.
func (s *LifetimeSearch) Useful(t time.Duration) bool {
	return t > s.lo && (s.hi == 0 || t < s.hi)
}

// Done reports whether the search has its answer.
func (s *LifetimeSearch) Done() bool {
	if !s.started {
		return false
	}
	switch {
	case s.hi == 0:
		return s.lo >= s.ceiling // everything survived
	case s.hi <= s.floor:
		return true // even the shortest silence expired
	case s.lo == 0:
		return false
	}
	return s.hi-s.lo <= max(s.lo/10, lifetimeResolution)
}

// Result is the learned lifetime: the longest silence known to survive,
// and whether it is only a lower bound (every probe survived) or 0 because
// even the floor expired.
func (s *LifetimeSearch) Result() Lifetime {
	return Lifetime{Survives: s.lo, Expires: s.hi}
}

// Lifetime is what a search learned of a binding lifetime.
type Lifetime struct {
	Survives time.Duration // the longest silence a mapping was seen to survive; 0 = not even the floor
	Expires  time.Duration // the shortest silence seen to end a mapping; 0 = none did (Survives is a lower bound)
}

// LearnedInterval is the heartbeat interval for a binding lifetime and a
// smoothed RTT: 80 % of the lifetime less two RTTs (a heartbeat must cross
// the NAT before the mapping ends, and jitter only ever shortens a wait),
// clamped to [MinLearnedInterval, MaxLearnedInterval].
func LearnedInterval(lifetime, srtt time.Duration) time.Duration {
	d := lifetime*8/10 - 2*srtt
	return min(max(d, MinLearnedInterval), MaxLearnedInterval)
}

// NATDistance is the smallest TTL k in 1..MaxHops whose heartbeats kept a
// probe mapping reachable (reached[k-1]), or 0 if none did.
func NATDistance(reached [MaxHops]bool) int {
	for k, ok := range reached {
		if ok {
			return k + 1
		}
	}
	return 0
}

// PathPhase is where a route's path learning stands.
type PathPhase int

// The phases of path learning.
const (
	PathLearning       PathPhase = iota // probing; the fallback (or the last learned value, halved on evidence) is in force
	PathLearned                         // the learned interval is in force
	PathNoSTUN                          // the upstream never answered a Binding Request: the fallback is in force
	PathNoResponsePort                  // the upstream answers STUN but ignores RESPONSE-PORT: the fallback is in force
)

// String names the phase as the metrics and logs do.
func (p PathPhase) String() string {
	switch p {
	case PathLearning:
		return "learning"
	case PathLearned:
		return "learned"
	case PathNoSTUN:
		return "no_stun"
	case PathNoResponsePort:
		return "no_response_port"
	}
	return "unknown"
}

// PathPhases lists every phase, for metrics that export one series each.
var PathPhases = []PathPhase{PathLearning, PathLearned, PathNoSTUN, PathNoResponsePort}

// Reasons a route learns its path again.
const (
	RelearnStart          = "start"           // the first learning
	RelearnPeriodic       = "periodic"        // Path.Relearn has passed since the last learning
	RelearnMappingChanged = "mapping_changed" // a flow's mapped address changed: its mapping was lost
	RelearnVerifyFailed   = "verify_failed"   // a mapping did not survive the interval in force, twice in a row
	RelearnRetry          = "retry"           // the last attempt got no usable answer; trying again
)

// verifyFailures is how many verification probes in a row must fail before
// they count as evidence: one lost datagram is not.
const verifyFailures = 2

// evidenceHoldoff is the least time between two re-learnings started by
// evidence, so a NAT that changes mappings for other reasons (a CGNAT
// reshuffling ports) does not keep the prober busy.
const evidenceHoldoff = time.Minute

// Path is a route's path-learning state: which interval is in force, and
// when to learn again. Times are monotonic nanoseconds, as for Schedule.
// It is not safe for concurrent use.
type Path struct {
	Fallback time.Duration // the interval while nothing is learned
	Relearn  time.Duration // learn again this long after the last success; 0 = never
	Retry    time.Duration // after an attempt with no usable answer, try again this long later (doubling up to Relearn)

	phase      PathPhase
	interval   time.Duration // in force
	lifetime   Lifetime
	hops       int
	learnedAt  int64 // when the last learning succeeded; 0 = never
	evidenceAt int64 // when evidence last started a re-learning
	next       int64 // when to start the next learning; 0 = now
	retry      time.Duration
	failures   int  // verification probes failed in a row
	halved     bool // evidence has halved the learned interval already
	running    bool // a learning is under way
	reason     string
}

// NewPath returns the state of a route that has learned nothing yet: the
// fallback is in force and learning is due at once.
func NewPath(fallback, relearn time.Duration) *Path {
	return &Path{Fallback: fallback, Relearn: relearn, Retry: time.Minute, interval: fallback, reason: RelearnStart}
}

// Phase returns where learning stands.
func (p *Path) Phase() PathPhase { return p.phase }

// Interval returns the heartbeat interval in force.
func (p *Path) Interval() time.Duration { return p.interval }

// Lifetime returns the last learned lifetime (zero before the first).
func (p *Path) Lifetime() Lifetime { return p.lifetime }

// Hops returns the last learned NAT distance (0 = unknown or none found).
func (p *Path) Hops() int { return p.hops }

// Due reports whether a learning should start at now, and why.
func (p *Path) Due(now int64) (bool, string) {
	if p.running || now < p.next {
		return false, ""
	}
	return true, p.reason
}

// NextAt returns when the next learning is due (meaningless while one runs).
func (p *Path) NextAt() int64 { return p.next }

// Begin records that a learning starts; the interval in force stays.
func (p *Path) Begin() {
	p.phase, p.running, p.failures = PathLearning, true, 0
}

// Learned records a successful learning at now and returns the interval
// now in force and whether it changed.
func (p *Path) Learned(now int64, l Lifetime, srtt time.Duration) (time.Duration, bool) {
	old := p.interval
	p.phase, p.lifetime = PathLearned, l
	p.interval = LearnedInterval(l.Survives, srtt)
	p.learnedAt, p.failures, p.retry, p.halved, p.running = now, 0, 0, false, false
	p.schedulePeriodic(now)
	return p.interval, p.interval != old
}

// SetHops records the NAT distance learned after the lifetime.
func (p *Path) SetHops(k int) { p.hops = k }

// Unsupported records at now that the upstream cannot be probed (phase
// PathNoSTUN or PathNoResponsePort): the fallback is in force, and the next
// attempt waits Retry, doubling each time up to Relearn.
func (p *Path) Unsupported(now int64, why PathPhase) {
	p.phase, p.running = why, false
	p.interval = p.Fallback
	if p.learnedAt != 0 {
		// The path was learned before; what it learned may still hold,
		// but nothing confirms it now: the fallback is the safe side.
		p.learnedAt = 0
	}
	switch {
	case p.retry == 0:
		p.retry = p.Retry
	case p.Relearn > 0:
		p.retry = min(2*p.retry, p.Relearn)
	default:
		p.retry *= 2
	}
	p.next, p.reason = now+int64(p.retry), RelearnRetry
}

// Evidence records at now that the interval in force looks too long (a
// flow's mapped address changed) and reports whether a re-learning should
// start at once. While the path is learned, the interval in force is halved
// at once (never below MinLearnedInterval, never above the fallback), so
// flows stop losing mappings while the prober finds the new lifetime.
func (p *Path) Evidence(now int64, reason string) bool {
	if p.phase != PathLearned || p.running {
		return false // learning already, or on the fallback anyway
	}
	if !p.halved {
		p.halved = true
		p.interval = min(max(p.interval/2, MinLearnedInterval), p.Fallback)
	}
	if p.evidenceAt != 0 && now-p.evidenceAt < int64(evidenceHoldoff) {
		// Too soon after the last one: the halved interval holds until the
		// hold-off ends, then learn.
		p.next, p.reason = p.evidenceAt+int64(evidenceHoldoff), reason
		return false
	}
	p.evidenceAt = now
	p.next, p.reason = now, reason
	return true
}

// Verified records a verification probe (a mapping silent for the interval
// in force) at now, and reports whether its failure counts as evidence.
func (p *Path) Verified(now int64, survived bool) bool {
	if p.phase != PathLearned {
		return false
	}
	if survived {
		p.failures = 0
		return false
	}
	p.failures++
	if p.failures < verifyFailures {
		return false
	}
	p.failures = 0
	return p.Evidence(now, RelearnVerifyFailed)
}

func (p *Path) schedulePeriodic(now int64) {
	if p.Relearn <= 0 {
		p.next, p.reason = 1<<62, ""
		return
	}
	p.next, p.reason = now+int64(p.Relearn), RelearnPeriodic
}
