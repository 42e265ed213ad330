//go:build linux

package main

// Floods against the real binary on loopback: a burst of new UDP flows past
// NATKEEP_UDP_MAX_FLOWS, TCP accept with no file descriptors left, and
// slowloris against NATKEEP_TCP_MAX_CONNS.

import (
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

// loopbackUDPEcho echoes every datagram on a loopback socket with a
// receive buffer large enough for a burst.
func loopbackUDPEcho(t *testing.T) *net.UDPConn {
	c := nktest.LoopbackUDP(t)
	_ = c.SetReadBuffer(4 << 20)
	return nktest.EchoUDP(t, c)
}

// TestFloodUDPFlows: 5,000 new UDP flows in one burst against a route
// limited to 1,000 flows. The refusals are counted (and logged at a bounded
// rate), ten existing flows keep working during and after the burst, RSS
// stays bounded, and once the accepted burst flows expire new flows are
// accepted again.
func TestFloodUDPFlows(t *testing.T) {
	const maxFlows, burst, existingN = 1000, 5000, 10
	echo := loopbackUDPEcho(t)
	udpPort, adminPort := nktest.FreePort(t, "udp"), nktest.FreePort(t, "tcp")
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	route := fmt.Sprintf("udp://127.0.0.1:%d/%s", udpPort, echo.LocalAddr())
	nk := startHost(t, "NATKEEP_ROUTES="+route, "NATKEEP_ADMIN_ADDR="+admin, "NATKEEP_LOG_LEVEL=info",
		fmt.Sprintf("NATKEEP_UDP_MAX_FLOWS=%d", maxFlows), "NATKEEP_UDP_FLOW_IDLE_TIMEOUT=5s")
	nktest.WaitStatus(t, "http://"+admin+"/readyz", 200)
	relayAddr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: udpPort}
	var labels map[string]string // every route: udp_* series carry no proto label
	metric := func(name string) float64 { return nktest.Value(nktest.Scrape(t, nktest.HTTP, admin), name, labels) }

	existing := make([]*net.UDPConn, existingN)
	for i := range existing {
		c, err := net.DialUDP("udp4", nil, relayAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if _, err := nktest.UDPRoundTrip(c, nil, fmt.Sprintf("pre-%d", i), 10, time.Second); err != nil {
			t.Fatalf("existing flow %d: %v", i, err)
		}
		existing[i] = c
	}
	rssBefore, _ := nk.Memory(t)

	// The existing flows talk throughout: during the burst and while the
	// burst's flows expire (which also keeps them from expiring).
	var pingMu sync.Mutex
	var pingFails []string
	var pingWorst time.Duration
	pingRounds := 0
	stopPing, pingDone := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(pingDone)
		for round := 0; ; round++ {
			select {
			case <-stopPing:
				return
			default:
			}
			for i, c := range existing {
				d, err := nktest.UDPRoundTrip(c, nil, fmt.Sprintf("live-%d-%d", i, round), 10, 300*time.Millisecond)
				pingMu.Lock()
				if err != nil {
					pingFails = append(pingFails, fmt.Sprintf("flow %d round %d: %v", i, round, err))
				}
				pingWorst = max(pingWorst, d)
				pingRounds = round + 1
				pingMu.Unlock()
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	stopPinging := func() {
		select {
		case <-stopPing:
		default:
			close(stopPing)
		}
		<-pingDone
	}
	t.Cleanup(stopPinging)

	socks := make([]*net.UDPConn, burst)
	for i := range socks {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatalf("burst socket %d: %v", i, err)
		}
		socks[i] = c
	}
	t.Cleanup(func() {
		for _, c := range socks {
			_ = c.Close()
		}
	})
	start := time.Now()
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < burst; i += 4 {
				_, _ = socks[i].WriteToUDP([]byte("burst"), relayAddr)
			}
		}()
	}
	wg.Wait()
	burstTook := time.Since(start)

	// Wait for natkeep to have handled every datagram that reached it.
	var created, refused float64
	stable, last := time.Time{}, -1.0
	deadline := time.Now().Add(30 * time.Second)
	for {
		f := nktest.Scrape(t, nktest.HTTP, admin)
		created = nktest.Value(f, "natkeep_udp_flows_created_total", labels)
		refused = nktest.Value(f, "natkeep_udp_flows_refused_total", labels)
		if created+refused != last {
			last, stable = created+refused, time.Now()
		} else if time.Since(stable) > time.Second {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("flow counters never settled: created %v refused %v", created, refused)
		}
		time.Sleep(100 * time.Millisecond)
	}
	rssAfter, peak := nk.Memory(t)
	kdrops := nk.UDPDrops(t, udpPort)
	active := metric("natkeep_udp_flows_active")
	limitDrops := nktest.Value(nktest.Scrape(t, nktest.HTTP, admin), "natkeep_udp_drops_total", map[string]string{"reason": "flow_limit"})
	t.Logf("burst of %d new flows sent in %v: created %v (incl. %d existing), refused %v (drops flow_limit %v), active %v, kernel drops at the listener %d",
		burst, burstTook.Round(time.Millisecond), created, existingN, refused, limitDrops, active, kdrops)
	t.Logf("RSS before %s, after %s, peak (VmHWM) %s", mib(rssBefore), mib(rssAfter), mib(peak))
	if created != maxFlows || active != maxFlows {
		t.Fatalf("created %v active %v, want both at the limit %d", created, active, maxFlows)
	}
	accepted := float64(maxFlows - existingN)
	if refused > burst-accepted || refused < burst-accepted-float64(kdrops) {
		t.Fatalf("refused %v; want %v minus the %d datagrams the kernel dropped", refused, burst-accepted, kdrops)
	}
	if limitDrops != refused {
		t.Errorf("natkeep_udp_drops_total{reason=\"flow_limit\"} = %v, want the %v refused datagrams", limitDrops, refused)
	}
	if peak > 200<<20 {
		t.Fatalf("peak RSS %s during a %d-flow burst", mib(peak), burst)
	}
	if n := nk.Count("UDP flow refused"); n < 1 || n > 3 {
		t.Fatalf("%d refusal log lines for %v refusals; want a rate-limited few", n, refused)
	}

	// The accepted burst flows are idle: they expire, and new flows are
	// accepted again.
	if !nktest.Eventually(30*time.Second, 200*time.Millisecond, func() bool { return metric("natkeep_udp_flows_active") == existingN }) {
		t.Fatalf("burst flows did not expire: %v active", metric("natkeep_udp_flows_active"))
	}
	fresh, err := net.DialUDP("udp4", nil, relayAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fresh.Close() }()
	if _, err := nktest.UDPRoundTrip(fresh, nil, "fresh", 10, time.Second); err != nil {
		t.Fatalf("new flow after expiry: %v", err)
	}
	stopPinging()
	for i, c := range existing {
		if _, err := nktest.UDPRoundTrip(c, nil, fmt.Sprintf("post-%d", i), 5, time.Second); err != nil {
			t.Fatalf("existing flow %d after the burst: %v", i, err)
		}
	}
	pingMu.Lock()
	defer pingMu.Unlock()
	if len(pingFails) > 0 {
		t.Fatalf("existing flows failed during the burst (%d of %d round trips):\n%s", len(pingFails), pingRounds*existingN, strings.Join(pingFails, "\n"))
	}
	if v := nktest.Value(nktest.Scrape(t, nktest.HTTP, admin), "natkeep_udp_flows_expired_total", labels); v != accepted {
		t.Fatalf("expired %v, want %v", v, accepted)
	}
	t.Logf("existing flows: %d rounds x %d flows, none failed, worst round trip %v", pingRounds, existingN, pingWorst.Round(time.Millisecond))
}

// TestFloodTCPSlowloris: with NATKEEP_TCP_MAX_CONNS=50, fifty idle clients
// hold every slot; further connections are reset at once and counted
// (conn_limit), the idle ones still work, and when some of them close new
// connections are served again.
func TestFloodTCPSlowloris(t *testing.T) {
	up := nktest.ServeTCP(t, nktest.LoopbackTCP(t), nktest.Echo)
	tcpPort, adminPort := nktest.FreePort(t, "tcp"), nktest.FreePort(t, "tcp")
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	nk := startHost(t, fmt.Sprintf("NATKEEP_ROUTES=tcp://127.0.0.1:%d/%s", tcpPort, up.Addr()), "NATKEEP_ADMIN_ADDR="+admin,
		"NATKEEP_TCP_MAX_CONNS=50", "NATKEEP_LOG_LEVEL=info")
	nktest.WaitStatus(t, "http://"+admin+"/readyz", 200)
	addr := fmt.Sprintf("127.0.0.1:%d", tcpPort)
	dial := func() (net.Conn, error) {
		c, err := net.DialTimeout("tcp4", addr, 3*time.Second)
		if err == nil {
			t.Cleanup(func() { _ = c.Close() })
		}
		return c, err
	}
	mustDial := func() net.Conn {
		t.Helper()
		c, err := dial()
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		return c
	}
	ends := func(reason string) float64 {
		return nktest.Value(nktest.Scrape(t, nktest.HTTP, admin), "natkeep_tcp_connection_ends_total", map[string]string{"reason": reason})
	}
	// expectReset checks a connection over the limit is reset, not served or left hanging.
	expectReset := func() {
		t.Helper()
		c, err := dial()
		if errors.Is(err, syscall.ECONNRESET) {
			return // on loopback the reset can beat the connect's completion
		}
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Write([]byte("let me in")); errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE) {
			return // the write reported the reset (and consumed the error)
		}
		_, err = io.ReadAll(c)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("connection over the limit ended with %v, want a reset", err)
		}
	}
	idle := make([]net.Conn, 50)
	for i := range idle {
		idle[i] = mustDial()
		if err := nktest.RoundTrip(idle[i], fmt.Sprintf("idle-%d", i), 5*time.Second); err != nil {
			t.Fatalf("idle client %d: %v", i, err)
		}
	}
	for range 5 {
		expectReset()
	}
	waitEnds := func(want float64) {
		t.Helper()
		if !nktest.Eventually(10*time.Second, 50*time.Millisecond, func() bool { return ends("conn_limit") == want }) {
			t.Fatalf("conn_limit = %v, want %v", ends("conn_limit"), want)
		}
	}
	waitEnds(5)
	if !nk.WaitFor(5*time.Second, "TCP connection refused", `"reason":"limit"`) {
		t.Fatal("refusal not logged")
	}
	// The slots' holders are unaffected.
	for i, c := range idle {
		if err := nktest.RoundTrip(c, fmt.Sprintf("still-%d", i), 5*time.Second); err != nil {
			t.Fatalf("idle client %d after the refusals: %v", i, err)
		}
	}
	// Five holders leave; five new clients get their slots, the next is refused.
	for _, c := range idle[:5] {
		_ = c.Close()
	}
	if !nktest.Eventually(10*time.Second, 50*time.Millisecond, func() bool {
		return nktest.Value(nktest.Scrape(t, nktest.HTTP, admin), "natkeep_tcp_connections_active", nil) == 45
	}) {
		t.Fatal("closed connections never left the count")
	}
	for i := range 5 {
		if err := nktest.RoundTrip(mustDial(), fmt.Sprintf("new-%d", i), 5*time.Second); err != nil {
			t.Fatalf("new client %d after slots freed: %v", i, err)
		}
	}
	expectReset()
	waitEnds(6)
	t.Logf("50 idle holders; 6 connections over the limit reset and counted; 5 served after 5 holders left")
}
