package relay

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natkeep/natkeep/keepalive"
)

func newRouteUDP(listen, upstream string, o UDPOptions) Route {
	return Route{Name: "udp://" + listen + "/" + upstream, Proto: UDP, Listen: listen, Upstream: upstream, UDP: o}
}

// TestUDPSizesIntact sends every interesting size both ways and checks each
// datagram comes back byte for byte and in order.
func TestUDPSizesIntact(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			host := "127.0.0.1"
			if network == "udp6" {
				host = "[::1]"
				if c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback}); err != nil {
					t.Skipf("IPv6 loopback unavailable: %v", err)
				} else {
					c.Close()
				}
			}
			srv := newUDPServer(t, network, host+":0", true)
			r, _ := startRelay(t, newRouteUDP(host+":0", srv.addr(), udpOpts()))
			c := dialUDP(t, r.Addrs()[0])
			sizes := []int{0, 1, 1400, 9000, 65507}
			if network == "udp6" {
				sizes = append(sizes, 65527) // IPv6 carries 20 bytes more
			}
			for _, n := range sizes {
				msg := make([]byte, n)
				_, _ = rand.Read(msg)
				if _, err := c.Write(msg); err != nil {
					t.Fatalf("size %d: write: %v", n, err)
				}
				got := readWithin(t, c, testDeadline)
				if !bytes.Equal(got, msg) {
					t.Fatalf("size %d: got %d bytes back, content equal=%v", n, len(got), bytes.Equal(got, msg))
				}
			}
			// In order: a burst of numbered datagrams arrives in sequence.
			for i := range 200 {
				if _, err := fmt.Fprintf(c, "seq-%04d", i); err != nil {
					t.Fatal(err)
				}
			}
			for i := range 200 {
				if got, want := string(readWithin(t, c, testDeadline)), fmt.Sprintf("seq-%04d", i); got != want {
					t.Fatalf("out of order: got %q want %q", got, want)
				}
			}
		})
	}
}

// TestUDPManyFlowsIsolated runs 1,000 concurrent clients; each must get only
// its own replies, and each must have its own upstream socket.
func TestUDPManyFlowsIsolated(t *testing.T) {
	srv := newUDPServer(t, "udp4", "127.0.0.1:0", true)
	r, m := startRelay(t, newRouteUDP("127.0.0.1:0", srv.addr(), udpOpts()))
	const clients, rounds = 1000, 3
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		conns[i] = dialUDP(t, r.Addrs()[0])
	}
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 128)
			for k := range rounds {
				want := fmt.Sprintf("client-%d-round-%d", i, k)
				// UDP may drop under a burst of 1,000 clients (socket
				// buffers): resend on timeout. What must never happen is
				// a reply meant for another client.
				own := fmt.Sprintf("client-%d-", i)
				got := ""
				for try := 0; got != want && try < 20; try++ {
					if _, err := c.Write([]byte(want)); err != nil {
						errs <- err
						return
					}
					deadline := time.Now().Add(500 * time.Millisecond)
					for got != want {
						_ = c.SetReadDeadline(deadline)
						n, err := c.Read(buf)
						if err != nil {
							break
						}
						got = string(buf[:n])
						if !strings.HasPrefix(got, own) {
							errs <- fmt.Errorf("client %d got %q, meant for another client", i, got)
							return
						}
					}
				}
				if got != want {
					errs <- fmt.Errorf("client %d got %q, want %q", i, got, want)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if got := r.Stats().UDPFlows; got != clients {
		t.Fatalf("flows = %d, want %d", got, clients)
	}
	// One upstream source port per flow: each flow has its own mapping.
	ports := map[netip.AddrPort]bool{}
	for _, d := range srv.received() {
		ports[d.from] = true
	}
	if len(ports) != clients {
		t.Fatalf("server saw %d distinct upstream sockets, want %d", len(ports), clients)
	}
	if got := counter(m.flowsCreated); got != clients {
		t.Fatalf("flows created metric = %v", got)
	}
}

// TestUDPStrangerNeverDelivered sends from a third party to a flow's upstream
// socket: the connected socket must drop it.
func TestUDPStrangerNeverDelivered(t *testing.T) {
	srv := newUDPServer(t, "udp4", "127.0.0.1:0", true)
	r, _ := startRelay(t, newRouteUDP("127.0.0.1:0", srv.addr(), udpOpts()))
	c := dialUDP(t, r.Addrs()[0])
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	if got := readWithin(t, c, testDeadline); string(got) != "hello" {
		t.Fatalf("echo = %q", got)
	}
	flowSock := srv.received()[0].from
	// Unconnected, so the ICMP port unreachable the kernel sends back (no
	// socket takes the datagram) does not fail the next write.
	stranger, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer stranger.Close()
	for range 5 {
		if _, err := stranger.WriteToUDPAddrPort([]byte("spoofed"), flowSock); err != nil {
			t.Fatal(err)
		}
	}
	expectNothing(t, c, 500*time.Millisecond)
	// The flow still works after the attempt.
	if _, err := c.Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	if got := readWithin(t, c, testDeadline); string(got) != "again" {
		t.Fatalf("echo after stranger = %q", got)
	}
}

// TestUDPHeartbeats checks heartbeats start after the idle interval, carry
// the payload, pause while the app talks, and never reach the app as
// anything but what the server sends.
func TestUDPHeartbeats(t *testing.T) {
	srv := newUDPServer(t, "udp4", "127.0.0.1:0", false)
	o := udpOpts()
	o.Payload, _ = keepalive.ParsePayload("text:PING")
	o.Heartbeat.Interval = 300 * time.Millisecond
	r, m := startRelay(t, newRouteUDP("127.0.0.1:0", srv.addr(), o))
	c := dialUDP(t, r.Addrs()[0])

	start := time.Now()
	if _, err := c.Write([]byte("data")); err != nil {
		t.Fatal(err)
	}
	isPing := func(d udpRecv) bool { return string(d.data) == "PING" }
	got := srv.waitFor(t, "first heartbeat", func(g []udpRecv) bool { return len(g) >= 2 })
	if string(got[0].data) != "data" || !isPing(got[1]) {
		t.Fatalf("server got %q then %q", got[0].data, got[1].data)
	}
	if wait := got[1].at.Sub(start); wait < 240*time.Millisecond {
		t.Fatalf("first heartbeat after %v, before 80%% of the 300ms interval", wait)
	}
	if got[1].from != got[0].from {
		t.Fatalf("heartbeat sent from %v, flow uses %v", got[1].from, got[0].from)
	}
	srv.waitFor(t, "heartbeats to repeat", func(g []udpRecv) bool { return len(g) >= 4 })

	// While the app sends every 50 ms (well under 80% of the interval), no
	// heartbeat may be sent.
	talkStart := time.Now()
	for range 20 {
		if _, err := c.Write([]byte("talk")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	talkEnd := time.Now()
	for _, d := range srv.received() {
		// A beat already due when talking began may land in the first instant.
		if isPing(d) && d.at.After(talkStart.Add(20*time.Millisecond)) && d.at.Before(talkEnd) {
			t.Fatalf("heartbeat at %v while the app was talking", d.at.Sub(talkStart))
		}
	}
	n := len(srv.received())
	srv.waitFor(t, "heartbeats to resume", func(g []udpRecv) bool { return len(g) > n && isPing(g[len(g)-1]) })
	if counter(m.heartbeats) < 3 {
		t.Fatalf("heartbeats metric = %v", counter(m.heartbeats))
	}
}

// TestUDPFlowExpiry checks a flow ends after the idle timeout even though
// heartbeats keep flowing, and a new datagram then opens a fresh flow.
func TestUDPFlowExpiry(t *testing.T) {
	srv := newUDPServer(t, "udp4", "127.0.0.1:0", false)
	o := udpOpts()
	o.FlowIdleTimeout = 700 * time.Millisecond
	o.Heartbeat.Interval = 100 * time.Millisecond
	r, m := startRelay(t, newRouteUDP("127.0.0.1:0", srv.addr(), o))
	c := dialUDP(t, r.Addrs()[0])
	sent := time.Now()
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "flow to start", func() bool { return r.Stats().UDPFlows == 1 })
	// The table entry goes before the counters move: wait for both.
	eventually(t, "flow to expire", func() bool { return r.Stats().UDPFlows == 0 && counter(m.flowsExpired) == 1 })
	if age := time.Since(sent); age < 700*time.Millisecond {
		t.Fatalf("flow expired after %v, before its 700ms idle timeout", age)
	}
	if counter(m.flowsExpired) != 1 || counter(m.flowsActive) != 0 {
		t.Fatalf("expired=%v active=%v", counter(m.flowsExpired), counter(m.flowsActive))
	}
	beats := len(srv.received()) - 1
	if beats < 3 {
		t.Fatalf("only %d heartbeats during the flow's life", beats)
	}
	// After expiry no more heartbeats are sent for it.
	time.Sleep(300 * time.Millisecond)
	n := len(srv.received())
	time.Sleep(300 * time.Millisecond)
	if len(srv.received()) != n {
		t.Fatal("heartbeats continued after the flow expired")
	}
	if _, err := c.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a new flow", func() bool { return counter(m.flowsCreated) == 2 })
}

// TestUDPMaxFlows refuses new flows beyond the limit while existing flows
// keep working.
func TestUDPMaxFlows(t *testing.T) {
	srv := newUDPServer(t, "udp4", "127.0.0.1:0", true)
	o := udpOpts()
	o.MaxFlows = 2
	r, m := startRelay(t, newRouteUDP("127.0.0.1:0", srv.addr(), o))
	a, b, extra := dialUDP(t, r.Addrs()[0]), dialUDP(t, r.Addrs()[0]), dialUDP(t, r.Addrs()[0])
	for _, c := range []*net.UDPConn{a, b} {
		if _, err := c.Write([]byte("in")); err != nil {
			t.Fatal(err)
		}
		readWithin(t, c, testDeadline)
	}
	for range 3 {
		if _, err := extra.Write([]byte("refused")); err != nil {
			t.Fatal(err)
		}
	}
	expectNothing(t, extra, 300*time.Millisecond)
	if got := counter(m.flowsRefused.WithLabelValues(r.udp[0].route.Name, refuseLimit)); got != 3 {
		t.Fatalf("refused = %v, want 3", got)
	}
	if _, err := a.Write([]byte("still")); err != nil {
		t.Fatal(err)
	}
	if got := readWithin(t, a, testDeadline); string(got) != "still" {
		t.Fatalf("existing flow got %q", got)
	}
	for _, d := range srv.received() {
		if string(d.data) == "refused" {
			t.Fatal("a refused datagram reached the server")
		}
	}
}

// TestUDPUpstreamRefusedThenBack: the upstream is down (ICMP port
// unreachable), then comes back; the same flow carries on.
func TestUDPUpstreamRefusedThenBack(t *testing.T) {
	// Reserve a port, then free it so nothing listens there.
	tmp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := tmp.LocalAddr().String()
	tmp.Close()
	r, m := startRelay(t, newRouteUDP("127.0.0.1:0", addr, udpOpts()))
	c := dialUDP(t, r.Addrs()[0])
	for range 3 {
		if _, err := c.Write([]byte("nobody")); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	eventually(t, "refusal to be counted", func() bool { return counter(m.udp("udp://127.0.0.1:0/"+addr).dropUpRefused) > 0 })
	srv := newUDPServer(t, "udp4", addr, true)
	eventually(t, "the flow to work again", func() bool {
		if _, err := c.Write([]byte("back")); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 16)
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		n, err := c.Read(buf)
		return err == nil && string(buf[:n]) == "back"
	})
	if r.Stats().UDPFlows != 1 || counter(m.flowsCreated) != 1 {
		t.Fatalf("flows=%d created=%v: the flow should have survived", r.Stats().UDPFlows, counter(m.flowsCreated))
	}
	_ = srv
}

// TestUDPResponderAndSTUNClient chains a client route with STUN heartbeats to
// a responder route in front of a plain echo server: app data passes both
// ways, heartbeats are answered by the responder with the right mapped
// address, RTT is measured, and the echo server never sees STUN.
func TestUDPResponderAndSTUNClient(t *testing.T) {
	echo := newUDPServer(t, "udp4", "127.0.0.1:0", true)
	resp := Route{Name: "responder", Proto: UDP, Listen: "127.0.0.1:0", Upstream: echo.addr(), UDP: udpOpts()}
	resp.UDP.Role = RoleResponder
	rr, rm := startRelay(t, resp)

	o := udpOpts()
	o.Payload, _ = keepalive.ParsePayload("stun")
	o.Heartbeat.Pong, _ = keepalive.ParseReply("", o.Payload)
	o.Heartbeat = keepalive.Schedule{Interval: 150 * time.Millisecond, DeadAfter: 3, Pong: o.Heartbeat.Pong}
	cr, cm := startRelay(t, newRouteUDP("127.0.0.1:0", rr.Addrs()[0].String(), o))
	c := dialUDP(t, cr.Addrs()[0])
	for i := range 5 {
		msg := fmt.Appendf(nil, "app-%d", i)
		if _, err := c.Write(msg); err != nil {
			t.Fatal(err)
		}
		if got := readWithin(t, c, testDeadline); !bytes.Equal(got, msg) {
			t.Fatalf("got %q want %q", got, msg)
		}
	}
	eventually(t, "3 heartbeat replies", func() bool { return counter(cm.replies) >= 3 })
	if counter(rm.stunAnswered) < 3 {
		t.Fatalf("responder answered %v", counter(rm.stunAnswered))
	}
	if n := counter(cm.deadPeers); n != 0 {
		t.Fatalf("dead peers = %v", n)
	}
	expectNothing(t, c, 300*time.Millisecond) // STUN responses are consumed
	for _, d := range echo.received() {
		if keepalive.LooksLikeSTUN(d.data) {
			t.Fatal("echo server saw a STUN message")
		}
	}
	// The mapped address the responder reported is the client relay's
	// upstream socket, as the echo server sees it.
	u := cr.udp[0]
	f := u.flows[flowKey{client: netip.MustParseAddrPort(c.LocalAddr().String())}]
	f.mu.Lock()
	mapped := f.mapped
	last, smoothed := f.ka.RTT()
	f.mu.Unlock()
	if want := f.conn.Load().localAddr(); mapped == nil || *mapped != want {
		t.Fatalf("mapped = %v, want %v", mapped, want)
	}
	if last <= 0 || smoothed <= 0 {
		t.Fatalf("rtt not measured: %v %v", last, smoothed)
	}
}

// TestUDPResponderPassesLookalikes: data that looks like a STUN request but
// has no valid fingerprint goes to the server untouched.
func TestUDPResponderPassesLookalikes(t *testing.T) {
	echo := newUDPServer(t, "udp4", "127.0.0.1:0", true)
	resp := Route{Name: "responder", Proto: UDP, Listen: "127.0.0.1:0", Upstream: echo.addr(), UDP: udpOpts()}
	resp.UDP.Role = RoleResponder
	rr, _ := startRelay(t, resp)
	c := dialUDP(t, rr.Addrs()[0])
	req := keepalive.AppendBindingRequest(nil, keepalive.NewTxID())
	req[len(req)-1] ^= 0xFF // break the fingerprint
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	if got := readWithin(t, c, testDeadline); !bytes.Equal(got, req) {
		t.Fatal("lookalike was not relayed untouched")
	}
}

// TestUDPByteReplyConsumed: with a protocol's own ping/pong configured
// (payload text:PING, reply text:PONG), pongs are consumed and timed, and
// everything else from the server still reaches the app.
func TestUDPByteReplyConsumed(t *testing.T) {
	srv := newUDPServer(t, "udp4", "127.0.0.1:0", false)
	go func() {
		// Answer each PING with a PONG, as the server's protocol would.
		seen := 0
		for range 200 {
			got := srv.received()
			for _, d := range got[seen:] {
				if string(d.data) == "PING" {
					_, _ = srv.conn.WriteToUDPAddrPort([]byte("PONG"), d.from)
				}
			}
			seen = len(got)
			time.Sleep(20 * time.Millisecond)
		}
	}()
	o := udpOpts()
	o.Payload, _ = keepalive.ParsePayload("text:PING")
	o.Heartbeat.Pong, _ = keepalive.ParseReply("text:PONG", o.Payload)
	o.Heartbeat = keepalive.Schedule{Interval: 150 * time.Millisecond, DeadAfter: 3, Pong: o.Heartbeat.Pong}
	r, m := startRelay(t, newRouteUDP("127.0.0.1:0", srv.addr(), o))
	c := dialUDP(t, r.Addrs()[0])
	if _, err := c.Write([]byte("open")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "3 pongs consumed", func() bool { return counter(m.replies) >= 3 })
	flowSock := srv.received()[0].from
	if _, err := srv.conn.WriteToUDPAddrPort([]byte("app data"), flowSock); err != nil {
		t.Fatal(err)
	}
	if got := readWithin(t, c, testDeadline); string(got) != "app data" {
		t.Fatalf("app got %q, want the server's data (pongs must be consumed)", got)
	}
	if counter(m.deadPeers) != 0 {
		t.Fatal("peer declared dead while answering")
	}
}
