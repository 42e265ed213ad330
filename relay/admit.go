package relay

import (
	"net/netip"
)

// Admission of new UDP flows. A stranger who sprays source ports must not
// be able to take the ephemeral ports or descriptors the app needs, nor
// lock the app out of its own route: refusals come before exhaustion (the
// machine-derived budget), each source can be held to a quota, and when a
// route is full a source below its fair share still gets in by evicting the
// least recently active flow of the source that holds the most (in the
// spirit of conntrack's early drop). A single-source sidecar on loopback
// therefore keeps its whole budget.

// evictScan bounds how many of the heaviest source's oldest flows are
// examined for the least recently active one.
const evictScan = 64

// sourceFlows are one client address's flows on a route, oldest first,
// linked through the flows themselves; guarded by udpRoute.mu.
type sourceFlows struct {
	n          int
	head, tail *flow
}

// link enters f in its source's list; u.mu is held.
func (u *udpRoute) link(f *flow) {
	src := f.key.client.Addr()
	s := u.sources[src]
	if s == nil {
		s = &sourceFlows{}
		u.sources[src] = s
	}
	f.srcPrev, f.srcNext = s.tail, nil
	if s.tail != nil {
		s.tail.srcNext = f
	} else {
		s.head = f
	}
	s.tail = f
	s.n++
}

// unlink takes f out of its source's list; u.mu is held.
func (u *udpRoute) unlink(f *flow) {
	src := f.key.client.Addr()
	s := u.sources[src]
	if s == nil {
		return
	}
	if f.srcPrev != nil {
		f.srcPrev.srcNext = f.srcNext
	} else {
		s.head = f.srcNext
	}
	if f.srcNext != nil {
		f.srcNext.srcPrev = f.srcPrev
	} else {
		s.tail = f.srcPrev
	}
	f.srcPrev, f.srcNext = nil, nil
	if s.n--; s.n == 0 {
		delete(u.sources, src)
	}
}

// admit makes room for a new flow for key in class c. It returns "" when
// the flow may open (its share of the budget taken: give it back with
// u.budget.give if the flow does not open after all), else why not.
func (u *udpRoute) admit(key flowKey, c *flowClass) string {
	src := key.client.Addr()
	if q := c.opts.MaxFlowsPerSource; q > 0 {
		u.mu.Lock()
		held := 0
		if s := u.sources[src]; s != nil {
			held = s.n
		}
		u.mu.Unlock()
		if held >= q {
			return refuseSource
		}
	}
	// Each pass either admits the flow or evicts one: it ends.
	for {
		u.mu.Lock()
		full := c.flows >= c.opts.MaxFlows
		u.mu.Unlock()
		reason := refuseLimit
		if !full {
			if reason = u.budget.take(u.fdsPerFlow, 1); reason == "" {
				return ""
			}
		}
		victim := u.victim(src, c)
		if victim == nil {
			return reason
		}
		if u.remove(victim) {
			u.st.flowsEvicted.Inc()
			u.log.Debug("UDP flow evicted for a source below its fair share", "client", victim.key.client, "for", key.client, "reason", reason)
		}
	}
}

// victim returns the flow to evict so that src, below its fair share of
// the route, may open a flow in class c: the least recently active of the
// (up to evictScan) oldest class-c flows of the source holding the most.
// It returns nil when src holds its fair share already.
func (u *udpRoute) victim(src netip.Addr, c *flowClass) *flow {
	u.mu.Lock()
	defer u.mu.Unlock()
	held, sources := 0, len(u.sources)
	if s := u.sources[src]; s != nil {
		held = s.n
	} else {
		sources++ // src is a new source
	}
	if sources < 2 || held >= len(u.flows)/sources {
		return nil
	}
	var heavy *sourceFlows
	for a, s := range u.sources {
		if a != src && (heavy == nil || s.n > heavy.n) {
			heavy = s
		}
	}
	if heavy == nil || heavy.n <= held+1 {
		return nil
	}
	var best *flow
	var bestAt int64
	seen := 0
	for f := heavy.head; f != nil && seen < evictScan; f = f.srcNext {
		if f.class != c {
			continue
		}
		seen++
		if at := max(f.lastOut.Load(), f.lastIn.Load()); best == nil || at < bestAt {
			best, bestAt = f, at
		}
	}
	return best
}
