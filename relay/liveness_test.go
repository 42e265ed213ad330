package relay

// Liveness rules end to end on loopback: any datagram from the upstream
// proves it alive, an upstream that never answers STUN is not dead, a dead
// peer keeps its flow and local port unless on_dead=rebind, heartbeat
// echoes never extend a flow's life, and per-flow log lines are throttled.

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/natkeep/natkeep/keepalive"
)

// livePeer is an upstream whose behaviour a test switches at run time: it
// answers STUN Binding Requests while answering is set (with a random
// mapped address when randomMapped is), echoes everything else when echo
// is set, and records what it receives.
type livePeer struct {
	conn         *net.UDPConn
	answering    atomic.Bool
	echo         bool
	randomMapped atomic.Bool

	mu  sync.Mutex
	got []udpRecv
}

func newLivePeer(t *testing.T, answering, echo bool) *livePeer {
	t.Helper()
	p := &livePeer{echo: echo}
	p.answering.Store(answering)
	p.conn = servePeer(t, "udp4", "127.0.0.1:0", 4<<20, func(c *net.UDPConn, b []byte, from netip.AddrPort) {
		d := bytes.Clone(b)
		p.mu.Lock()
		p.got = append(p.got, udpRecv{from, d, time.Now()})
		p.mu.Unlock()
		if id, err := keepalive.ParseBindingRequest(d); err == nil {
			if p.answering.Load() {
				mapped := from
				if p.randomMapped.Load() {
					mapped = netip.AddrPortFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(id[0])}), uint16(id[1])<<8|uint16(id[2]))
				}
				_, _ = c.WriteToUDPAddrPort(keepalive.AppendBindingSuccess(nil, id, mapped), from)
			} else if p.echo {
				_, _ = c.WriteToUDPAddrPort(d, from)
			}
			return
		}
		if p.echo {
			_, _ = c.WriteToUDPAddrPort(d, from)
		}
	})
	return p
}

func (p *livePeer) addr() string { return p.conn.LocalAddr().String() }

// requestSources returns the distinct addresses Binding Requests came from.
func (p *livePeer) requestSources() map[netip.AddrPort]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[netip.AddrPort]int{}
	for _, g := range p.got {
		if keepalive.LooksLikeSTUN(g.data) {
			out[g.from]++
		}
	}
	return out
}

// lastSource returns where the latest datagram came from.
func (p *livePeer) lastSource(t *testing.T) netip.AddrPort {
	t.Helper()
	var src netip.AddrPort
	eventually(t, "a datagram at the peer", func() bool {
		p.mu.Lock()
		defer p.mu.Unlock()
		if len(p.got) == 0 {
			return false
		}
		src = p.got[len(p.got)-1].from
		return true
	})
	return src
}

// liveSTUNOpts are client options with STUN heartbeats every interval.
func liveSTUNOpts(interval time.Duration, deadAfter int, rebind bool) UDPOptions {
	o := udpOpts()
	o.Payload, _ = keepalive.ParsePayload("stun")
	o.Heartbeat.Pong, _ = keepalive.ParseReply("", o.Payload)
	o.Heartbeat = keepalive.Schedule{Interval: interval, DeadAfter: deadAfter, Pong: o.Heartbeat.Pong, Rebind: rebind}
	return o
}

// liveStart runs one client route to peer and opens a flow from a new client.
func liveStart(t *testing.T, o UDPOptions, peer string) (*hostileRelay, Route, *net.UDPConn) {
	t.Helper()
	rt := hostileRoute("127.0.0.1:0", peer, o)
	r := hostileStart(t, rt)
	c := hostileClient(t, r, 0)
	if _, err := c.Write([]byte("open")); err != nil {
		t.Fatal(err)
	}
	return r, rt, c
}

func (h *hostileRelay) waitRouteMetric(t *testing.T, route, name string, atLeast float64, kv ...string) {
	t.Helper()
	eventually(t, name+" to reach "+strings.TrimRight(strings.TrimRight(time.Duration(atLeast).String(), "ns"), "s"), func() bool {
		return h.routeMetric(t, route, name, kv...) >= atLeast
	})
}

// TestUDPDeadPeerRebind: with on_dead=rebind, an upstream that answered and
// then went silent is declared dead after DeadAfter misses and the flow gets
// a new upstream socket, while the client keeps its flow.
func TestUDPDeadPeerRebind(t *testing.T) {
	peer := newLivePeer(t, true, false)
	r, rt, _ := liveStart(t, liveSTUNOpts(100*time.Millisecond, 3, true), peer.addr())
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_heartbeat_replies_total", 2)
	peer.answering.Store(false)
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_dead_peers_total", 1)
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_rebinds_total", 1)
	before := peer.requestSources()
	eventually(t, "heartbeats from a new socket", func() bool { return len(peer.requestSources()) > len(before) })
	if n := r.Stats().UDPFlows; n != 1 || r.routeMetric(t, rt.Name, "natkeep_udp_flows_created_total") != 1 {
		t.Fatalf("flows %d: the client's flow must survive a rebind", n)
	}
}

// TestUDPDeadPeerKeep: with the default on_dead=keep, the dead peer is
// reported once, the flow keeps its local port (heartbeats keep coming from
// one source), and when the upstream answers again the peer is revived by
// the reply.
func TestUDPDeadPeerKeep(t *testing.T) {
	peer := newLivePeer(t, true, false)
	r, rt, c := liveStart(t, liveSTUNOpts(100*time.Millisecond, 3, false), peer.addr())
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_heartbeat_replies_total", 2)
	src := peer.lastSource(t)
	peer.answering.Store(false)
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_dead_peers_total", 1)
	// Well past another DeadAfter misses: still one death, no rebind.
	beats := r.routeMetric(t, rt.Name, "natkeep_udp_heartbeats_sent_total")
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_heartbeats_sent_total", beats+8)
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_rebinds_total"); v != 0 {
		t.Fatalf("rebinds = %v with on_dead=keep", v)
	}
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_dead_peers_total"); v != 1 {
		t.Fatalf("dead peers = %v, want 1 (reported once)", v)
	}
	if srcs := peer.requestSources(); len(srcs) != 1 || srcs[src] == 0 {
		t.Fatalf("heartbeats came from %v, want only %v (the flow's local port)", srcs, src)
	}
	peer.answering.Store(true)
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_revived_peers_total", 1, "via", "reply")
	// The app's flow is the same one and still relays.
	if _, err := c.Write([]byte("after")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "app datagram at the peer", func() bool {
		peer.mu.Lock()
		defer peer.mu.Unlock()
		return string(peer.got[len(peer.got)-1].data) == "after" || bytes.Contains(flatten(peer.got), []byte("after"))
	})
	if n := len(r.logs.lines("UDP peer dead")); n != 1 {
		t.Fatalf("%d 'peer dead' lines, want 1:\n%s", n, r.logs)
	}
}

// flatten joins the payloads of got.
func flatten(got []udpRecv) []byte {
	var b []byte
	for _, g := range got {
		b = append(b, g.data...)
		b = append(b, 0)
	}
	return b
}

// TestUDPNeverAnsweredUpstreamNotDead: an upstream that ignores STUN (but is
// alive) is never declared dead and its flow never rebound: after DeadAfter
// misses natkeep warns once per route, counts it and keeps heartbeating.
func TestUDPNeverAnsweredUpstreamNotDead(t *testing.T) {
	peer := newLivePeer(t, false, false)
	o := liveSTUNOpts(100*time.Millisecond, 2, true) // even with rebind asked for
	rt := hostileRoute("127.0.0.1:0", peer.addr(), o)
	r := hostileStart(t, rt)
	clients := []*net.UDPConn{hostileClient(t, r, 0), hostileClient(t, r, 0), hostileClient(t, r, 0)} // three flows
	for _, c := range clients {
		if _, err := c.Write([]byte("open")); err != nil {
			t.Fatal(err)
		}
	}
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_unanswered_flows_total", 3)
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_upstream_not_answering"); v != 1 {
		t.Fatalf("natkeep_udp_upstream_not_answering = %v, want 1", v)
	}
	beats := r.routeMetric(t, rt.Name, "natkeep_udp_heartbeats_sent_total")
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_heartbeats_sent_total", beats+20)
	for _, name := range []string{"natkeep_udp_dead_peers_total", "natkeep_udp_rebinds_total"} {
		if v := r.routeMetric(t, rt.Name, name); v != 0 {
			t.Fatalf("%s = %v for an upstream that never answered STUN", name, v)
		}
	}
	if srcs := peer.requestSources(); len(srcs) != len(clients) {
		t.Fatalf("heartbeats from %d sources, want %d (no rebinds)", len(srcs), len(clients))
	}
	if n := len(r.logs.lines("does not answer stun heartbeats")); n != 1 {
		t.Fatalf("%d 'does not answer' lines, want 1 per route:\n%s", n, r.logs)
	}
	// The upstream starts answering: the gauge clears.
	peer.answering.Store(true)
	eventually(t, "gauge to clear", func() bool { return r.routeMetric(t, rt.Name, "natkeep_udp_upstream_not_answering") == 0 })
}

// TestUDPDataRevivesDeadPeer: a peer declared dead is revived by the first
// application datagram it sends (any datagram proves it alive), which also
// reaches the app.
func TestUDPDataRevivesDeadPeer(t *testing.T) {
	peer := newLivePeer(t, true, false)
	r, rt, c := liveStart(t, liveSTUNOpts(100*time.Millisecond, 2, false), peer.addr())
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_heartbeat_replies_total", 1)
	src := peer.lastSource(t)
	peer.answering.Store(false)
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_dead_peers_total", 1)
	if _, err := peer.conn.WriteToUDPAddrPort([]byte("server push"), src); err != nil {
		t.Fatal(err)
	}
	if got := readWithin(t, c, testDeadline); string(got) != "server push" {
		t.Fatalf("app got %q", got)
	}
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_revived_peers_total", 1, "via", "data")
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_revived_peers_total", "via", "reply"); v != 0 {
		t.Fatalf("revived via reply = %v; nothing answered", v)
	}
}

// TestUDPPushingServerWithoutSTUNNeverDead: a server that pushes data and
// ignores STUN keeps its flow alive by its data alone, even on a route whose
// upstream once answered STUN on another flow.
func TestUDPPushingServerWithoutSTUNNeverDead(t *testing.T) {
	peer := newLivePeer(t, true, false)
	r, rt, c := liveStart(t, liveSTUNOpts(100*time.Millisecond, 2, true), peer.addr())
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_heartbeat_replies_total", 1)
	src := peer.lastSource(t)
	peer.answering.Store(false)
	stop := make(chan struct{})
	pushed := make(chan int)
	go func() {
		n := 0
		tk := time.NewTicker(40 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				pushed <- n
				return
			case <-tk.C:
				if _, err := peer.conn.WriteToUDPAddrPort([]byte("push"), src); err == nil {
					n++
				}
			}
		}
	}()
	beats := r.routeMetric(t, rt.Name, "natkeep_udp_heartbeats_sent_total")
	got := 0
	buf := make([]byte, 100)
	for r.routeMetric(t, rt.Name, "natkeep_udp_heartbeats_sent_total") < beats+15 {
		_ = c.SetReadDeadline(time.Now().Add(testDeadline))
		if _, err := c.Read(buf); err != nil {
			t.Fatal(err)
		}
		got++
	}
	close(stop)
	n := <-pushed
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_dead_peers_total"); v != 0 {
		t.Fatalf("dead peers = %v while the server pushed %d datagrams", v, n)
	}
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_rebinds_total"); v != 0 {
		t.Fatalf("rebinds = %v while the server pushed", v)
	}
	if got < n/2 {
		t.Fatalf("app got %d of %d pushes", got, n)
	}
}

// liveExpiry opens n flows through a route with heartbeats every 300 ms and
// a 2 s idle timeout, each sending one datagram, and checks that every flow
// expires on schedule whatever the upstream sends back. It returns how many
// heartbeat echoes reached the apps.
func liveExpiry(t *testing.T, o UDPOptions, peer *livePeer, n int) (echoes int) {
	t.Helper()
	o.Heartbeat.Interval = 300 * time.Millisecond
	o.FlowIdleTimeout = 2 * time.Second
	rt := hostileRoute("127.0.0.1:0", peer.addr(), o)
	r := hostileStart(t, rt)
	clients := make([]*net.UDPConn, n)
	var sent time.Time
	for i := range clients {
		clients[i] = hostileClient(t, r, 0) // a flow each: one socket, one source port
	}
	sent = time.Now()
	for i, c := range clients {
		if _, err := c.Write([]byte{'x', byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	var total atomic.Int64
	for _, c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 100)
			_ = c.SetReadDeadline(time.Now().Add(4 * time.Second))
			for {
				m, err := c.Read(buf)
				if err != nil {
					return
				}
				if m == len(o.Payload.Bytes) && bytes.Equal(buf[:m], o.Payload.Bytes) {
					total.Add(1)
				}
			}
		}()
	}
	eventually(t, "flows to open", func() bool { return r.routeMetric(t, rt.Name, "natkeep_udp_flows_created_total") == float64(n) })
	var firstExpiry, allExpired time.Time
	deadline := time.Now().Add(testDeadline)
	for {
		exp := r.routeMetric(t, rt.Name, "natkeep_udp_flows_expired_total")
		if exp > 0 && firstExpiry.IsZero() {
			firstExpiry = time.Now()
		}
		if exp == float64(n) {
			allExpired = time.Now()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v of %d flows expired %v after their only datagram (idle timeout 2s)", exp, n, time.Since(sent))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if early := firstExpiry.Sub(sent); early < 2*time.Second {
		t.Fatalf("a flow expired %v after its datagram, before the 2s idle timeout", early)
	}
	wg.Wait()
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_heartbeats_sent_total"); v < float64(n) {
		t.Fatalf("only %v heartbeats for %d flows", v, n)
	}
	t.Logf("%d flows expired %v-%v after their datagram; %d echoes reached the apps, natkeep_udp_heartbeat_echoes_total %v",
		n, firstExpiry.Sub(sent).Round(10*time.Millisecond), allExpired.Sub(sent).Round(10*time.Millisecond), total.Load(),
		r.routeMetric(t, rt.Name, "natkeep_udp_heartbeat_echoes_total"))
	return int(total.Load())
}

// TestUDPEchoesNeverExtendFlows: an upstream that echoes every datagram
// answers every heartbeat; the echoes reach the apps (transparency) but
// flows still expire on schedule. A sink upstream gives the same expiry.
func TestUDPEchoesNeverExtendFlows(t *testing.T) {
	t.Run("echo", func(t *testing.T) {
		if echoes := liveExpiry(t, udpOpts(), newLivePeer(t, false, true), 50); echoes < 50 {
			t.Fatalf("only %d heartbeat echoes reached 50 apps", echoes)
		}
	})
	t.Run("sink", func(t *testing.T) {
		if echoes := liveExpiry(t, udpOpts(), newLivePeer(t, false, false), 50); echoes != 0 {
			t.Fatalf("%d echoes from a sink", echoes)
		}
	})
	t.Run("stun echo", func(t *testing.T) {
		// An echoed Binding Request is ours: consumed, never the app's.
		o := liveSTUNOpts(0, 3, false)
		if echoes := liveExpiry(t, o, newLivePeer(t, false, true), 10); echoes != 0 {
			t.Fatalf("%d echoed STUN requests reached the apps", echoes)
		}
	})
}

// TestUDPPerFlowLogsThrottled: a STUN server that answers with a random
// mapped address every time makes every reply a "mapping changed" event;
// from 20 flows over 5 s that is about a thousand events, logged as a handful of
// lines that say how many were suppressed.
func TestUDPPerFlowLogsThrottled(t *testing.T) {
	peer := newLivePeer(t, true, false)
	peer.randomMapped.Store(true)
	o := liveSTUNOpts(100*time.Millisecond, 3, false)
	rt := hostileRoute("127.0.0.1:0", peer.addr(), o)
	r := hostileStart(t, rt)
	for range 20 {
		c := hostileClient(t, r, 0)
		if _, err := c.Write([]byte("open")); err != nil {
			t.Fatal(err)
		}
	}
	// The storm lasts 5 s (the scenario, not a wait for a result).
	time.Sleep(5 * time.Second)
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_nat_mapping_changes_total", 200)
	events := r.routeMetric(t, rt.Name, "natkeep_udp_nat_mapping_changes_total")
	lines := r.logs.lines("NAT mapping changed")
	if all := strings.Count(r.logs.String(), "\n"); all >= 100 {
		t.Fatalf("%d log lines in 5 s from 20 flows", all)
	}
	if len(lines) >= 30 {
		t.Fatalf("%d 'mapping changed' lines for %v events", len(lines), events)
	}
	if len(r.logs.lines(`"suppressed":`)) == 0 {
		t.Fatalf("no line reports the suppressed count:\n%s", r.logs)
	}
	t.Logf("%v mapping changes, %d log lines", events, len(lines))
}

// TestUDPDeadPeerFollowsNewAddress: on_dead=keep, the peer dies, and the
// upstream name now points elsewhere (the resolver's answer is swapped in
// directly): the flow's socket is reconnected to the new address and
// heartbeats reach it from the same local port, with no rebind.
func TestUDPDeadPeerFollowsNewAddress(t *testing.T) {
	old, moved := newLivePeer(t, true, false), newLivePeer(t, true, false)
	r, rt, _ := liveStart(t, liveSTUNOpts(100*time.Millisecond, 2, false), old.addr())
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_heartbeat_replies_total", 1)
	src := old.lastSource(t)
	old.answering.Store(false)
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_dead_peers_total", 1)
	next := netip.MustParseAddrPort(moved.addr())
	r.udp[0].up.cur.Store(&next) // what a re-resolution that found a new address does
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_upstream_reconnects_total", 1)
	r.waitRouteMetric(t, rt.Name, "natkeep_udp_revived_peers_total", 1, "via", "reply")
	if srcs := moved.requestSources(); len(srcs) != 1 || srcs[src] == 0 {
		t.Fatalf("the new address got heartbeats from %v, want only %v (same local port)", srcs, src)
	}
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_rebinds_total"); v != 0 {
		t.Fatalf("rebinds = %v", v)
	}
}
