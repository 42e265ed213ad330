//go:build linux

package main

// Liveness behind a real Linux NAT: a server that pushes but ignores STUN
// keeps its flow and mapping; TTL-limited heartbeats heal a flushed mapping
// within ttl_heal (and do not without it); a dead peer keeps its local port
// and external mapping by default, so the server's pushes arrive again as
// soon as it is reachable.

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

// livePushes makes the server push a numbered datagram to dst every period
// until stop is closed; it returns how many it sent.
func livePushes(t *testing.T, server *nktest.UDP, dst netip.AddrPort, period time.Duration, stop <-chan struct{}) <-chan int {
	t.Helper()
	sent := make(chan int, 1)
	go func() {
		n := 0
		tk := time.NewTicker(period)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				sent <- n
				return
			case <-tk.C:
				if _, err := server.Conn.WriteToUDPAddrPort(fmt.Appendf(nil, "push %d", n), dst); err == nil {
					n++
				}
			}
		}
	}()
	return sent
}

// TestNATPushingServerIgnoresSTUN: a server that pushes 10 datagrams/s and
// never answers STUN, behind a NAT with a 3 s UDP timeout, client route
// payload=stun&interval=300ms&dead_after=2: the app receives at least 80 %
// of the pushes over 10 s, natkeep never rebinds or declares the peer dead,
// and every datagram the server sees comes from one public address.
func TestNATPushingServerIgnoresSTUN(t *testing.T) {
	l := natlab.New(t, natlab.Config{UDPTimeout: 3 * time.Second, UDPStreamTimeout: 3 * time.Second})
	server := nktest.NewUDP(t, l.ListenUDP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 9000).String()))
	route := fmt.Sprintf("udp://127.0.0.1:5000/%s?payload=stun&interval=300ms&dead_after=2", netip.AddrPortFrom(l.ServerAddr, 9000))
	nk := startNatkeep(t, l, "NATKEEP_ROUTES="+route)
	app := nktest.NewUDP(t, l.DialUDP(t, l.Client, "127.0.0.1:5000"))
	public := sayHello(t, l, app, server)

	stop := make(chan struct{})
	sentc := livePushes(t, server, public, 100*time.Millisecond, stop)
	time.Sleep(10 * time.Second) // the scenario: 10 s of pushes
	close(stop)
	sent := <-sentc
	nktest.Eventually(3*time.Second, 50*time.Millisecond, func() bool { return app.CountPrefix("push ") >= sent })
	got := app.CountPrefix("push ")
	sources := map[netip.AddrPort]int{}
	for _, g := range server.All() {
		sources[g.From]++
	}
	admin := l.HTTPClient(l.Client)
	fams := nktest.Scrape(t, admin, "127.0.0.1:9299")
	labels := map[string]string{"route": route}
	rebinds := nktest.Value(fams, "natkeep_udp_rebinds_total", labels)
	dead := nktest.Value(fams, "natkeep_udp_dead_peers_total", labels)
	beats := nktest.Value(fams, "natkeep_udp_heartbeats_sent_total", labels)
	unanswered := nktest.Value(fams, "natkeep_udp_upstream_not_answering", labels)
	t.Logf("pushes: %d sent, %d received (%.0f%%); server saw %d datagrams from %v; heartbeats %v, rebinds %v, dead %v, not_answering %v",
		sent, got, 100*float64(got)/float64(max(sent, 1)), len(server.All()), sources, beats, rebinds, dead, unanswered)
	if got*10 < sent*8 {
		t.Fatalf("app received %d of %d pushes (< 80%%)\n%s", got, sent, nk.Output())
	}
	if rebinds != 0 || dead != 0 || nk.Count("rebound") != 0 {
		t.Fatalf("rebinds %v, dead %v: a pushing server is alive\n%s", rebinds, dead, nk.Output())
	}
	if len(sources) != 1 || sources[public] == 0 {
		t.Fatalf("server saw the flow from %v; want only %v (external port unchanged)", sources, public)
	}
	if beats < 3 {
		t.Fatalf("only %v heartbeats: the scenario did not exercise STUN heartbeats", beats)
	}
}

// TestNATTTLHealAfterFlush: TTL-1 heartbeats keep a mapping but cannot
// re-create one. After `conntrack -F` in the router, with ttl_heal=3s a
// full-TTL heartbeat re-creates the mapping on the same external port within
// about ttl_heal, and a server push then reaches the app without any app
// traffic; with ttl_heal=0 (the control) nothing re-creates it and the push
// is lost.
func TestNATTTLHealAfterFlush(t *testing.T) {
	run := func(t *testing.T, healPeriod time.Duration) (recovered bool, after time.Duration) {
		l := natlab.New(t, natlab.Config{UDPTimeout: 3 * time.Second, UDPStreamTimeout: 3 * time.Second})
		server := nktest.NewUDP(t, l.ListenUDP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 9000).String()))
		route := fmt.Sprintf("udp://127.0.0.1:5000/%s?interval=500ms&ttl=1&ttl_heal=%s", netip.AddrPortFrom(l.ServerAddr, 9000), healPeriod)
		nk := startNatkeep(t, l, "NATKEEP_ROUTES="+route)
		app := nktest.NewUDP(t, l.DialUDP(t, l.Client, "127.0.0.1:5000"))
		public := sayHello(t, l, app, server)
		start := time.Now()
		if _, err := server.Conn.WriteToUDPAddrPort([]byte("welcome"), public); err != nil {
			t.Fatal(err)
		}
		if _, ok := app.WaitData(5*time.Second, "welcome"); !ok {
			t.Fatal("app never got the immediate reply")
		}
		l.Run(t, l.Router, "conntrack", "-F")
		flushed := time.Now()
		// The heal heartbeat is what reaches the server: wait for it (8 s
		// bounds the control), then push once.
		var heal nktest.Datagram
		deadline := flushed.Add(8 * time.Second)
		for heal.At.IsZero() && time.Now().Before(deadline) {
			for _, g := range server.All() {
				if g.At.After(flushed) {
					heal = g
					break
				}
			}
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := server.Conn.WriteToUDPAddrPort([]byte("push after flush"), public); err != nil {
			t.Fatal(err)
		}
		_, pushed := app.WaitData(3*time.Second, "push after flush")
		if !heal.At.IsZero() {
			after = heal.At.Sub(flushed)
			if heal.Data != "" || heal.From != public {
				t.Fatalf("after the flush the server got %q from %v; want an empty heartbeat from %v", heal.Data, heal.From, public)
			}
		}
		// Only heal heartbeats reach the server, at most one per period.
		empties, limit := server.Count(""), 0
		if healPeriod > 0 {
			limit = int(time.Since(start)/healPeriod) + 1
		}
		t.Logf("ttl_heal=%s: heal heartbeat at the server %v after the flush (0 = none in 8 s); push after the flush arrived: %v; server saw %d heartbeats in %v",
			healPeriod, after.Round(10*time.Millisecond), pushed, empties, time.Since(start).Round(100*time.Millisecond))
		if empties > limit {
			t.Fatalf("server saw %d heartbeats in %v, want at most %d: TTL-1 heartbeats must never reach it\n%s", empties, time.Since(start), limit, nk.Output())
		}
		return pushed, after
	}
	t.Run("ttl_heal=3s", func(t *testing.T) {
		t.Parallel()
		ok, after := run(t, 3*time.Second)
		if !ok {
			t.Fatal("push after the flush was lost although heal heartbeats are on")
		}
		if after <= 0 || after > 3*time.Second+time.Second {
			t.Fatalf("mapping re-created %v after the flush; want within ttl_heal (3s) plus one interval", after)
		}
	})
	t.Run("ttl_heal=0 control", func(t *testing.T) {
		t.Parallel()
		if ok, after := run(t, 0); ok || after != 0 {
			t.Fatalf("without heal heartbeats the mapping came back (push %v, heartbeat after %v): the lab proves nothing", ok, after)
		}
	})
}

// liveResponderLab is the client natkeep (STUN heartbeats) -> NAT -> a
// natkeep responder in the server namespace in front of a recording server
// that pushes to the responder's flow socket.
type liveResponderLab struct {
	l       *natlab.Lab
	client  *natlab.Proc
	resp    *natlab.Proc
	app     *nktest.UDP
	server  *nktest.UDP
	route   string
	flowDst netip.AddrPort // the responder's flow socket, as the server sees it
}

func newLiveResponderLab(t *testing.T, onDead string) *liveResponderLab {
	l := natlab.New(t, natlab.Config{UDPTimeout: 3 * time.Second, UDPStreamTimeout: 3 * time.Second})
	server := nktest.NewUDP(t, l.ListenUDP(t, l.Server, "127.0.0.1:9001"))
	respRoute := fmt.Sprintf("udp://%s/127.0.0.1:9001?role=responder", netip.AddrPortFrom(l.ServerAddr, 9000))
	resp := l.StartProcess(t, l.Server, []string{"NATKEEP_LOG_LEVEL=debug", "NATKEEP_LOG_FORMAT=json", "NATKEEP_ADMIN_ADDR=off", "NATKEEP_DRAIN_TIMEOUT=1s", "NATKEEP_ROUTES=" + respRoute}, natlab.NatkeepBinary(t))
	if !resp.WaitFor(20*time.Second, `"msg":"natkeep started"`) {
		t.Fatalf("responder did not start:\n%s", resp.Output())
	}
	route := fmt.Sprintf("udp://127.0.0.1:5000/%s?payload=stun&interval=1s&dead_after=3&on_dead=%s", netip.AddrPortFrom(l.ServerAddr, 9000), onDead)
	client := startNatkeep(t, l, "NATKEEP_ROUTES="+route)
	s := &liveResponderLab{l: l, client: client, resp: resp, server: server, route: route}
	s.app = nktest.NewUDP(t, l.DialUDP(t, l.Client, "127.0.0.1:5000"))
	if _, err := s.app.Conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	hello, ok := server.WaitData(10*time.Second, "hello")
	if !ok {
		t.Fatal("server never got the app's hello through both natkeeps")
	}
	s.flowDst = hello.From
	return s
}

// TestNATDeadPeerKeepsMapping: on_dead=keep (the default). The server is
// blackholed for longer than interval*dead_after: natkeep declares the peer
// dead once and does not rebind; when the blackhole lifts, the server's
// pushes to the address it knows arrive again within about one interval,
// and the responder still sees the client from the same public address
// (one flow there, never a second).
func TestNATDeadPeerKeepsMapping(t *testing.T) {
	s := newLiveResponderLab(t, "keep")
	stop := make(chan struct{})
	sentc := livePushes(t, s.server, s.flowDst, 200*time.Millisecond, stop)
	defer func() { close(stop); <-sentc }()
	if _, ok := s.app.WaitData(10*time.Second, "push 2"); !ok {
		t.Fatal("pushes do not reach the app before the blackhole")
	}
	// The upstream must have answered STUN first: one that never did is
	// not dead, it just does not speak STUN.
	admin := s.l.HTTPClient(s.l.Client)
	labels := map[string]string{"route": s.route}
	if !nktest.Eventually(20*time.Second, 100*time.Millisecond, func() bool {
		return nktest.Value(nktest.Scrape(t, admin, "127.0.0.1:9299"), "natkeep_udp_heartbeat_replies_total", labels) >= 2
	}) {
		t.Fatalf("no STUN replies through the responder:\n%s", s.client.Output())
	}
	unblock := s.l.BlockServer(t)
	blocked := time.Now()
	if !s.client.WaitFor(30*time.Second, "UDP peer dead") {
		t.Fatalf("peer never declared dead:\n%s", s.client.Output())
	}
	time.Sleep(time.Until(blocked.Add(6 * time.Second))) // the blackhole: 6 s > interval*dead_after
	before := s.app.CountPrefix("push ")
	unblock()
	unblocked := time.Now()
	if !nktest.Eventually(10*time.Second, 20*time.Millisecond, func() bool { return s.app.CountPrefix("push ") != before }) {
		t.Fatalf("no push reached the app in 10 s after the blackhole lifted\n%s", s.client.Output())
	}
	firstPush := time.Since(unblocked)
	if firstPush > 2*time.Second {
		t.Fatalf("first push %v after the blackhole lifted; want within about one interval (1s)", firstPush)
	}
	if !s.client.WaitFor(10*time.Second, "UDP peer alive again") {
		t.Fatalf("peer never reported alive again:\n%s", s.client.Output())
	}
	if n := s.client.Count("rebound"); n != 0 {
		t.Fatalf("flow rebound %d times with on_dead=keep", n)
	}
	if n := s.resp.Count(`"msg":"UDP flow started"`); n != 1 {
		t.Fatalf("responder started %d flows: the client's public address changed\n%s", n, s.resp.Output())
	}
	fams := nktest.Scrape(t, admin, "127.0.0.1:9299")
	if v := nktest.Value(fams, "natkeep_udp_dead_peers_total", labels); v != 1 {
		t.Fatalf("dead peers = %v", v)
	}
	if v := nktest.Value(fams, "natkeep_udp_rebinds_total", labels); v != 0 {
		t.Fatalf("rebinds = %v", v)
	}
	t.Logf("on_dead=keep: dead declared, no rebind; first push %v after the blackhole lifted; responder flows 1", firstPush.Round(10*time.Millisecond))
}
