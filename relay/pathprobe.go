package relay

// Path probes: binding lifetime discovery (RFC 5780 section 4.6) and the
// NAT distance search, run from sockets of natkeep's own against a STUN
// server that honours RESPONSE-PORT (a natkeep responder, or any RFC 5780
// server). Never on app flows: a probe's silence would cost an app its
// mapping. keepalive holds the rules; this file sends and waits.

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/natkeep/natkeep/keepalive"
	"github.com/natkeep/natkeep/sockopt"
	"github.com/prometheus/client_golang/prometheus"
)

// Probe timing.
const (
	// streamWarmup separates a probe socket's two Binding Requests before
	// its silence: conntrack applies its "stream" timeout to a replied UDP
	// entry only to packets more than 2 s after the entry's creation, so the
	// mapping is then in the state an app flow's is in.
	streamWarmup = 2200 * time.Millisecond
	// probeRTO is the first retransmission timeout of a request; it doubles.
	probeRTO = 500 * time.Millisecond
	// probeTries is how often a request is sent before it counts as unanswered.
	probeTries = 3
	// probeStagger spaces the start of probes run at once, so a ladder's
	// requests do not arrive at the server's rate limiter as one burst.
	probeStagger = 60 * time.Millisecond
	// probeParallel is the number of probes per narrowing round.
	probeParallel = 3
)

// Probe errors.
var (
	// ErrNoSTUN reports a server that never answered a Binding Request: it does not speak STUN (or is not there).
	ErrNoSTUN = errors.New("the server never answered a STUN Binding Request")
	// ErrNoResponsePort reports a STUN server that ignores RESPONSE-PORT, through which no lifetime can be measured.
	ErrNoResponsePort = errors.New("the server answers STUN but ignores RESPONSE-PORT (RFC 5780), so binding lifetimes cannot be measured through it")
	errProbeLost      = errors.New("probe lost: a request went unanswered")
	errProbesLost     = errors.New("too many probes lost: no answer to compare")
)

// prober runs path probes against one server.
type prober struct {
	server  func() (netip.AddrPort, bool)                          // the server's current address
	control func(network, address string, c syscall.RawConn) error // e.g. the bypass mark; nil = none

	sent, received atomic.Int64              // datagrams, for the cost figures
	sentC, recvC   prometheus.Counter        // the same as metrics; nil = not exported
	probes         func(kind, result string) // counts one finished probe; nil = not counted

	mu      sync.Mutex
	srtt    time.Duration
	sampled bool
}

// rtt returns the smoothed request RTT (0 before any sample).
func (p *prober) rtt() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.srtt
}

func (p *prober) sample(rtt time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.sampled {
		p.srtt, p.sampled = rtt, true
		return
	}
	p.srtt = (7*p.srtt + rtt) / 8
}

// count records one finished probe of kind (lifetime, hops, verify) with
// its result (survived, expired, lost).
func (p *prober) count(kind string, ok bool, err error) {
	if p.probes == nil {
		return
	}
	switch {
	case err != nil:
		p.probes(kind, "lost")
	case ok:
		p.probes(kind, "survived")
	default:
		p.probes(kind, "expired")
	}
}

// probeMsg is a STUN response a probe socket received.
type probeMsg struct {
	typ  uint16
	id   keepalive.TxID
	resp keepalive.BindingResponse
	from netip.AddrPort
	at   time.Time
}

// probeSock is one probe socket (X or Y) and its reader.
type probeSock struct {
	p  *prober
	c  *net.UDPConn
	in chan probeMsg
}

// open binds a probe socket of the server's address family.
func (p *prober) open(ctx context.Context) (*probeSock, error) {
	srv, ok := p.server()
	if !ok {
		return nil, errUnresolved
	}
	network, addr := "udp4", "0.0.0.0:0"
	if !srv.Addr().Unmap().Is4() {
		network, addr = "udp6", "[::]:0"
	}
	lc := net.ListenConfig{Control: p.control}
	pc, err := lc.ListenPacket(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	s := &probeSock{p: p, c: pc.(*net.UDPConn), in: make(chan probeMsg, 16)}
	go s.read()
	return s, nil
}

func (s *probeSock) close() { s.c.Close() }

// read hands the STUN responses that arrive to in until the socket closes.
// Responses are matched by transaction ID (96 random bits), so a stranger
// cannot forge one without seeing the request.
func (s *probeSock) read() {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.c.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue // e.g. an ICMP error from a TTL-limited probe
		}
		s.p.received.Add(1)
		if s.p.recvC != nil {
			s.p.recvC.Inc()
		}
		typ, id, ok := keepalive.PeekTxID(buf[:n])
		if !ok || keepalive.IsRequest(typ) {
			continue
		}
		m := probeMsg{typ: typ, id: id, from: from, at: time.Now()}
		if !keepalive.IsBindingError(typ) {
			r, err := keepalive.ParseBindingResponse(buf[:n])
			if err != nil {
				continue
			}
			m.resp = r
		}
		select {
		case s.in <- m:
		default: // nobody waits for that many: drop
		}
	}
}

// send writes b to to, with TTL ttl (0 = the normal TTL).
func (s *probeSock) send(b []byte, to netip.AddrPort, ttl int) error {
	s.p.sent.Add(1)
	if s.p.sentC != nil {
		s.p.sentC.Inc()
	}
	if ttl > 0 {
		oob, err := sockopt.TTLControl(!to.Addr().Unmap().Is4(), ttl)
		if err != nil {
			return err
		}
		_, _, err = s.c.WriteMsgUDPAddrPort(b, oob, to)
		return err
	}
	_, err := s.c.WriteToUDPAddrPort(b, to)
	return err
}

// await waits up to d for the response with transaction id; ok is false on
// timeout.
func (s *probeSock) await(ctx context.Context, id keepalive.TxID, d time.Duration) (probeMsg, bool, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		select {
		case m := <-s.in:
			if m.id == id {
				return m, true, nil
			}
		case <-t.C:
			return probeMsg{}, false, nil
		case <-ctx.Done():
			return probeMsg{}, false, ctx.Err()
		}
	}
}

// rto is the wait for a response to a first transmission.
func (p *prober) rto() time.Duration {
	return max(probeRTO, 4*p.rtt())
}

// transact sends a Binding Request to to and waits for its response,
// retransmitting with a doubling timeout; errProbeLost if none came.
func (s *probeSock) transact(ctx context.Context, to netip.AddrPort) (keepalive.BindingResponse, error) {
	id := keepalive.NewTxID()
	req := keepalive.AppendProbeRequest(make([]byte, 0, 64), id, 0)
	wait := s.p.rto()
	for range probeTries {
		sentAt := time.Now()
		if err := s.send(req, to, 0); err != nil {
			return keepalive.BindingResponse{}, err
		}
		m, ok, err := s.await(ctx, id, wait)
		if err != nil {
			return keepalive.BindingResponse{}, err
		}
		if ok {
			if keepalive.IsBindingError(m.typ) {
				return keepalive.BindingResponse{}, ErrNoSTUN // it speaks STUN, but will not answer us
			}
			s.p.sample(m.at.Sub(sentAt))
			return m.resp, nil
		}
		wait *= 2
	}
	return keepalive.BindingResponse{}, errProbeLost
}

// mapping is a probe socket whose mapping has been warmed up.
type mapping struct {
	x      *probeSock
	mapped netip.AddrPort // X's address as the server saw it
	local  netip.AddrPort
}

// warm opens X and asks for its mapped address twice, streamWarmup apart,
// so its mapping has seen replies and is past conntrack's 2 s before the
// silence starts. The first request's failure is ErrNoSTUN's evidence.
func (p *prober) warm(ctx context.Context) (*mapping, error) {
	srv, ok := p.server()
	if !ok {
		return nil, errUnresolved
	}
	x, err := p.open(ctx)
	if err != nil {
		return nil, err
	}
	r, err := x.transact(ctx, srv)
	if err == nil {
		if err = sleepCtx(ctx, streamWarmup); err == nil {
			r, err = x.transact(ctx, srv)
		}
	}
	if err != nil {
		x.close()
		return nil, err
	}
	local, _ := netip.ParseAddrPort(x.c.LocalAddr().String())
	return &mapping{x: x, mapped: r.Mapped, local: local}, nil
}

// reachable asks the server, from a fresh socket Y, to answer to m's mapped
// port (RESPONSE-PORT) and reports whether the answer reached X: the
// mapping was still there. Up to probeTries requests, so one lost datagram
// (or a rate limiter's drop) does not read as an expired mapping.
func (p *prober) reachable(ctx context.Context, m *mapping) (bool, error) {
	srv, ok := p.server()
	if !ok {
		return false, errUnresolved
	}
	y, err := p.open(ctx)
	if err != nil {
		return false, err
	}
	defer y.close()
	buf := make([]byte, 0, 64)
	wait := p.rto()
	for range probeTries {
		id := keepalive.NewTxID()
		if err := y.send(keepalive.AppendProbeRequest(buf[:0], id, m.mapped.Port()), srv, 0); err != nil {
			return false, err
		}
		got, ok, err := m.x.await(ctx, id, wait)
		if err != nil {
			return false, err
		}
		if ok {
			return !keepalive.IsBindingError(got.typ), nil
		}
		// Y hearing the answer itself means the server ignored RESPONSE-PORT;
		// an error response means it does not know it (420).
		select {
		case ym := <-y.in:
			if ym.id == id {
				return false, ErrNoResponsePort
			}
		default:
		}
	}
	return false, nil
}

// survives probes one silence: warm up X, stay silent for silence, ask via Y.
func (p *prober) survives(ctx context.Context, silence time.Duration) (bool, error) {
	m, err := p.warm(ctx)
	if err != nil {
		return false, err
	}
	defer m.x.close()
	if err := sleepCtx(ctx, silence); err != nil {
		return false, err
	}
	return p.reachable(ctx, m)
}

// refreshedBy probes one TTL: X warms up, then is refreshed only by
// heartbeats with TTL ttl every lifetime/2 for 1.75 lifetimes, longer than
// the mapping lives unrefreshed; it is reachable at the end only if those
// heartbeats reached the NAT.
func (p *prober) refreshedBy(ctx context.Context, ttl int, lifetime time.Duration) (bool, error) {
	srv, ok := p.server()
	if !ok {
		return false, errUnresolved
	}
	m, err := p.warm(ctx)
	if err != nil {
		return false, err
	}
	defer m.x.close()
	buf := make([]byte, 0, 64)
	for range 3 {
		if err := sleepCtx(ctx, lifetime/2); err != nil {
			return false, err
		}
		if err := m.x.send(keepalive.AppendProbeRequest(buf[:0], keepalive.NewTxID(), 0), srv, ttl); err != nil {
			return false, err
		}
	}
	if err := sleepCtx(ctx, lifetime/4); err != nil {
		return false, err
	}
	return p.reachable(ctx, m)
}

// probeResult is one finished probe of a round.
type probeResult struct {
	silence time.Duration
	ok      bool
	err     error
}

// learnLifetime runs the lifetime search to its end. progress, if not nil,
// hears about each round.
func (p *prober) learnLifetime(ctx context.Context, floor, ceiling time.Duration, progress func(round int, silences []time.Duration)) (keepalive.Lifetime, error) {
	s := keepalive.NewLifetimeSearch(floor, ceiling, probeParallel)
	answered := false
	barren := 0
	round := 0
	for ts := s.Next(); ts != nil; ts = s.Next() {
		round++
		if progress != nil {
			progress(round, ts)
		}
		rctx, cancelRound := context.WithCancel(ctx)
		results := make(chan probeResult, len(ts))
		cancels := make(map[time.Duration]context.CancelFunc, len(ts))
		for i, t := range ts {
			pctx, cancel := context.WithCancel(rctx)
			cancels[t] = cancel
			go func() {
				if err := sleepCtx(pctx, time.Duration(i)*probeStagger); err != nil {
					results <- probeResult{t, false, err}
					return
				}
				ok, err := p.survives(pctx, t)
				results <- probeResult{t, ok, err}
			}()
		}
		var fatal error
		recorded := false
		for range ts {
			r := <-results
			switch {
			case fatal != nil, errors.Is(r.err, context.Canceled) && ctx.Err() == nil:
				// Cancelled (no longer useful), or the round is over.
			case errors.Is(r.err, errProbeLost), errors.Is(r.err, ErrNoSTUN):
				p.count("lifetime", false, r.err)
			case r.err != nil:
				fatal = r.err
				cancelRound()
			default:
				answered, recorded = true, true
				p.count("lifetime", r.ok, nil)
				s.Record(r.silence, r.ok)
				for t, cancel := range cancels {
					if !s.Useful(t) {
						cancel()
					}
				}
			}
		}
		cancelRound()
		for _, c := range cancels {
			c()
		}
		switch {
		case fatal != nil:
			return keepalive.Lifetime{}, fatal
		case !answered:
			return keepalive.Lifetime{}, ErrNoSTUN
		case !recorded:
			if barren++; barren >= 3 {
				return keepalive.Lifetime{}, errProbesLost
			}
		}
	}
	return s.Result(), nil
}

// learnHops tries every TTL 1..MaxHops at once and returns the NAT
// distance (0: none worked).
func (p *prober) learnHops(ctx context.Context, lifetime time.Duration) (int, error) {
	var reached [keepalive.MaxHops]bool
	errs := make(chan error, keepalive.MaxHops)
	var mu sync.Mutex
	lost := 0
	for k := 1; k <= keepalive.MaxHops; k++ {
		go func() {
			if err := sleepCtx(ctx, time.Duration(k-1)*probeStagger); err != nil {
				errs <- err
				return
			}
			ok, err := p.refreshedBy(ctx, k, lifetime)
			p.count("hops", ok, err)
			mu.Lock()
			reached[k-1] = ok
			if err != nil {
				lost++
			}
			mu.Unlock()
			errs <- err
		}()
	}
	var first error
	for range keepalive.MaxHops {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	mu.Lock()
	defer mu.Unlock()
	if lost == keepalive.MaxHops {
		return 0, first
	}
	return keepalive.NATDistance(reached), nil
}

// sleepCtx waits d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
