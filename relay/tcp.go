package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/natkeep/natkeep/sockopt"
)

// tcpRoute proxies one TCP listener to its upstream.
type tcpRoute struct {
	route           Route        // as configured: name, listen address, upstream, transparency
	def             *connClass   // the route's own options and connections
	rules           []*connClass // transparent routes: one per TCP intercept rule, in order
	log             *slog.Logger
	st              *tcpStats
	up              *upstream
	ln              *net.TCPListener
	ctx             context.Context
	cancel          context.CancelFunc
	resolveInterval time.Duration
	dialControl     func(network, address string, c syscall.RawConn) error // bypass mark in transparent mode
	budget          *budget                                                // the relay's, shared by every route
	park            *tcpPoller                                             // idle connections wait here without goroutines (Linux)
	lnKeepalive     sockopt.Keepalive                                      // keepalive set on the listener, which accepted sockets inherit; zero: none

	mu                   sync.Mutex
	conns                map[*proxyConn]struct{}
	accepting            bool
	closedUp, closedDown uint64        // bytes of ended connections, each way
	idle                 chan struct{} // closed when conns empties while draining

	wg      sync.WaitGroup // accept loop, resolver, serve goroutines and every connection
	warnLog logLimiter

	work        chan *proxyConn // accepted connections for a waiting serve goroutine
	idleServers atomic.Int32    // serve goroutines waiting on work
}

// A serve goroutine (dial, options, the first bytes) outlives its
// connection and waits for the next one: its stack has grown to what a
// dial needs, and a fresh goroutine per connection spent a fifth of
// natkeep's own CPU growing and copying it (perf, 16 concurrent
// connect-request-close clients). maxIdleServers bound the goroutines
// kept waiting, serveIdle how long each waits before it ends.
const (
	maxIdleServers = 8
	serveIdle      = 5 * time.Second
)

// dispatch hands pc to a waiting serve goroutine, or starts one.
func (t *tcpRoute) dispatch(pc *proxyConn) {
	select {
	case t.work <- pc:
	default:
		t.wg.Add(1)
		go t.serveLoop(pc)
	}
}

// serveLoop serves pc, then whatever dispatch hands it until it has
// waited serveIdle for nothing, the route closes, or enough others wait.
func (t *tcpRoute) serveLoop(pc *proxyConn) {
	defer t.wg.Done()
	var timer *time.Timer
	for {
		t.serve(pc)
		if t.idleServers.Add(1) > maxIdleServers {
			t.idleServers.Add(-1)
			return
		}
		if timer == nil {
			timer = time.NewTimer(serveIdle)
			defer timer.Stop()
		} else {
			timer.Reset(serveIdle)
		}
		select {
		case pc = <-t.work:
			t.idleServers.Add(-1)
		case <-timer.C:
			t.idleServers.Add(-1)
			return
		case <-t.ctx.Done():
			t.idleServers.Add(-1)
			return
		}
	}
}

// testHookProxying lets tests inspect both sockets of a connection once
// its options are set; nil outside tests.
var testHookProxying func(client, upstream *net.TCPConn)

// connDescriptors is what a proxied connection holds: the accepted socket
// and the dialed one.
const connDescriptors = 2

// connClass is one set of connection options of a route and the
// connections that run with them: the route's own, or on a transparent
// route one intercept rule's, whose connections count against that rule's
// max_conns.
type connClass struct {
	rule  *InterceptRule // nil: the route's own options
	opts  TCPOptions
	conns int // open connections of the class; guarded by tcpRoute.mu
}

// full reports whether the class is at its connection limit; t.mu is held.
func (c *connClass) full() bool { return c.opts.MaxConns > 0 && c.conns >= c.opts.MaxConns }

// proxyConn is one proxied connection: the accepted socket and the dialed one.
type proxyConn struct {
	client, upstream *net.TCPConn
	start            time.Time
	class            *connClass
	dst              netip.AddrPort // transparent routes: the original destination
	dstErr           error          // transparent routes: why there is none
	active           atomic.Int64   // mono time of the last burst either way (only with an idle timeout)
	live             liveBytes      // share of natkeep_tcp_bytes_total while open
	idled            atomic.Bool    // closed by the idle timeout
	wake             func()         // after closing the sockets: lets parked directions see it (nil: none parked); guarded by tcpRoute.mu
}

func newTCPRoute(ctx context.Context, r Route, resolveInterval time.Duration, log *slog.Logger, m *Metrics, b *budget) (*tcpRoute, error) {
	st := m.tcp(r.Name)
	up := originalDst(log, st.resolveFailures)
	var err error
	if !r.Transparent {
		if up, err = newUpstream(r.Upstream, log, st.resolveFailures); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	t := &tcpRoute{
		route: r, def: &connClass{opts: r.TCP}, budget: b, log: log, st: st, up: up, ctx: ctx, cancel: cancel, resolveInterval: resolveInterval,
		conns: make(map[*proxyConn]struct{}), warnLog: logLimiter{period: 10 * time.Second},
		work: make(chan *proxyConn),
	}
	for i := range r.Intercept {
		if r.Intercept[i].Proto == TCP {
			t.rules = append(t.rules, &connClass{rule: &r.Intercept[i], opts: r.Intercept[i].TCP})
		}
	}
	t.dialControl = bypassControl(r.BypassMark, &t.warnLog, log)
	t.up.resolver = markedResolver(t.dialControl)
	m.tcpBytes.add(t)
	return t, nil
}

func (t *tcpRoute) listen(ctx context.Context) error {
	// KeepAlive -1: Go would otherwise enable its own 15 s keepalive on
	// accepted sockets; natkeep sets every option itself.
	lc := net.ListenConfig{KeepAlive: -1}
	l, err := lc.Listen(ctx, "tcp", t.route.Listen)
	if err != nil {
		return err
	}
	if t.park, err = newTCPPoller(t.log); err != nil {
		l.Close()
		return err
	}
	t.ln = l.(*net.TCPListener)
	t.inheritKeepalive()
	t.accepting = true
	t.st.listenerUp.Set(1)
	return nil
}

// inheritKeepalive sets the keepalive options on the listener when every
// class of the route has the same ones: Linux copies them (SO_KEEPALIVE,
// TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) into each accepted socket, which
// saves four setsockopt calls per connection. TCP_USER_TIMEOUT is not
// inherited (the kernel refuses it on a listener), so applyOptions still sets
// it. Where the listener does not take them, every connection gets them as
// before.
func (t *tcpRoute) inheritKeepalive() {
	k := t.def.opts.Keepalive
	for _, c := range t.rules {
		if c.opts.Keepalive != k {
			return // the accepted socket's rule decides: set per connection
		}
	}
	if k.Idle <= 0 {
		return
	}
	if err := sockopt.SetKeepalive(t.ln, k); err != nil {
		t.log.Debug("keepalive on the listener not inherited; set per connection", "err", err)
		return
	}
	t.lnKeepalive = k
}

func (t *tcpRoute) start() {
	_ = t.up.resolve(t.ctx) // a failure is logged inside; the resolver loop keeps trying
	t.wg.Add(2)
	go func() { defer t.wg.Done(); t.up.run(t.ctx, t.resolveInterval) }()
	go func() { defer t.wg.Done(); t.acceptLoop() }()
	if tick := t.idleTick(); tick > 0 {
		t.wg.Add(1)
		go func() { defer t.wg.Done(); t.closeIdle(tick) }()
	}
}

// idleTick is how often closeIdle looks: a quarter of the shortest idle
// timeout of the route's classes (at least 100 ms), or 0 when none has one.
func (t *tcpRoute) idleTick() time.Duration {
	var shortest time.Duration
	for _, c := range append([]*connClass{t.def}, t.rules...) {
		if d := c.opts.IdleTimeout; d > 0 && (shortest == 0 || d < shortest) {
			shortest = d
		}
	}
	if shortest == 0 {
		return 0
	}
	return max(shortest/4, 100*time.Millisecond)
}

// closeIdle closes connections that carried nothing either way for their
// class's idle timeout (TCP_IDLE_TIMEOUT); they end as idle_timeout.
func (t *tcpRoute) closeIdle(tick time.Duration) {
	tk := time.NewTicker(tick)
	defer tk.Stop()
	for {
		select {
		case <-t.ctx.Done():
			return
		case <-tk.C:
		}
		now := mono()
		t.mu.Lock()
		for pc := range t.conns {
			if d := pc.class.opts.IdleTimeout; d > 0 && pc.upstream != nil && now-pc.active.Load() >= int64(d) && !pc.idled.Swap(true) {
				pc.client.Close()
				pc.upstream.Close()
				if pc.wake != nil {
					pc.wake()
				}
			}
		}
		t.mu.Unlock()
	}
}

// acceptLoop accepts until the listener closes. Errors such as EMFILE back
// off exponentially (5 ms to 1 s) instead of spinning a core.
func (t *tcpRoute) acceptLoop() {
	var backoff time.Duration
	for {
		c, err := t.ln.AcceptTCP()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			t.warn("accept failed; backing off", "err", err, "backoff", backoff)
			select {
			case <-time.After(backoff):
			case <-t.ctx.Done():
				return
			}
			continue
		}
		backoff = 0
		pc := &proxyConn{client: c, start: time.Now(), class: t.def}
		if t.route.Transparent {
			// The original destination picks the rule, hence the limit.
			if pc.dst, pc.dstErr = sockopt.OriginalDst(c); pc.dstErr == nil {
				pc.class = t.classFor(pc.dst)
			}
		}
		t.mu.Lock()
		refused := ""
		if pc.class.full() {
			refused = refuseLimit
		} else if refused = t.budget.take(connDescriptors, 0); refused == "" {
			t.conns[pc] = struct{}{}
			pc.class.conns++
			t.wg.Add(1)
		}
		t.mu.Unlock()
		t.st.total.Inc()
		if refused != "" {
			resetClose(c)
			t.st.ends[endLimit].Inc()
			t.warn("TCP connection refused", "reason", refused, "client", c.RemoteAddr(), "max_conns", pc.class.opts.MaxConns, "intercept_rule", pc.class.ruleName())
			continue
		}
		t.st.active.Inc()
		t.dispatch(pc)
	}
}

// applyOptions sets keepalive and TCP_USER_TIMEOUT on one socket; keepalive
// only when the socket has not inherited the same from the listener
// (inherited: the listener's, or zero). Accepted sockets do not inherit
// TCP_USER_TIMEOUT, so both sides get it here.
func applyOptions(c *net.TCPConn, o *TCPOptions, inherited sockopt.Keepalive) error {
	if o.Keepalive.Idle > 0 && o.Keepalive != inherited {
		if err := sockopt.SetKeepalive(c, o.Keepalive); err != nil {
			return err
		}
	}
	if o.UserTimeout > 0 {
		if err := sockopt.SetUserTimeout(c, o.UserTimeout); err != nil {
			return err
		}
	}
	return nil
}

// serve dials the upstream and hands the connection to proxy, which copies
// both ways until both sides are done.
func (t *tcpRoute) serve(pc *proxyConn) {
	client := pc.client
	opt := &pc.class.opts
	var addr netip.AddrPort
	if t.route.Transparent {
		if pc.dstErr != nil {
			// Not an intercepted connection (someone dialed the
			// listener directly): there is nowhere to relay it.
			resetClose(client)
			t.ended(pc, copyOutcome{reason: endDialError, err: fmt.Errorf("no original destination: %w", pc.dstErr)})
			return
		}
		addr = pc.dst
	} else {
		var ok bool
		if addr, ok = t.up.Addr(); !ok {
			resetClose(client)
			t.ended(pc, copyOutcome{reason: endDialError, err: errUnresolved})
			return
		}
	}
	if err := applyOptions(client, opt, t.lnKeepalive); err != nil {
		t.warn("cannot set socket options on client connection", "err", err)
	}
	d := net.Dialer{Timeout: opt.ConnectTimeout, KeepAlive: -1, Control: t.dialControl}
	dialStart := time.Now()
	c, err := d.DialContext(t.ctx, "tcp", addr.String())
	if err != nil {
		// Reset, not FIN: the app must see a failure, not an empty reply.
		resetClose(client)
		t.ended(pc, copyOutcome{reason: endDialError, err: err})
		return
	}
	t.st.dial.Observe(time.Since(dialStart).Seconds())
	up := c.(*net.TCPConn)
	t.mu.Lock()
	pc.upstream = up
	t.mu.Unlock()
	if err := applyOptions(up, opt, sockopt.Keepalive{}); err != nil {
		t.warn("cannot set socket options on upstream connection", "err", err)
	}
	if testHookProxying != nil {
		testHookProxying(client, up)
	}
	bound := opt.UserTimeout
	if bound <= 0 {
		bound = defaultDrainBound
	}
	var active *atomic.Int64
	if opt.IdleTimeout > 0 {
		active = &pc.active
		pc.active.Store(mono())
	}
	t.proxy(pc, up, bound, active) // calls t.ended, now or once the connection is done
}

// ended records why a connection ended and lets it go.
func (t *tcpRoute) ended(pc *proxyConn, o copyOutcome) {
	if pc.idled.Load() {
		o.reason, o.drainedTo = endIdle, ""
	}
	t.end(pc, o)
	t.forget(pc)
	t.wg.Done()
}

// copyResult is one direction's outcome.
type copyResult struct {
	toUpstream bool
	n          int64
	err        error
}

// copyOutcome is how a proxied connection ended.
type copyOutcome struct {
	reason       string
	toUp, toDown int64  // bytes copied each way
	discarded    int64  // bytes of the surviving side's send queue lost at its reset (a drain that timed out)
	drainedTo    string // "client" or "upstream": the side whose send queue was drained before its reset; "" if none
	err          error
}

// defaultDrainBound bounds the wait for a surviving side's send queue when
// the route has no user timeout.
const defaultDrainBound = 5 * time.Second

// teardown decides how a proxied connection ends from the results of its
// two directions; both ways of running the copies (a goroutine per
// direction, or directions parked in epoll while idle) report to it. A
// clean EOF is passed on as a half-close (CloseWrite). When one side fails
// (reset, keepalive or user timeout), the other side first gets everything
// natkeep already accepted for it: what is still queued on the failed
// socket is copied over, and the surviving socket's send queue drains (all
// within drainBound); then both are reset, so the application still sees
// the failure instead of an ordinary close, but never loses bytes the
// failed peer had delivered.
type teardown struct {
	client, up *net.TCPConn
	drainBound time.Duration
	// wake, when not nil, runs after teardown itself has reset both
	// sockets: a direction parked without a goroutine would not notice.
	wake func()

	mu       sync.Mutex
	o        copyOutcome
	failed   bool
	dead     *net.TCPConn // the failed side, once known
	alive    *net.TCPConn // the other side
	deadline time.Time    // end of the drain
	bounded  *time.Timer  // resets both if the other copy outlives the drain
}

// finish records one direction's end: a clean EOF is passed on as a
// half-close; the first failure decides which side is dead.
func (d *teardown) finish(r copyResult) {
	d.mu.Lock()
	if r.toUpstream {
		d.o.toUp = r.n
	} else {
		d.o.toDown = r.n
	}
	switch {
	case d.failed:
		// The other direction ended after the failure.
		d.mu.Unlock()
		return
	case r.err == nil:
		// The second clean EOF needs no half-close: done closes both
		// sockets next, and Close sends the same FIN (the other direction
		// read its source to the end, so nothing unread turns it into a
		// reset), one shutdown call fewer per connection.
		last := d.o.reason != ""
		if r.toUpstream {
			if d.o.reason == "" {
				d.o.reason = endClientClosed
			}
			if !last {
				_ = d.up.CloseWrite()
			}
		} else {
			if d.o.reason == "" {
				d.o.reason = endUpstreamClosed
			}
			if !last {
				_ = d.client.CloseWrite()
			}
		}
		d.mu.Unlock()
		return
	}
	d.failed = true
	d.o.err = r.err
	var upFailed bool
	d.o.reason, upFailed = classify(d.client, d.up, r)
	d.dead, d.alive, d.o.drainedTo = d.client, d.up, "upstream"
	if upFailed {
		d.dead, d.alive, d.o.drainedTo = d.up, d.client, "client"
	}
	d.deadline = time.Now().Add(d.drainBound)
	// This copy read the dead socket to its end when it failed on its
	// source: the other copy reads the survivor, to write to the dead
	// socket, and only resetting the survivor ends it, so drain and
	// reset now. When this copy failed writing to the dead socket, the
	// other copy still carries what is queued on it to the survivor,
	// and ends by itself once that is delivered: the drain waits for it.
	now := r.toUpstream != upFailed || d.o.reason == endDrain
	dead, alive := d.dead, d.alive
	if !now {
		// Bound the wait for the other copy.
		d.bounded = time.AfterFunc(d.drainBound, func() { resetClose(alive); resetClose(dead); d.woke() })
		d.mu.Unlock()
		return
	}
	if d.o.reason == endDrain {
		d.o.drainedTo = "" // natkeep itself closed the sockets (shutdown)
		d.mu.Unlock()
	} else {
		d.mu.Unlock()
		// The other direction only ever reads the fields it sets in
		// finish, which returns early now that failed is set.
		discarded := drainSendQueue(alive, d.drainBound)
		d.mu.Lock()
		d.o.discarded = discarded
		d.mu.Unlock()
	}
	resetClose(dead)
	resetClose(alive)
	d.woke()
}

func (d *teardown) woke() {
	if d.wake != nil {
		d.wake()
	}
}

// blocks reports whether done may wait (a drain) or log a failure: the
// epoll goroutine hands such an end to a goroutine of its own.
func (d *teardown) blocks() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.failed
}

// done runs once both directions have finished: it closes what is still
// open and returns how the connection ended.
func (d *teardown) done() copyOutcome {
	d.mu.Lock()
	failed, bounded := d.failed, d.bounded
	d.mu.Unlock()
	switch {
	case !failed:
		d.client.Close()
		d.up.Close()
	case bounded != nil:
		if bounded.Stop() {
			d.o.discarded = drainSendQueue(d.alive, time.Until(d.deadline))
		} else {
			d.o.discarded = -1 // the bound passed while copying: both were reset, the loss is unknown
		}
		resetClose(d.dead)
		resetClose(d.alive)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.o
}

// drainSendQueue waits until c's peer has acknowledged everything in c's
// send queue, or bound passes, and returns how many bytes were still
// queued (0 when it drained). It polls SIOCOUTQ, starting at 1 ms and
// backing off to 50 ms: it runs only on a failing connection.
func drainSendQueue(c *net.TCPConn, bound time.Duration) int64 {
	deadline := time.Now().Add(bound)
	wait := time.Millisecond
	for {
		n, err := sockopt.SendQueue(c)
		if err != nil || n == 0 {
			return 0 // closed under us (drain, shutdown), or drained
		}
		if !time.Now().Before(deadline) {
			return int64(n)
		}
		time.Sleep(min(wait, time.Until(deadline)))
		wait = min(2*wait, 50*time.Millisecond)
	}
}

// classify explains a failed copy from the sockets themselves: io.Copy's
// error text does not say which side failed (a spliced copy reports the
// read error of one socket as the write of the other), but the failed
// socket is the one the kernel has moved to TCP_CLOSE.
func classify(client, up *net.TCPConn, r copyResult) (reason string, upFailed bool) {
	const tcpClose = 7 // TCP_CLOSE in include/net/tcp_states.h
	ci, cerr := sockopt.GetTCPInfo(client)
	ui, uerr := sockopt.GetTCPInfo(up)
	switch {
	case uerr == nil && ui.State == tcpClose && (cerr != nil || ci.State != tcpClose):
		upFailed = true
	case cerr == nil && ci.State == tcpClose && (uerr != nil || ui.State != tcpClose):
		upFailed = false
	default:
		// Both or neither closed: blame the socket the copy wrote to.
		upFailed = r.toUpstream
	}
	info := ci
	if upFailed {
		info = ui
	}
	switch {
	case errors.Is(r.err, syscall.ETIMEDOUT):
		// Unacknowledged data being retransmitted means the user timeout
		// (or retransmission limit) fired; otherwise keepalive probes did.
		if info.Retransmits > 0 || info.Backoff > 0 || info.Unacked > 0 {
			return endUserTimeout, upFailed
		}
		return endKeepaliveTimeout, upFailed
	case errors.Is(r.err, syscall.ECONNRESET), errors.Is(r.err, syscall.EPIPE):
		if upFailed {
			return endUpstreamReset, upFailed
		}
		return endClientReset, upFailed
	case errors.Is(r.err, net.ErrClosed):
		return endDrain, upFailed
	}
	return endError, upFailed
}

// resetClose closes c with SO_LINGER 0, so the peer gets a RST.
func resetClose(c *net.TCPConn) {
	_ = sockopt.SetLingerZero(c)
	c.Close()
}

// end records why a connection ended.
func (t *tcpRoute) end(pc *proxyConn, o copyOutcome) {
	t.st.ends[o.reason].Inc()
	t.closeBytes(pc, o.toUp, o.toDown)
	if (o.reason == endClientClosed || o.reason == endUpstreamClosed) && !t.log.Enabled(t.ctx, slog.LevelDebug) {
		return // the common case: nothing to log, so build no attributes
	}
	attrs := []any{"client", pc.client.RemoteAddr(), "reason", o.reason,
		"duration", time.Since(pc.start).Round(time.Millisecond), "bytes_up", o.toUp, "bytes_down", o.toDown}
	if o.drainedTo != "" {
		// What the surviving side got of what natkeep had accepted for it.
		delivered := o.toDown
		if o.drainedTo == "upstream" {
			delivered = o.toUp
		}
		attrs = append(attrs, "drained", o.drainedTo, "bytes_delivered", delivered-o.discarded, "bytes_discarded", o.discarded)
	}
	switch o.reason {
	case endClientClosed, endUpstreamClosed:
		t.log.Debug("TCP connection ended", attrs...)
	default:
		attrs = append(attrs, "err", o.err)
		t.log.Debug("TCP connection ended", attrs...)
		if o.reason == endDialError {
			t.warn("upstream dial failed", "upstream", t.up.hostport, "err", o.err)
		} else if o.reason != endDrain {
			t.warn("TCP connection failed", attrs...)
		}
	}
}

func (t *tcpRoute) forget(pc *proxyConn) {
	t.mu.Lock()
	delete(t.conns, pc)
	pc.class.conns--
	t.budget.give(connDescriptors, 0)
	if len(t.conns) == 0 && t.idle != nil {
		close(t.idle)
		t.idle = nil
	}
	t.mu.Unlock()
	t.st.active.Dec()
}

// stopAccepting closes the listener; open connections carry on.
func (t *tcpRoute) stopAccepting() {
	t.mu.Lock()
	wasAccepting := t.accepting
	t.accepting = false
	t.mu.Unlock()
	if wasAccepting && t.ln != nil {
		t.ln.Close()
		t.st.listenerUp.Set(0)
	}
}

// drain waits for open connections until ctx is done, then resets the rest;
// it returns how many were reset.
func (t *tcpRoute) drain(ctx context.Context) int {
	t.mu.Lock()
	if len(t.conns) == 0 {
		t.mu.Unlock()
		return 0
	}
	idle := make(chan struct{})
	t.idle = idle
	t.mu.Unlock()
	select {
	case <-idle:
		return 0
	case <-ctx.Done():
	}
	return t.resetAll()
}

// resetAll resets every open connection.
func (t *tcpRoute) resetAll() int {
	t.mu.Lock()
	var n int
	for pc := range t.conns {
		n++
		resetClose(pc.client)
		if pc.upstream != nil {
			resetClose(pc.upstream)
		}
		if pc.wake != nil {
			pc.wake()
		}
	}
	t.mu.Unlock()
	return n
}

// close stops the route at once and waits for its goroutines.
func (t *tcpRoute) close() {
	t.stopAccepting()
	t.resetAll()
	t.cancel()
	t.wg.Wait()
	if t.park != nil {
		t.park.stop() // after every connection is done: none is parked
	}
}

func (t *tcpRoute) connCount() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.conns)
}

// classFor returns the class of the first intercept rule matching dst, or
// the route's own.
func (t *tcpRoute) classFor(dst netip.AddrPort) *connClass {
	for _, c := range t.rules {
		if c.rule.Matches(dst) {
			return c
		}
	}
	return t.def
}

// ruleName describes the class's intercept rule for logs ("" for the route's own).
func (c *connClass) ruleName() string {
	if c.rule == nil {
		return ""
	}
	return c.rule.String()
}

func (t *tcpRoute) warn(msg string, args ...any) {
	if ok, more := t.warnLog.allow(); ok {
		t.log.Warn(msg, append(args, "suppressed", more)...)
	}
}
