package relay

import (
	"context"
	"errors"
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
// serveClients reads it (in a batch), lookup finds the flow, sendUpstream
// writes it to the flow's connected socket; replies come back through
// flowReaders and fromUpstream, and leave the listener in batches.
type udpRoute struct {
	route  Route // as configured: name, listen address, upstream, transparency
	log    *slog.Logger
	st     *udpStats
	up     *upstream
	ln     *net.UDPConn
	ctx    context.Context
	cancel context.CancelFunc // ends the route's goroutines (resolver, scheduler)

	resolveInterval time.Duration
	dialControl     func(network, address string, c syscall.RawConn) error // e.g. a bypass mark in transparent mode

	// primary is the route's first worker when this is another one
	// (Config.Workers > 1): the others share its upstream (one resolver),
	// its path learner and its responder rate limiter; nil for the first.
	primary *udpRoute
	reuse   bool // listen with SO_REUSEPORT: the route has several workers

	def   *flowClass   // the route's own options, and the flows that run with them
	rules []*flowClass // transparent routes: one per UDP intercept rule, in order

	budget     *budget // the relay's, shared by every route
	fdsPerFlow int     // descriptors a flow holds: 1, or 2 on a transparent route (its client-side socket)

	mu      sync.Mutex
	flows   map[flowKey]*flow
	sources map[netip.Addr]*sourceFlows
	closed  bool

	sched   scheduler
	readers flowReaders
	wg      sync.WaitGroup
	hbBuf   []byte // heartbeat encode buffer, used by the scheduler goroutine only
	refuse  logLimiter
	errLog  logLimiter
	events  flowEvents

	lnBatch    *recvBatch  // the listener's receive slots; listener goroutine only
	answersOut *sendBatch  // STUN answers to clients; listener goroutine only
	answerBufs [][128]byte // the answers to one listener batch, by slot
	replies    *sendBatch  // upstream datagrams to clients; flow readers only

	answers     *sourceLimiter // responder: answers per source address; shared by the route's workers
	answered    atomic.Bool    // some flow's upstream answered a heartbeat
	notAnswered atomic.Bool    // warned that the upstream never answers heartbeats
	lastResolve atomic.Int64   // mono time of the last on-demand resolution (dead peers)
}

// flowKey identifies a flow: the client's address, and in transparent mode
// also the destination the client sent to (zero otherwise).
type flowKey struct {
	client, dst netip.AddrPort
}

// flowClass is one set of flow options of a route and the flows that run
// with them: the route's own options, or on a transparent route one
// intercept rule's, whose flows count against that rule's max_flows.
type flowClass struct {
	rule  *InterceptRule // nil: the route's own options
	opts  *flowOpts
	flows int // open flows of the class; guarded by udpRoute.mu
}

// flow is one client address and its own connected upstream socket.
type flow struct {
	key       flowKey // key.client is the app's address
	class     *flowClass
	opt       *flowOpts              // class.opts, kept at hand for the datagram path
	out       *net.UDPConn           // the socket that sends to the client
	conn      atomic.Pointer[upSock] // the upstream socket; a rebind swaps it
	lastOut   atomic.Int64           // mono time of the last application datagram upstream
	lastIn    atomic.Int64           // mono time of the last application datagram downstream (what keeps the flow)
	lastHeard atomic.Int64           // mono time of the last datagram of any kind from the upstream (what proves it alive)
	lastBeat  atomic.Int64           // mono time of the last heartbeat sent; 0 = none yet
	created   int64

	mu     sync.Mutex // guards ka, mapped, closed
	ka     keepalive.Flow
	mapped *netip.AddrPort // last STUN XOR-MAPPED-ADDRESS (a pointer: most flows never learn one)
	peer   netip.AddrPort  // the address the upstream socket is connected to

	wake int64 // scheduler-owned: when to service this flow next

	srcPrev, srcNext *flow // the flows of the same source, oldest first; guarded by udpRoute.mu

	// The small fields share the last word; the record stays within the
	// 384-byte allocation class (an idle flow's largest allocation).
	dead   atomic.Bool // mirrors ka.Dead() so the datagram path can revive without the lock
	idx    int32       // scheduler-owned: heap index, -1 when not queued
	closed bool
}

// newUDPRoute builds a route, or with primary another worker of primary's route.
func newUDPRoute(ctx context.Context, r Route, resolveInterval time.Duration, log *slog.Logger, m *Metrics, b *budget, primary *udpRoute) (*udpRoute, error) {
	st := m.udp(r.Name)
	up := originalDst(log, st.resolveFailures)
	var err error
	switch {
	case primary != nil:
		up = primary.up
	case !r.Transparent:
		if up, err = newUpstream(r.Upstream, log, st.resolveFailures); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	u := &udpRoute{
		route: r, log: log, st: st, budget: b, fdsPerFlow: 1, sources: make(map[netip.Addr]*sourceFlows), up: up, ctx: ctx, cancel: cancel, resolveInterval: resolveInterval,
		flows:   make(map[flowKey]*flow),
		hbBuf:   make([]byte, 0, 256),
		refuse:  logLimiter{period: 10 * time.Second},
		errLog:  logLimiter{period: 10 * time.Second},
		events:  newFlowEvents(log),
		answers: newAnswerLimiter(r.UDP),
		primary: primary,
	}
	if primary != nil {
		u.answers = primary.answers // a source's budget is the route's, whichever worker its port hashes to
		primary.reuse, u.reuse = true, true
	}
	if u.def, err = newFlowClass(nil, r.UDP); err != nil {
		return nil, err
	}
	for i := range r.Intercept {
		if r.Intercept[i].Proto != UDP {
			continue
		}
		c, err := newFlowClass(&r.Intercept[i], r.Intercept[i].UDP)
		if err != nil {
			return nil, err
		}
		u.rules = append(u.rules, c)
	}
	if r.Transparent {
		u.fdsPerFlow = 2
	}
	u.dialControl = bypassControl(r.BypassMark, &u.errLog, log)
	if primary == nil {
		u.up.resolver = markedResolver(u.dialControl)
	}
	u.sched.init()
	if u.readers, err = newFlowReaders(log, u.upstreamError, u.flushReplies); err != nil {
		return nil, err
	}
	u.st.interval.Set(u.def.opts.Heartbeat.Interval.Seconds())
	switch {
	case primary != nil && primary.def.opts.path != nil:
		u.def.opts.path = primary.def.opts.path
		u.def.opts.path.workers = append(u.def.opts.path.workers, u)
	case primary == nil && r.UDP.Path.AutoInterval && r.UDP.Role == RoleClient && !r.Transparent:
		u.def.opts.path = newPathLearner(u, r.UDP.Path, m.path(r.Name, u.st.interval))
	}
	return u, nil
}

// listen binds the route's socket; another worker binds the address its
// primary got (which matters when the configured port is 0).
func (u *udpRoute) listen(ctx context.Context) error {
	var lc net.ListenConfig
	switch {
	case u.route.Transparent:
		lc.Control = sockopt.RecvOrigDstControl
	case u.reuse:
		lc.Control = sockopt.ReusePortControl
	}
	addr := u.route.Listen
	if u.primary != nil {
		addr = u.primary.ln.LocalAddr().String()
	}
	pc, err := lc.ListenPacket(ctx, "udp", addr)
	if err != nil {
		return err
	}
	u.ln = pc.(*net.UDPConn)
	if _, err := sockopt.SetRecvBuffer(u.ln, listenReadBuffer); err != nil {
		u.log.Debug("could not enlarge listener receive buffer", "err", err)
	}
	// Every flow's replies leave through the listener too: a burst of them
	// must not meet ENOBUFS.
	if _, err := sockopt.SetSendBuffer(u.ln, listenReadBuffer); err != nil {
		u.log.Debug("could not enlarge listener send buffer", "err", err)
	}
	if u.lnBatch, err = newRecvBatch(listenBatch, u.lnOOB()); err != nil {
		u.ln.Close()
		return err
	}
	u.answersOut = newSendBatch(u.ln, listenBatch, u.log, u.sent)
	u.answerBufs = make([][128]byte, u.lnBatch.slots())
	u.replies = newSendBatch(u.ln, replyBatch, u.log, u.sent)
	u.st.listenerUp.Set(1)
	return nil
}

// start resolves the upstream and starts the goroutines.
func (u *udpRoute) start() {
	if u.primary == nil {
		// The route's first worker resolves and learns for all of them.
		_ = u.up.resolve(u.ctx) // a failure is logged inside; the resolver loop keeps trying
		u.wg.Add(1)
		go func() { defer u.wg.Done(); u.up.run(u.ctx, u.resolveInterval) }()
		if l := u.def.opts.path; l != nil {
			u.wg.Add(1)
			go func() { defer u.wg.Done(); l.run(u.ctx) }()
		}
	}
	logGSO(u.log)
	u.wg.Add(3)
	go func() { defer u.wg.Done(); u.flushEvents() }()
	if u.route.Transparent {
		go func() { defer u.wg.Done(); u.serveIntercepted() }()
	} else {
		go func() { defer u.wg.Done(); u.serveClients() }()
	}
	go func() { defer u.wg.Done(); u.sched.run(u.ctx, u.service) }()
}

// serveClients reads datagrams from clients, a batch per system call, and
// relays them upstream in the order they came; the responder's answers
// to the batch leave together after it.
func (u *udpRoute) serveClients() {
	u.readListener(func(slot int, b []byte, from netip.AddrPort) {
		if u.def.opts.Role == RoleResponder && u.answerSTUN(b, from, slot) {
			return
		}
		key := flowKey{client: from}
		f := u.lookup(key)
		if f == nil {
			if f = u.newFlow(key, u.def, u.ln); f == nil {
				return
			}
		}
		u.sendUpstream(f, b)
	})
}

// readListener reads the listener a batch per system call until it is
// closed and hands each whole datagram, in order, to handle with its slot
// (valid until handle returns); a cut datagram is counted and dropped.
// The responder's answers to a batch leave together after it.
func (u *udpRoute) readListener(handle func(slot int, b []byte, from netip.AddrPort)) {
	rb := u.lnBatch
	for {
		n, err := rb.read(u.ln)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			u.logError("listener read failed", err)
			continue
		}
		for i := range n {
			b, ok := rb.datagram(i)
			from := rb.from(i)
			if !ok {
				u.st.dropClientErr.Inc()
				u.logError("listener read cut a datagram", errTruncated, "client", from)
				continue
			}
			handle(i, b, from)
		}
		u.answersOut.flush()
	}
}

var errTruncated = errors.New("datagram larger than its receive slot")

// sendUpstream writes one application datagram to the flow's upstream and
// records it as outbound activity (which postpones the next heartbeat).
func (u *udpRoute) sendUpstream(f *flow, b []byte) {
	f.lastOut.Store(mono())
	if err := u.writeUpstream(f, b, false); err != nil {
		u.st.dropUpErr.Inc()
		u.logError("send upstream failed", err, "client", f.key.client)
		return
	}
	u.st.dgUp.Inc()
	u.st.bytesUp.Add(float64(len(b)))
}

// writeUpstream is the one writer to a flow's upstream: app datagrams and
// heartbeats (limited: with the heartbeat TTL) both go through it. A queued
// ICMP port unreachable fails a write with ECONNREFUSED although this
// datagram was never sent: that is counted and the write tried once more.
// A socket closed under us by a rebind is retried on the new one.
func (u *udpRoute) writeUpstream(f *flow, b []byte, limited bool) error {
	c := f.conn.Load()
	err := f.opt.write(c, b, limited)
	if err != nil && errors.Is(err, syscall.ECONNREFUSED) {
		u.st.dropUpRefused.Inc()
		err = f.opt.write(c, b, limited)
	}
	if err != nil && errors.Is(err, net.ErrClosed) {
		if c2 := f.conn.Load(); c2 != c {
			err = f.opt.write(c2, b, limited)
		}
	}
	return err
}

// lookup returns the flow for key, or nil: the only flow-table access on
// the per-datagram path.
func (u *udpRoute) lookup(key flowKey) *flow {
	u.mu.Lock()
	f := u.flows[key]
	u.mu.Unlock()
	return f
}

// newFlow creates the flow for key (and its upstream socket) in class c,
// replying to the client through out; nil if refused. Only the goroutine
// reading the listener creates flows, so key is not in the table.
func (u *udpRoute) newFlow(key flowKey, c *flowClass, out *net.UDPConn) *flow {
	u.mu.Lock()
	closed := u.closed
	u.mu.Unlock()
	if closed {
		return nil
	}
	if reason := u.admit(key, c); reason != "" {
		u.st.refused[reason].Inc()
		u.st.dropLimit.Inc()
		if ok, more := u.refuse.allow(); ok {
			u.log.Warn("UDP flow refused", "reason", reason, "client", key.client, "max_flows", c.opts.MaxFlows,
				"max_flows_per_source", c.opts.MaxFlowsPerSource, "intercept_rule", c.ruleName(), "suppressed", more)
		}
		return nil
	}
	up, peer, err := u.dialUpstream(key)
	if err != nil {
		u.budget.give(u.fdsPerFlow, 1)
		if errors.Is(err, errUnresolved) {
			u.st.dropUnresolved.Inc()
		} else {
			u.st.dropSetup.Inc()
		}
		u.logError("cannot open upstream socket for new flow", err, "client", key.client)
		return nil
	}
	now := mono()
	f := &flow{key: key, class: c, opt: c.opts, out: out, created: now, idx: -1, peer: peer}
	f.conn.Store(up)
	f.lastOut.Store(now)
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		up.Close()
		u.budget.give(u.fdsPerFlow, 1)
		return nil
	}
	u.flows[key] = f
	c.flows++
	u.link(f)
	u.mu.Unlock()
	u.st.flowsCreated.Inc()
	u.st.flowsActive.Inc()
	if u.log.Enabled(u.ctx, slog.LevelDebug) { // localAddr is a system call
		u.log.Debug("UDP flow started", "client", key.client, "upstream", peer, "local", up.localAddr())
	}
	if err := u.readers.watchUp(f, up, u.fromUpstream); err != nil {
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
func (u *udpRoute) dialUpstream(key flowKey) (*upSock, netip.AddrPort, error) {
	addr := key.dst // transparent mode: the destination the app chose
	if !addr.IsValid() {
		var ok bool
		if addr, ok = u.up.Addr(); !ok {
			return nil, addr, errUnresolved
		}
	}
	s, err := dialUpSock(addr, u.dialControl)
	return s, addr, err
}

// upstream returns the address f's upstream socket is connected to.
func (f *flow) upstream() netip.AddrPort {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.peer
}

// fromUpstream handles one datagram from the upstream: whatever it is, it
// proves the peer alive; a heartbeat reply is consumed; anything else goes
// to the client untouched, and postpones the flow's expiry unless it is an
// echo of a heartbeat.
func (u *udpRoute) fromUpstream(f *flow, b []byte) {
	now := mono()
	f.lastHeard.Store(now)
	if f.opt.Heartbeat.Pong.Enabled() && u.consumeReply(f, b, now) {
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
	if f.out == u.ln {
		u.replies.queue(sendReply, f.key.client, b) // sent when the readers flush
		return
	}
	_, err := f.out.Write(b) // a transparent flow's own socket, connected to the client
	u.sent(sendReply, f.key.client, len(b), err)
}

// flushReplies sends the replies fromUpstream queued for the listener;
// the flow readers call it when their batch is done.
func (u *udpRoute) flushReplies() {
	if u.replies != nil {
		u.replies.flush()
	}
}

// service runs the flow's timers: expiry and heartbeats. It returns when to
// service the flow next, or 0 when the flow is gone.
func (u *udpRoute) service(f *flow, now int64) int64 {
	last := max(f.lastOut.Load(), f.lastIn.Load())
	timeout := f.opt.FlowIdleTimeout
	if ut := f.opt.UnansweredTimeout; ut > 0 && ut < timeout && f.lastHeard.Load() == 0 {
		timeout = ut // the upstream never sent a thing: die young, like conntrack's unreplied entries
	}
	expiry := last + int64(timeout)
	if now >= expiry {
		u.expire(f)
		return 0
	}
	sched := f.opt.schedule()
	hb := &sched
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
	f.class.flows--
	u.unlink(f)
	u.mu.Unlock()
	defer u.budget.give(u.fdsPerFlow, 1)
	f.mu.Lock()
	f.closed = true
	c := f.conn.Load()
	f.mu.Unlock()
	u.readers.unwatchUp(c)
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
	if u.lnBatch != nil {
		u.lnBatch.free() // after wg.Wait: the listener goroutine has ended
	}
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

// newFlowClass derives the options of a class once.
func newFlowClass(rule *InterceptRule, o UDPOptions) (*flowClass, error) {
	fo, err := newFlowOpts(o)
	if err != nil {
		return nil, err
	}
	return &flowClass{rule: rule, opts: fo}, nil
}

// ruleName describes the class's intercept rule for logs ("" for the route's own).
func (c *flowClass) ruleName() string {
	if c.rule == nil {
		return ""
	}
	return c.rule.String()
}
