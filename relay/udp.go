package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/natkeep/natkeep/keepalive"
	"github.com/natkeep/natkeep/sockopt"
)

// maxDatagram is one byte more than the largest UDP payload (65,527 over
// IPv6), so a read that fills the buffer would reveal truncation.
const maxDatagram = 65536

// listenReadBuffer is the SO_RCVBUF asked for on listening sockets: one
// socket takes every client's datagrams, so it absorbs bursts.
const listenReadBuffer = 4 << 20

// udpRoute relays one UDP listener to its upstream. The path of a datagram:
// serveClients reads it, lookup finds the flow, sendUpstream writes it to
// the flow's connected socket; replies come back through upstreamReaders and
// fromUpstream to the listener.
type udpRoute struct {
	route  Route
	opt    UDPOptions
	log    *slog.Logger
	st     *udpStats
	up     *upstream
	ln     *net.UDPConn
	ctx    context.Context
	cancel context.CancelFunc // ends the route's goroutines (resolver, scheduler)

	resolveInterval time.Duration
	dialControl     func(network, address string, c syscall.RawConn) error // e.g. a bypass mark in transparent mode

	fopt     *flowOpts   // options of the route's flows
	ruleOpts []*flowOpts // transparent routes: options per intercept rule

	mu     sync.Mutex
	flows  map[flowKey]*flow
	closed bool

	sched   scheduler
	readers upstreamReaders
	wg      sync.WaitGroup
	hbBuf   []byte // heartbeat encode buffer, used by the scheduler goroutine only
	refuse  logLimiter
	errLog  logLimiter
	events  flowEvents

	answered    atomic.Bool  // some flow's upstream answered a heartbeat
	notAnswered atomic.Bool  // warned that the upstream never answers heartbeats
	lastResolve atomic.Int64 // mono time of the last on-demand resolution (dead peers)
}

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

// flowKey identifies a flow: the client's address, and in transparent mode
// also the destination the client sent to (zero otherwise).
type flowKey struct {
	client, dst netip.AddrPort
}

// flowOpts are the options a flow runs with, plus what is derived from them once.
type flowOpts struct {
	UDPOptions
	ttlOOB4, ttlOOB6 []byte // per-heartbeat TTL control messages
}

func newFlowOpts(o UDPOptions) (*flowOpts, error) {
	fo := &flowOpts{UDPOptions: o}
	if o.TTL > 0 {
		var err error
		if fo.ttlOOB4, err = sockopt.TTLControl(false, o.TTL); err != nil {
			return nil, fmt.Errorf("heartbeat ttl: %w", err)
		}
		if fo.ttlOOB6, err = sockopt.TTLControl(true, o.TTL); err != nil {
			return nil, fmt.Errorf("heartbeat ttl: %w", err)
		}
	}
	return fo, nil
}

// flow is one client address and its own connected upstream socket.
type flow struct {
	key       flowKey // key.client is the app's address
	opt       *flowOpts
	out       *net.UDPConn // the socket that sends to the client
	conn      atomic.Pointer[net.UDPConn]
	lastOut   atomic.Int64 // mono time of the last application datagram upstream
	lastIn    atomic.Int64 // mono time of the last application datagram downstream (what keeps the flow)
	lastHeard atomic.Int64 // mono time of the last datagram of any kind from the upstream (what proves it alive)
	lastBeat  atomic.Int64 // mono time of the last heartbeat sent; 0 = none yet
	dead      atomic.Bool  // mirrors ka.Dead() so the datagram path can revive without the lock
	created   int64

	mu     sync.Mutex // guards ka, mapped, closed
	ka     keepalive.Flow
	mapped netip.AddrPort // last STUN XOR-MAPPED-ADDRESS
	peer   netip.AddrPort // the address the upstream socket is connected to
	closed bool

	wake int64 // scheduler-owned: when to service this flow next
	idx  int   // scheduler-owned: heap index, -1 when not queued
}

func newUDPRoute(ctx context.Context, r Route, resolveInterval time.Duration, log *slog.Logger, m *Metrics) (*udpRoute, error) {
	st := m.udp(r.Name)
	up := originalDst(log, st.resolveFailures)
	var err error
	if !r.Transparent {
		if up, err = newUpstream(r.Upstream, log, st.resolveFailures); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	u := &udpRoute{
		route: r, opt: r.UDP, log: log, st: st, up: up, ctx: ctx, cancel: cancel, resolveInterval: resolveInterval,
		flows:  make(map[flowKey]*flow),
		hbBuf:  make([]byte, 0, 256),
		refuse: logLimiter{period: 10 * time.Second},
		errLog: logLimiter{period: 10 * time.Second},
		events: newFlowEvents(log),
	}
	if u.fopt, err = newFlowOpts(r.UDP); err != nil {
		return nil, err
	}
	for _, ir := range r.Intercept {
		if ir.Proto != UDP {
			u.ruleOpts = append(u.ruleOpts, nil)
			continue
		}
		fo, err := newFlowOpts(ir.UDP)
		if err != nil {
			return nil, err
		}
		u.ruleOpts = append(u.ruleOpts, fo)
	}
	u.dialControl = bypassControl(r.BypassMark, &u.errLog, log)
	u.up.resolver = markedResolver(u.dialControl)
	u.sched.init()
	if u.readers, err = newUpstreamReaders(u); err != nil {
		return nil, err
	}
	return u, nil
}

// listen binds the route's socket.
func (u *udpRoute) listen(ctx context.Context) error {
	var lc net.ListenConfig
	if u.route.Transparent {
		lc.Control = sockopt.RecvOrigDstControl
	}
	pc, err := lc.ListenPacket(ctx, "udp", u.route.Listen)
	if err != nil {
		return err
	}
	u.ln = pc.(*net.UDPConn)
	if _, err := sockopt.SetRecvBuffer(u.ln, listenReadBuffer); err != nil {
		u.log.Debug("could not enlarge listener receive buffer", "err", err)
	}
	u.st.listenerUp.Set(1)
	return nil
}

// start resolves the upstream and starts the goroutines.
func (u *udpRoute) start() {
	_ = u.up.resolve(u.ctx) // a failure is logged inside; the resolver loop keeps trying
	u.wg.Add(4)
	go func() { defer u.wg.Done(); u.up.run(u.ctx, u.resolveInterval) }()
	go func() { defer u.wg.Done(); u.flushEvents() }()
	if u.route.Transparent {
		go func() { defer u.wg.Done(); u.serveIntercepted() }()
	} else {
		go func() { defer u.wg.Done(); u.serveClients() }()
	}
	go func() { defer u.wg.Done(); u.sched.run(u.ctx, u.service) }()
}

// serveClients reads datagrams from clients and relays them upstream.
func (u *udpRoute) serveClients() {
	buf := make([]byte, maxDatagram)
	for {
		n, from, err := u.ln.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			u.logError("listener read failed", err)
			continue
		}
		b := buf[:n]
		if u.opt.Role == RoleResponder && u.answerSTUN(b, from) {
			continue
		}
		key := flowKey{client: from}
		f := u.lookup(key)
		if f == nil {
			if f = u.newFlow(key, u.fopt, u.ln); f == nil {
				continue
			}
		}
		u.sendUpstream(f, b)
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

// sendUpstream writes one application datagram to the flow's upstream and
// records it as outbound activity (which postpones the next heartbeat).
func (u *udpRoute) sendUpstream(f *flow, b []byte) {
	f.lastOut.Store(mono())
	c := f.conn.Load()
	_, err := c.Write(b)
	if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
		// The error belongs to an earlier datagram (a queued ICMP port
		// unreachable) and this one was not sent: count it, send again.
		u.st.dropUpRefused.Inc()
		_, err = c.Write(b)
	}
	if err != nil && errors.Is(err, net.ErrClosed) {
		// The flow was rebound under us: use the new socket.
		if c2 := f.conn.Load(); c2 != c {
			_, err = c2.Write(b)
		}
	}
	if err != nil {
		u.st.dropUpErr.Inc()
		u.logError("send upstream failed", err, "client", f.key.client)
		return
	}
	u.st.dgUp.Inc()
	u.st.bytesUp.Add(float64(len(b)))
}

// lookup returns the flow for key, or nil: the only flow-table access on
// the per-datagram path.
func (u *udpRoute) lookup(key flowKey) *flow {
	u.mu.Lock()
	f := u.flows[key]
	u.mu.Unlock()
	return f
}

// newFlow creates the flow for key (and its upstream socket) with options
// o, replying to the client through out; nil if refused. Only the
// goroutine reading the listener creates flows, so key is not in the table.
func (u *udpRoute) newFlow(key flowKey, o *flowOpts, out *net.UDPConn) *flow {
	u.mu.Lock()
	n, closed := len(u.flows), u.closed
	u.mu.Unlock()
	if closed {
		return nil
	}
	if n >= u.opt.MaxFlows {
		u.st.flowsRefused.Inc()
		u.st.dropLimit.Inc()
		if ok, more := u.refuse.allow(); ok {
			u.log.Warn("UDP flow refused: route at its flow limit", "client", key.client, "max_flows", u.opt.MaxFlows, "suppressed", more)
		}
		return nil
	}
	c, peer, err := u.dialUpstream(key)
	if err != nil {
		if errors.Is(err, errUnresolved) {
			u.st.dropUnresolved.Inc()
		} else {
			u.st.dropSetup.Inc()
		}
		u.logError("cannot open upstream socket for new flow", err, "client", key.client)
		return nil
	}
	now := mono()
	f := &flow{key: key, opt: o, out: out, created: now, idx: -1, peer: peer}
	f.conn.Store(c)
	f.lastOut.Store(now)
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		c.Close()
		return nil
	}
	u.flows[key] = f
	u.mu.Unlock()
	u.st.flowsCreated.Inc()
	u.st.flowsActive.Inc()
	u.log.Debug("UDP flow started", "client", key.client, "upstream", c.RemoteAddr(), "local", c.LocalAddr())
	if err := u.readers.watch(f, c, false); err != nil {
		u.remove(f)
		u.st.dropSetup.Inc()
		u.logError("cannot watch upstream socket for new flow", err, "client", key.client)
		return nil
	}
	u.sched.add(f, now)
	return f
}

var errUnresolved = errors.New("upstream address not resolved yet")

// dialUpstream opens a connected socket to the current upstream address:
// the kernel then drops datagrams from anyone else, and the flow gets its
// own local port, hence its own NAT mapping.
func (u *udpRoute) dialUpstream(key flowKey) (*net.UDPConn, netip.AddrPort, error) {
	addr := key.dst // transparent mode: the destination the app chose
	if !addr.IsValid() {
		var ok bool
		if addr, ok = u.up.Addr(); !ok {
			return nil, addr, errUnresolved
		}
	}
	if u.dialControl == nil {
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
		return c, addr, err
	}
	d := net.Dialer{Control: u.dialControl}
	c, err := d.DialContext(u.ctx, "udp", addr.String())
	if err != nil {
		return nil, addr, err
	}
	return c.(*net.UDPConn), addr, nil
}

// fromUpstream handles one datagram from the upstream: whatever it is, it
// proves the peer alive; a heartbeat reply is consumed; anything else goes
// to the client untouched, and postpones the flow's expiry unless it is an
// echo of a heartbeat.
func (u *udpRoute) fromUpstream(f *flow, b []byte) {
	now := mono()
	f.lastHeard.Store(now)
	if f.opt.Reply.Enabled() && u.consumeReply(f, b, now) {
		return
	}
	if f.dead.Load() {
		u.heard(f, now)
	}
	if u.isEcho(f, b) {
		u.st.echoes.Inc() // delivered, but it is our heartbeat coming back, not app traffic
	} else {
		f.lastIn.Store(now)
	}
	var err error
	if f.out == u.ln {
		_, err = u.ln.WriteToUDPAddrPort(b, f.key.client)
	} else {
		_, err = f.out.Write(b) // a transparent flow's own socket, connected to the client
	}
	if err != nil {
		u.st.dropClientErr.Inc()
		u.logError("send to client failed", err, "client", f.key.client)
		return
	}
	u.st.dgDown.Inc()
	u.st.bytesDown.Add(float64(len(b)))
}

// isEcho reports whether b repeats the flow's fixed heartbeat payload after
// a heartbeat went out: an echo server answers every heartbeat, and if
// echoes counted as traffic a flow would never expire.
func (u *udpRoute) isEcho(f *flow, b []byte) bool {
	p := &f.opt.Payload
	return p.Kind != keepalive.PayloadSTUN && len(b) == len(p.Bytes) && f.lastBeat.Load() != 0 && bytes.Equal(b, p.Bytes)
}

// heard revives a dead peer that app data came from.
func (u *udpRoute) heard(f *flow, now int64) {
	f.mu.Lock()
	revived := f.opt.Heartbeat.Heard(&f.ka, now)
	f.dead.Store(f.ka.Dead())
	f.mu.Unlock()
	if revived {
		u.st.revivedData.Inc()
		u.events.revived.emit("client", f.key.client, "via", "data")
	}
}

// consumeReply reports whether b is a reply to our heartbeats, recording it.
func (u *udpRoute) consumeReply(f *flow, b []byte, now int64) bool {
	var (
		res      keepalive.ReplyResult
		changed  bool
		old, cur netip.AddrPort
	)
	switch f.opt.Reply.Kind {
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
				u.st.revivedData.Inc()
				u.events.revived.emit("client", f.key.client, "via", "data")
			}
			return true
		}
		res = f.opt.Heartbeat.Reply(&f.ka, now, true, id)
		if resp, err := keepalive.ParseBindingResponse(b); err == nil && resp.HasMapped && res.Counted {
			cur = netip.AddrPortFrom(resp.Mapped.Addr().Unmap(), resp.Mapped.Port())
			old = f.mapped
			changed = old.IsValid() && old != cur
			f.mapped = cur
		}
		f.dead.Store(f.ka.Dead())
		f.mu.Unlock()
	case keepalive.ReplyBytes:
		if !f.opt.Reply.MatchBytes(b) {
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
		u.st.revivedReply.Inc()
		u.events.revived.emit("client", f.key.client, "via", "reply")
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
	u.log.Warn("upstream does not answer "+f.opt.Reply.String()+" heartbeats: liveness and RTT are off, heartbeats still keep the mapping",
		"upstream", u.up.hostport, "client", f.key.client, "dead_after", f.opt.Heartbeat.DeadAfter)
}

// answerSTUN answers a valid STUN Binding Request from a client (responder
// role) and reports whether it did; such requests are never forwarded.
func (u *udpRoute) answerSTUN(b []byte, from netip.AddrPort) bool {
	if !keepalive.LooksLikeSTUN(b) {
		return false
	}
	parse := keepalive.ParseBindingRequest
	if u.opt.STUNStrict {
		parse = keepalive.ParseFingerprintedBindingRequest
	}
	id, err := parse(b)
	if err != nil {
		return false // looks like STUN but is not a request we may answer: app data
	}
	mapped := netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
	var buf [128]byte
	resp := keepalive.AppendBindingSuccess(buf[:0], id, mapped)
	if _, err := u.ln.WriteToUDPAddrPort(resp, from); err != nil {
		u.st.dropClientErr.Inc()
		u.logError("STUN answer failed", err, "client", from)
		return true
	}
	u.st.stunOK.Inc()
	return true
}

// service runs the flow's timers: expiry and heartbeats. It returns when to
// service the flow next, or 0 when the flow is gone.
func (u *udpRoute) service(f *flow, now int64) int64 {
	last := max(f.lastOut.Load(), f.lastIn.Load())
	expiry := last + int64(f.opt.FlowIdleTimeout)
	if now >= expiry {
		u.expire(f)
		return 0
	}
	hb := &f.opt.Heartbeat
	if !hb.Enabled() {
		return expiry
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return 0
	}
	traffic := keepalive.Traffic{Outbound: f.lastOut.Load(), Heard: f.lastHeard.Load(), RouteAnswered: u.answered.Load()}
	d := hb.Tick(&f.ka, now, traffic, rand.Float64())
	var id keepalive.TxID
	if d.Send && f.opt.Payload.Kind == keepalive.PayloadSTUN {
		id = keepalive.NewTxID()
		f.ka.Sent(id)
	}
	dead := f.ka.Dead()
	f.dead.Store(dead)
	f.mu.Unlock()
	if d.Send {
		u.sendHeartbeat(f, id, d.Full)
	}
	u.liveness(f, d, dead)
	return min(expiry, d.Next)
}

// liveness acts on what Tick decided about the peer.
func (u *udpRoute) liveness(f *flow, d keepalive.Decision, dead bool) {
	hb := &f.opt.Heartbeat
	if d.Revived {
		u.st.revivedData.Inc()
		u.events.revived.emit("client", f.key.client, "via", "data")
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
		f.mapped = netip.AddrPort{} // a new server sees a new mapping, not a rebinding
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
	u.events.reconnected.emit("client", f.key.client, "local", c.LocalAddr(), "old_upstream", old, "new_upstream", cur)
}

// sendHeartbeat sends one heartbeat on the flow's upstream socket, with the
// configured TTL set on this datagram only unless full asks for the normal
// TTL (a heal heartbeat).
func (u *udpRoute) sendHeartbeat(f *flow, id keepalive.TxID, full bool) {
	c := f.conn.Load()
	b := f.opt.Payload.Bytes
	if f.opt.Payload.Kind == keepalive.PayloadSTUN {
		u.hbBuf = keepalive.AppendBindingRequest(u.hbBuf[:0], id)
		b = u.hbBuf
	}
	var oob []byte
	if !full {
		oob = f.opt.ttlOOB(c)
	}
	send := func() error {
		if oob != nil {
			_, _, err := c.WriteMsgUDP(b, oob, nil)
			return err
		}
		_, err := c.Write(b)
		return err
	}
	f.lastBeat.Store(mono())
	err := send()
	if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
		// A queued ICMP port unreachable failed this send, not this
		// heartbeat: count it, send again.
		u.st.dropUpRefused.Inc()
		err = send()
	}
	if err != nil {
		if errors.Is(err, net.ErrClosed) {
			return
		}
		u.st.dropUpErr.Inc()
		u.logError("heartbeat send failed", err, "client", f.key.client)
		return
	}
	u.st.heartbeats.Inc()
	if full && f.opt.ttlOOB4 != nil {
		u.st.heals.Inc()
	}
}

// ttlOOB returns the TTL control message for c's address family, or nil.
func (o *flowOpts) ttlOOB(c *net.UDPConn) []byte {
	if o.ttlOOB4 == nil {
		return nil
	}
	if ra, ok := c.RemoteAddr().(*net.UDPAddr); ok && ra.IP.To4() == nil {
		return o.ttlOOB6
	}
	return o.ttlOOB4
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
	f.mapped = netip.AddrPort{} // a new mapping is expected, not a rebinding
	f.mu.Unlock()
	u.readers.unwatch(old)
	old.Close()
	if err := u.readers.watch(f, c, false); err != nil {
		u.logError("cannot watch rebound upstream socket", err, "client", f.key.client)
	}
	u.st.rebinds.Inc()
	u.events.rebound.emit("client", f.key.client, "old_local", old.LocalAddr(), "new_local", c.LocalAddr(), "upstream", peer)
}

// expire forgets a flow that has been idle for the idle timeout.
func (u *udpRoute) expire(f *flow) {
	if u.remove(f) {
		u.st.flowsExpired.Inc()
		u.log.Debug("UDP flow expired", "client", f.key.client, "age", time.Duration(mono()-f.created).Round(time.Millisecond))
	}
}

// remove takes the flow out of the table and closes its socket.
func (u *udpRoute) remove(f *flow) bool {
	u.mu.Lock()
	if u.flows[f.key] != f {
		u.mu.Unlock()
		return false
	}
	delete(u.flows, f.key)
	u.mu.Unlock()
	f.mu.Lock()
	f.closed = true
	c := f.conn.Load()
	f.mu.Unlock()
	u.readers.unwatch(c)
	c.Close()
	if f.out != u.ln {
		u.readers.unwatch(f.out)
		f.out.Close()
	}
	u.st.flowsActive.Dec()
	return true
}

// close stops the listener and every flow and waits for the goroutines.
func (u *udpRoute) close() {
	u.mu.Lock()
	u.closed = true
	flows := make([]*flow, 0, len(u.flows))
	for _, f := range u.flows {
		flows = append(flows, f)
	}
	u.mu.Unlock()
	if u.ln != nil {
		u.ln.Close()
		u.st.listenerUp.Set(0)
	}
	for _, f := range flows {
		u.remove(f)
	}
	u.sched.stop()
	u.cancel()
	u.wg.Wait()
	u.readers.stop()
}

// flowCount returns the number of open flows.
func (u *udpRoute) flowCount() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.flows)
}

func (u *udpRoute) logError(msg string, err error, args ...any) {
	if ok, more := u.errLog.allow(); ok {
		u.log.Warn(msg, append(args, "err", err, "suppressed", more)...)
	}
}
