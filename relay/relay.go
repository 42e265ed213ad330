// Package relay moves bytes: it owns the UDP flows and TCP connections of
// every route, relays them to their upstreams and applies the heartbeat and
// keepalive rules that keep NAT mappings alive. It takes plain Go values and
// a *slog.Logger; it never reads the environment.
package relay

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Relay runs every configured route.
type Relay struct {
	cfg      Config
	budget   *budget
	log      *slog.Logger
	udp      []*udpRoute   // every UDP worker of every route
	udpRoute [][]*udpRoute // per UDP route in configuration order, its workers (the first resolves and learns)
	tcp      []*tcpRoute
	addrs    []net.Addr
	ctx      context.Context
	cancel   context.CancelFunc
	ready    atomic.Bool
	draining atomic.Bool
	once     sync.Once
}

// New builds a relay for cfg; nothing is bound until Start. A nil Metrics
// gets unregistered collectors.
func New(cfg Config, log *slog.Logger, m *Metrics) (*Relay, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	if cfg.ResolveInterval <= 0 {
		cfg.ResolveInterval = 30 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Relay{cfg: cfg, log: log, ctx: ctx, cancel: cancel, budget: &budget{limit: cfg.Budget}}
	for _, rt := range cfg.Routes {
		if err := r.add(rt, m); err != nil {
			r.Close() // releases what the earlier routes hold
			return nil, fmt.Errorf("route %q: %w", rt.Name, err)
		}
	}
	return r, nil
}

// add creates one route (not yet listening).
func (r *Relay) add(rt Route, m *Metrics) error {
	rlog := r.log.With("route", rt.Name)
	switch rt.Proto {
	case UDP:
		n, wrt := r.udpWorkers(rt)
		var group []*udpRoute
		for i := range n {
			var primary *udpRoute
			if i > 0 {
				primary = group[0]
			}
			u, err := newUDPRoute(r.ctx, wrt, r.cfg.ResolveInterval, rlog, m, r.budget, primary)
			if err != nil {
				return err
			}
			group = append(group, u)
			r.udp = append(r.udp, u)
		}
		r.udpRoute = append(r.udpRoute, group)
	case TCP:
		t, err := newTCPRoute(r.ctx, rt, r.cfg.ResolveInterval, rlog, m, r.budget)
		if err != nil {
			return err
		}
		r.tcp = append(r.tcp, t)
	default:
		return fmt.Errorf("unknown protocol %q", rt.Proto)
	}
	return nil
}

// Start binds every listener and starts relaying. If any listener cannot be
// bound, the ones already bound are closed and the error is a *ListenError.
func (r *Relay) Start() error {
	var ui, ti int
	for i, rt := range r.cfg.Routes {
		switch rt.Proto {
		case UDP:
			group := r.udpRoute[ui]
			ui++
			for _, u := range group {
				if err := u.listen(r.ctx); err != nil {
					r.Close()
					return newListenError(i, rt, err)
				}
			}
			r.addrs = append(r.addrs, group[0].ln.LocalAddr())
		case TCP:
			t := r.tcp[ti]
			ti++
			if err := t.listen(r.ctx); err != nil {
				r.Close()
				return newListenError(i, rt, err)
			}
			r.addrs = append(r.addrs, t.ln.Addr())
		}
	}
	for _, u := range r.udp {
		u.start()
	}
	for _, t := range r.tcp {
		t.start()
	}
	r.ready.Store(true)
	return nil
}

// udpWorkers returns how many workers a UDP route gets and the route each
// of them runs. One per Config.Workers on a route with its own upstream; a
// transparent route keeps one (its listener's replies go out through
// per-flow sockets anyway). The flow limits are the route's: each worker
// holds its share, rounded up.
func (r *Relay) udpWorkers(rt Route) (int, Route) {
	n := r.cfg.Workers
	if n <= 1 || rt.Transparent {
		return 1, rt
	}
	share := func(v int) int {
		if v <= 0 {
			return v
		}
		return (v + n - 1) / n
	}
	rt.UDP.MaxFlows = share(rt.UDP.MaxFlows)
	rt.UDP.MaxFlowsPerSource = share(rt.UDP.MaxFlowsPerSource)
	return n, rt
}

// ListenError is Start's error when a route's listener cannot be bound.
type ListenError struct {
	Index int   // the route's position in Config.Routes
	Route Route // the route itself
	Err   error // the cause, e.g. syscall.EADDRINUSE, without net's "listen tcp ADDR: bind:" around it
}

// Error names the route, its listen address and the cause.
func (e *ListenError) Error() string {
	return fmt.Sprintf("route %q: listen %s %s: %v", e.Route.Name, e.Route.Proto, e.Route.Listen, e.Err)
}

// Unwrap returns the cause.
func (e *ListenError) Unwrap() error { return e.Err }

// newListenError takes off the operation, address and syscall name that
// net wraps a bind failure in: the message names the route and address
// already, and they would otherwise be said twice.
func newListenError(i int, rt Route, err error) *ListenError {
	var op *net.OpError
	if errors.As(err, &op) {
		err = op.Err
	}
	var sc *os.SyscallError
	if errors.As(err, &sc) {
		err = sc.Err
	}
	return &ListenError{Index: i, Route: rt, Err: err}
}

// Addrs returns the bound listener addresses in configuration order.
func (r *Relay) Addrs() []net.Addr { return r.addrs }

// Ready reports whether every listener is bound and the relay is not draining.
func (r *Relay) Ready() bool { return r.ready.Load() && !r.draining.Load() }

// Shutdown drains: it stops accepting and ends UDP flows at once, then lets
// open TCP connections finish until ctx is done, and resets the rest.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.draining.Store(true)
	for _, t := range r.tcp {
		t.stopAccepting()
	}
	for _, u := range r.udp {
		u.close()
	}
	var left int
	for _, t := range r.tcp {
		left += t.drain(ctx)
	}
	r.Close()
	if left > 0 {
		return fmt.Errorf("drain timeout: %d TCP connections reset: %w", left, context.DeadlineExceeded)
	}
	if err := ctx.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}

// Close stops everything at once.
func (r *Relay) Close() {
	r.once.Do(func() {
		r.draining.Store(true)
		r.cancel()
		for _, u := range r.udp {
			u.close()
		}
		for _, t := range r.tcp {
			t.close()
		}
	})
}
