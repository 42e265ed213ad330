//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// These tests run the real binary on loopback in the host namespace.

// startHost starts the natkeep binary with env (plus quiet test defaults)
// in its own process group; cleanup ends that group only.
func startHost(t *testing.T, env ...string) *labProc {
	t.Helper()
	return startHostCmd(t, append([]string{"NATKEEP_LOG_LEVEL=debug", "NATKEEP_LOG_FORMAT=json", "NATKEEP_DRAIN_TIMEOUT=2s"}, env...), natkeepBinary(t))
}

// startHostCmd starts any program in the host namespace in its own process group.
func startHostCmd(t *testing.T, env []string, bin string, args ...string) *labProc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	out := &labBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &labProc{Name: filepath.Base(bin), cmd: cmd, out: out, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s output:\n%s", p.Name, p.Output())
		}
	})
	return p
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T, network string) int {
	t.Helper()
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	default:
		l, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
}

// scrape fetches /metrics and parses it with the Prometheus text parser.
func scrape(t *testing.T, admin string) map[string]*dto.MetricFamily {
	t.Helper()
	return scrapeWith(t, http.DefaultClient, admin)
}

// scrapeWith fetches /metrics with the given client (e.g. one that dials
// inside a namespace).
func scrapeWith(t *testing.T, client *http.Client, admin string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics is not valid Prometheus text: %v", err)
	}
	return fams
}

// metricValue sums the samples of a family whose labels include want.
func metricValue(fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	f := fams[name]
	if f == nil {
		return -1
	}
	var sum float64
	for _, m := range f.GetMetric() {
		ok := true
		for k, v := range want {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			ok = ok && found
		}
		if !ok {
			continue
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

func httpStatus(url string) int {
	c := http.Client{Timeout: 3 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// healthcheckExit runs `natkeep healthcheck` and returns its exit status.
func healthcheckExit(t *testing.T, admin string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, natkeepBinary(t), "healthcheck")
	cmd.Env = append(os.Environ(), "NATKEEP_ADMIN_ADDR="+admin)
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return 0
}

func waitHTTP(t *testing.T, url string, status int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for httpStatus(url) != status {
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered %d", url, status)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestBinaryAdminEndpoints: /metrics parses and moves with traffic and
// heartbeats, /healthz and /readyz answer, readiness goes 503 while
// draining, healthcheck exit codes follow it, and SIGTERM exits 0.
func TestBinaryAdminEndpoints(t *testing.T) {
	echo, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 65536)
		for {
			n, from, err := echo.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			if n > 0 {
				_, _ = echo.WriteToUDPAddrPort(buf[:n], from)
			}
		}
	}()
	tcpUp, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcpUp.Close()
	go func() {
		for {
			c, err := tcpUp.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	udpPort, tcpPort, adminPort := freePort(t, "udp"), freePort(t, "tcp"), freePort(t, "tcp")
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	udpRoute := fmt.Sprintf("udp://127.0.0.1:%d/%s?interval=200ms&payload=nat-t", udpPort, echo.LocalAddr())
	tcpRoute := fmt.Sprintf("tcp://127.0.0.1:%d/%s", tcpPort, tcpUp.Addr())
	nk := startHost(t, "NATKEEP_ROUTES="+udpRoute+","+tcpRoute, "NATKEEP_ADMIN_ADDR="+admin, "NATKEEP_DRAIN_TIMEOUT=10s")
	waitHTTP(t, "http://"+admin+"/readyz", 200)
	if got := httpStatus("http://" + admin + "/healthz"); got != 200 {
		t.Fatalf("/healthz = %d", got)
	}
	if code := healthcheckExit(t, admin); code != 0 {
		t.Fatalf("healthcheck exit %d while ready", code)
	}

	app, err := net.Dial("udp4", fmt.Sprintf("127.0.0.1:%d", udpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	for i := range 10 {
		fmt.Fprintf(app, "msg-%d", i)
		buf := make([]byte, 64)
		_ = app.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := app.Read(buf); err != nil {
			t.Fatal(err)
		}
	}
	route := map[string]string{"route": udpRoute}
	deadline := time.Now().Add(20 * time.Second)
	for {
		f := scrape(t, admin)
		up := metricValue(f, "natkeep_udp_datagrams_total", map[string]string{"route": udpRoute, "direction": "upstream"})
		beats := metricValue(f, "natkeep_udp_heartbeats_sent_total", route)
		if up == 10 && beats >= 3 {
			if v := metricValue(f, "natkeep_udp_flows_active", route); v != 1 {
				t.Fatalf("flows active = %v", v)
			}
			if v := metricValue(f, "natkeep_udp_bytes_total", map[string]string{"route": udpRoute, "direction": "downstream"}); v < 50 {
				t.Fatalf("downstream bytes = %v", v)
			}
			for _, name := range []string{"go_goroutines", "process_resident_memory_bytes", "natkeep_listener_up", "natkeep_tcp_connections_active"} {
				if f[name] == nil {
					t.Fatalf("metric %s missing", name)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics did not move: upstream datagrams %v, heartbeats %v", up, beats)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Drain: an open TCP connection keeps natkeep draining (not ready)
	// until the app closes it; then natkeep exits 0.
	conn, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", tcpPort))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(conn, "ping")
	buf := make([]byte, 4)
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(conn, buf); err != nil {
		t.Fatal(err)
	}
	if err := nk.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitHTTP(t, "http://"+admin+"/readyz", 503)
	if code := healthcheckExit(t, admin); code != 1 {
		t.Fatalf("healthcheck exit %d while draining, want 1", code)
	}
	// The draining connection still carries bytes.
	fmt.Fprint(conn, "pong")
	if _, err := io.ReadFull(conn, buf); err != nil || string(buf) != "pong" {
		t.Fatalf("draining connection: %q %v", buf, err)
	}
	conn.Close()
	if err := nk.Wait(15 * time.Second); err != nil {
		t.Fatalf("natkeep exit after drain: %v\n%s", err, nk.Output())
	}
	if !strings.Contains(nk.Output(), `"msg":"stopped"`) {
		t.Fatalf("no clean stop logged:\n%s", nk.Output())
	}
}

// TestBinarySecondSignalExitsAtOnce: a second SIGTERM during a drain that
// would otherwise last 60 s ends the process immediately.
func TestBinarySecondSignalExitsAtOnce(t *testing.T) {
	up, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(io.Discard, c) }()
		}
	}()
	port := freePort(t, "tcp")
	nk := startHost(t, fmt.Sprintf("NATKEEP_ROUTES=tcp://127.0.0.1:%d/%s", port, up.Addr()), "NATKEEP_ADMIN_ADDR=off", "NATKEEP_DRAIN_TIMEOUT=60s")
	if !nk.waitFor(20*time.Second, `"msg":"natkeep started"`) {
		t.Fatalf("not started:\n%s", nk.Output())
	}
	conn, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprint(conn, "hold")
	time.Sleep(200 * time.Millisecond)
	_ = nk.Signal(syscall.SIGTERM)
	if !nk.waitFor(10*time.Second, `"msg":"draining"`) {
		t.Fatal("no drain started")
	}
	start := time.Now()
	_ = nk.Signal(syscall.SIGTERM)
	if err := nk.Wait(10 * time.Second); err == errLabWaitTimeout {
		t.Fatal("second signal did not end natkeep")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("second signal took %v", d)
	}
}

// TestBinaryBadConfigExits2 checks the process-level contract: one line on
// stderr naming the variable, exit status 2, nothing relayed.
func TestBinaryBadConfigExits2(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, natkeepBinary(t))
	cmd.Env = append(os.Environ(), `NATKEEP_ROUTES=udp://:5000/x:1,udp://:99999/x:1`)
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want status 2; output %s", err, out)
	}
	want := `natkeep: NATKEEP_ROUTES entry 2 "udp://:99999/x:1": listen port 99999 out of range 1..65535` + "\n"
	if string(out) != want {
		t.Fatalf("output %q, want %q", out, want)
	}
}

// TestBinaryWarnsAboutLimits: a flow limit beyond the ephemeral port range
// is reported at start-up, so flows failing later are not a surprise.
func TestBinaryWarnsAboutLimits(t *testing.T) {
	lo, hi, ok := portRange()
	if !ok {
		t.Skip("no /proc/sys/net/ipv4/ip_local_port_range")
	}
	port := freePort(t, "udp")
	nk := startHost(t, fmt.Sprintf("NATKEEP_ROUTES=udp://127.0.0.1:%d/127.0.0.1:9", port), "NATKEEP_ADMIN_ADDR=off",
		fmt.Sprintf("NATKEEP_UDP_MAX_FLOWS=%d", hi-lo+2))
	if !nk.waitFor(20*time.Second, "exceeds the ephemeral port range") {
		t.Fatalf("no warning about the port range:\n%s", nk.Output())
	}
}
