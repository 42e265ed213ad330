//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/machine"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

// TestBinaryAdminEndpoints: /metrics parses and moves with traffic and
// heartbeats, /healthz and /readyz answer, readiness goes 503 while
// draining, healthcheck exit codes follow it, and SIGTERM exits 0.
func TestBinaryAdminEndpoints(t *testing.T) {
	echo := nktest.EchoUDP(t, nktest.LoopbackUDP(t))
	tcpUp := nktest.ServeTCP(t, nktest.LoopbackTCP(t), nktest.Echo)
	udpPort, tcpPort, adminPort := nktest.FreePort(t, "udp"), nktest.FreePort(t, "tcp"), nktest.FreePort(t, "tcp")
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	udpRoute := fmt.Sprintf("udp://127.0.0.1:%d/%s?interval=200ms&payload=nat-t", udpPort, echo.LocalAddr())
	tcpRoute := fmt.Sprintf("tcp://127.0.0.1:%d/%s", tcpPort, tcpUp.Addr())
	nk := startHost(t, "NATKEEP_ROUTES="+udpRoute+","+tcpRoute, "NATKEEP_ADMIN_ADDR="+admin, "NATKEEP_DRAIN_TIMEOUT=10s")
	nktest.WaitStatus(t, "http://"+admin+"/readyz", 200)
	if got := nktest.Status("http://" + admin + "/healthz"); got != 200 {
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
		f := nktest.Scrape(t, nil, admin)
		up := nktest.Value(f, "natkeep_udp_datagrams_total", map[string]string{"route": udpRoute, "direction": "upstream"})
		beats := nktest.Value(f, "natkeep_udp_heartbeats_sent_total", route)
		if up == 10 && beats >= 3 {
			if v := nktest.Value(f, "natkeep_udp_flows_active", route); v != 1 {
				t.Fatalf("flows active = %v", v)
			}
			if v := nktest.Value(f, "natkeep_udp_bytes_total", map[string]string{"route": udpRoute, "direction": "downstream"}); v < 50 {
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
	nktest.WaitStatus(t, "http://"+admin+"/readyz", 503)
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
	up := nktest.ServeTCP(t, nktest.LoopbackTCP(t), nktest.Discard)
	port := nktest.FreePort(t, "tcp")
	nk := startHost(t, fmt.Sprintf("NATKEEP_ROUTES=tcp://127.0.0.1:%d/%s", port, up.Addr()), "NATKEEP_ADMIN_ADDR=off", "NATKEEP_DRAIN_TIMEOUT=60s")
	if !nk.WaitFor(20*time.Second, `"msg":"natkeep started"`) {
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
	if !nk.WaitFor(10*time.Second, `"msg":"draining"`) {
		t.Fatal("no drain started")
	}
	start := time.Now()
	_ = nk.Signal(syscall.SIGTERM)
	if err := nk.Wait(10 * time.Second); err == natlab.ErrWaitTimeout {
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
	cmd := exec.CommandContext(ctx, natlab.NatkeepBinary(t))
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

// TestBinaryRefusesLimitsAboveHost: a flow limit beyond what the host
// allows (here: more flows than half the ephemeral port range) is a
// start-up error naming the variable, exit status 2, not a warning and
// flows failing later.
func TestBinaryRefusesLimitsAboveHost(t *testing.T) {
	host := machine.Read()
	if host.Ports() == 0 {
		t.Skip("no /proc/sys/net/ipv4/ip_local_port_range")
	}
	port := nktest.FreePort(t, "udp")
	cmd := exec.Command(natlab.NatkeepBinary(t))
	cmd.Env = []string{fmt.Sprintf("NATKEEP_ROUTES=udp://127.0.0.1:%d/127.0.0.1:9", port), "NATKEEP_ADMIN_ADDR=off",
		fmt.Sprintf("NATKEEP_UDP_MAX_FLOWS=%d", host.Ports())}
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want status 2; output %s", err, out)
	}
	if !strings.HasPrefix(string(out), fmt.Sprintf("natkeep: NATKEEP_UDP_MAX_FLOWS=%q: above what this host allows", fmt.Sprint(host.Ports()))) || strings.Count(string(out), "\n") != 1 {
		t.Fatalf("output %q", out)
	}
}
