//go:build linux

package main

// Strangers cannot exhaust what the app needs. In a network namespace of
// its own, with an ephemeral port range of 1,000 ports and natkeep on its
// default settings, a spray of 3,000 forged source ports takes only the
// budget: the app's flows keep working, a new app flow gets in, another
// process still has ephemeral ports, /healthz answers; flows a sink never
// answered die after UDP_UNANSWERED_TIMEOUT. With 1,024 descriptors, 700
// silent TCP connections never take natkeep to its limit.

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

// budgetLab is the lab's client namespace with a small ephemeral port range.
func budgetLab(t *testing.T) *natlab.Lab {
	t.Helper()
	l := natlab.New(t, natlab.Config{})
	l.Run(t, l.Client, "sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=40000 40999")
	return l
}

// startBudgetNatkeep runs natkeep in the client namespace, under prlimit
// when nofile > 0, with the given routes and extra variables.
func startBudgetNatkeep(t *testing.T, l *natlab.Lab, nofile int, env ...string) *natlab.Proc {
	t.Helper()
	env = append([]string{"NATKEEP_LOG_FORMAT=json", "NATKEEP_LOG_LEVEL=info", "NATKEEP_ADMIN_ADDR=127.0.0.1:9299", "NATKEEP_DRAIN_TIMEOUT=1s"}, env...)
	var p *natlab.Proc
	if nofile > 0 {
		prlimit, err := exec.LookPath("prlimit")
		if err != nil {
			natlab.Skip(t, "prlimit (util-linux) not installed")
		}
		p = l.StartProcess(t, l.Client, env, prlimit, fmt.Sprintf("--nofile=%d:%d", nofile, nofile), natlab.NatkeepBinary(t))
	} else {
		p = l.StartProcess(t, l.Client, env, natlab.NatkeepBinary(t))
	}
	if !p.WaitFor(20*time.Second, `"msg":"natkeep started"`) {
		t.Fatalf("natkeep did not start:\n%s", p.Output())
	}
	return p
}

// spray sends one datagram from each of n source ports of 127.0.0.2 (ports
// outside the ephemeral range, so the spray itself takes none), inside ns.
func spray(t *testing.T, ns, to string, n int) {
	t.Helper()
	err := natlab.InNetns(ns, func() error {
		dst, err := net.ResolveUDPAddr("udp4", to)
		if err != nil {
			return err
		}
		for i := range n {
			c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2), Port: 10000 + i})
			if err != nil {
				return err
			}
			_, err = c.WriteToUDP([]byte("spray"), dst)
			c.Close()
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// canBindEphemeral reports whether a new socket in ns still gets an
// ephemeral port (the app's own sendto would fail with EAGAIN otherwise).
func canBindEphemeral(ns string) error {
	return natlab.InNetns(ns, func() error {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
		if err != nil {
			return err
		}
		return c.Close()
	})
}

func TestUDPSprayCannotExhaustTheNamespace(t *testing.T) {
	for _, nofile := range []int{0, 1024} {
		t.Run(fmt.Sprintf("nofile=%d", nofile), func(t *testing.T) {
			l := budgetLab(t)
			echo := l.ListenUDP(t, l.Client, "127.0.0.1:9000")
			nktest.EchoUDP(t, echo)
			nk := startBudgetNatkeep(t, l, nofile, "NATKEEP_ROUTES=udp://127.0.0.1:5000/127.0.0.1:9000")
			admin := l.HTTPClient(l.Client)
			app := l.DialUDP(t, l.Client, "127.0.0.1:5000")
			if _, err := nktest.UDPRoundTrip(app, nil, "before", 5, time.Second); err != nil {
				t.Fatalf("app flow before the spray: %v", err)
			}
			fds0, rss0 := nk.FDs(t), mustRSS(t, nk)
			spray(t, l.Client, "127.0.0.1:5000", 3000)
			f := nktest.Scrape(t, admin, "127.0.0.1:9299")
			created := nktest.Value(f, "natkeep_udp_flows_created_total", nil)
			deadline := time.Now().Add(20 * time.Second)
			for created+nktest.Value(f, "natkeep_udp_flows_refused_total", nil) < 3001 && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
				f = nktest.Scrape(t, admin, "127.0.0.1:9299")
				created = nktest.Value(f, "natkeep_udp_flows_created_total", nil)
			}
			refused := nktest.ByLabel(f, "natkeep_udp_flows_refused_total", "reason")
			active := nktest.Value(f, "natkeep_udp_flows_active", nil)
			if _, err := nktest.UDPRoundTrip(app, nil, "during", 5, time.Second); err != nil {
				t.Fatalf("the app's established flow stopped working after the spray: %v", err)
			}
			fresh := l.DialUDP(t, l.Client, "127.0.0.1:5000")
			if _, err := nktest.UDPRoundTrip(fresh, nil, "new app flow", 5, time.Second); err != nil {
				t.Fatalf("a new app flow after the spray was locked out: %v", err)
			}
			if err := canBindEphemeral(l.Client); err != nil {
				t.Fatalf("another process cannot get an ephemeral port after the spray: %v", err)
			}
			if st := nsStatus(admin, "http://127.0.0.1:9299/healthz"); st != 200 {
				t.Fatalf("/healthz answered %d after the spray", st)
			}
			evicted := nktest.Value(nktest.Scrape(t, admin, "127.0.0.1:9299"), "natkeep_udp_flows_evicted_total", nil)
			if refused["ports"]+refused["descriptors"]+refused["limit"] == 0 {
				t.Fatalf("no refusals counted: %v", refused)
			}
			if active > 500 {
				t.Fatalf("%v flows active: more than half the 1,000-port range", active)
			}
			fds1, rss1 := nk.FDs(t), mustRSS(t, nk)
			if nofile > 0 && fds1 >= nofile-64 {
				t.Fatalf("natkeep holds %d of %d descriptors: the reserve is gone", fds1, nofile)
			}
			t.Logf("nofile %d: 3000 sprayed ports: %v flows active, created %v, refused %v, evicted %v; fds %d -> %d; RSS %s -> %s",
				nofile, active, created, refused, evicted, fds0, fds1, mib(rss0), mib(rss1))
		})
	}
}

// TestUDPUnansweredFlowsExpire: against a sink, sprayed flows are gone
// after UDP_UNANSWERED_TIMEOUT, long before the idle timeout.
func TestUDPUnansweredFlowsExpire(t *testing.T) {
	l := budgetLab(t)
	sink := l.ListenUDP(t, l.Client, "127.0.0.1:9000")
	nktest.NewUDP(t, sink)
	nk := startBudgetNatkeep(t, l, 0, "NATKEEP_ROUTES=udp://127.0.0.1:5000/127.0.0.1:9000", "NATKEEP_UDP_UNANSWERED_TIMEOUT=3s")
	admin := l.HTTPClient(l.Client)
	spray(t, l.Client, "127.0.0.1:5000", 300)
	start := time.Now()
	var active float64
	if !nktest.Eventually(30*time.Second, 200*time.Millisecond, func() bool {
		active = nktest.Value(nktest.Scrape(t, admin, "127.0.0.1:9299"), "natkeep_udp_flows_active", nil)
		return active == 0 && time.Since(start) > time.Second
	}) {
		t.Fatalf("%v unanswered flows still active 30 s after the spray\n%s", active, nk.Output())
	}
	gone := time.Since(start)
	if gone < 3*time.Second {
		t.Fatalf("flows gone after %v, before the 3 s unanswered timeout", gone)
	}
	t.Logf("300 unanswered flows gone %v after the spray (UDP_UNANSWERED_TIMEOUT=3s, idle timeout 10m)", gone.Round(100*time.Millisecond))
}

// TestTCPSilentConnectionsKeepAReserve: natkeep with 1,024 descriptors and
// 700 silent connections: the budget (two descriptors a connection, less a
// reserve) lets 448 in and resets the rest, counted; natkeep never gets near
// its limit and /healthz answers.
func TestTCPSilentConnectionsKeepAReserve(t *testing.T) {
	l := budgetLab(t)
	up := l.ListenTCP(t, l.Client, "127.0.0.1:9100")
	nktest.ServeTCP(t, up, nktest.Discard)
	nk := startBudgetNatkeep(t, l, 1024, "NATKEEP_ROUTES=tcp://127.0.0.1:5400/127.0.0.1:9100")
	admin := l.HTTPClient(l.Client)
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	resetAtDial := 0
	err := natlab.InNetns(l.Client, func() error {
		for range 700 {
			c, err := net.DialTimeout("tcp4", "127.0.0.1:5400", 5*time.Second)
			if errors.Is(err, syscall.ECONNRESET) {
				resetAtDial++ // refused so fast that the reset beat connect
				continue
			}
			if err != nil {
				return err
			}
			conns = append(conns, c)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fams := nktest.Scrape(t, admin, "127.0.0.1:9299")
	if !nktest.Eventually(20*time.Second, 100*time.Millisecond, func() bool {
		fams = nktest.Scrape(t, admin, "127.0.0.1:9299")
		return nktest.Value(fams, "natkeep_tcp_connections_total", nil) >= 700
	}) {
		t.Fatal("natkeep did not see 700 connections")
	}
	activeConns := nktest.Value(fams, "natkeep_tcp_connections_active", nil)
	ends := nktest.ByLabel(fams, "natkeep_tcp_connection_ends_total", "reason")
	fds := nk.FDs(t)
	if activeConns != 448 || ends["conn_limit"] != 252 {
		t.Fatalf("active %v, conn_limit ends %v; want 448 and 252 (1024 descriptors less 128 reserved, 2 per connection)", activeConns, ends["conn_limit"])
	}
	if fds >= 1024-64 {
		t.Fatalf("natkeep holds %d of 1024 descriptors: the reserve is gone", fds)
	}
	if st := nsStatus(admin, "http://127.0.0.1:9299/healthz"); st != 200 {
		t.Fatalf("/healthz answered %d with 700 connections", st)
	}
	t.Logf("nofile 1024, 700 silent connections: %v proxied, %v reset (conn_limit; %d of them before connect returned), natkeep holds %d descriptors", activeConns, ends["conn_limit"], resetAtDial, fds)
}

// nsStatus fetches url with client (one made for the namespace) and
// returns the status, 0 on error.
func nsStatus(client *http.Client, url string) int {
	resp, err := client.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// mustRSS returns the process's resident set size in bytes.
func mustRSS(t *testing.T, p *natlab.Proc) int64 {
	rss, _ := p.Memory(t)
	return rss
}
