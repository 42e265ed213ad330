package keepalive

import (
	"math"
	"testing"
	"time"
)

// schedT0 is an arbitrary epoch far from zero, as a monotonic clock would be.
const schedT0 = int64(1_000_000) * int64(time.Second)

const schedInterval = 10 * time.Second

// schedPong is a reply matcher: heartbeats expect replies.
var schedPong = Reply{Kind: ReplyBytes, Bytes: []byte("pong")}

// schedRMax is the largest r Tick is ever given (r is in [0,1)).
var schedRMax = math.Nextafter(1, 0)

// schedAt returns schedT0 + d.
func schedAt(d time.Duration) int64 { return schedT0 + int64(d) }

// schedTx returns a distinct transaction ID for n.
func schedTx(n byte) TxID { return TxID{0: n, 11: ^n} }

// schedBeat ticks at the due time returned by the previous decision and
// checks that a heartbeat is sent.
func schedBeat(t *testing.T, s *Schedule, f *Flow, now, lastOut int64) Decision {
	t.Helper()
	return schedBeatT(t, s, f, now, Traffic{Outbound: lastOut})
}

// schedBeatT is schedBeat with the whole traffic record.
func schedBeatT(t *testing.T, s *Schedule, f *Flow, now int64, tr Traffic) Decision {
	t.Helper()
	d := s.Tick(f, now, tr, 0)
	if !d.Send {
		t.Fatalf("Tick at t0+%v: no heartbeat, decision %+v", time.Duration(now-schedT0), d)
	}
	if d.Next != now+int64(s.Interval*8/10) {
		t.Fatalf("Tick at t0+%v: Next t0+%v, want t0+%v", time.Duration(now-schedT0), time.Duration(d.Next-schedT0), time.Duration(now-schedT0)+s.Interval*8/10)
	}
	return d
}

func TestScheduleFirstBeatJitter(t *testing.T) {
	tests := []struct {
		r    float64
		want time.Duration
	}{
		{0, 8 * time.Second},
		{0.25, 8500 * time.Millisecond},
		{0.5, 9 * time.Second},
		{0.75, 9500 * time.Millisecond},
	}
	for _, tt := range tests {
		s := &Schedule{Interval: schedInterval, DeadAfter: 3}
		var f Flow
		d := s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, tt.r)
		if d.Send || d.Died || d.Rebind || f.misses != 0 {
			t.Errorf("r=%v: first Tick at the last outbound time acts: %+v", tt.r, d)
		}
		if got := time.Duration(d.Next - schedT0); got < tt.want-1 || got > tt.want+1 {
			t.Errorf("r=%v: first beat after %v of silence, want %v", tt.r, got, tt.want)
		}
	}
	// r just below 1: about the full interval, never more.
	s := &Schedule{Interval: schedInterval, DeadAfter: 3}
	var f Flow
	d := s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, schedRMax)
	if got := time.Duration(d.Next - schedT0); got > schedInterval || got < schedInterval-time.Microsecond {
		t.Errorf("r→1: first beat after %v, want ≈%v and not more", got, schedInterval)
	}
}

func TestScheduleJitterBounds(t *testing.T) {
	for _, iv := range []time.Duration{100 * time.Millisecond, time.Second, 20 * time.Second, 7*time.Second + 3, time.Hour} {
		s := &Schedule{Interval: iv}
		lo, hi := time.Duration(float64(iv)*0.8)-1, iv
		for i := range 1000 {
			r := float64(i) / 1000
			if i == 999 {
				r = schedRMax
			}
			var f Flow
			d := s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, r)
			if got := time.Duration(d.Next - schedT0); got < lo || got > hi {
				t.Fatalf("interval %v r=%v: wait %v outside [%v, %v]", iv, r, got, lo, hi)
			}
		}
	}
}

func TestScheduleFirstBeatDue(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3}
	var f Flow
	s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, 0)
	// Just before the due time: nothing, and the due time stands.
	if d := s.Tick(&f, schedAt(8*time.Second)-1, Traffic{Outbound: schedT0}, 0); d.Send || d.Next != schedAt(8*time.Second) {
		t.Fatalf("before due: %+v", d)
	}
	d := s.Tick(&f, schedAt(8*time.Second), Traffic{Outbound: schedT0}, 0)
	if !d.Send || d.Died || d.Rebind || f.misses != 0 {
		t.Fatalf("at due: %+v, want a plain heartbeat", d)
	}
	if d.Next != schedAt(16*time.Second) {
		t.Errorf("next beat at t0+%v, want t0+16s", time.Duration(d.Next-schedT0))
	}
}

// TestScheduleFirstTickLate: the scheduler may first wake a flow long after
// its last outbound datagram; the beat is then due at once.
func TestScheduleFirstTickLate(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3}
	var f Flow
	d := s.Tick(&f, schedAt(time.Minute), Traffic{Outbound: schedT0}, 0)
	if !d.Send || d.Next != schedAt(time.Minute+8*time.Second) {
		t.Errorf("late first tick: %+v", d)
	}
}

func TestScheduleOutboundPostpones(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3}
	var f Flow
	s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, 0) // due t0+8s
	// The application sends at t0+5s: the beat moves to t0+13s.
	d := s.Tick(&f, schedAt(5*time.Second), Traffic{Outbound: schedAt(5 * time.Second)}, 0)
	if d.Send || d.Next != schedAt(13*time.Second) {
		t.Fatalf("after outbound traffic: %+v, want Next t0+13s", d)
	}
	if d := s.Tick(&f, schedAt(8*time.Second), Traffic{Outbound: schedAt(5 * time.Second)}, 0); d.Send || d.Next != schedAt(13*time.Second) {
		t.Fatalf("at the old due time: %+v", d)
	}
	// Traffic keeps coming: no heartbeat ever.
	for i := 6; i < 100; i++ {
		now := schedAt(time.Duration(i) * time.Second)
		if d := s.Tick(&f, now, Traffic{Outbound: now}, 0.5); d.Send {
			t.Fatalf("heartbeat at t0+%ds despite traffic every second", i)
		}
	}
	// Silence after the last datagram at t0+99s: the beat is due 9s later
	// (r was 0.5 when that datagram was seen), whatever r is now.
	last := schedAt(99 * time.Second)
	if d := s.Tick(&f, schedAt(108*time.Second)-1, Traffic{Outbound: last}, 0); d.Send || d.Next != schedAt(108*time.Second) {
		t.Fatalf("before due after silence: %+v", d)
	}
	if d := s.Tick(&f, schedAt(108*time.Second), Traffic{Outbound: last}, 0); !d.Send {
		t.Fatalf("no heartbeat after the silence: %+v", d)
	}
}

// TestScheduleDueKeepsItsJitter: once a due time is set, later ticks with a
// different r do not move it; only outbound traffic does.
func TestScheduleDueKeepsItsJitter(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3}
	var f Flow
	d := s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, 0.5) // due t0+9s
	for _, r := range []float64{0, 0.3, schedRMax} {
		if d2 := s.Tick(&f, schedAt(time.Second), Traffic{Outbound: schedT0}, r); d2.Next != d.Next {
			t.Errorf("r=%v moved the due time from %d to %d", r, d.Next, d2.Next)
		}
	}
}

// TestScheduleOldOutboundIgnored: a lastOutbound older than the last
// heartbeat does not postpone anything.
func TestScheduleOldOutboundIgnored(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3}
	var f Flow
	s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, 0)
	schedBeat(t, s, &f, schedAt(8*time.Second), schedT0) // next t0+16s
	if d := s.Tick(&f, schedAt(10*time.Second), Traffic{Outbound: schedAt(7 * time.Second)}, 0); d.Send || d.Next != schedAt(16*time.Second) {
		t.Errorf("stale lastOutbound moved the beat: %+v", d)
	}
}

func TestScheduleBeatsRepeat(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3}
	var f Flow
	rs := []float64{0, 0.5, schedRMax, 0.25, 0.75}
	d := s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, rs[0])
	beats := 0
	for i := 1; i <= 50; i++ {
		prev := d.Next
		r := rs[i%len(rs)]
		d = s.Tick(&f, prev, Traffic{Outbound: schedT0}, r)
		if !d.Send {
			t.Fatalf("beat %d: no heartbeat at its due time: %+v", i, d)
		}
		beats++
		if f.misses != 0 || d.Died || d.Rebind {
			t.Fatalf("beat %d without ExpectReply: %+v", i, d)
		}
		wait := time.Duration(d.Next - prev)
		want := time.Duration(float64(schedInterval) * (0.8 + 0.2*r))
		if wait < want-1 || wait > want+1 || wait < schedInterval*8/10 || wait > schedInterval {
			t.Fatalf("beat %d: next after %v, want %v", i, wait, want)
		}
		// Between beats nothing happens.
		if mid := s.Tick(&f, prev+int64(wait/2), Traffic{Outbound: schedT0}, 0); mid.Send || mid.Next != d.Next {
			t.Fatalf("beat %d: between beats: %+v", i, mid)
		}
	}
	if f.misses != 0 || f.Dead() {
		t.Errorf("without ExpectReply: misses %d dead %v", f.misses, f.Dead())
	}
	if beats != 50 {
		t.Errorf("%d beats", beats)
	}
}

func TestScheduleDisabled(t *testing.T) {
	for _, iv := range []time.Duration{0, -time.Second} {
		s := &Schedule{Interval: iv, DeadAfter: 3, Pong: schedPong}
		if s.Enabled() {
			t.Errorf("interval %v: Enabled", iv)
		}
		var f Flow
		for i := range 100 {
			now := schedAt(time.Duration(i) * time.Hour)
			if d := s.Tick(&f, now, Traffic{Outbound: schedT0}, 0.5); d != (Decision{Next: -1}) {
				t.Fatalf("interval %v: Tick = %+v, want only Next -1", iv, d)
			}
		}
		if f != (Flow{}) {
			t.Errorf("interval %v: Tick changed the flow: %+v", iv, f)
		}
	}
	if !(&Schedule{Interval: time.Nanosecond}).Enabled() {
		t.Error("1ns interval not Enabled")
	}
}

// TestScheduleMissesOnlyWhenUnanswered: a miss is counted at a beat only
// if nothing (here: no reply) came back since the previous beat.
func TestScheduleMissesOnlyWhenUnanswered(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3, Pong: schedPong}
	var f Flow
	now := schedT0
	s.Tick(&f, now, Traffic{Outbound: now}, 0)
	now += int64(8 * time.Second)
	// Beat 1: nothing was outstanding.
	if d := schedBeat(t, s, &f, now, schedT0); f.misses != 0 {
		t.Fatalf("first beat counted a miss: %+v", d)
	}
	// Answered beats never miss.
	for i := range 10 {
		if r := s.Reply(&f, now+int64(30*time.Millisecond), false, TxID{}); !r.Counted {
			t.Fatalf("reply %d not counted", i)
		}
		now += int64(8 * time.Second)
		if d := schedBeat(t, s, &f, now, schedT0); f.misses != 0 {
			t.Fatalf("answered beat %d counted a miss: %+v", i, d)
		}
		if f.misses != 0 {
			t.Fatalf("misses %d", f.misses)
		}
	}
	// Now unanswered: beat n+1 counts a miss for beat n.
	now += int64(8 * time.Second)
	if d := schedBeat(t, s, &f, now, schedT0); f.misses != 1 || d.Died || d.Rebind {
		t.Fatalf("unanswered beat: %+v, want Missed only", d)
	}
	if f.misses != 1 {
		t.Errorf("misses %d, want 1", f.misses)
	}
	// Outbound traffic postpones the next beat but the outstanding one is
	// still unanswered when it goes out.
	d := s.Tick(&f, now+int64(time.Second), Traffic{Outbound: now + int64(time.Second)}, 0)
	if d.Send {
		t.Fatalf("%+v", d)
	}
	if d := s.Tick(&f, d.Next, Traffic{Outbound: now + int64(time.Second)}, 0); !d.Send || f.misses != 2 {
		t.Fatalf("postponed unanswered beat: %+v", d)
	}
	if f.misses != 2 {
		t.Errorf("misses %d, want 2", f.misses)
	}
}

// TestScheduleDeathAndRebind follows a peer that answered and then stops:
// with on_dead=keep it is declared dead once and the flow is kept; with
// on_dead=rebind the relay is also told to rebind on death and every
// DeadAfter misses while it stays dead.
func TestScheduleDeathAndRebind(t *testing.T) {
	for _, rebind := range []bool{false, true} {
		for _, deadAfter := range []int{1, 2, 3, 5} {
			s := &Schedule{Interval: schedInterval, DeadAfter: deadAfter, Pong: schedPong, Rebind: rebind}
			var f Flow
			now := schedT0
			s.Tick(&f, now, Traffic{Outbound: now}, 0)
			// Beat 1 is answered: the upstream speaks the protocol.
			now += int64(8 * time.Second)
			schedBeat(t, s, &f, now, schedT0)
			if r := s.Reply(&f, now+1, false, TxID{}); !r.Counted {
				t.Fatalf("reply to beat 1 not counted: %+v", r)
			}
			died := 0
			for beat := 2; beat <= 2+4*deadAfter+1; beat++ {
				now += int64(8 * time.Second)
				d := schedBeat(t, s, &f, now, schedT0)
				misses := beat - 2
				if f.misses != misses {
					t.Fatalf("rebind %v deadAfter %d beat %d: misses %d, want %d", rebind, deadAfter, beat, f.misses, misses)
				}
				wantDied := misses == deadAfter
				wantRebind := rebind && misses >= deadAfter && misses%deadAfter == 0
				if d.Died != wantDied || d.Rebind != wantRebind || d.Unanswered {
					t.Fatalf("rebind %v deadAfter %d beat %d (misses %d): %+v, want Died %v Rebind %v",
						rebind, deadAfter, beat, misses, d, wantDied, wantRebind)
				}
				if d.Died {
					died++
				}
				if f.Dead() != (misses >= deadAfter) {
					t.Fatalf("deadAfter %d beat %d: Dead %v", deadAfter, beat, f.Dead())
				}
			}
			if died != 1 {
				t.Errorf("deadAfter %d: Died %d times, want once", deadAfter, died)
			}
			// A reply revives the peer and resets the count.
			r := s.Reply(&f, now+int64(50*time.Millisecond), false, TxID{})
			if !r.Counted || !r.Revived || r.RTT != 50*time.Millisecond {
				t.Errorf("deadAfter %d: reply while dead: %+v", deadAfter, r)
			}
			if f.Dead() || f.misses != 0 {
				t.Errorf("deadAfter %d: after revival dead %v misses %d", deadAfter, f.Dead(), f.misses)
			}
			// A second reply to the same beat is not counted and revives nothing.
			if r := s.Reply(&f, now+int64(60*time.Millisecond), false, TxID{}); r != (ReplyResult{}) {
				t.Errorf("deadAfter %d: duplicate reply: %+v", deadAfter, r)
			}
			// The peer can die again, and is reported again.
			now += int64(8 * time.Second)
			if d := schedBeat(t, s, &f, now, schedT0); f.misses != 0 {
				t.Errorf("beat after revival: %+v", d)
			}
			died = 0
			for range deadAfter {
				now += int64(8 * time.Second)
				if d := schedBeat(t, s, &f, now, schedT0); d.Died {
					died++
				}
			}
			if died != 1 || !f.Dead() {
				t.Errorf("deadAfter %d: second death reported %d times, dead %v", deadAfter, died, f.Dead())
			}
		}
	}
}

// TestScheduleInboundDataIsLife: any datagram from the upstream, app data
// included, resets the misses: a server that pushes but never answers a
// heartbeat is never declared dead, and a dead peer that sends data is
// revived at once by Heard, or at the next tick.
func TestScheduleInboundDataIsLife(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 2, Pong: schedPong}
	var f Flow
	now := schedT0
	s.Tick(&f, now, Traffic{Outbound: now}, 0)
	heard := int64(0)
	for beat := 1; beat <= 50; beat++ {
		now += int64(8 * time.Second)
		d := s.Tick(&f, now, Traffic{Outbound: schedT0, Heard: heard, RouteAnswered: true}, 0)
		if !d.Send || d.Died || d.Rebind || d.Unanswered || f.Dead() {
			t.Fatalf("beat %d with data heard after every beat: %+v dead %v", beat, d, f.Dead())
		}
		if beat > 1 && f.misses != 0 {
			t.Fatalf("beat %d: misses %d with data heard", beat, f.misses)
		}
		heard = now + int64(3*time.Second) // a push between beats
	}
	// Silence: two misses kill it (the route has answered before).
	var d Decision
	for range 3 {
		now += int64(8 * time.Second)
		d = s.Tick(&f, now, Traffic{Outbound: schedT0, Heard: heard, RouteAnswered: true}, 0)
		if d.Died {
			break
		}
	}
	if !d.Died || !f.Dead() {
		t.Fatalf("silent peer not declared dead: %+v", d)
	}
	// Data heard before the death does not revive it.
	if s.Heard(&f, now-1) || !f.Dead() {
		t.Fatal("a datagram from before the death revived the peer")
	}
	// Data after it does, at once.
	if !s.Heard(&f, now+1) || f.Dead() || f.misses != 0 {
		t.Fatalf("data after death: dead %v misses %d", f.Dead(), f.misses)
	}
	// The same through Tick: die again, then the next tick sees new data.
	for range 3 {
		now += int64(8 * time.Second)
		d = s.Tick(&f, now, Traffic{Outbound: schedT0, Heard: now - int64(20*time.Second), RouteAnswered: true}, 0)
		if f.Dead() {
			break
		}
	}
	if !f.Dead() {
		t.Fatal("not dead again")
	}
	now += int64(8 * time.Second)
	d = s.Tick(&f, now, Traffic{Outbound: schedT0, Heard: now - int64(time.Second), RouteAnswered: true}, 0)
	if !d.Revived || f.Dead() || d.Died {
		t.Fatalf("tick after data while dead: %+v dead %v", d, f.Dead())
	}
}

// TestScheduleNoDeathWithoutSilence: a peer that was heard from since the
// previous heartbeat never counts a miss, whatever happened to the replies.
func TestScheduleNoDeathWithoutSilence(t *testing.T) {
	s := &Schedule{Interval: time.Second, DeadAfter: 1, Pong: schedPong}
	var f Flow
	now := schedT0
	s.Tick(&f, now, Traffic{Outbound: now}, 0)
	for beat := range 100 {
		now += int64(800 * time.Millisecond)
		d := s.Tick(&f, now, Traffic{Outbound: schedT0, Heard: now - 1, RouteAnswered: true}, 0)
		if d.Died || f.misses != 0 {
			t.Fatalf("beat %d: %+v misses %d", beat, d, f.misses)
		}
	}
}

// TestScheduleNeverAnsweredRoute: an upstream that never answered a
// heartbeat, on any flow of the route, does not speak the protocol: after
// DeadAfter misses the flow reports Unanswered once, never Died or Rebind,
// and keeps beating; once the route has been answered elsewhere, silence
// on this flow is death again.
func TestScheduleNeverAnsweredRoute(t *testing.T) {
	for _, rebind := range []bool{false, true} {
		s := &Schedule{Interval: schedInterval, DeadAfter: 3, Pong: schedPong, Rebind: rebind}
		var f Flow
		now := schedT0
		s.Tick(&f, now, Traffic{Outbound: now}, 0)
		unanswered := 0
		for beat := 1; beat <= 20; beat++ {
			now += int64(8 * time.Second)
			d := schedBeatT(t, s, &f, now, Traffic{Outbound: schedT0})
			if d.Died || d.Rebind || f.Dead() {
				t.Fatalf("rebind %v beat %d: never-answered upstream declared dead: %+v", rebind, beat, d)
			}
			if d.Unanswered {
				unanswered++
				if beat != 4 {
					t.Fatalf("Unanswered at beat %d, want beat 4 (3 misses)", beat)
				}
			}
		}
		if unanswered != 1 {
			t.Fatalf("Unanswered reported %d times, want once", unanswered)
		}
		// Another flow of the route got an answer: silence is now death.
		now += int64(8 * time.Second)
		d := schedBeatT(t, s, &f, now, Traffic{Outbound: schedT0, RouteAnswered: true})
		if !d.Died || d.Rebind != rebind {
			t.Fatalf("after the route was answered: %+v", d)
		}
	}
	// A flow that was answered itself dies even if the route flag is unset.
	s := &Schedule{Interval: schedInterval, DeadAfter: 2, Pong: schedPong}
	var f Flow
	now := schedT0
	s.Tick(&f, now, Traffic{Outbound: now}, 0)
	now += int64(8 * time.Second)
	schedBeat(t, s, &f, now, schedT0)
	s.Reply(&f, now+1, false, TxID{})
	var died bool
	for range 3 {
		now += int64(8 * time.Second)
		died = died || schedBeat(t, s, &f, now, schedT0).Died
	}
	if !died {
		t.Fatal("an answered flow that went silent was not declared dead")
	}
}

// TestScheduleHealCadence: with Heal set, a heartbeat goes out at the normal
// TTL once Heal has passed since the last full-TTL datagram (app data or an
// earlier heal beat); app traffic restarts the count; Heal 0 never heals.
func TestScheduleHealCadence(t *testing.T) {
	s := &Schedule{Interval: time.Second, Heal: 5 * time.Second}
	var f Flow
	now := schedT0
	s.Tick(&f, now, Traffic{Outbound: now}, 0)
	var fulls []time.Duration
	for range 40 { // 40 beats at 0.8 s = 32 s
		now += int64(800 * time.Millisecond)
		if d := schedBeat(t, s, &f, now, schedT0); d.Full {
			fulls = append(fulls, time.Duration(now-schedT0))
		}
	}
	// Beats at 0.8 s steps: the first at or after 5 s is 5.6 s, then every
	// 5.6 s (7 beats).
	want := []time.Duration{5600, 11200, 16800, 22400, 28000}
	if len(fulls) != len(want) {
		t.Fatalf("heal beats at %v, want %v ms", fulls, want)
	}
	for i := range want {
		if fulls[i] != want[i]*time.Millisecond {
			t.Fatalf("heal beats at %v, want %v ms", fulls, want)
		}
	}
	// App traffic is sent at the normal TTL: it resets the heal clock.
	for range 20 {
		now += int64(800 * time.Millisecond)
		if d := s.Tick(&f, now, Traffic{Outbound: now - 1}, 0); d.Full {
			t.Fatalf("heal beat while the app sends: %+v", d)
		}
	}
	// Heal 0: never.
	s0 := &Schedule{Interval: time.Second}
	var g Flow
	s0.Tick(&g, schedT0, Traffic{Outbound: schedT0}, 0)
	for i := range 1000 {
		if d := schedBeat(t, s0, &g, schedT0+int64(i+1)*int64(800*time.Millisecond), schedT0); d.Full {
			t.Fatalf("Heal 0 sent a full-TTL beat: %+v", d)
		}
	}
}

// TestScheduleNoDeathWithoutDeadAfter: DeadAfter 0 counts misses but never
// declares death (the config rejects it; the schedule must not divide by 0).
func TestScheduleNoDeathWithoutDeadAfter(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 0, Pong: schedPong}
	var f Flow
	now := schedT0
	s.Tick(&f, now, Traffic{Outbound: now}, 0)
	for range 20 {
		now += int64(8 * time.Second)
		if d := schedBeat(t, s, &f, now, schedT0); d.Died || d.Rebind {
			t.Fatalf("%+v", d)
		}
	}
	if f.misses != 19 || f.Dead() {
		t.Errorf("misses %d dead %v", f.misses, f.Dead())
	}
}

func TestScheduleReplyRTT(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3, Pong: schedPong}
	var f Flow
	now := schedT0
	s.Tick(&f, now, Traffic{Outbound: now}, 0)
	if last, smooth := f.RTT(); last != 0 || smooth != 0 {
		t.Fatalf("RTT before any reply: %v %v", last, smooth)
	}
	// A reply before any heartbeat is not ours.
	if r := s.Reply(&f, now, false, TxID{}); r.Counted {
		t.Fatalf("reply before any heartbeat counted: %+v", r)
	}
	steps := []struct {
		rtt, smoothed time.Duration
	}{
		{100 * time.Millisecond, 100 * time.Millisecond},    // first sample: srtt = rtt
		{20 * time.Millisecond, 90 * time.Millisecond},      // 7/8*100 + 1/8*20
		{180 * time.Millisecond, 101250 * time.Microsecond}, // 7/8*90 + 1/8*180
		{101250 * time.Microsecond, 101250 * time.Microsecond},
	}
	for i, st := range steps {
		now += int64(8 * time.Second)
		schedBeat(t, s, &f, now, schedT0)
		r := s.Reply(&f, now+int64(st.rtt), false, TxID{})
		if !r.Counted || r.RTT != st.rtt || r.Revived {
			t.Fatalf("step %d: %+v, want counted RTT %v", i, r, st.rtt)
		}
		last, smooth := f.RTT()
		if last != st.rtt || smooth != st.smoothed {
			t.Fatalf("step %d: RTT %v/%v, want %v/%v", i, last, smooth, st.rtt, st.smoothed)
		}
		// Duplicates and late copies change nothing.
		if r := s.Reply(&f, now+int64(st.rtt)+1, false, TxID{}); r.Counted {
			t.Fatalf("step %d: duplicate counted: %+v", i, r)
		}
		if l2, s2 := f.RTT(); l2 != last || s2 != smooth {
			t.Fatalf("step %d: duplicate changed RTT", i)
		}
	}
}

// TestScheduleReplyClockSkew: a reply stamped before the heartbeat (two
// clocks, or a reordered event) gives RTT 0, never negative.
func TestScheduleReplyClockSkew(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3, Pong: schedPong}
	var f Flow
	s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, 0)
	schedBeat(t, s, &f, schedAt(8*time.Second), schedT0)
	r := s.Reply(&f, schedAt(7*time.Second), false, TxID{})
	if !r.Counted || r.RTT != 0 {
		t.Errorf("%+v", r)
	}
}

// TestScheduleReplyWithoutExpectReply: with no reply matcher nothing is
// ever outstanding, so a stray reply counts nothing.
func TestScheduleReplyWithoutExpectReply(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3}
	var f Flow
	s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, 0)
	schedBeat(t, s, &f, schedAt(8*time.Second), schedT0)
	if r := s.Reply(&f, schedAt(9*time.Second), false, TxID{}); r.Counted {
		t.Errorf("%+v", r)
	}
}

// TestScheduleReplyDoesNotPostpone: inbound traffic, pongs included, never
// moves the next heartbeat (RFC 4787 REQ-6).
func TestScheduleReplyDoesNotPostpone(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3, Pong: schedPong}
	var f Flow
	s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, 0)
	d := schedBeat(t, s, &f, schedAt(8*time.Second), schedT0)
	s.Reply(&f, schedAt(9*time.Second), false, TxID{})
	if d2 := s.Tick(&f, schedAt(10*time.Second), Traffic{Outbound: schedT0}, 0); d2.Next != d.Next || d2.Send {
		t.Errorf("after reply: %+v, want Next %d", d2, d.Next)
	}
}

func TestScheduleSTUNCurrentTxIDOnly(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 5, Pong: schedPong}
	var f Flow
	now := schedT0
	s.Tick(&f, now, Traffic{Outbound: now}, 0)

	now += int64(8 * time.Second)
	schedBeat(t, s, &f, now, schedT0)
	f.Sent(schedTx(1))
	if r := s.Reply(&f, now+int64(time.Millisecond), true, schedTx(9)); r.Counted {
		t.Fatalf("foreign ID counted: %+v", r)
	}
	// The next beat goes out unanswered; a late response to beat 1 is ours
	// (consumed) but measures nothing and does not clear the miss.
	now += int64(8 * time.Second)
	if d := schedBeat(t, s, &f, now, schedT0); f.misses != 1 {
		t.Fatalf("%+v", d)
	}
	f.Sent(schedTx(2))
	if !f.Ours(schedTx(1)) {
		t.Fatal("previous transaction not recognised")
	}
	if r := s.Reply(&f, now+int64(time.Millisecond), true, schedTx(1)); r.Counted {
		t.Fatalf("stale STUN response counted: %+v", r)
	}
	// It still proves the peer alive: any datagram from the upstream does.
	if f.misses != 0 {
		t.Fatalf("stale response left misses at %d", f.misses)
	}
	if last, _ := f.RTT(); last != 0 {
		t.Fatalf("stale response measured RTT %v", last)
	}
	// The current transaction counts once.
	r := s.Reply(&f, now+int64(40*time.Millisecond), true, schedTx(2))
	if !r.Counted || r.RTT != 40*time.Millisecond {
		t.Fatalf("current response: %+v", r)
	}
	if f.misses != 0 {
		t.Errorf("misses %d after reply", f.misses)
	}
	if r := s.Reply(&f, now+int64(41*time.Millisecond), true, schedTx(2)); r.Counted {
		t.Errorf("duplicate current response counted: %+v", r)
	}
	// A non-STUN reply ignores the ID.
	now += int64(8 * time.Second)
	schedBeat(t, s, &f, now, schedT0)
	f.Sent(schedTx(3))
	if r := s.Reply(&f, now+1, false, schedTx(77)); !r.Counted {
		t.Errorf("non-STUN reply not counted: %+v", r)
	}
}

func TestScheduleSTUNOursRecent(t *testing.T) {
	var f Flow
	if f.Ours(TxID{}) {
		t.Fatal("zero flow recognises the zero ID")
	}
	if f.Ours(schedTx(1)) {
		t.Fatal("zero flow recognises an ID")
	}
	for i := byte(1); i <= 10; i++ {
		f.Sent(schedTx(i))
		for j := byte(1); j <= 11; j++ {
			want := j <= i && j+recentTx > i // the last 4 sent
			if got := f.Ours(schedTx(j)); got != want {
				t.Fatalf("after sending 1..%d: Ours(%d) = %v, want %v", i, j, got, want)
			}
		}
		if !f.current(schedTx(i)) || (i > 1 && f.current(schedTx(i-1))) {
			t.Fatalf("after sending %d: current wrong", i)
		}
	}
	if f.Ours(TxID{}) {
		t.Error("zero ID recognised after sends")
	}
}

// TestScheduleSTUNReplyBeforeSent: a response arriving for a flow whose
// heartbeat ID was never recorded is not counted.
func TestScheduleSTUNReplyBeforeSent(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3, Pong: schedPong}
	var f Flow
	s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, 0)
	schedBeat(t, s, &f, schedAt(8*time.Second), schedT0)
	if r := s.Reply(&f, schedAt(9*time.Second), true, TxID{}); r.Counted {
		t.Errorf("zero ID counted with no Sent: %+v", r)
	}
}

func TestScheduleTickZeroAllocs(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 3, Pong: schedPong}
	var f Flow
	now := schedT0
	allocs := testing.AllocsPerRun(1000, func() {
		now += int64(9 * time.Second)
		s.Tick(&f, now, Traffic{Outbound: schedT0}, 0.5)
		f.Sent(schedTx(byte(now)))
		s.Reply(&f, now+1, true, schedTx(byte(now)))
	})
	if allocs != 0 {
		t.Errorf("%v allocations per tick", allocs)
	}
}

// BenchmarkScheduleTick100k ticks 100,000 flows, as one relay with many
// flows would on every scheduler wake-up; one op is one pass over all flows.
func BenchmarkScheduleTick100k(b *testing.B) {
	const n = 100_000
	s := &Schedule{Interval: 20 * time.Second, DeadAfter: 3, Pong: schedPong}
	flows := make([]Flow, n)
	lastOut := make([]int64, n)
	for i := range lastOut {
		lastOut[i] = schedT0 + int64(i)*int64(time.Millisecond)
	}
	now := schedT0
	sent := 0
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		now += int64(time.Second)
		for i := range flows {
			if i%7 == 0 {
				lastOut[i] = now // some flows carry traffic
			}
			d := s.Tick(&flows[i], now, Traffic{Outbound: lastOut[i]}, float64(i%1000)/1000)
			if d.Send {
				sent++
			}
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/n, "ns/flow")
	if sent == 0 && b.N > 30 {
		b.Fatal("no heartbeats sent")
	}
}

// TestScheduleLimitedCountsOnlyHealBeats: with TTL-limited heartbeats
// (ttl=auto once a distance is learned) only the normal-TTL heal heartbeats
// can be answered, so a silent upstream is noticed at heal beats only, and
// limited beats in between never count as misses.
func TestScheduleLimitedCountsOnlyHealBeats(t *testing.T) {
	s := &Schedule{Interval: schedInterval, DeadAfter: 2, Pong: schedPong, Heal: 35 * time.Second, Limited: true}
	var f Flow
	now := schedT0
	d := s.Tick(&f, now, Traffic{Outbound: now}, 0)
	var full, died int
	for range 40 {
		now = d.Next
		d = s.Tick(&f, now, Traffic{Outbound: schedT0, RouteAnswered: true}, 0)
		if !d.Send {
			t.Fatalf("no heartbeat at t0+%v", time.Duration(now-schedT0))
		}
		if d.Full {
			full++
		}
		if d.Died {
			died++
			// Heal beats at 8 s spacing and a 35 s heal: the 1st answers
			// nothing, the 2nd is one miss, the 3rd the second: dead.
			if full != 3 {
				t.Fatalf("died at heal beat %d, want the third", full)
			}
		}
	}
	if died != 1 || !f.Dead() {
		t.Fatalf("died %d times (dead %v), want once", died, f.Dead())
	}
	// A limited beat with the reply outstanding from a heal beat keeps the RTT sample.
	var g Flow
	d = s.Tick(&g, schedT0, Traffic{Outbound: schedT0}, 0)
	for !d.Full {
		d = s.Tick(&g, d.Next, Traffic{Outbound: schedT0}, 0)
	}
	sent := d.Next - int64(8*time.Second)
	d = s.Tick(&g, d.Next, Traffic{Outbound: schedT0}, 0)
	if d.Full {
		t.Fatal("the heartbeat after a heal one is full-TTL within the heal period")
	}
	at := d.Next - int64(time.Second)
	if res := s.Reply(&g, at, false, TxID{}); !res.Counted || res.RTT != time.Duration(at-sent) {
		t.Fatalf("reply to the heal beat: %+v, want counted with RTT %v from the heal beat", res, time.Duration(at-sent))
	}
}

// TestScheduleIntervalChange: a learned interval that shrinks takes effect
// at the next tick, not after the old wait.
func TestScheduleIntervalChange(t *testing.T) {
	s := &Schedule{Interval: 15 * time.Second}
	var f Flow
	d := s.Tick(&f, schedT0, Traffic{Outbound: schedT0}, 0)
	if d.Next != schedAt(12*time.Second) {
		t.Fatalf("first due t0+%v, want 12s", time.Duration(d.Next-schedT0))
	}
	s.Interval = 4 * time.Second
	d = s.Tick(&f, schedAt(time.Second), Traffic{Outbound: schedT0}, 0)
	if d.Send || d.Next != schedAt(3200*time.Millisecond) {
		t.Fatalf("after the change: %+v, want due at t0+3.2s", d)
	}
	d = s.Tick(&f, schedAt(5*time.Second), Traffic{Outbound: schedT0}, 0)
	if !d.Send {
		t.Fatal("no heartbeat at the new interval")
	}
}
