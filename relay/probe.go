package relay

// ProbePath is `natkeep probe`: the path learning of an interval=auto route,
// run once against a server and reported, so an operator can see what the
// NAT does before deploying.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/natkeep/natkeep/keepalive"
)

// ProbeOptions configure a one-off path probe.
type ProbeOptions struct {
	Server      netip.AddrPort // a STUN server or natkeep responder
	MaxLifetime time.Duration  // the longest silence probed; 0 = keepalive.LifetimeCeiling
	SkipHops    bool           // do not search for the NAT distance
	Progress    func(msg string)
}

// Mapping behaviours (RFC 4787, tested as in RFC 5780 section 4.3).
const (
	MappingIndependent     = "endpoint-independent"
	MappingAddress         = "address-dependent"
	MappingAddressAndPort  = "address-and-port-dependent"
	MappingNoNAT           = "no NAT"
	mappingUntestedNoOther = "not tested: the server gives no OTHER-ADDRESS (RFC 5780), so a second destination cannot be compared"
)

// PathReport is what a path probe learned.
type PathReport struct {
	Server       netip.AddrPort     // the server probed
	Local        netip.AddrPort     // the first probe socket's local address
	Mapped       netip.AddrPort     // its address as the server saw it
	NAT          bool               // Mapped differs from Local
	Mapping      string             // one of the Mapping* values, or why it was not tested
	Other        netip.AddrPort     // the server's OTHER-ADDRESS, if it gave one
	ResponsePort bool               // the server honours RESPONSE-PORT
	Lifetime     keepalive.Lifetime // zero unless learned
	Learned      bool               // Lifetime is valid
	Hops         int                // the NAT distance; 0 = not found (see HopsNote)
	HopsNote     string             // why there is no distance, if there is none
	RTT          time.Duration      // smoothed request round trip
	Interval     time.Duration      // the recommended heartbeat interval
	Sent         int64              // datagrams the probe sent
	Received     int64              // datagrams it received
	Elapsed      time.Duration
}

// ProbePath runs one path learning against o.Server. It returns
// ErrNoSTUN if the server never answered; with ErrNoResponsePort the
// report still holds the mapped address.
func ProbePath(ctx context.Context, o ProbeOptions) (rep PathReport, err error) {
	start := time.Now()
	rep.Server = o.Server
	progress := o.Progress
	if progress == nil {
		progress = func(string) {}
	}
	p := &prober{server: func() (netip.AddrPort, bool) { return o.Server, true }}
	defer func() {
		rep.Sent, rep.Received, rep.Elapsed, rep.RTT = p.sent.Load(), p.received.Load(), time.Since(start), p.rtt()
	}()
	if err = p.mappingBehaviour(ctx, &rep); err != nil {
		return rep, err
	}
	progress(fmt.Sprintf("mapped address %s; measuring the binding lifetime (probe silences from %s up to %s; stops at the first that expires, then narrows)",
		rep.Mapped, keepalive.LifetimeFloor, lifetimeCeiling(o.MaxLifetime)))
	lt, err := p.learnLifetime(ctx, 0, o.MaxLifetime, func(round int, silences []time.Duration) {
		if round > 1 {
			progress(fmt.Sprintf("narrowing (round %d): probing silences %v; about %s", round, silences, (silences[len(silences)-1] + streamWarmup).Round(time.Second)))
		}
	})
	if err != nil {
		return rep, err
	}
	rep.ResponsePort, rep.Learned, rep.Lifetime = true, true, lt
	rep.Interval = keepalive.LearnedInterval(lt.Survives, p.rtt())
	switch {
	case o.SkipHops:
		rep.HopsNote = "not searched (--no-hops)"
	case !rep.NAT:
		rep.HopsNote = "no NAT between here and the server: nothing for a TTL-limited heartbeat to refresh"
	case lt.Expires == 0 || lt.Survives < keepalive.LifetimeFloor:
		rep.HopsNote = "the lifetime is not bounded on both sides, so TTL-limited heartbeats cannot be tested against it"
	default:
		progress(fmt.Sprintf("binding lifetime %s; finding the NAT distance (TTL 1..%d at once, about %s)", lt.Survives, keepalive.MaxHops, (streamWarmup + lt.Survives*7/4).Round(time.Second)))
		k, err := p.learnHops(ctx, lt.Survives)
		switch {
		case err != nil:
			rep.HopsNote = "the TTL probes got no answer: " + err.Error()
		case k == 0:
			rep.HopsNote = fmt.Sprintf("no TTL up to %d kept a probe mapping alive", keepalive.MaxHops)
		default:
			rep.Hops = k
		}
	}
	return rep, ctx.Err()
}

func lifetimeCeiling(d time.Duration) time.Duration {
	if d <= 0 {
		return keepalive.LifetimeCeiling
	}
	return d
}

// mappingBehaviour learns the mapped address and, when the server has an
// alternate address, whether the mapping depends on the destination:
// RFC 5780 section 4.3's tests II (alternate IP, primary port) and III
// (alternate IP and port) from the same socket.
func (p *prober) mappingBehaviour(ctx context.Context, rep *PathReport) error {
	x, err := p.open(ctx)
	if err != nil {
		return err
	}
	defer x.close()
	rep.Local, _ = netip.ParseAddrPort(x.c.LocalAddr().String())
	r, err := x.transact(ctx, rep.Server)
	if err == errProbeLost {
		return ErrNoSTUN
	}
	if err != nil {
		return err
	}
	rep.Mapped = r.Mapped
	rep.NAT = !sameEndpoint(rep.Mapped, rep.Local)
	switch {
	case !rep.NAT:
		rep.Mapping = MappingNoNAT
		return nil
	case !r.HasOther:
		rep.Mapping = mappingUntestedNoOther
		return nil
	}
	rep.Other = r.Other
	r2, err := x.transact(ctx, netip.AddrPortFrom(r.Other.Addr(), rep.Server.Port()))
	if err != nil {
		rep.Mapping = "not tested: no answer from the server's alternate address " + r.Other.Addr().String()
		return ctx.Err()
	}
	if r2.Mapped == rep.Mapped {
		rep.Mapping = MappingIndependent
		return nil
	}
	r3, err := x.transact(ctx, r.Other)
	switch {
	case err != nil:
		rep.Mapping = "endpoint-dependent (the alternate port did not answer, so address- or port-dependence is not known)"
	case r3.Mapped == r2.Mapped:
		rep.Mapping = MappingAddress
	default:
		rep.Mapping = MappingAddressAndPort
	}
	return ctx.Err()
}

// sameEndpoint compares a mapped address with a local one; a socket bound
// to the wildcard address matches on the port (the mapped IP is then
// whatever interface the route chose, which the wildcard covers).
func sameEndpoint(mapped, local netip.AddrPort) bool {
	if local.Addr().IsUnspecified() {
		return mapped.Port() == local.Port() && isLocalAddr(mapped.Addr())
	}
	return mapped == local
}

// isLocalAddr reports whether a is an address of one of this host's interfaces.
func isLocalAddr(a netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if n, ok := ia.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok && ip.Unmap() == a.Unmap() {
				return true
			}
		}
	}
	return false
}
