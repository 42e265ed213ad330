package relay

// The responder role: natkeep beside a server that does not speak STUN
// answers the Binding Requests of a natkeep (or any STUN client) across the
// NAT, so the far end gets liveness, RTT and its mapped address. It answers
// strangers too, so every source address gets a token bucket.

import (
	"net/netip"
	"sync"

	"github.com/natkeep/natkeep/keepalive"
)

// Responder answer budget per source IP address: enough for thousands of
// heartbeating flows behind one NAT at natkeep's default interval, far too
// little to make the responder a useful reflector.
const (
	responderRate  = 20 // answers per second, sustained (UDPOptions.AnswerRate)
	responderBurst = 2 * responderRate
	// responderSources bounds the per-source table: beyond it, sources not
	// yet in the table share one bucket until idle entries are swept.
	responderSources = 4096
)

// answerSTUN answers a STUN Binding Request from a client (responder role)
// and reports whether it did; such requests are never forwarded. The
// answer carries the request's source as XOR-MAPPED-ADDRESS and goes to
// that source, or, with RESPONSE-PORT (RFC 5780 section 7.5, for binding
// lifetime discovery), to the same IP at the given port: never to another
// IP, so the responder cannot be made to reflect to a third party. A
// request with attributes it does not understand gets 420 (RFC 8489);
// one with credentials (an ICE check, TURN) is the server's and passes on.
// The answer is queued with the listener batch's: slot is the request's
// slot in it, whose answer buffer holds the answer until the flush.
func (u *udpRoute) answerSTUN(b []byte, from netip.AddrPort, slot int) bool {
	if !keepalive.LooksLikeSTUN(b) {
		return false
	}
	req, err := keepalive.ReadBindingRequest(b, u.def.opts.STUNStrict)
	if err != nil || req.Credentials {
		return false // not a request for a plain responder: app data
	}
	mapped := netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	if !u.answers.allow(mapped.Addr(), mono()) {
		u.st.dropSTUNRate.Inc() // consumed, never forwarded: it was a request to us
		return true
	}
	buf := &u.answerBufs[slot]
	switch {
	case req.NUnknown > 0:
		u.st.stunErrors.Inc()
		u.answersOut.queue(sendReject, from, keepalive.AppendUnknownAttributes(buf[:0], req))
	default:
		to := from
		if req.ResponsePort != 0 {
			to = netip.AddrPortFrom(from.Addr(), req.ResponsePort)
		}
		// No larger than needed: a FINGERPRINT only if the request had one.
		u.answersOut.queue(sendAnswer, to, keepalive.AppendBindingResponse(buf[:0], req.ID, mapped, req.Fingerprint))
	}
	return true
}

// tokenBucket is one source's answer budget.
type tokenBucket struct {
	tokens float64
	last   int64 // mono time of the last refill
}

// take refills the bucket for the time since its last use and takes one
// token if there is one.
func (b *tokenBucket) take(now int64, rate, burst float64) bool {
	if b.last == 0 {
		b.tokens = burst
	} else {
		b.tokens = min(burst, b.tokens+float64(now-b.last)*rate/1e9)
	}
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// sourceLimiter rate-limits answers per source IP address (not per port: a
// spoofer can vary the port at will). The listener goroutines of a route's
// workers share it.
type sourceLimiter struct {
	mu          sync.Mutex
	rate, burst float64
	max         int
	m           map[netip.Addr]*tokenBucket
	overflow    tokenBucket // shared by new sources while the table is full
}

// newAnswerLimiter is the responder's limiter for options o.
func newAnswerLimiter(o UDPOptions) *sourceLimiter {
	rate := o.AnswerRate
	if rate <= 0 {
		rate = responderRate
	}
	return newSourceLimiter(float64(rate), 2*float64(rate), responderSources)
}

func newSourceLimiter(rate, burst float64, max int) *sourceLimiter {
	return &sourceLimiter{rate: rate, burst: burst, max: max, m: make(map[netip.Addr]*tokenBucket)}
}

// allow reports whether src may have an answer at time now.
func (l *sourceLimiter) allow(src netip.Addr, now int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[src]
	if b == nil {
		if len(l.m) >= l.max {
			l.sweep(now)
		}
		if len(l.m) >= l.max {
			return l.overflow.take(now, l.rate, l.burst)
		}
		b = &tokenBucket{}
		l.m[src] = b
	}
	return b.take(now, l.rate, l.burst)
}

// sweep forgets sources whose bucket has refilled completely: they have
// been quiet long enough that a fresh bucket is the same.
func (l *sourceLimiter) sweep(now int64) {
	full := int64(l.burst / l.rate * 1e9)
	for a, b := range l.m {
		if now-b.last >= full {
			delete(l.m, a)
		}
	}
}
