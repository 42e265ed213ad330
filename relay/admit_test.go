package relay

import (
	"net"
	"testing"
	"time"
)

// admitClient opens a flow from a socket bound to ip and waits for its
// echo; it reports whether the flow works.
func admitClient(t *testing.T, r *hostileRelay, ip net.IP) (*net.UDPConn, bool) {
	t.Helper()
	c, err := net.DialUDP("udp4", &net.UDPAddr{IP: ip}, r.Addrs()[0].(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, admitEcho(c, "hello")
}

// admitEcho sends msg and reports whether its echo came back in time.
func admitEcho(c *net.UDPConn, msg string) bool {
	if _, err := c.Write([]byte(msg)); err != nil {
		return false
	}
	buf := make([]byte, 64)
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	n, err := c.Read(buf)
	return err == nil && string(buf[:n]) == msg
}

// TestUDPUnansweredFlowsDieYoung: a flow whose upstream never sent anything
// is forgotten after UnansweredTimeout; one whose upstream answered lives
// on under the idle timeout.
func TestUDPUnansweredFlowsDieYoung(t *testing.T) {
	sink, echo := newLivePeer(t, false, false), newLivePeer(t, false, true)
	o := udpOpts()
	o.FlowIdleTimeout = time.Minute
	o.UnansweredTimeout = time.Second
	sinkRt, echoRt := hostileRoute("127.0.0.1:0", sink.addr(), o), hostileRoute("127.0.0.1:0", echo.addr(), o)
	r := hostileStart(t, sinkRt, echoRt)
	toSink, toEcho := dialUDP(t, r.Addrs()[0]), dialUDP(t, r.Addrs()[1])
	start := time.Now()
	if _, err := toSink.Write([]byte("anyone?")); err != nil {
		t.Fatal(err)
	}
	if !admitEcho(toEcho, "hello") {
		t.Fatal("no echo")
	}
	eventually(t, "the unanswered flow to expire", func() bool {
		return r.routeMetric(t, sinkRt.Name, "natkeep_udp_flows_expired_total") == 1
	})
	if age := time.Since(start); age < time.Second || age > 5*time.Second {
		t.Fatalf("unanswered flow expired after %v, want about 1s", age)
	}
	time.Sleep(time.Until(start.Add(2500 * time.Millisecond)))
	if v := r.routeMetric(t, echoRt.Name, "natkeep_udp_flows_active"); v != 1 {
		t.Fatalf("the answered flow is gone after 2.5 s (active %v); it should live under the 1m idle timeout", v)
	}
}

// TestUDPFairShareEviction: a source sprays 100 source ports at a route
// limited to 20 flows. It gets the room that is free and no more (the rest
// is refused), an app flow opened before the spray keeps working, and an
// app flow opened after it gets in by evicting one of the sprayer's flows.
func TestUDPFairShareEviction(t *testing.T) {
	echo := newLivePeer(t, false, true)
	o := udpOpts()
	o.MaxFlows = 20
	rt := hostileRoute("127.0.0.1:0", echo.addr(), o)
	r := hostileStart(t, rt)
	app, ok := admitClient(t, r, net.IPv4(127, 0, 0, 1))
	if !ok {
		t.Fatal("app flow before the spray does not work")
	}
	for i := range 100 {
		c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}, r.Addrs()[0].(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Write([]byte{byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, "the spray to be handled", func() bool {
		return r.routeMetric(t, rt.Name, "natkeep_udp_flows_created_total")+r.routeMetric(t, rt.Name, "natkeep_udp_flows_refused_total") == 101
	})
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_flows_refused_total", "reason", "limit"); v != 81 {
		t.Fatalf("refused %v of the spray, want 81 (20 flows, one the app's)", v)
	}
	if !admitEcho(app, "still there") {
		t.Fatal("the app's established flow stopped working during the spray")
	}
	if _, ok := admitClient(t, r, net.IPv4(127, 0, 0, 1)); !ok {
		t.Fatal("a new app flow after the spray was locked out")
	}
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_flows_evicted_total"); v != 1 {
		t.Fatalf("evicted %v, want 1 (one of the sprayer's flows)", v)
	}
	if n := r.Stats().UDPFlows; n != 20 {
		t.Fatalf("%d flows, want the limit 20", n)
	}
}

// TestUDPSingleSourceKeepsItsBudget: one source (a sidecar on loopback)
// may use the whole limit; beyond it new flows are refused, never evicting
// its own.
func TestUDPSingleSourceKeepsItsBudget(t *testing.T) {
	echo := newLivePeer(t, false, true)
	o := udpOpts()
	o.MaxFlows = 5
	rt := hostileRoute("127.0.0.1:0", echo.addr(), o)
	r := hostileStart(t, rt)
	var works int
	for range 7 {
		if _, ok := admitClient(t, r, net.IPv4(127, 0, 0, 1)); ok {
			works++
		}
	}
	if works != 5 {
		t.Fatalf("%d of 7 flows work, want the limit 5", works)
	}
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_flows_evicted_total"); v != 0 {
		t.Fatalf("evicted %v: a lone source must keep its flows", v)
	}
}

// TestUDPMaxFlowsPerSource: with a per-source quota of 3, a fourth flow
// from one address is refused as source_quota while another address gets in.
func TestUDPMaxFlowsPerSource(t *testing.T) {
	echo := newLivePeer(t, false, true)
	o := udpOpts()
	o.MaxFlowsPerSource = 3
	rt := hostileRoute("127.0.0.1:0", echo.addr(), o)
	r := hostileStart(t, rt)
	works := 0
	for range 4 {
		if _, ok := admitClient(t, r, net.IPv4(127, 0, 0, 2)); ok {
			works++
		}
	}
	if works != 3 {
		t.Fatalf("%d of 4 flows from one source work, want 3", works)
	}
	if _, ok := admitClient(t, r, net.IPv4(127, 0, 0, 3)); !ok {
		t.Fatal("another source was refused")
	}
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_flows_refused_total", "reason", "source_quota"); v != 1 {
		t.Fatalf("source_quota refusals %v, want 1", v)
	}
}

// TestBudgetAcrossRoutes: the port budget is shared by every route: with 5
// ports, three flows on one route and two on another fill it, and the next
// flow on either is refused as ports; a flow that ends gives its port back.
func TestBudgetAcrossRoutes(t *testing.T) {
	echo := newLivePeer(t, false, true)
	o := udpOpts()
	o.FlowIdleTimeout = 500 * time.Millisecond
	a, b := hostileRoute("127.0.0.1:0", echo.addr(), o), hostileRoute("127.0.0.1:0", echo.addr(), o)
	b.Name += "#2"
	h := hostileStartConfig(t, Config{Routes: []Route{a, b}, ResolveInterval: time.Second, Budget: Budget{Ports: 5, Descriptors: 100}})
	rl := h.Relay
	open := func(i int, n int) (works int) {
		for range n {
			c, err := net.DialUDP("udp4", nil, rl.Addrs()[i].(*net.UDPAddr))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if admitEcho(c, "x") {
				works++
			}
		}
		return works
	}
	if got := open(0, 3) + open(1, 3); got != 5 {
		t.Fatalf("%d flows work with a 5-port budget, want 5", got)
	}
	if v := h.routeMetric(t, b.Name, "natkeep_udp_flows_refused_total", "reason", "ports"); v != 1 {
		t.Fatalf("ports refusals on the second route %v, want 1", v)
	}
	// The flows above were closed by their deferred Close and expire after
	// 500 ms idle: their ports come back.
	eventually(t, "the flows to expire", func() bool { return rl.Stats().UDPFlows == 0 })
	if got := open(1, 5); got != 5 {
		t.Fatalf("%d flows after the budget came back, want 5", got)
	}
}
