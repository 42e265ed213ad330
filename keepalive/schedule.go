package keepalive

import "time"

// Every heartbeat rule lives in this file, in the manner of wireguard-go's
// device/timers.go: the relay reports events (Tick when the scheduler wakes a
// flow, Reply when a pong arrives) and the Schedule decides. Times are
// monotonic nanoseconds from any fixed epoch, so the relay can keep the
// per-datagram timestamp in an atomic and tests can drive the rules without
// sleeping.

// jitterLow is the smallest fraction of the interval a jittered wait takes:
// flows that started together drift apart instead of beating in lockstep.
const jitterLow = 0.8

// recentTx is how many past STUN transactions still count as ours, so a late
// response to a beat already counted as missed is consumed, not leaked to the app.
const recentTx = 4

// Schedule is the heartbeat timing shared by every flow of a route.
type Schedule struct {
	Interval    time.Duration // outbound silence before a heartbeat, then between heartbeats; 0 turns heartbeats off
	DeadAfter   int           // unanswered heartbeats in a row that declare the peer dead
	ExpectReply bool          // heartbeats produce replies, so misses are counted
}

// Enabled reports whether heartbeats are sent at all.
func (s *Schedule) Enabled() bool { return s.Interval > 0 }

// Flow is one flow's heartbeat and liveness state. The zero value is a flow
// that has sent nothing. It is not safe for concurrent use: the relay guards it.
type Flow struct {
	base        int64 // start of the current silence: last outbound datagram or last heartbeat
	due         int64 // when the next heartbeat is due
	sentAt      int64
	outstanding bool
	misses      int
	dead        bool
	rtt, srtt   time.Duration
	sampled     bool // srtt holds at least one sample
	recent      [recentTx]TxID
	nrecent     int
}

// Decision is what Tick asks the relay to do.
type Decision struct {
	Send   bool  // send a heartbeat now
	Missed bool  // the previous heartbeat went unanswered
	Died   bool  // the peer has just been declared dead (log once, count once)
	Rebind bool  // take a new upstream socket (fresh NAT mapping) and re-resolve
	Next   int64 // call Tick again at this time
}

// jitter maps r in [0,1) to a wait of 80-100% of the interval.
func (s *Schedule) jitter(r float64) int64 {
	return int64(float64(s.Interval) * (jitterLow + (1-jitterLow)*r))
}

// Tick applies the rules at time now. lastOutbound is when the application
// last sent a datagram upstream; r is a uniform random number in [0,1) used
// for jitter. Only outbound application traffic postpones a heartbeat
// (RFC 4787 REQ-6: only outbound packets are sure to refresh a mapping).
func (s *Schedule) Tick(f *Flow, now, lastOutbound int64, r float64) Decision {
	if !s.Enabled() {
		return Decision{Next: -1}
	}
	if lastOutbound > f.base || f.due == 0 {
		if lastOutbound > f.base {
			f.base = lastOutbound
		}
		f.due = f.base + s.jitter(r)
	}
	if now < f.due {
		return Decision{Next: f.due}
	}
	d := Decision{Send: true}
	if s.ExpectReply && f.outstanding {
		f.misses++
		d.Missed = true
		if s.DeadAfter > 0 && f.misses >= s.DeadAfter {
			switch {
			case !f.dead:
				f.dead = true
				d.Died, d.Rebind = true, true
			case f.misses%s.DeadAfter == 0:
				// Still dead: try another fresh mapping every DeadAfter misses.
				d.Rebind = true
			}
		}
	}
	f.outstanding = s.ExpectReply
	f.sentAt = now
	f.base = now
	f.due = now + s.jitter(r)
	d.Next = f.due
	return d
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

// Reply records a heartbeat reply at time now. With STUN, pass the response's
// transaction ID and stun=true; only the latest heartbeat's reply measures RTT.
func (s *Schedule) Reply(f *Flow, now int64, stun bool, id TxID) ReplyResult {
	if !f.outstanding || (stun && !f.current(id)) {
		return ReplyResult{}
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
	res := ReplyResult{Counted: true, RTT: rtt}
	if f.dead {
		f.dead = false
		res.Revived = true
	}
	return res
}

// Dead reports whether the peer is currently declared dead.
func (f *Flow) Dead() bool { return f.dead }

// Misses returns the number of unanswered heartbeats in a row.
func (f *Flow) Misses() int { return f.misses }

// RTT returns the last and the smoothed heartbeat round-trip time.
func (f *Flow) RTT() (last, smoothed time.Duration) { return f.rtt, f.srtt }
