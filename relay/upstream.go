package relay

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// upstream is a route's destination. A DNS name is re-resolved in the
// background and on demand (a dead peer); new flows and connections use the
// latest address, established ones keep theirs until they rebind.
type upstream struct {
	hostport string
	host     string
	port     uint16
	fixed    bool // host is an IP literal: nothing to resolve
	cur      atomic.Pointer[netip.AddrPort]
	log      *slog.Logger
	failures prometheus.Counter
	resolver *net.Resolver
	failing  atomic.Bool // the last resolution failed
}

// originalDst stands in for the upstream of a transparent route, whose
// flows each go to the destination the app addressed.
func originalDst(log *slog.Logger, failures prometheus.Counter) *upstream {
	return &upstream{hostport: "original destination", fixed: true, log: log, failures: failures}
}

func newUpstream(hostport string, log *slog.Logger, failures prometheus.Counter) (*upstream, error) {
	host, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, fmt.Errorf("upstream %q: %w", hostport, err)
	}
	port, err := strconv.ParseUint(p, 10, 16)
	if err != nil || port == 0 {
		return nil, fmt.Errorf("upstream %q: bad port", hostport)
	}
	u := &upstream{hostport: hostport, host: host, port: uint16(port), log: log, failures: failures, resolver: net.DefaultResolver}
	if a, err := netip.ParseAddr(host); err == nil {
		ap := netip.AddrPortFrom(a.Unmap(), u.port)
		u.cur.Store(&ap)
		u.fixed = true
	}
	return u, nil
}

// Addr returns the current upstream address, if one is known.
func (u *upstream) Addr() (netip.AddrPort, bool) {
	p := u.cur.Load()
	if p == nil {
		return netip.AddrPort{}, false
	}
	return *p, true
}

// resolve looks the name up once and installs the first address; a failure
// keeps the last good address, because a DNS hiccup is not a reason to stop
// relaying to a server that still answers.
func (u *upstream) resolve(ctx context.Context) error {
	if u.fixed {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	addrs, err := u.resolver.LookupNetIP(ctx, "ip", u.host)
	if err == nil && len(addrs) == 0 {
		err = fmt.Errorf("no addresses")
	}
	if err != nil {
		u.failures.Inc()
		// Warn when resolution starts failing, not on every retry.
		log := u.log.Warn
		if u.failing.Swap(true) {
			log = u.log.Debug
		}
		old, ok := u.Addr()
		if ok {
			log("upstream name did not resolve; keeping last address", "upstream", u.hostport, "address", old, "err", err)
		} else {
			log("upstream name did not resolve; new flows are dropped until it does", "upstream", u.hostport, "err", err)
		}
		return err
	}
	if u.failing.Swap(false) {
		u.log.Info("upstream name resolves again", "upstream", u.hostport)
	}
	next := netip.AddrPortFrom(addrs[0].Unmap(), u.port)
	old := u.cur.Swap(&next)
	if old == nil {
		u.log.Info("upstream resolved", "upstream", u.hostport, "address", next)
	} else if *old != next {
		u.log.Info("upstream address changed", "upstream", u.hostport, "old", *old, "new", next)
	}
	return nil
}

// run re-resolves every interval until ctx ends.
func (u *upstream) run(ctx context.Context, interval time.Duration) {
	if u.fixed {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			_ = u.resolve(ctx) // logged and counted inside
		}
	}
}
