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
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
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

// TestFloodTCPAcceptFDExhaustion runs natkeep with RLIMIT_NOFILE 64 and
// opens more client connections than it has descriptors: accept fails
// with EMFILE, natkeep logs it and backs off instead of spinning (CPU time
// over 5 s of exhaustion stays small), proxied connections keep working,
// and once the clients close new connections are served again.
func TestFloodTCPAcceptFDExhaustion(t *testing.T) {
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("prlimit (util-linux) not installed")
	}
	up := nktest.ServeTCP(t, nktest.LoopbackTCP(t), nktest.Echo)
	udpEcho := loopbackUDPEcho(t)
	tcpPort, udpPort, adminPort := nktest.FreePort(t, "tcp"), nktest.FreePort(t, "udp"), nktest.FreePort(t, "tcp")
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	routes := fmt.Sprintf("tcp://127.0.0.1:%d/%s,udp://127.0.0.1:%d/%s", tcpPort, up.Addr(), udpPort, udpEcho.LocalAddr())
	env := []string{"NATKEEP_LOG_FORMAT=json", "NATKEEP_LOG_LEVEL=info", "NATKEEP_DRAIN_TIMEOUT=1s",
		"NATKEEP_ROUTES=" + routes, "NATKEEP_ADMIN_ADDR=" + admin}
	nk := natlab.Start(t, env, prlimit, "--nofile=64:64", natlab.NatkeepBinary(t))
	if !nk.WaitFor(20*time.Second, `"msg":"natkeep started"`) {
		t.Fatalf("natkeep did not start under prlimit:\n%s", nk.Output())
	}
	pid := nk.Pid() // prlimit execs natkeep in place
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "natkeep" {
		t.Fatalf("pid %d is %q, not natkeep", pid, comm)
	}
	if lim, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid)); !strings.Contains(string(lim), "Max open files            64                   64") {
		t.Fatalf("RLIMIT_NOFILE not applied:\n%s", lim)
	}
	nktest.WaitStatus(t, "http://"+admin+"/readyz", 200)
	time.Sleep(200 * time.Millisecond) // let the readiness connection close
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", tcpPort)
	baseFDs := nk.FDs(t)

	var clients []net.Conn
	t.Cleanup(func() {
		for _, c := range clients {
			_ = c.Close()
		}
	})
	dial := func() net.Conn {
		t.Helper()
		c, err := net.DialTimeout("tcp4", tcpAddr, 3*time.Second)
		if err != nil {
			t.Fatalf("dial natkeep: %v", err)
		}
		clients = append(clients, c)
		return c
	}
	// Fill natkeep's descriptors to exactly none free, so that accept itself
	// fails. A proxied connection costs two sockets plus, while Go splices
	// each direction, a pipe (two descriptors) per direction when one can
	// be had; a UDP flow costs one. With one descriptor left, accept
	// succeeds and the upstream dial fails (the client is reset): a UDP
	// flow then takes that last one.
	var proxied []net.Conn
	var udpFix *net.UDPConn
	isReset := func(err error) bool {
		return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.EOF) || errors.Is(err, syscall.EPIPE)
	}
	for i := 0; ; i++ {
		if i > 64 {
			t.Fatalf("64 connections and natkeep still accepts: is RLIMIT_NOFILE applied? (%d fds)", nk.FDs(t))
		}
		c, err := net.DialTimeout("tcp4", tcpAddr, 3*time.Second)
		if err == nil {
			clients = append(clients, c)
			err = nktest.RoundTrip(c, fmt.Sprintf("fill-%d", i), 2*time.Second)
		}
		if err == nil {
			proxied = append(proxied, c)
			continue
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			break // not accepted: exhausted, and c is the first pending client
		}
		if !isReset(err) || udpFix != nil {
			t.Fatalf("connection %d: %v (natkeep holds %d fds)", i, err, nk.FDs(t))
		}
		udpFix, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: udpPort})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = udpFix.Close() }()
		if _, err := nktest.UDPRoundTrip(udpFix, nil, "last descriptor", 5, time.Second); err != nil {
			t.Fatalf("UDP flow taking the last descriptor: %v", err)
		}
	}
	if len(proxied) == 0 {
		t.Fatalf("no connection was proxied (natkeep holds %d fds)", nk.FDs(t))
	}
	fullFDs := nk.FDs(t)
	// More clients than descriptors: the kernel completes their handshakes
	// into the backlog, but natkeep cannot accept them.
	const pendingN = 40
	for i := range pendingN {
		c := dial()
		if _, err := c.Write([]byte(fmt.Sprintf("pending-%d", i))); err != nil {
			t.Fatalf("pending client %d: %v", i, err)
		}
	}
	if !nk.WaitFor(10*time.Second, "accept failed; backing off") {
		t.Fatalf("no accept failure logged with %d fds in use:\n%s", nk.FDs(t), nk.Output())
	}
	line := nk.Grep("accept failed; backing off")[0]
	if !strings.Contains(line, "too many open files") {
		t.Fatalf("accept failure is not EMFILE: %s", line)
	}
	// Five seconds of exhaustion, with a new client every 250 ms.
	cpu0, t0 := nk.CPUTime(t), time.Now()
	for time.Since(t0) < 5*time.Second {
		c := dial()
		_, _ = c.Write([]byte("more"))
		time.Sleep(250 * time.Millisecond)
	}
	cpu := nk.CPUTime(t) - cpu0
	window := time.Since(t0)
	if nk.Exited() {
		t.Fatalf("natkeep exited under descriptor exhaustion:\n%s", nk.Output())
	}
	t.Logf("RLIMIT_NOFILE 64: %d fds open at start, %d when full (fds inherited above the limit count too) with %d proxied connections (UDP flow for the last fd: %v); %d clients in all; natkeep CPU %v over %v of exhaustion",
		baseFDs, fullFDs, len(proxied), udpFix != nil, len(clients), cpu, window.Round(time.Millisecond))
	if cpu >= 500*time.Millisecond {
		t.Fatalf("natkeep used %v CPU in %v of accept exhaustion: it spins", cpu, window)
	}
	// Proxied connections keep working while accept is failing.
	for i, c := range proxied {
		if err := nktest.RoundTrip(c, fmt.Sprintf("during-%d", i), 5*time.Second); err != nil {
			t.Fatalf("proxied connection %d during exhaustion: %v", i, err)
		}
	}
	// The clients go away; new connections are served again.
	for _, c := range clients {
		_ = c.Close()
	}
	clients = nil
	var recovered time.Duration
	start := time.Now()
	for {
		c, err := net.DialTimeout("tcp4", tcpAddr, 3*time.Second)
		if err == nil {
			err = nktest.RoundTrip(c, "again", 2*time.Second)
			_ = c.Close()
		}
		if err == nil {
			recovered = time.Since(start)
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("new connections still fail 20 s after the clients closed: %v\n%s", err, nk.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	for i := range 5 {
		c := dial()
		if err := nktest.RoundTrip(c, fmt.Sprintf("after-%d", i), 5*time.Second); err != nil {
			t.Fatalf("connection %d after recovery: %v", i, err)
		}
	}
	f := nktest.Scrape(t, nktest.HTTP, admin)
	t.Logf("served again %v after the clients closed; accepted %v connections; ends: %v", recovered.Round(time.Millisecond),
		nktest.Value(f, "natkeep_tcp_connections_total", nil), nktest.ByLabel(f, "natkeep_tcp_connection_ends_total", "reason"))
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
	if !nk.WaitFor(5*time.Second, "TCP connection refused: route at its connection limit") {
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
