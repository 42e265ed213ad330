package keepalive

import (
	"slices"
	"testing"
	"time"
)

// searchNAT runs a LifetimeSearch against a simulated NAT whose mappings
// survive silences shorter than lifetime, as the relay would: each round's
// probes finish shortest first, and a probe the search no longer finds
// useful is cancelled. It returns the result, the rounds, the probes that
// ran to the end and the wall time the rounds took (each as long as its
// longest probe that ran).
func searchNAT(t *testing.T, lifetime time.Duration) (Lifetime, int, int, time.Duration) {
	t.Helper()
	s := NewLifetimeSearch(0, 0, 3)
	rounds, probes := 0, 0
	var wall time.Duration
	for ts := s.Next(); ts != nil; ts = s.Next() {
		rounds++
		if rounds > 20 {
			t.Fatalf("search for %v did not end in 20 rounds (at %+v)", lifetime, s.Result())
		}
		if !slices.IsSorted(ts) {
			t.Fatalf("round %d probes %v, not shortest first", rounds, ts)
		}
		var longest time.Duration
		for _, d := range ts {
			if !s.Useful(d) {
				continue
			}
			probes++
			longest = d
			s.Record(d, d < lifetime)
		}
		wall += longest
	}
	return s.Result(), rounds, probes, wall
}

func TestLifetimeSearchLadder(t *testing.T) {
	s := NewLifetimeSearch(0, 0, 3)
	got := s.Next()
	want := []time.Duration{2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second,
		64 * time.Second, 128 * time.Second, 256 * time.Second, 512 * time.Second, 1024 * time.Second, 2048 * time.Second, LifetimeCeiling}
	if !slices.Equal(got, want) {
		t.Fatalf("ladder %v, want %v", got, want)
	}
	// A rung that expired makes every longer one useless (cancelled).
	s.Record(2*time.Second, true)
	s.Record(4*time.Second, true)
	s.Record(8*time.Second, false)
	for _, d := range want[3:] {
		if s.Useful(d) {
			t.Fatalf("probe of %v still useful after 8s expired", d)
		}
	}
	if s.Done() {
		t.Fatal("done with 4s..8s still open")
	}
	next := s.Next()
	if !slices.Equal(next, []time.Duration{5 * time.Second, 6 * time.Second, 7 * time.Second}) {
		t.Fatalf("narrowing round %v, want 5s 6s 7s", next)
	}
}

func TestLifetimeSearchNarrows(t *testing.T) {
	for _, lifetime := range []time.Duration{
		2500 * time.Millisecond, 3 * time.Second, 4 * time.Second, 5 * time.Second, 8 * time.Second,
		30 * time.Second, 65 * time.Second, 120 * time.Second, 300 * time.Second, 600 * time.Second, 1800 * time.Second,
	} {
		res, rounds, probes, wall := searchNAT(t, lifetime)
		if res.Survives >= lifetime || res.Expires < lifetime {
			t.Fatalf("lifetime %v: learned survives %v, expires %v: does not bracket it", lifetime, res.Survives, res.Expires)
		}
		tol := max(res.Survives/10, lifetimeResolution)
		if res.Expires-res.Survives > tol {
			t.Fatalf("lifetime %v: bracket %v..%v wider than %v", lifetime, res.Survives, res.Expires, tol)
		}
		if err := float64(lifetime-res.Survives) / float64(lifetime); err > 0.15 {
			t.Fatalf("lifetime %v: learned %v is %.0f%% short", lifetime, res.Survives, 100*err)
		}
		t.Logf("lifetime %v: learned %v (expires %v) in %d rounds, %d probes, %v of silences", lifetime, res.Survives, res.Expires, rounds, probes, wall)
	}
}

func TestLifetimeSearchEdges(t *testing.T) {
	t.Run("even the floor expires", func(t *testing.T) {
		res, rounds, _, _ := searchNAT(t, time.Second)
		if res.Survives != 0 || res.Expires != LifetimeFloor || rounds != 1 {
			t.Fatalf("got %+v in %d rounds, want survives 0, expires %v, one round", res, rounds, LifetimeFloor)
		}
		if iv := LearnedInterval(res.Survives, 0); iv != MinLearnedInterval {
			t.Fatalf("interval %v for a sub-floor lifetime, want %v", iv, MinLearnedInterval)
		}
	})
	t.Run("everything survives", func(t *testing.T) {
		res, rounds, _, _ := searchNAT(t, time.Hour)
		if res.Survives != LifetimeCeiling || res.Expires != 0 || rounds != 1 {
			t.Fatalf("got %+v in %d rounds, want a lower bound of %v in one round", res, rounds, LifetimeCeiling)
		}
		if iv := LearnedInterval(res.Survives, 0); iv != MaxLearnedInterval {
			t.Fatalf("interval %v, want the %v ceiling", iv, MaxLearnedInterval)
		}
	})
	t.Run("contradiction trusts the failure", func(t *testing.T) {
		s := NewLifetimeSearch(0, 0, 3)
		s.Next()
		s.Record(16*time.Second, true)
		s.Record(8*time.Second, false) // a lost answer: 8 s "expired" although 16 s survived
		if r := s.Result(); r.Expires != 8*time.Second || r.Survives >= r.Expires {
			t.Fatalf("after a contradiction: %+v, want expires 8s and survives below it", r)
		}
	})
	t.Run("custom bounds", func(t *testing.T) {
		s := NewLifetimeSearch(time.Second, 10*time.Second, 1)
		if got := s.Next(); !slices.Equal(got, []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second}) {
			t.Fatalf("ladder %v", got)
		}
	})
}

func TestLearnedIntervalClamps(t *testing.T) {
	for _, c := range []struct{ lifetime, srtt, want time.Duration }{
		{5 * time.Second, 0, 4 * time.Second},
		{5 * time.Second, 50 * time.Millisecond, 3900 * time.Millisecond},
		{30 * time.Second, 100 * time.Millisecond, 23800 * time.Millisecond},
		{time.Second, 0, MinLearnedInterval},
		{0, time.Second, MinLearnedInterval},
		{3 * time.Hour, 0, MaxLearnedInterval},
	} {
		if got := LearnedInterval(c.lifetime, c.srtt); got != c.want {
			t.Errorf("LearnedInterval(%v, %v) = %v, want %v", c.lifetime, c.srtt, got, c.want)
		}
	}
}

func TestNATDistance(t *testing.T) {
	var r [MaxHops]bool
	if k := NATDistance(r); k != 0 {
		t.Fatalf("no TTL reached: %d, want 0", k)
	}
	r[1], r[2], r[7] = true, true, true
	if k := NATDistance(r); k != 2 {
		t.Fatalf("TTL 2.. reached: %d, want 2", k)
	}
}

const sec = int64(time.Second)

func TestPathFallbackThenLearned(t *testing.T) {
	p := NewPath(15*time.Second, time.Hour)
	if p.Interval() != 15*time.Second || p.Phase() != PathLearning {
		t.Fatalf("new path: %v %v, want the 15s fallback while learning", p.Interval(), p.Phase())
	}
	if due, why := p.Due(0); !due || why != "start" {
		t.Fatalf("learning not due at start: %v %q", due, why)
	}
	p.Begin()
	if due, _ := p.Due(10 * sec); due {
		t.Fatal("a second learning due while one runs")
	}
	iv, changed := p.Learned(30*sec, Lifetime{Survives: 5 * time.Second, Expires: 5400 * time.Millisecond}, 10*time.Millisecond)
	if !changed || iv != 3980*time.Millisecond || p.Interval() != iv || p.Phase() != PathLearned {
		t.Fatalf("learned: %v changed=%v phase %v", iv, changed, p.Phase())
	}
	if _, changed := p.Learned(40*sec, Lifetime{Survives: 5 * time.Second}, 10*time.Millisecond); changed {
		t.Fatal("the same lifetime reported as a change")
	}
	if due, _ := p.Due(40*sec + int64(59*time.Minute)); due {
		t.Fatal("periodic re-learning due before an hour")
	}
	if due, why := p.Due(40*sec + int64(time.Hour)); !due || why != RelearnPeriodic {
		t.Fatalf("periodic re-learning not due after an hour: %v %q", due, why)
	}
	p.Begin()
	if p.Interval() != 3980*time.Millisecond {
		t.Fatalf("a periodic re-learning changed the interval in force to %v", p.Interval())
	}
}

func TestPathEvidence(t *testing.T) {
	p := NewPath(15*time.Second, time.Hour)
	p.Begin()
	if p.Evidence(sec, RelearnMappingChanged) {
		t.Fatal("evidence while learning started a second learning")
	}
	p.Learned(10*sec, Lifetime{Survives: 8 * time.Second}, 0) // 6.4 s
	if !p.Evidence(20*sec, RelearnMappingChanged) {
		t.Fatal("a changed mapping did not start a re-learning")
	}
	if p.Interval() != 3200*time.Millisecond {
		t.Fatalf("interval after evidence %v, want half of 6.4s", p.Interval())
	}
	if due, why := p.Due(20 * sec); !due || why != RelearnMappingChanged {
		t.Fatalf("re-learning not due: %v %q", due, why)
	}
	p.Begin()
	p.Learned(40*sec, Lifetime{Survives: 4 * time.Second}, 0) // 3.2 s
	// Evidence again within the hold-off: halved at once, learning later.
	if p.Evidence(50*sec, RelearnMappingChanged) {
		t.Fatal("evidence within the hold-off started a learning at once")
	}
	if p.Interval() != 1600*time.Millisecond {
		t.Fatalf("interval %v, want 1.6s", p.Interval())
	}
	p.Evidence(51*sec, RelearnMappingChanged)
	if p.Interval() != 1600*time.Millisecond {
		t.Fatalf("a second piece of evidence halved again to %v", p.Interval())
	}
	if due, _ := p.Due(79 * sec); due {
		t.Fatal("due before the hold-off ended")
	}
	if due, why := p.Due(80 * sec); !due || why != RelearnMappingChanged {
		t.Fatalf("not due when the hold-off ended: %v %q", due, why)
	}
}

func TestPathEvidenceClamps(t *testing.T) {
	p := NewPath(2*time.Second, time.Hour)
	p.Begin()
	p.Learned(0, Lifetime{Survives: 600 * time.Second}, 0) // 480 s, above the fallback
	p.Evidence(sec, RelearnMappingChanged)
	if p.Interval() != 2*time.Second {
		t.Fatalf("halved interval %v, want capped at the 2s fallback", p.Interval())
	}
	q := NewPath(15*time.Second, time.Hour)
	q.Begin()
	q.Learned(0, Lifetime{Survives: time.Second}, 0) // 1 s floor
	q.Evidence(sec, RelearnMappingChanged)
	if q.Interval() != MinLearnedInterval {
		t.Fatalf("halved interval %v, want the %v floor", q.Interval(), MinLearnedInterval)
	}
}

func TestPathVerification(t *testing.T) {
	p := NewPath(15*time.Second, time.Hour)
	p.Begin()
	p.Learned(0, Lifetime{Survives: 8 * time.Second}, 0)
	if p.Verified(10*sec, false) {
		t.Fatal("one failed verification counted as evidence")
	}
	if p.Verified(20*sec, true) || p.Verified(30*sec, false) {
		t.Fatal("failures not in a row counted as evidence")
	}
	if !p.Verified(40*sec, false) {
		t.Fatal("two failed verifications in a row did not start a re-learning")
	}
	if due, why := p.Due(40 * sec); !due || why != RelearnVerifyFailed {
		t.Fatalf("due %v %q, want verify_failed", due, why)
	}
}

func TestPathUnsupportedRetries(t *testing.T) {
	p := NewPath(15*time.Second, 4*time.Minute)
	var at int64
	var waits []time.Duration
	for range 5 {
		p.Begin()
		p.Unsupported(at, PathNoSTUN)
		if p.Interval() != 15*time.Second || p.Phase() != PathNoSTUN {
			t.Fatalf("unsupported: %v %v", p.Interval(), p.Phase())
		}
		next := at
		for due, _ := p.Due(next); !due; due, _ = p.Due(next) {
			next += sec
		}
		waits = append(waits, time.Duration(next-at))
		at = next
	}
	want := []time.Duration{time.Minute, 2 * time.Minute, 4 * time.Minute, 4 * time.Minute, 4 * time.Minute}
	if !slices.Equal(waits, want) {
		t.Fatalf("retry waits %v, want %v", waits, want)
	}
	// A success after failures goes back to the learned value and the periodic schedule.
	p.Begin()
	p.Learned(at, Lifetime{Survives: 5 * time.Second}, 0)
	if p.Phase() != PathLearned || p.Interval() != 4*time.Second {
		t.Fatalf("after success: %v %v", p.Phase(), p.Interval())
	}
	if p.Verified(at, false); p.Phase() != PathLearned {
		t.Fatal("phase changed on a single verification failure")
	}
}
