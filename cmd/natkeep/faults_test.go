//go:build linux

package main

// Floods and upstream faults against the real binary: a burst of new UDP
// flows past NATKEEP_UDP_MAX_FLOWS, TCP accept with no file descriptors
// left, slowloris against NATKEEP_TCP_MAX_CONNS (all on loopback), and, in
// a NAT lab, an upstream DNS name that changes and stops resolving, an
// upstream that restarts, and an upstream TCP reset mid-stream.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// ---------------------------------------------------------------------------
// /proc readings

// faultCPU returns the process's user+system CPU time from /proc/PID/stat.
func faultCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/stat: %v", pid, err)
	}
	s := string(b)
	// Fields after "(comm)": state is field 3, utime 14, stime 15.
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}

// faultMem returns VmRSS and VmHWM (peak RSS) in bytes from /proc/PID/status.
func faultMem(t *testing.T, pid int) (rss, peak int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/status: %v", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v << 10
		case "VmHWM:":
			peak = v << 10
		}
	}
	return rss, peak
}

// faultFDs counts the process's open file descriptors.
func faultFDs(t *testing.T, pid int) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/fd: %v", pid, err)
	}
	return len(ents)
}

// faultUDPListenerDrops sums the kernel's receive-drop counter of the
// loopback UDP sockets bound to port (the drops column of /proc/net/udp).
func faultUDPListenerDrops(t *testing.T, pid, port int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/udp", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/net/udp: %v", pid, err)
	}
	want := fmt.Sprintf(":%04X", port)
	var drops int64
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 13 || !strings.HasSuffix(f[1], want) {
			continue
		}
		d, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
		drops += d
	}
	return drops
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// ---------------------------------------------------------------------------
// loopback helpers

// faultHTTP is an admin client without keep-alive, so it never leaves a
// connection (a file descriptor) open inside natkeep.
var faultHTTP = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func faultWaitReady(t *testing.T, admin string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := faultHTTP.Get("http://" + admin + "/readyz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s/readyz never answered 200 (last error %v)", admin, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// faultLoopbackUDPEcho echoes every datagram on a loopback socket.
func faultLoopbackUDPEcho(t *testing.T) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadBuffer(4 << 20)
	done := make(chan struct{})
	t.Cleanup(func() { _ = c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return c
}

// faultLoopbackTCPEcho echoes on every accepted connection.
func faultLoopbackTCPEcho(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		_ = ln.Close()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() { defer wg.Done(); defer func() { _ = c.Close() }(); _, _ = io.Copy(c, c) }()
		}
	}()
	return ln
}

// faultUDPRoundTrip sends msg on c and waits for it to come back, resending
// up to tries times (UDP may drop under a flood; a reply that never comes
// is the failure). It returns the time until the echo arrived.
func faultUDPRoundTrip(c *net.UDPConn, to *net.UDPAddr, msg string, tries int, each time.Duration) (time.Duration, error) {
	start := time.Now()
	buf := make([]byte, 2048)
	var err error
	for range tries {
		if to != nil {
			_, err = c.WriteToUDP([]byte(msg), to)
		} else {
			_, err = c.Write([]byte(msg))
		}
		if err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			return 0, err
		}
		_ = c.SetReadDeadline(time.Now().Add(each))
		for {
			n, rerr := c.Read(buf)
			if rerr != nil {
				var ne net.Error
				if errors.As(rerr, &ne) && ne.Timeout() {
					err = rerr
					break
				}
				if errors.Is(rerr, syscall.ECONNREFUSED) {
					err = rerr
					continue
				}
				return 0, rerr
			}
			if string(buf[:n]) == msg {
				return time.Since(start), nil
			}
		}
	}
	return 0, fmt.Errorf("no echo of %q after %d tries: %v", msg, tries, err)
}

// faultTCPRoundTrip writes msg and reads it back within d.
func faultTCPRoundTrip(c net.Conn, msg string, d time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(d))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}

// ---------------------------------------------------------------------------
// floods

// TestFloodUDPFlows: 5,000 new UDP flows in one burst against a route
// limited to 1,000 flows. The refusals are counted (and logged at a bounded
// rate), ten existing flows keep working during and after the burst, RSS
// stays bounded, and once the accepted burst flows expire new flows are
// accepted again.
func TestFloodUDPFlows(t *testing.T) {
	const maxFlows, burst, existingN = 1000, 5000, 10
	echo := faultLoopbackUDPEcho(t)
	udpPort, adminPort := freePort(t, "udp"), freePort(t, "tcp")
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	route := fmt.Sprintf("udp://127.0.0.1:%d/%s", udpPort, echo.LocalAddr())
	nk := startHost(t, "NATKEEP_ROUTES="+route, "NATKEEP_ADMIN_ADDR="+admin, "NATKEEP_LOG_LEVEL=info",
		fmt.Sprintf("NATKEEP_UDP_MAX_FLOWS=%d", maxFlows), "NATKEEP_UDP_FLOW_IDLE_TIMEOUT=5s")
	faultWaitReady(t, admin)
	pid := nk.Pid()
	relayAddr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: udpPort}
	var labels map[string]string // every route: udp_* series carry no proto label
	metric := func(name string) float64 { return metricValue(scrapeWith(t, faultHTTP, admin), name, labels) }

	existing := make([]*net.UDPConn, existingN)
	for i := range existing {
		c, err := net.DialUDP("udp4", nil, relayAddr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		if _, err := faultUDPRoundTrip(c, nil, fmt.Sprintf("pre-%d", i), 10, time.Second); err != nil {
			t.Fatalf("existing flow %d: %v", i, err)
		}
		existing[i] = c
	}
	rssBefore, _ := faultMem(t, pid)

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
				d, err := faultUDPRoundTrip(c, nil, fmt.Sprintf("live-%d-%d", i, round), 10, 300*time.Millisecond)
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
		f := scrapeWith(t, faultHTTP, admin)
		created = metricValue(f, "natkeep_udp_flows_created_total", labels)
		refused = metricValue(f, "natkeep_udp_flows_refused_total", labels)
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
	rssAfter, peak := faultMem(t, pid)
	kdrops := faultUDPListenerDrops(t, pid, udpPort)
	active := metric("natkeep_udp_flows_active")
	limitDrops := metricValue(scrapeWith(t, faultHTTP, admin), "natkeep_udp_drops_total", map[string]string{"reason": "flow_limit"})
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
	if n := nk.count("UDP flow refused"); n < 1 || n > 3 {
		t.Fatalf("%d refusal log lines for %v refusals; want a rate-limited few", n, refused)
	}

	// The accepted burst flows are idle: they expire, and new flows are
	// accepted again.
	deadline = time.Now().Add(30 * time.Second)
	for metric("natkeep_udp_flows_active") != existingN {
		if time.Now().After(deadline) {
			t.Fatalf("burst flows did not expire: %v active", metric("natkeep_udp_flows_active"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	fresh, err := net.DialUDP("udp4", nil, relayAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fresh.Close() }()
	if _, err := faultUDPRoundTrip(fresh, nil, "fresh", 10, time.Second); err != nil {
		t.Fatalf("new flow after expiry: %v", err)
	}
	stopPinging()
	for i, c := range existing {
		if _, err := faultUDPRoundTrip(c, nil, fmt.Sprintf("post-%d", i), 5, time.Second); err != nil {
			t.Fatalf("existing flow %d after the burst: %v", i, err)
		}
	}
	pingMu.Lock()
	defer pingMu.Unlock()
	if len(pingFails) > 0 {
		t.Fatalf("existing flows failed during the burst (%d of %d round trips):\n%s", len(pingFails), pingRounds*existingN, strings.Join(pingFails, "\n"))
	}
	if v := metricValue(scrapeWith(t, faultHTTP, admin), "natkeep_udp_flows_expired_total", labels); v != accepted {
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
	up := faultLoopbackTCPEcho(t)
	udpEcho := faultLoopbackUDPEcho(t)
	tcpPort, udpPort, adminPort := freePort(t, "tcp"), freePort(t, "udp"), freePort(t, "tcp")
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	routes := fmt.Sprintf("tcp://127.0.0.1:%d/%s,udp://127.0.0.1:%d/%s", tcpPort, up.Addr(), udpPort, udpEcho.LocalAddr())
	env := []string{"NATKEEP_LOG_FORMAT=json", "NATKEEP_LOG_LEVEL=info", "NATKEEP_DRAIN_TIMEOUT=1s",
		"NATKEEP_ROUTES=" + routes, "NATKEEP_ADMIN_ADDR=" + admin}
	nk := startHostCmd(t, env, prlimit, "--nofile=64:64", natkeepBinary(t))
	if !nk.waitFor(20*time.Second, `"msg":"natkeep started"`) {
		t.Fatalf("natkeep did not start under prlimit:\n%s", nk.Output())
	}
	pid := nk.Pid() // prlimit execs natkeep in place
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); strings.TrimSpace(string(comm)) != "natkeep" {
		t.Fatalf("pid %d is %q, not natkeep", pid, comm)
	}
	if lim, _ := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid)); !strings.Contains(string(lim), "Max open files            64                   64") {
		t.Fatalf("RLIMIT_NOFILE not applied:\n%s", lim)
	}
	faultWaitReady(t, admin)
	time.Sleep(200 * time.Millisecond) // let the readiness connection close
	tcpAddr := fmt.Sprintf("127.0.0.1:%d", tcpPort)
	baseFDs := faultFDs(t, pid)

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
			t.Fatalf("64 connections and natkeep still accepts: is RLIMIT_NOFILE applied? (%d fds)", faultFDs(t, pid))
		}
		c, err := net.DialTimeout("tcp4", tcpAddr, 3*time.Second)
		if err == nil {
			clients = append(clients, c)
			err = faultTCPRoundTrip(c, fmt.Sprintf("fill-%d", i), 2*time.Second)
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
			t.Fatalf("connection %d: %v (natkeep holds %d fds)", i, err, faultFDs(t, pid))
		}
		udpFix, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: udpPort})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = udpFix.Close() }()
		if _, err := faultUDPRoundTrip(udpFix, nil, "last descriptor", 5, time.Second); err != nil {
			t.Fatalf("UDP flow taking the last descriptor: %v", err)
		}
	}
	if len(proxied) == 0 {
		t.Fatalf("no connection was proxied (natkeep holds %d fds)", faultFDs(t, pid))
	}
	fullFDs := faultFDs(t, pid)
	// More clients than descriptors: the kernel completes their handshakes
	// into the backlog, but natkeep cannot accept them.
	const pendingN = 40
	for i := range pendingN {
		c := dial()
		if _, err := c.Write([]byte(fmt.Sprintf("pending-%d", i))); err != nil {
			t.Fatalf("pending client %d: %v", i, err)
		}
	}
	if !nk.waitFor(10*time.Second, "accept failed; backing off") {
		t.Fatalf("no accept failure logged with %d fds in use:\n%s", faultFDs(t, pid), nk.Output())
	}
	line := nk.grep("accept failed; backing off")[0]
	if !strings.Contains(line, "too many open files") {
		t.Fatalf("accept failure is not EMFILE: %s", line)
	}
	// Five seconds of exhaustion, with a new client every 250 ms.
	cpu0, t0 := faultCPU(t, pid), time.Now()
	for time.Since(t0) < 5*time.Second {
		c := dial()
		_, _ = c.Write([]byte("more"))
		time.Sleep(250 * time.Millisecond)
	}
	cpu := faultCPU(t, pid) - cpu0
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
		if err := faultTCPRoundTrip(c, fmt.Sprintf("during-%d", i), 5*time.Second); err != nil {
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
			err = faultTCPRoundTrip(c, "again", 2*time.Second)
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
		if err := faultTCPRoundTrip(c, fmt.Sprintf("after-%d", i), 5*time.Second); err != nil {
			t.Fatalf("connection %d after recovery: %v", i, err)
		}
	}
	f := scrapeWith(t, faultHTTP, admin)
	t.Logf("served again %v after the clients closed; accepted %v connections; ends: %v", recovered.Round(time.Millisecond),
		metricValue(f, "natkeep_tcp_connections_total", nil), faultEnds(f))
}

// faultEnds lists natkeep_tcp_connection_ends_total by reason (non-zero only).
func faultEnds(f map[string]*dto.MetricFamily) map[string]float64 {
	out := map[string]float64{}
	fam := f["natkeep_tcp_connection_ends_total"]
	if fam == nil {
		return out
	}
	for _, m := range fam.GetMetric() {
		for _, lp := range m.GetLabel() {
			if lp.GetName() == "reason" && m.GetCounter().GetValue() > 0 {
				out[lp.GetValue()] += m.GetCounter().GetValue()
			}
		}
	}
	return out
}

// TestFloodTCPSlowloris: with NATKEEP_TCP_MAX_CONNS=50, fifty idle clients
// hold every slot; further connections are reset at once and counted
// (conn_limit), the idle ones still work, and when some of them close new
// connections are served again.
func TestFloodTCPSlowloris(t *testing.T) {
	up := faultLoopbackTCPEcho(t)
	tcpPort, adminPort := freePort(t, "tcp"), freePort(t, "tcp")
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	nk := startHost(t, fmt.Sprintf("NATKEEP_ROUTES=tcp://127.0.0.1:%d/%s", tcpPort, up.Addr()), "NATKEEP_ADMIN_ADDR="+admin,
		"NATKEEP_TCP_MAX_CONNS=50", "NATKEEP_LOG_LEVEL=info")
	faultWaitReady(t, admin)
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
		return metricValue(scrapeWith(t, faultHTTP, admin), "natkeep_tcp_connection_ends_total", map[string]string{"reason": reason})
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
		if err := faultTCPRoundTrip(idle[i], fmt.Sprintf("idle-%d", i), 5*time.Second); err != nil {
			t.Fatalf("idle client %d: %v", i, err)
		}
	}
	for range 5 {
		expectReset()
	}
	waitEnds := func(want float64) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for ends("conn_limit") != want {
			if time.Now().After(deadline) {
				t.Fatalf("conn_limit = %v, want %v", ends("conn_limit"), want)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	waitEnds(5)
	if !nk.waitFor(5*time.Second, "TCP connection refused: route at its connection limit") {
		t.Fatal("refusal not logged")
	}
	// The slots' holders are unaffected.
	for i, c := range idle {
		if err := faultTCPRoundTrip(c, fmt.Sprintf("still-%d", i), 5*time.Second); err != nil {
			t.Fatalf("idle client %d after the refusals: %v", i, err)
		}
	}
	// Five holders leave; five new clients get their slots, the next is refused.
	for _, c := range idle[:5] {
		_ = c.Close()
	}
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(scrapeWith(t, faultHTTP, admin), "natkeep_tcp_connections_active", nil) != 45 {
		if time.Now().After(deadline) {
			t.Fatal("closed connections never left the count")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for i := range 5 {
		if err := faultTCPRoundTrip(mustDial(), fmt.Sprintf("new-%d", i), 5*time.Second); err != nil {
			t.Fatalf("new client %d after slots freed: %v", i, err)
		}
	}
	expectReset()
	waitEnds(6)
	t.Logf("50 idle holders; 6 connections over the limit reset and counted; 5 served after 5 holders left")
}

// ---------------------------------------------------------------------------
// upstream faults in a NAT lab

// faultNetnsEtc creates /etc/netns/NS/ with the given files. `ip netns
// exec NS` bind-mounts each of them over /etc/NAME for the programs it
// starts, so natkeep started afterwards in NS sees them. The returned func
// rewrites a file in place (same inode, so the bind mount shows the new
// content). Cleanup removes the directory.
func faultNetnsEtc(t *testing.T, ns string, files map[string]string) (rewrite func(name, content string)) {
	t.Helper()
	parent := "/etc/netns"
	_, statErr := os.Stat(parent)
	dir := filepath.Join(parent, ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
		if os.IsNotExist(statErr) {
			_ = os.Remove(parent) // only if empty: another user may have entries
		}
	})
	rewrite = func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range files {
		rewrite(name, content)
	}
	return rewrite
}

// faultHosts is a hosts file; gen changes its size and mtime on every
// rewrite, so a resolver that caches by mtime and size re-reads it.
func faultHosts(gen int, upstream netip.Addr) string {
	s := fmt.Sprintf("# natkeep fault test, generation %d%s\n127.0.0.1 localhost\n", gen, strings.Repeat(".", gen))
	if upstream.IsValid() {
		s += upstream.String() + " upstream.test\n"
	}
	return s
}

// faultUDPServer answers every datagram with "<payload>@<tag>".
type faultUDPServer struct {
	conn *net.UDPConn
	tag  string
	mu   sync.Mutex
	got  []udpGot
}

func newFaultUDPServer(t *testing.T, c *net.UDPConn, tag string) *faultUDPServer {
	s := &faultUDPServer{conn: c, tag: tag}
	done := make(chan struct{})
	t.Cleanup(func() { _ = c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			s.mu.Lock()
			s.got = append(s.got, udpGot{from, string(buf[:n]), time.Now()})
			s.mu.Unlock()
			if n > 0 {
				_, _ = c.WriteToUDPAddrPort([]byte(string(buf[:n])+"@"+tag), from)
			}
		}
	}()
	return s
}

// faultTCPServer greets every connection with "<tag>\n" and then echoes.
type faultTCPServer struct {
	ln    *net.TCPListener
	mu    sync.Mutex
	conns []*net.TCPConn
	wg    sync.WaitGroup
}

func newFaultTCPServer(t *testing.T, ln *net.TCPListener, tag string, handle func(*net.TCPConn)) *faultTCPServer {
	s := &faultTCPServer{ln: ln}
	if handle == nil {
		handle = func(c *net.TCPConn) {
			_, _ = c.Write([]byte(tag + "\n"))
			_, _ = io.Copy(c, c)
		}
	}
	t.Cleanup(s.stop)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() { defer s.wg.Done(); defer func() { _ = c.Close() }(); handle(c) }()
		}
	}()
	return s
}

// stop closes the listener and every connection (a server restart).
func (s *faultTCPServer) stop() {
	_ = s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		_ = c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// faultGreeting reads the server's one-line greeting from an app connection.
func faultGreeting(c *net.TCPConn) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			return string(b), err
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
}

// faultUDPSays sends msg from app and waits for the answer "msg@<tag>".
func faultUDPSays(t *testing.T, app *udpPeer, msg string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for try := 0; time.Now().Before(deadline); try++ {
		if try%10 == 0 { // resend every ~second; the first datagram of a flow may race the NAT
			if _, err := app.conn.Write([]byte(msg)); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatal(err)
			}
		}
		for _, g := range app.all() {
			if tag, ok := strings.CutPrefix(g.data, msg+"@"); ok {
				return tag
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no answer to %q within 10 s", msg)
	return ""
}

// faultCountAtLeast waits until at least n output lines contain every sub.
func faultCountAtLeast(p *labProc, n int, within time.Duration, subs ...string) bool {
	deadline := time.Now().Add(within)
	for p.count(subs...) < n {
		if time.Now().After(deadline) || p.Exited() {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
	return true
}

// TestFaultUpstreamDNS runs natkeep in a NAT lab with its upstream given
// as the name upstream.test, served from a per-namespace /etc/hosts and
// re-resolved every second: (a) the name resolves and traffic flows; (b)
// the name moves to a second server address: new UDP flows and TCP
// connections go there, existing flows stay, "upstream address changed" is
// logged; (c) the name stops resolving: a warning is logged and counted,
// existing flows keep working and new ones use the last address; (d) it
// resolves again and new flows follow.
func TestFaultUpstreamDNS(t *testing.T) {
	l := newNATLab(t, labConfig{UDPTimeout: 60 * time.Second, UDPStreamTimeout: 60 * time.Second, TCPEstablishedTimeout: 120 * time.Second})
	srv1, srv2 := l.ServerAddr, l.ServerAddr.Next()
	l.run(t, l.Server, "ip", "addr", "add", netip.PrefixFrom(srv2, 24).String(), "dev", l.ServerIf)
	gen := 1
	rewrite := faultNetnsEtc(t, l.Client, map[string]string{
		"hosts": faultHosts(gen, srv1),
		// A failed name must fail fast and stay inside the namespace: the
		// only nameserver is the namespace's own loopback, where nothing listens.
		"resolv.conf": "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
	})
	setHosts := func(a netip.Addr) time.Time {
		gen++
		rewrite("hosts", faultHosts(gen, a))
		return time.Now()
	}
	ap := func(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }
	newFaultUDPServer(t, l.listenUDP(t, l.Server, ap(srv1, 9000)), "srv1")
	newFaultUDPServer(t, l.listenUDP(t, l.Server, ap(srv2, 9000)), "srv2")
	newFaultTCPServer(t, l.listenTCP(t, l.Server, ap(srv1, 9100)), "srv1", nil)
	newFaultTCPServer(t, l.listenTCP(t, l.Server, ap(srv2, 9100)), "srv2", nil)
	nk := startNatkeep(t, l, "NATKEEP_ROUTES=udp://127.0.0.1:5000/upstream.test:9000,tcp://127.0.0.1:5100/upstream.test:9100",
		"NATKEEP_RESOLVE_INTERVAL=1s", "NATKEEP_UDP_HEARTBEAT_INTERVAL=2s", "NATKEEP_LOG_LEVEL=info")
	admin := nsHTTPClient(t, l, l.Client)
	newApp := func() *udpPeer { return newUDPPeer(t, l.dialUDP(t, l.Client, "127.0.0.1:5000")) }
	newConn := func(wantTag string) *net.TCPConn {
		t.Helper()
		c := l.dialTCP(t, l.Client, "127.0.0.1:5100")
		tag, err := faultGreeting(c)
		if err != nil || tag != wantTag {
			t.Fatalf("new TCP connection greeted by %q (%v), want %q", tag, err, wantTag)
		}
		return c
	}
	checkUDP := func(app *udpPeer, msg, want string) {
		t.Helper()
		if got := faultUDPSays(t, app, msg); got != want {
			t.Fatalf("%q answered by %s, want %s", msg, got, want)
		}
	}
	checkTCP := func(c *net.TCPConn, msg string) {
		t.Helper()
		if err := faultTCPRoundTrip(c, msg, 5*time.Second); err != nil {
			t.Fatalf("TCP %q: %v", msg, err)
		}
	}

	// (a) resolves.
	if !nk.waitFor(10*time.Second, "upstream resolved", ap(srv1, 9000)) {
		t.Fatalf("upstream.test not resolved to %v:\n%s", srv1, nk.Output())
	}
	appA := newApp()
	checkUDP(appA, "a1", "srv1")
	connA := newConn("srv1")
	checkTCP(connA, "ta1")

	// (b) the name moves to srv2.
	changedAt := setHosts(srv2)
	if !faultCountAtLeast(nk, 2, 30*time.Second, "upstream address changed", `"new":"`+srv2.String()) {
		t.Fatalf("no \"upstream address changed\" for both routes within 30 s:\n%s", nk.Output())
	}
	changeTook := time.Since(changedAt)
	for _, line := range nk.grep("upstream address changed") {
		if !strings.Contains(line, `"old":"`+srv1.String()) || !strings.Contains(line, `"new":"`+srv2.String()) {
			t.Fatalf("change logged with wrong addresses: %s", line)
		}
	}
	appB := newApp()
	checkUDP(appB, "b1", "srv2")
	checkUDP(appA, "a2", "srv1") // an existing flow keeps its upstream
	connB := newConn("srv2")
	checkTCP(connB, "tb1")
	checkTCP(connA, "ta2")

	// (c) the name stops resolving.
	failedAt := setHosts(netip.Addr{})
	if !nk.waitFor(30*time.Second, "upstream name did not resolve; keeping last address") {
		t.Fatalf("no resolve failure logged within 30 s:\n%s", nk.Output())
	}
	failTook := time.Since(failedAt)
	var fails float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		f := scrapeWith(t, admin, "127.0.0.1:9299")
		u := metricValue(f, "natkeep_resolve_failures_total", map[string]string{"proto": "udp"})
		tc := metricValue(f, "natkeep_resolve_failures_total", map[string]string{"proto": "tcp"})
		if u >= 1 && tc >= 1 {
			fails = u + tc
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("resolve failures not counted for both routes: udp %v tcp %v", u, tc)
		}
		time.Sleep(200 * time.Millisecond)
	}
	checkUDP(appA, "a3", "srv1")
	checkUDP(appB, "b3", "srv2")
	appC := newApp()
	checkUDP(appC, "c1", "srv2") // the last good address
	connC := newConn("srv2")
	checkTCP(connC, "tc1")
	checkTCP(connA, "ta3")
	checkTCP(connB, "tb3")

	// (d) it resolves again, back to srv1.
	n := nk.count("upstream address changed")
	backAt := setHosts(srv1)
	if !faultCountAtLeast(nk, n+2, 30*time.Second, "upstream address changed") {
		t.Fatalf("no change back to %v logged within 30 s:\n%s", srv1, nk.Output())
	}
	backTook := time.Since(backAt)
	appD := newApp()
	checkUDP(appD, "d1", "srv1")
	newConn("srv1")
	checkUDP(appB, "b4", "srv2")

	if errs := nk.grep(`"level":"ERROR"`); len(errs) > 0 {
		t.Fatalf("error-level logs:\n%s", strings.Join(errs, "\n"))
	}
	t.Logf("DNS: change to a new address logged %v after the hosts rewrite; failure logged %v after removal (%v failures counted, %d warning lines); change back %v",
		changeTook.Round(10*time.Millisecond), failTook.Round(10*time.Millisecond), fails,
		nk.count("upstream name did not resolve"), backTook.Round(10*time.Millisecond))

	// A graceful stop with name upstreams: SIGTERM drains (2 s at most
	// here) and exits 0.
	stopAt := time.Now()
	if err := nk.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	switch err := nk.Wait(10 * time.Second); {
	case errors.Is(err, errLabWaitTimeout):
		_ = nk.Signal(syscall.SIGTERM) // the second signal exits at once
		t.Errorf("BUG: natkeep still running 10 s after SIGTERM (drain timeout 2 s) with a UDP route whose upstream is a DNS name")
	case err != nil:
		t.Errorf("natkeep exit after SIGTERM: %v", err)
	default:
		t.Logf("stopped %v after SIGTERM", time.Since(stopAt).Round(10*time.Millisecond))
	}
}

// TestFaultUpstreamRestart: the server behind the NAT closes and reopens
// its UDP socket and restarts its TCP listener. The UDP flow carries on
// through the same NAT mapping (the refusals in between are counted); an
// open TCP connection closed by the server ends cleanly for the app; a
// connection attempted while the server is down is reset, never left
// hanging; new connections succeed after the restart.
func TestFaultUpstreamRestart(t *testing.T) {
	l := newNATLab(t, labConfig{UDPTimeout: 30 * time.Second, UDPStreamTimeout: 30 * time.Second, TCPEstablishedTimeout: 60 * time.Second})
	udpAddr, tcpAddr := netip.AddrPortFrom(l.ServerAddr, 9000).String(), netip.AddrPortFrom(l.ServerAddr, 9100).String()
	gen1 := newFaultUDPServer(t, l.listenUDP(t, l.Server, udpAddr), "gen1")
	tcp1 := newFaultTCPServer(t, l.listenTCP(t, l.Server, tcpAddr), "gen1", nil)
	nk := startNatkeep(t, l, "NATKEEP_ROUTES=udp://127.0.0.1:5000/"+udpAddr+",tcp://127.0.0.1:5100/"+tcpAddr,
		"NATKEEP_UDP_HEARTBEAT_INTERVAL=1s", "NATKEEP_LOG_LEVEL=info")
	admin := nsHTTPClient(t, l, l.Client)
	metric := func(name string, labels map[string]string) float64 {
		return metricValue(scrapeWith(t, admin, "127.0.0.1:9299"), name, labels)
	}
	app := newUDPPeer(t, l.dialUDP(t, l.Client, "127.0.0.1:5000"))
	if tag := faultUDPSays(t, app, "u1"); tag != "gen1" {
		t.Fatalf("answered by %s", tag)
	}
	conn := l.dialTCP(t, l.Client, "127.0.0.1:5100")
	if tag, err := faultGreeting(conn); err != nil || tag != "gen1" {
		t.Fatalf("greeting %q %v", tag, err)
	}

	// UDP: the server's socket goes away and comes back.
	_ = gen1.conn.Close()
	for i := range 5 {
		if _, err := app.conn.Write([]byte(fmt.Sprintf("down-%d", i))); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	deadline := time.Now().Add(10 * time.Second)
	for metric("natkeep_udp_drops_total", map[string]string{"reason": "upstream_refused"}) < 1 {
		if time.Now().After(deadline) {
			t.Fatal("ICMP port unreachable through the NAT was not counted as upstream_refused")
		}
		time.Sleep(100 * time.Millisecond)
	}
	gen2 := newFaultUDPServer(t, l.listenUDP(t, l.Server, udpAddr), "gen2")
	if tag := faultUDPSays(t, app, "u2"); tag != "gen2" {
		t.Fatalf("after the restart answered by %s", tag)
	}
	gen1.mu.Lock()
	before := gen1.got[0].from
	gen1.mu.Unlock()
	gen2.mu.Lock()
	after := gen2.got[len(gen2.got)-1].from
	gen2.mu.Unlock()
	if before != after {
		t.Fatalf("the flow reached the server from %v before the restart and from %v after: the NAT mapping was lost", before, after)
	}
	if v := metric("natkeep_udp_flows_created_total", nil); v != 1 {
		t.Fatalf("flows created = %v: the flow must survive the restart", v)
	}

	// TCP: the server restarts; its open connection is closed cleanly.
	tcp1.stop()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(conn); err != nil || len(b) != 0 {
		t.Fatalf("connection closed by the restarting server ended with %q, %v; want a clean EOF", b, err)
	}
	_ = conn.Close()
	// While it is down, a new connection is reset, not left hanging. The
	// reset may even beat the app's connect call completing.
	var down net.Conn
	err := inNetns(l.Client, func() error {
		var err error
		down, err = net.DialTimeout("tcp", "127.0.0.1:5100", 5*time.Second)
		return err
	})
	if err == nil {
		defer func() { _ = down.Close() }()
		_ = down.SetReadDeadline(time.Now().Add(15 * time.Second))
		_, err = io.ReadAll(down)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection while the server is down ended with %v, want a reset", err)
	}
	if v := metric("natkeep_tcp_connection_ends_total", map[string]string{"reason": "dial_error"}); v != 1 {
		t.Fatalf("dial_error = %v, want 1", v)
	}
	newFaultTCPServer(t, l.listenTCP(t, l.Server, tcpAddr), "gen2", nil)
	c2 := l.dialTCP(t, l.Client, "127.0.0.1:5100")
	if tag, err := faultGreeting(c2); err != nil || tag != "gen2" {
		t.Fatalf("after the restart: greeting %q %v", tag, err)
	}
	if err := faultTCPRoundTrip(c2, "after restart", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if errs := nk.grep(`"level":"ERROR"`); len(errs) > 0 {
		t.Fatalf("error-level logs:\n%s", strings.Join(errs, "\n"))
	}
	t.Logf("UDP flow kept mapping %v across the server restart; refused %v while down; TCP reset while down, served after",
		after, metric("natkeep_udp_drops_total", map[string]string{"reason": "upstream_refused"}))
}

// TestFaultUpstreamTCPReset: the server behind the NAT resets a connection
// in the middle of a stream. The app sees ECONNRESET, never a clean EOF,
// and every byte it did receive is the server's data, in order; when the
// app was reading along, it received all of it before the reset.
func TestFaultUpstreamTCPReset(t *testing.T) {
	l := newNATLab(t, labConfig{TCPEstablishedTimeout: 60 * time.Second})
	tcpAddr := netip.AddrPortFrom(l.ServerAddr, 9100).String()
	payloads := map[string][]byte{"reading": make([]byte, 256<<10), "not reading": make([]byte, 8<<20)}
	for _, p := range payloads {
		_, _ = rand.Read(p)
	}
	newFaultTCPServer(t, l.listenTCP(t, l.Server, tcpAddr), "", func(c *net.TCPConn) {
		_ = c.SetDeadline(time.Now().Add(20 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil {
			return
		}
		p := payloads[strings.TrimSpace(line)]
		_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		_, _ = c.Write(p) // may stop short when the app is not reading
		time.Sleep(500 * time.Millisecond)
		_ = c.SetLinger(0)
		_ = c.Close() // RST
	})
	nk := startNatkeep(t, l, "NATKEEP_ROUTES=tcp://127.0.0.1:5100/"+tcpAddr, "NATKEEP_LOG_LEVEL=info")
	admin := nsHTTPClient(t, l, l.Client)
	for i, mode := range []string{"reading", "not reading"} {
		t.Run(mode, func(t *testing.T) {
			c := l.dialTCP(t, l.Client, "127.0.0.1:5100")
			if _, err := c.Write([]byte(mode + "\n")); err != nil {
				t.Fatal(err)
			}
			if mode == "not reading" {
				time.Sleep(3 * time.Second) // the reset happens while the app's buffers are full
			}
			_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
			got, err := io.ReadAll(c)
			want := payloads[mode]
			if !bytes.Equal(got, want[:min(len(got), len(want))]) || len(got) > len(want) {
				t.Fatalf("received %d bytes that are not a prefix of the %d the server sent", len(got), len(want))
			}
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("after %d of %d bytes the stream ended with %v; want ECONNRESET (a clean EOF would hide the failure)", len(got), len(want), err)
			}
			if mode == "reading" && len(got) != len(want) {
				t.Fatalf("app was reading along but got only %d of %d bytes before the reset", len(got), len(want))
			}
			deadline := time.Now().Add(10 * time.Second)
			for metricValue(scrapeWith(t, admin, "127.0.0.1:9299"), "natkeep_tcp_connection_ends_total", map[string]string{"reason": "upstream_reset"}) < float64(i+1) {
				if time.Now().After(deadline) {
					t.Fatalf("upstream reset not counted; ends: %v", faultEnds(scrapeWith(t, admin, "127.0.0.1:9299")))
				}
				time.Sleep(100 * time.Millisecond)
			}
			t.Logf("%s: app got %d of %d bytes intact, then ECONNRESET", mode, len(got), len(want))
		})
	}
	if errs := nk.grep(`"level":"ERROR"`); len(errs) > 0 {
		t.Fatalf("error-level logs:\n%s", strings.Join(errs, "\n"))
	}
}
