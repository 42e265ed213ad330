//go:build linux

package main

// An upstream given as a DNS name, in a NAT lab: the name changes address,
// stops resolving and resolves again while natkeep relays.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

// hostsFile is a hosts file; gen changes its size and mtime on every
// rewrite, so a resolver that caches by mtime and size re-reads it.
func hostsFile(gen int, upstream netip.Addr) string {
	s := fmt.Sprintf("# natkeep fault test, generation %d%s\n127.0.0.1 localhost\n", gen, strings.Repeat(".", gen))
	if upstream.IsValid() {
		s += upstream.String() + " upstream.test\n"
	}
	return s
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
	l := natlab.New(t, natlab.Config{UDPTimeout: 60 * time.Second, UDPStreamTimeout: 60 * time.Second, TCPEstablishedTimeout: 120 * time.Second})
	srv1, srv2 := l.ServerAddr, l.ServerAddr.Next()
	l.Run(t, l.Server, "ip", "addr", "add", netip.PrefixFrom(srv2, 24).String(), "dev", l.ServerIf)
	gen := 1
	rewrite := natlab.EtcFiles(t, l.Client, map[string]string{
		"hosts": hostsFile(gen, srv1),
		// A failed name must fail fast and stay inside the namespace: the
		// only nameserver is the namespace's own loopback, where nothing listens.
		"resolv.conf": "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
	})
	setHosts := func(a netip.Addr) time.Time {
		gen++
		rewrite("hosts", hostsFile(gen, a))
		return time.Now()
	}
	ap := func(a netip.Addr, port uint16) string { return netip.AddrPortFrom(a, port).String() }
	nktest.NewUDPTagged(t, l.ListenUDP(t, l.Server, ap(srv1, 9000)), "srv1")
	nktest.NewUDPTagged(t, l.ListenUDP(t, l.Server, ap(srv2, 9000)), "srv2")
	nktest.ServeTCP(t, l.ListenTCP(t, l.Server, ap(srv1, 9100)), nktest.Greet("srv1"))
	nktest.ServeTCP(t, l.ListenTCP(t, l.Server, ap(srv2, 9100)), nktest.Greet("srv2"))
	nk := startNatkeep(t, l, "NATKEEP_ROUTES=udp://127.0.0.1:5000/upstream.test:9000,tcp://127.0.0.1:5100/upstream.test:9100",
		"NATKEEP_RESOLVE_INTERVAL=1s", "NATKEEP_UDP_HEARTBEAT_INTERVAL=2s", "NATKEEP_LOG_LEVEL=info")
	admin := l.HTTPClient(l.Client)
	newApp := func() *nktest.UDP { return nktest.NewUDP(t, l.DialUDP(t, l.Client, "127.0.0.1:5000")) }
	newConn := func(wantTag string) *net.TCPConn {
		t.Helper()
		c := l.DialTCP(t, l.Client, "127.0.0.1:5100")
		tag, err := nktest.ReadLine(c)
		if err != nil || tag != wantTag {
			t.Fatalf("new TCP connection greeted by %q (%v), want %q", tag, err, wantTag)
		}
		return c
	}
	checkUDP := func(app *nktest.UDP, msg, want string) {
		t.Helper()
		if got := app.Ask(t, msg); got != want {
			t.Fatalf("%q answered by %s, want %s", msg, got, want)
		}
	}
	checkTCP := func(c *net.TCPConn, msg string) {
		t.Helper()
		if err := nktest.RoundTrip(c, msg, 5*time.Second); err != nil {
			t.Fatalf("TCP %q: %v", msg, err)
		}
	}

	// (a) resolves.
	if !nk.WaitFor(10*time.Second, "upstream resolved", ap(srv1, 9000)) {
		t.Fatalf("upstream.test not resolved to %v:\n%s", srv1, nk.Output())
	}
	appA := newApp()
	checkUDP(appA, "a1", "srv1")
	connA := newConn("srv1")
	checkTCP(connA, "ta1")

	// (b) the name moves to srv2.
	changedAt := setHosts(srv2)
	if !nk.WaitCount(2, 30*time.Second, "upstream address changed", `"new":"`+srv2.String()) {
		t.Fatalf("no \"upstream address changed\" for both routes within 30 s:\n%s", nk.Output())
	}
	changeTook := time.Since(changedAt)
	for _, line := range nk.Grep("upstream address changed") {
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
	if !nk.WaitFor(30*time.Second, "upstream name did not resolve; keeping last address") {
		t.Fatalf("no resolve failure logged within 30 s:\n%s", nk.Output())
	}
	failTook := time.Since(failedAt)
	var fails float64
	deadline := time.Now().Add(10 * time.Second)
	for {
		f := nktest.Scrape(t, admin, "127.0.0.1:9299")
		u := nktest.Value(f, "natkeep_resolve_failures_total", map[string]string{"proto": "udp"})
		tc := nktest.Value(f, "natkeep_resolve_failures_total", map[string]string{"proto": "tcp"})
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
	n := nk.Count("upstream address changed")
	backAt := setHosts(srv1)
	if !nk.WaitCount(n+2, 30*time.Second, "upstream address changed") {
		t.Fatalf("no change back to %v logged within 30 s:\n%s", srv1, nk.Output())
	}
	backTook := time.Since(backAt)
	appD := newApp()
	checkUDP(appD, "d1", "srv1")
	newConn("srv1")
	checkUDP(appB, "b4", "srv2")

	if errs := nk.Grep(`"level":"ERROR"`); len(errs) > 0 {
		t.Fatalf("error-level logs:\n%s", strings.Join(errs, "\n"))
	}
	t.Logf("DNS: change to a new address logged %v after the hosts rewrite; failure logged %v after removal (%v failures counted, %d warning lines); change back %v",
		changeTook.Round(10*time.Millisecond), failTook.Round(10*time.Millisecond), fails,
		nk.Count("upstream name did not resolve"), backTook.Round(10*time.Millisecond))

	// A graceful stop with name upstreams: SIGTERM drains (2 s at most
	// here) and exits 0.
	stopAt := time.Now()
	if err := nk.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	switch err := nk.Wait(10 * time.Second); {
	case errors.Is(err, natlab.ErrWaitTimeout):
		_ = nk.Signal(syscall.SIGTERM) // the second signal exits at once
		t.Errorf("BUG: natkeep still running 10 s after SIGTERM (drain timeout 2 s) with a UDP route whose upstream is a DNS name")
	case err != nil:
		t.Errorf("natkeep exit after SIGTERM: %v", err)
	default:
		t.Logf("stopped %v after SIGTERM", time.Since(stopAt).Round(10*time.Millisecond))
	}
}
