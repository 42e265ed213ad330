package relay

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"time"

	"github.com/natkeep/natkeep/keepalive"
	"github.com/natkeep/natkeep/sockopt"
)

// Liveness: what the relay does with the schedule's decisions and with
// what comes back from the upstream: replies and echoes, dead and revived
// peers, an upstream that never answers, rebinding and following a moved
// upstream name, and the rate-limited per-flow log lines.

// flowEvents are the rate-limited per-flow log lines of a route.
type flowEvents struct {
	dead, revived, mapped, rebound, reconnected *eventLog
}

func newFlowEvents(log *slog.Logger) flowEvents {
	return flowEvents{
		dead:        newEventLog(log, slog.LevelWarn, "UDP peer dead: nothing heard from the upstream"),
		revived:     newEventLog(log, slog.LevelInfo, "UDP peer alive again"),
		mapped:      newEventLog(log, slog.LevelWarn, "NAT mapping changed (rebinding)"),
		rebound:     newEventLog(log, slog.LevelInfo, "UDP flow rebound to a new local port"),
		reconnected: newEventLog(log, slog.LevelInfo, "UDP flow follows the upstream's new address from the same local port"),
	}
}

// flush writes the summaries of suppressed lines.
func (e flowEvents) flush() {
	for _, l := range []*eventLog{e.dead, e.revived, e.mapped, e.rebound, e.reconnected} {
		l.flush()
	}
}

// flushEvents writes the summaries of suppressed per-flow log lines until
// the route closes.
func (u *udpRoute) flushEvents() {
	t := time.NewTicker(eventPeriod * 5)
	defer t.Stop()
	for {
		select {
		case <-u.ctx.Done():
			u.events.flush()
			return
		case <-t.C:
			u.events.flush()
		}
	}
}

// isEcho reports whether b repeats the flow's fixed heartbeat payload after
// a heartbeat went out: an echo server answers every heartbeat, and if
// echoes counted as traffic a flow would never expire.
func (u *udpRoute) isEcho(f *flow, b []byte) bool {
	p := &f.opt.Payload
	return p.Kind != keepalive.PayloadSTUN && len(b) == len(p.Bytes) && f.lastBeat.Load() != 0 && bytes.Equal(b, p.Bytes)
}

// revived counts and logs a dead peer heard from again: by a heartbeat
// reply, or by any other datagram.
func (u *udpRoute) revived(f *flow, byReply bool) {
	via := "data"
	if byReply {
		u.st.revivedReply.Inc()
		via = "reply"
	} else {
		u.st.revivedData.Inc()
	}
	u.events.revived.emit("client", f.key.client, "via", via)
}

// heard revives a dead peer that app data came from.
func (u *udpRoute) heard(f *flow, now int64) {
	f.mu.Lock()
	revived := f.opt.Heartbeat.Heard(&f.ka, now)
	f.dead.Store(f.ka.Dead())
	f.mu.Unlock()
	if revived {
		u.revived(f, false)
	}
}

// consumeReply reports whether b is a reply to our heartbeats, recording it.
func (u *udpRoute) consumeReply(f *flow, b []byte, now int64) bool {
	var (
		res      keepalive.ReplyResult
		changed  bool
		old, cur netip.AddrPort
	)
	switch f.opt.Heartbeat.Pong.Kind {
	case keepalive.ReplySTUN:
		typ, id, ok := keepalive.PeekTxID(b)
		if !ok {
			return false
		}
		f.mu.Lock()
		if !f.ka.Ours(id) {
			f.mu.Unlock()
			return false // app data that happens to look like STUN
		}
		if keepalive.IsRequest(typ) {
			// Our own Binding Request, echoed: consumed (the app never
			// sent it), alive, but no answer and no RTT.
			revived := f.opt.Heartbeat.Heard(&f.ka, now)
			f.dead.Store(f.ka.Dead())
			f.mu.Unlock()
			u.st.echoes.Inc()
			if revived {
				u.revived(f, false)
			}
			return true
		}
		res = f.opt.Heartbeat.Reply(&f.ka, now, true, id)
		if resp, err := keepalive.ParseBindingResponse(b); err == nil && resp.HasMapped && res.Counted {
			cur = netip.AddrPortFrom(resp.Mapped.Addr().Unmap(), resp.Mapped.Port())
			if f.mapped != nil {
				old = *f.mapped
			}
			changed = old.IsValid() && old != cur
			if f.mapped == nil || changed {
				m := cur // a copy, so only a new mapping allocates
				f.mapped = &m
			}
		}
		f.dead.Store(f.ka.Dead())
		f.mu.Unlock()
	case keepalive.ReplyBytes:
		if !f.opt.Heartbeat.Pong.MatchBytes(b) {
			return false
		}
		f.mu.Lock()
		res = f.opt.Heartbeat.Reply(&f.ka, now, false, keepalive.TxID{})
		f.dead.Store(f.ka.Dead())
		f.mu.Unlock()
	default:
		return false
	}
	u.markAnswered()
	if res.Revived {
		u.revived(f, true)
	}
	if !res.Counted {
		u.st.dropStray.Inc() // a late or duplicate reply: ours, consumed, measures nothing
		return true
	}
	u.st.replies.Inc()
	u.st.rtt.Observe(res.RTT.Seconds())
	if changed {
		u.st.mapChanges.Inc()
		u.events.mapped.emit("client", f.key.client, "old_public", old, "new_public", cur)
		if f.opt.path != nil {
			f.opt.path.evidence() // the mapping was lost: the interval in force may be too long
		}
	}
	return true
}

// markAnswered records that the route's upstream answers heartbeats, so
// silence on any of its flows can mean death.
func (u *udpRoute) markAnswered() {
	if u.answered.Load() || !u.answered.CompareAndSwap(false, true) {
		return
	}
	u.st.notAnswering.Set(0)
	if u.notAnswered.Load() {
		u.log.Info("upstream answers heartbeats now: liveness and RTT are on", "upstream", u.up.hostport)
	}
}

// noAnswer handles a flow whose DeadAfter heartbeats went unanswered on a
// route whose upstream never answered one: it does not speak the protocol.
func (u *udpRoute) noAnswer(f *flow) {
	u.st.unanswered.Inc()
	if u.answered.Load() || !u.notAnswered.CompareAndSwap(false, true) {
		return
	}
	u.st.notAnswering.Set(1)
	u.log.Warn("upstream does not answer "+f.opt.Heartbeat.Pong.String()+" heartbeats: liveness and RTT are off, heartbeats still keep the mapping",
		"upstream", u.up.hostport, "client", f.key.client, "dead_after", f.opt.Heartbeat.DeadAfter)
}

// liveness acts on what Tick decided about the peer.
func (u *udpRoute) liveness(f *flow, d keepalive.Decision, dead bool) {
	hb := &f.opt.Heartbeat
	if d.Revived {
		u.revived(f, false)
	}
	if d.Unanswered {
		u.noAnswer(f)
	}
	if d.Died {
		u.st.dead.Inc()
		action := "keeping the flow and its local port"
		if hb.Rebind {
			action = "rebinding to a new local port"
		}
		u.events.dead.emit("client", f.key.client, "misses", hb.DeadAfter, "upstream", u.up.hostport, "action", action)
	}
	switch {
	case d.Rebind:
		u.rebindAsync(f)
	case dead && !hb.Rebind && !f.key.dst.IsValid():
		// on_dead=keep: find out whether the name moved, and follow it
		// from the same local port if it did.
		if d.Died && u.mayResolve() {
			u.wg.Add(1)
			go func() { defer u.wg.Done(); _ = u.up.resolve(u.ctx); u.follow(f) }()
		} else {
			u.follow(f)
		}
	}
}

// mayResolve reports whether an on-demand resolution of the upstream name
// may run now: at most one per resolve interval per route, however many
// flows die at once.
func (u *udpRoute) mayResolve() bool {
	if u.up.fixed {
		return false
	}
	now, last := mono(), u.lastResolve.Load()
	if last != 0 && now-last < int64(u.resolveInterval) {
		return false
	}
	return u.lastResolve.CompareAndSwap(last, now)
}

// follow points a dead peer's flow at the upstream's current address if the
// name now resolves elsewhere, keeping the local port (on_dead=keep). A
// change of address family cannot keep the socket, so it rebinds.
func (u *udpRoute) follow(f *flow) {
	cur, ok := u.up.Addr()
	if !ok {
		return
	}
	f.mu.Lock()
	old := f.peer
	if f.closed || old == cur {
		f.mu.Unlock()
		return
	}
	c := f.conn.Load()
	if old.Addr().Is4() != cur.Addr().Is4() {
		f.mu.Unlock()
		u.rebindAsync(f)
		return
	}
	err := sockopt.Reconnect(c, cur)
	if err == nil {
		f.peer = cur
		f.mapped = nil // a new server sees a new mapping, not a rebinding
	}
	f.mu.Unlock()
	if err != nil {
		u.logError("cannot reconnect upstream socket", err, "client", f.key.client)
		if errors.Is(err, sockopt.ErrNotSupported) {
			u.rebindAsync(f)
		}
		return
	}
	u.st.reconnects.Inc()
	u.events.reconnected.emit("client", f.key.client, "local", c.localAddr(), "old_upstream", old, "new_upstream", cur)
}

// rebindAsync rebinds f off the scheduler goroutine (a resolution can take
// seconds); it is only called from goroutines the route's WaitGroup counts.
func (u *udpRoute) rebindAsync(f *flow) {
	u.wg.Add(1)
	go func() { defer u.wg.Done(); u.rebind(f) }()
}

// rebind re-resolves the upstream and gives the flow a new upstream socket
// (a new local port, so every NAT on the path creates a fresh mapping); the
// client side of the flow is untouched.
func (u *udpRoute) rebind(f *flow) {
	if !f.key.dst.IsValid() && u.mayResolve() {
		_ = u.up.resolve(u.ctx) // failures are logged and counted inside
	}
	c, peer, err := u.dialUpstream(f.key)
	if err != nil {
		u.logError("rebind failed", err, "client", f.key.client)
		return
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		c.Close()
		return
	}
	old := f.conn.Swap(c)
	f.peer = peer
	f.mapped = nil // a new mapping is expected, not a rebinding
	f.mu.Unlock()
	u.readers.unwatchUp(old)
	oldLocal := old.localAddr()
	old.Close()
	if err := u.readers.watchUp(f, c, u.fromUpstream); err != nil {
		u.logError("cannot watch rebound upstream socket", err, "client", f.key.client)
	}
	u.st.rebinds.Inc()
	u.events.rebound.emit("client", f.key.client, "old_local", oldLocal, "new_local", c.localAddr(), "upstream", peer)
}
