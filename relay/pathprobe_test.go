package relay

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natkeep/natkeep/keepalive"
)

// fakeNATServer is a STUN server on loopback that plays the NAT too: it
// delivers an answer to a RESPONSE-PORT only if that port was heard from
// (or answered) less than lifetime ago, as a NAT's mapping would. The real
// thing is tested in the NAT lab (cmd/natkeep); this one keeps the prober's
// logic fast to test.
type fakeNATServer struct {
	conn     *net.UDPConn
	lifetime time.Duration
	mode     string // "nat", "silent", "ignore" (answers to the source), "420"

	mu       sync.Mutex
	seen     map[uint16]time.Time
	requests int
	shift    atomic.Bool // report heartbeats' mapped port one higher: the NAT "rebound" the flow
}

func newFakeNATServer(t *testing.T, lifetime time.Duration, mode string) *fakeNATServer {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	s := &fakeNATServer{conn: c, lifetime: lifetime, mode: mode, seen: map[uint16]time.Time{}}
	t.Cleanup(func() { c.Close() })
	go s.serve()
	return s
}

func (s *fakeNATServer) addr() netip.AddrPort {
	return s.conn.LocalAddr().(*net.UDPAddr).AddrPort()
}

func (s *fakeNATServer) serve() {
	buf := make([]byte, 1500)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return
		}
		req, err := keepalive.ReadBindingRequest(buf[:n], false)
		if err != nil {
			continue
		}
		now := time.Now()
		s.mu.Lock()
		s.requests++
		s.seen[from.Port()] = now
		to := from
		deliver := true
		if req.ResponsePort != 0 && s.mode != "ignore" {
			to = netip.AddrPortFrom(from.Addr(), req.ResponsePort)
			last, ok := s.seen[req.ResponsePort]
			deliver = ok && now.Sub(last) < s.lifetime
			if deliver {
				s.seen[req.ResponsePort] = now
			}
		}
		s.mu.Unlock()
		var resp []byte
		switch {
		case s.mode == "silent" || !deliver:
			continue
		case s.mode == "420" && req.ResponsePort != 0:
			req.Unknown[0], req.NUnknown = 0x0027, 1
			resp = keepalive.AppendUnknownAttributes(nil, req)
			to = from
		default:
			mapped := from
			if n == 28 && s.shift.Load() { // a heartbeat, not a probe (those carry SOFTWARE)
				mapped = netip.AddrPortFrom(from.Addr(), from.Port()+1)
			}
			resp = keepalive.AppendBindingResponse(nil, req.ID, mapped, req.Fingerprint)
		}
		_, _ = s.conn.WriteToUDPAddrPort(resp, to)
	}
}

func testProber(s *fakeNATServer) *prober {
	a := s.addr()
	return &prober{server: func() (netip.AddrPort, bool) { return a, true }}
}

// TestProberLearnsLifetime: against a simulated 1.5 s mapping lifetime the
// search brackets it within its resolution, and its probe sockets come
// and go (nothing stays open).
func TestProberLearnsLifetime(t *testing.T) {
	t.Parallel() // mostly waiting out probe silences
	s := newFakeNATServer(t, 1500*time.Millisecond, "nat")
	p := testProber(s)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rounds := 0
	start := time.Now()
	lt, err := p.learnLifetime(ctx, 500*time.Millisecond, 8*time.Second, func(int, []time.Duration) { rounds++ })
	if err != nil {
		t.Fatal(err)
	}
	if lt.Survives < 1200*time.Millisecond || lt.Survives >= 1500*time.Millisecond || lt.Expires < 1500*time.Millisecond || lt.Expires > 1800*time.Millisecond {
		t.Fatalf("learned %+v, want survives in [1.2s, 1.5s) and expires in [1.5s, 1.8s]", lt)
	}
	if p.rtt() <= 0 || p.sent.Load() == 0 || p.received.Load() == 0 {
		t.Fatalf("rtt %v, sent %d, received %d", p.rtt(), p.sent.Load(), p.received.Load())
	}
	t.Logf("learned %+v in %d rounds, %v; %d datagrams sent, %d received, srtt %v", lt, rounds, time.Since(start).Round(time.Millisecond), p.sent.Load(), p.received.Load(), p.rtt())
}

func TestProberUpstreamCannotBeProbed(t *testing.T) {
	t.Parallel() // mostly waiting out probe silences
	for _, c := range []struct {
		mode string
		want error
	}{
		{"silent", ErrNoSTUN},
		{"ignore", ErrNoResponsePort},
		{"420", ErrNoResponsePort},
	} {
		t.Run(c.mode, func(t *testing.T) {
			t.Parallel()
			s := newFakeNATServer(t, time.Hour, c.mode)
			p := testProber(s)
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			_, err := p.learnLifetime(ctx, 500*time.Millisecond, 2*time.Second, nil)
			if !errors.Is(err, c.want) {
				t.Fatalf("got %v, want %v", err, c.want)
			}
		})
	}
}

// TestRouteLearnsAndRelearnsOnMappingChange: an interval=auto route learns
// the (simulated) 3 s lifetime and puts 80 % of it in force; when a flow's
// heartbeat reply shows a new mapped address, the interval is halved at
// once and a re-learning starts for reason mapping_changed.
func TestRouteLearnsAndRelearnsOnMappingChange(t *testing.T) {
	t.Parallel() // mostly waiting out probe silences
	s := newFakeNATServer(t, 3*time.Second, "nat")
	o := udpOpts()
	o.Payload, _ = keepalive.ParsePayload("stun")
	o.Heartbeat.Pong, _ = keepalive.ParseReply("", o.Payload)
	o.Heartbeat.Interval = 15 * time.Second
	o.Path = PathOptions{AutoInterval: true, Fallback: 15 * time.Second}
	rt := hostileRoute("127.0.0.1:0", s.addr().String(), o)
	r := hostileStart(t, rt)
	metric := func(name string, kv ...string) float64 { return r.routeMetric(t, rt.Name, name, kv...) }
	if iv := metric("natkeep_udp_heartbeat_interval_seconds"); iv != 15 {
		t.Fatalf("interval before learning %v, want the fallback", iv)
	}
	waitFor := func(what string, d time.Duration, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(d)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out after %v waiting for %s\n%s", d, what, r.logs.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitFor("a learned lifetime", 90*time.Second, func() bool { return metric("natkeep_udp_path_state", "state", "learned") == 1 })
	lt := metric("natkeep_udp_path_binding_lifetime_seconds")
	iv := metric("natkeep_udp_heartbeat_interval_seconds")
	if lt < 2.7 || lt >= 3 || iv < 0.8*lt-0.1 || iv > 0.8*lt {
		t.Fatalf("learned lifetime %vs, interval %vs; want [2.7, 3) and 80%% of it", lt, iv)
	}
	c := hostileClient(t, r, 0)
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	waitFor("two heartbeat replies", 30*time.Second, func() bool { return metric("natkeep_udp_heartbeat_replies_total") >= 2 })
	s.shift.Store(true)
	waitFor("a re-learning for mapping_changed", 30*time.Second, func() bool {
		return metric("natkeep_udp_path_learnings_total", "reason", "mapping_changed") == 1
	})
	if got := metric("natkeep_udp_heartbeat_interval_seconds"); got < iv/2-0.01 || got > iv/2+0.01 {
		t.Fatalf("interval after the mapping changed %vs, want half of %vs", got, iv)
	}
	if metric("natkeep_udp_nat_mapping_changes_total") < 1 {
		t.Fatal("mapping change not counted")
	}
	s.shift.Store(false)
	waitFor("learned again", 90*time.Second, func() bool { return metric("natkeep_udp_path_state", "state", "learned") == 1 })
}

// TestRouteUpstreamWithoutSTUN: an interval=auto route whose upstream never
// answers STUN says so once, shows state no_stun and keeps the fallback.
func TestRouteUpstreamWithoutSTUN(t *testing.T) {
	t.Parallel()
	s := newFakeNATServer(t, time.Hour, "silent")
	o := udpOpts()
	o.Heartbeat.Interval = 7 * time.Second
	o.Path = PathOptions{AutoInterval: true, Fallback: 7 * time.Second, Relearn: time.Hour}
	rt := hostileRoute("127.0.0.1:0", s.addr().String(), o)
	r := hostileStart(t, rt)
	deadline := time.Now().Add(60 * time.Second)
	for r.routeMetric(t, rt.Name, "natkeep_udp_path_state", "state", "no_stun") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("state never became no_stun\n%s", r.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if iv := r.routeMetric(t, rt.Name, "natkeep_udp_heartbeat_interval_seconds"); iv != 7 {
		t.Fatalf("interval %vs, want the 7s fallback", iv)
	}
	if n := len(r.logs.lines("never answered a STUN Binding Request")); n != 1 {
		t.Fatalf("%d warnings about the silent upstream, want 1\n%s", n, r.logs.String())
	}
	if lost := r.routeMetric(t, rt.Name, "natkeep_udp_path_probes_total", "kind", "lifetime", "result", "lost"); lost < 1 {
		t.Fatalf("lost lifetime probes %v, want every ladder rung counted", lost)
	}
}
