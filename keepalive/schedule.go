package keepalive

import "time"

// Every heartbeat rule lives in this file, in the manner of wireguard-go's
// device/timers.go: the relay reports events (Tick when the scheduler wakes a
// flow, Heard when anything arrives from the upstream, Reply when a pong
// arrives) and the Schedule decides. Times are monotonic nanoseconds from any
// fixed epoch, so the relay can keep the per-datagram timestamps in atomics
// and tests can drive the rules without sleeping.
//
// The liveness rules:
//
//   - Any datagram from the upstream is proof of life, as WireGuard treats
//     any authenticated packet: it resets the miss count and revives a dead
//     peer. RTT is measured from matched replies only.
//   - A heartbeat is missed when nothing at all came from the upstream since
//     the previous heartbeat. DeadAfter misses in a row declare the peer dead,
//     but only on a flow whose upstream has answered a heartbeat before, or
//     on a route where some flow's upstream has: an upstream that never
//     answered does not speak the heartbeat protocol, it is not dead.
//   - A dead peer keeps its flow and local port (heartbeats from the same
//     port re-create a lost mapping, usually on the same external port);
//     with Rebind the relay takes a fresh local port on death and again every
//     DeadAfter misses while the peer stays dead.
//   - With TTL-limited heartbeats, one heartbeat per Heal goes out with the
//     normal TTL, because a TTL-limited packet can refresh a mapping but
//     never create one.

// jitterLow is the smallest fraction of the interval a jittered wait takes:
// flows that started together drift apart instead of beating in lockstep.
const jitterLow = 0.8

// recentTx is how many past STUN transactions still count as ours, so a late
// response to a beat already counted as missed is consumed, not leaked to the app.
const recentTx = 4

// Schedule is the heartbeat timing shared by every flow of a route.
type Schedule struct {
	Interval  time.Duration // outbound silence before a heartbeat, then between heartbeats; 0 turns heartbeats off
	DeadAfter int           // heartbeats in a row with nothing heard from the upstream that declare the peer dead
	Pong      Reply         // what counts as a reply (a pong); with one, misses are counted
	Rebind    bool          // on a dead peer take a fresh local port (on_dead=rebind) instead of keeping the flow's
	Heal      time.Duration // with TTL-limited heartbeats, send one at the normal TTL at least this often; 0 = never
	// Limited marks heartbeats as TTL-limited: they end before the server,
	// so only the normal-TTL (heal) heartbeats can be answered, and only
	// they count misses and measure RTT.
	Limited bool
}

// Enabled reports whether heartbeats are sent at all.
func (s *Schedule) Enabled() bool { return s.Interval > 0 }

// Flow is one flow's heartbeat and liveness state. The zero value is a flow
// that has sent nothing. It is not safe for concurrent use: the relay guards it.
type Flow struct {
	base        int64         // start of the current silence: last outbound datagram or last heartbeat
	due         int64         // when the next heartbeat is due
	dueIvl      time.Duration // the interval due was computed with (a learned interval can change)
	sentAt      int64         // when the last heartbeat that expects a reply went out
	beats       int64         // heartbeats sent
	heard       int64         // when anything last arrived from the upstream
	full        int64         // when a datagram last went upstream at the normal TTL (app data or a heal heartbeat)
	diedAt      int64         // the heartbeat that declared the peer dead
	rtt, srtt   time.Duration
	recent      [recentTx]TxID
	nrecent     int
	misses      int
	outstanding bool // the last heartbeat awaits its reply (RTT)
	dead        bool
	answered    bool // a heartbeat of this flow was ever answered
	silent      bool // reported as never answered
	sampled     bool // srtt holds at least one sample
	// The fields are ordered so that the bools share one word: the relay
	// keeps a Flow per idle flow, and 16 bytes less per flow is what moves
	// its flow record into a smaller allocation class.
}

// Traffic is what the relay knows of a flow's datagrams when it ticks.
type Traffic struct {
	Outbound      int64 // last application datagram sent upstream
	Heard         int64 // last datagram of any kind from the upstream; 0 = none yet
	RouteAnswered bool  // some flow of the route has had a heartbeat answered
}

// Decision is what Tick asks the relay to do.
type Decision struct {
	Send       bool  // send a heartbeat now
	Full       bool  // send it with the normal TTL (heal a mapping that TTL-limited beats cannot re-create)
	Died       bool  // the peer has just been declared dead (log once, count once, re-resolve)
	Rebind     bool  // take a new upstream socket (fresh local port and NAT mapping)
	Revived    bool  // the dead peer was heard from again (noticed at this tick)
	Unanswered bool  // DeadAfter heartbeats went unanswered on a route whose upstream never answered one
	Next       int64 // call Tick again at this time
}

// jitter maps r in [0,1) to a wait of 80-100% of the interval.
func (s *Schedule) jitter(r float64) int64 {
	return int64(float64(s.Interval) * (jitterLow + (1-jitterLow)*r))
}

// Tick applies the rules at time now; r is a uniform random number in
// [0,1) used for jitter. Only outbound application traffic postpones a
// heartbeat (RFC 4787 REQ-6: only outbound packets are sure to refresh a
// mapping); inbound traffic only proves the peer alive.
func (s *Schedule) Tick(f *Flow, now int64, t Traffic, r float64) Decision {
	if !s.Enabled() {
		return Decision{Next: -1}
	}
	var d Decision
	d.Revived = s.Heard(f, t.Heard)
	if t.Outbound > f.full {
		f.full = t.Outbound
	}
	if t.Outbound > f.base || f.due == 0 || f.dueIvl != s.Interval {
		if t.Outbound > f.base {
			f.base = t.Outbound
		}
		f.due, f.dueIvl = f.base+s.jitter(r), s.Interval
	}
	if now < f.due {
		d.Next = f.due
		return d
	}
	d.Send = true
	if s.Heal > 0 && now-f.full >= int64(s.Heal) {
		d.Full = true
		f.full = now
	}
	if s.Pong.Enabled() && (!s.Limited || d.Full) {
		// This heartbeat can be answered: the previous such one was
		// missed if nothing came since.
		if f.sentAt > 0 {
			s.countMiss(f, now, t.RouteAnswered, &d)
		}
		f.outstanding = true
		f.sentAt = now
	}
	f.beats++
	f.base = now
	f.due, f.dueIvl = now+s.jitter(r), s.Interval
	d.Next = f.due
	return d
}

// countMiss runs when a heartbeat is about to go out: if nothing came from
// the upstream since the previous one, that one was missed.
func (s *Schedule) countMiss(f *Flow, now int64, routeAnswered bool, d *Decision) {
	if f.heard >= f.sentAt {
		f.misses = 0
		return
	}
	f.misses++
	if s.DeadAfter <= 0 || f.misses < s.DeadAfter {
		return
	}
	switch {
	case f.dead:
		// Still dead: with Rebind, try another fresh mapping every DeadAfter misses.
		d.Rebind = s.Rebind && f.misses%s.DeadAfter == 0
	case !f.answered && !routeAnswered:
		// The upstream never answered a heartbeat: it does not speak the
		// protocol, which is not death. Report it once per flow.
		if !f.silent {
			f.silent = true
			d.Unanswered = true
		}
	default:
		f.dead, f.diedAt = true, now
		d.Died, d.Rebind = true, s.Rebind
	}
}

// Heard records that a datagram of any kind arrived from the upstream at
// time at (0 = nothing yet) and reports whether that revived a dead peer.
// The relay calls it at once for a flow it knows is dead, and Tick calls it
// with the latest arrival for everyone else.
func (s *Schedule) Heard(f *Flow, at int64) (revived bool) {
	if at <= f.heard {
		return false
	}
	f.heard = at
	if at >= f.sentAt {
		f.misses = 0
	}
	if f.dead && at > f.diedAt {
		f.dead = false
		f.misses = 0
		return true
	}
	return false
}

// Sent records the STUN transaction ID of the heartbeat just sent.
func (f *Flow) Sent(id TxID) {
	f.recent[f.nrecent%recentTx] = id
	f.nrecent++
}

// Ours reports whether id belongs to one of this flow's recent heartbeats.
func (f *Flow) Ours(id TxID) bool {
	n := min(f.nrecent, recentTx)
	for i := range n {
		if f.recent[i] == id {
			return true
		}
	}
	return false
}

// current reports whether id is the latest heartbeat's transaction.
func (f *Flow) current(id TxID) bool {
	return f.nrecent > 0 && f.recent[(f.nrecent-1)%recentTx] == id
}

// ReplyResult is what a heartbeat reply told us.
type ReplyResult struct {
	Counted bool          // the reply answered the outstanding heartbeat (RTT measured)
	RTT     time.Duration // valid when Counted
	Revived bool          // the peer was dead and is alive again
}

// Reply records a heartbeat reply at time now: the upstream answers
// heartbeats, and it is alive. With STUN, pass the response's transaction ID
// and stun=true (the caller has checked that the ID is Ours); only the latest
// heartbeat's reply measures RTT.
func (s *Schedule) Reply(f *Flow, now int64, stun bool, id TxID) ReplyResult {
	if f.beats == 0 || (stun && !f.Ours(id)) {
		return ReplyResult{}
	}
	f.answered = true
	res := ReplyResult{Revived: s.Heard(f, now)}
	if !f.outstanding || (stun && !f.current(id)) {
		return res
	}
	rtt := time.Duration(now - f.sentAt)
	if rtt < 0 {
		rtt = 0
	}
	f.rtt = rtt
	if !f.sampled {
		f.sampled = true
		f.srtt = rtt
	} else {
		// RFC 6298 smoothing: srtt = 7/8 srtt + 1/8 rtt.
		f.srtt = (7*f.srtt + rtt) / 8
	}
	f.outstanding = false
	f.misses = 0
	res.Counted, res.RTT = true, rtt
	return res
}

// Dead reports whether the peer is currently declared dead.
func (f *Flow) Dead() bool { return f.dead }

// RTT returns the last and the smoothed heartbeat round-trip time.
func (f *Flow) RTT() (last, smoothed time.Duration) { return f.rtt, f.srtt }
