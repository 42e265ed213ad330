package relay

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestUDPWorkersPinFlows: with two workers on one listen address
// (SO_REUSEPORT), 64 clients each send 20 datagrams: each client's
// datagrams all reach the server from one upstream socket (one flow, on
// one worker), every echo comes back, and both workers hold flows.
func TestUDPWorkersPinFlows(t *testing.T) {
	srv := newUDPServer(t, "udp4", "127.0.0.1:0", true)
	rt := hostileRoute("127.0.0.1:0", srv.addr(), udpOpts())
	r := hostileStartConfig(t, Config{Routes: []Route{rt}, ResolveInterval: time.Second, Workers: 2})
	if len(r.udp) != 2 || len(r.Addrs()) != 1 {
		t.Fatalf("%d UDP workers, %d addresses; want 2 workers behind one address", len(r.udp), len(r.Addrs()))
	}
	const clients, each = 64, 20
	conns := make([]*net.UDPConn, clients)
	for i := range conns {
		conns[i] = hostileClient(t, r, 0)
	}
	for j := range each {
		for i, c := range conns {
			if _, err := fmt.Fprintf(c, "c%d-%d", i, j); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Millisecond) // paced: loopback drops nothing at this rate
	}
	for i, c := range conns {
		got := hostileCollect(t, c, each, 50*time.Millisecond)
		if len(got) != each {
			t.Fatalf("client %d got %d of %d echoes", i, len(got), each)
		}
	}
	from := map[string]map[netip.AddrPort]bool{}
	for _, d := range srv.received() {
		client, _, _ := strings.Cut(string(d.data), "-")
		if from[client] == nil {
			from[client] = map[netip.AddrPort]bool{}
		}
		from[client][d.from] = true
	}
	for client, ports := range from {
		if len(ports) != 1 {
			t.Fatalf("client %s reached the server from %d upstream sockets: its flow was split between workers", client, len(ports))
		}
	}
	if len(from) != clients {
		t.Fatalf("server heard from %d clients, want %d", len(from), clients)
	}
	a, b := r.udp[0].flowCount(), r.udp[1].flowCount()
	if a+b != clients || a == 0 || b == 0 {
		t.Fatalf("workers hold %d and %d flows; want %d in all, on both", a, b, clients)
	}
	if created := r.routeMetric(t, rt.Name, "natkeep_udp_flows_created_total"); created != clients {
		t.Fatalf("flows created %v, want %d", created, clients)
	}
	t.Logf("64 clients: %d flows on worker 0, %d on worker 1", a, b)
}

// TestUDPOneWorkerIsTodaysShape: with one worker the listener does not
// join a reuseport group, so nobody else can bind the address.
func TestUDPOneWorkerIsTodaysShape(t *testing.T) {
	srv := newUDPServer(t, "udp4", "127.0.0.1:0", false)
	rt := hostileRoute("127.0.0.1:0", srv.addr(), udpOpts())
	r := hostileStartConfig(t, Config{Routes: []Route{rt}, ResolveInterval: time.Second, Workers: 1})
	if len(r.udp) != 1 {
		t.Fatalf("%d workers, want 1", len(r.udp))
	}
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1) }); err != nil {
			return err
		}
		return serr
	}}
	c, err := lc.ListenPacket(t.Context(), "udp4", r.Addrs()[0].String())
	if err == nil {
		c.Close()
		t.Fatal("another socket joined the listener's address: it is in a reuseport group")
	}
	if !errors.Is(err, syscall.EADDRINUSE) {
		t.Fatalf("second bind: %v, want EADDRINUSE", err)
	}
}

// TestUDPWorkersShareLimits: max_flows is the route's, split between the
// workers (each holds its share, rounded up).
func TestUDPWorkersShareLimits(t *testing.T) {
	srv := newUDPServer(t, "udp4", "127.0.0.1:0", false)
	o := udpOpts()
	o.MaxFlows, o.MaxFlowsPerSource = 5, 3
	rt := hostileRoute("127.0.0.1:0", srv.addr(), o)
	r := hostileStartConfig(t, Config{Routes: []Route{rt}, ResolveInterval: time.Second, Workers: 2})
	for _, u := range r.udp {
		if u.def.opts.MaxFlows != 3 || u.def.opts.MaxFlowsPerSource != 2 {
			t.Fatalf("worker limits %d/%d, want 3/2 (5 and 3 split in two, rounded up)", u.def.opts.MaxFlows, u.def.opts.MaxFlowsPerSource)
		}
	}
	if r.udp[1].up != r.udp[0].up || r.udp[1].answers != r.udp[0].answers {
		t.Fatal("workers do not share the upstream and the responder limiter")
	}
}
