//go:build linux

package main

// Upstream faults in a NAT lab: the server behind the NAT restarts, and it
// resets a TCP connection in the middle of a stream.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

// TestFaultUpstreamRestart: the server behind the NAT closes and reopens
// its UDP socket and restarts its TCP listener. The UDP flow carries on
// through the same NAT mapping (the refusals in between are counted); an
// open TCP connection closed by the server ends cleanly for the app; a
// connection attempted while the server is down is reset, never left
// hanging; new connections succeed after the restart.
func TestFaultUpstreamRestart(t *testing.T) {
	l := natlab.New(t, natlab.Config{UDPTimeout: 30 * time.Second, UDPStreamTimeout: 30 * time.Second, TCPEstablishedTimeout: 60 * time.Second})
	udpAddr, tcpAddr := netip.AddrPortFrom(l.ServerAddr, 9000).String(), netip.AddrPortFrom(l.ServerAddr, 9100).String()
	gen1 := nktest.NewUDPTagged(t, l.ListenUDP(t, l.Server, udpAddr), "gen1")
	tcp1 := nktest.ServeTCP(t, l.ListenTCP(t, l.Server, tcpAddr), nktest.Greet("gen1"))
	nk := startNatkeep(t, l, "NATKEEP_ROUTES=udp://127.0.0.1:5000/"+udpAddr+",tcp://127.0.0.1:5100/"+tcpAddr,
		"NATKEEP_UDP_HEARTBEAT_INTERVAL=1s", "NATKEEP_LOG_LEVEL=info")
	admin := l.HTTPClient(l.Client)
	metric := func(name string, labels map[string]string) float64 {
		return nktest.Value(nktest.Scrape(t, admin, "127.0.0.1:9299"), name, labels)
	}
	app := nktest.NewUDP(t, l.DialUDP(t, l.Client, "127.0.0.1:5000"))
	if tag := app.Ask(t, "u1"); tag != "gen1" {
		t.Fatalf("answered by %s", tag)
	}
	conn := l.DialTCP(t, l.Client, "127.0.0.1:5100")
	if tag, err := nktest.ReadLine(conn); err != nil || tag != "gen1" {
		t.Fatalf("greeting %q %v", tag, err)
	}

	// UDP: the server's socket goes away and comes back.
	_ = gen1.Conn.Close()
	for i := range 5 {
		if _, err := app.Conn.Write([]byte(fmt.Sprintf("down-%d", i))); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !nktest.Eventually(10*time.Second, 100*time.Millisecond, func() bool {
		return metric("natkeep_udp_drops_total", map[string]string{"reason": "upstream_refused"}) >= 1
	}) {
		t.Fatal("ICMP port unreachable through the NAT was not counted as upstream_refused")
	}
	gen2 := nktest.NewUDPTagged(t, l.ListenUDP(t, l.Server, udpAddr), "gen2")
	if tag := app.Ask(t, "u2"); tag != "gen2" {
		t.Fatalf("after the restart answered by %s", tag)
	}
	before := gen1.All()[0].From
	got2 := gen2.All()
	after := got2[len(got2)-1].From
	if before != after {
		t.Fatalf("the flow reached the server from %v before the restart and from %v after: the NAT mapping was lost", before, after)
	}
	if v := metric("natkeep_udp_flows_created_total", nil); v != 1 {
		t.Fatalf("flows created = %v: the flow must survive the restart", v)
	}

	// TCP: the server restarts; its open connection is closed cleanly.
	tcp1.Stop()
	_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := io.ReadAll(conn); err != nil || len(b) != 0 {
		t.Fatalf("connection closed by the restarting server ended with %q, %v; want a clean EOF", b, err)
	}
	_ = conn.Close()
	// While it is down, a new connection is reset, not left hanging. The
	// reset may even beat the app's connect call completing.
	var down net.Conn
	err := natlab.InNetns(l.Client, func() error {
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
	nktest.ServeTCP(t, l.ListenTCP(t, l.Server, tcpAddr), nktest.Greet("gen2"))
	c2 := l.DialTCP(t, l.Client, "127.0.0.1:5100")
	if tag, err := nktest.ReadLine(c2); err != nil || tag != "gen2" {
		t.Fatalf("after the restart: greeting %q %v", tag, err)
	}
	if err := nktest.RoundTrip(c2, "after restart", 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if errs := nk.Grep(`"level":"ERROR"`); len(errs) > 0 {
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
	l := natlab.New(t, natlab.Config{TCPEstablishedTimeout: 60 * time.Second})
	tcpAddr := netip.AddrPortFrom(l.ServerAddr, 9100).String()
	payloads := map[string][]byte{"reading": make([]byte, 256<<10), "not reading": make([]byte, 8<<20)}
	for _, p := range payloads {
		_, _ = rand.Read(p)
	}
	nktest.ServeTCP(t, l.ListenTCP(t, l.Server, tcpAddr), func(c *net.TCPConn) {
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
	admin := l.HTTPClient(l.Client)
	for i, mode := range []string{"reading", "not reading"} {
		t.Run(mode, func(t *testing.T) {
			c := l.DialTCP(t, l.Client, "127.0.0.1:5100")
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
			if !nktest.Eventually(10*time.Second, 100*time.Millisecond, func() bool {
				return nktest.Value(nktest.Scrape(t, admin, "127.0.0.1:9299"), "natkeep_tcp_connection_ends_total", map[string]string{"reason": "upstream_reset"}) >= float64(i+1)
			}) {
				t.Fatalf("upstream reset not counted; ends: %v", nktest.ByLabel(nktest.Scrape(t, admin, "127.0.0.1:9299"), "natkeep_tcp_connection_ends_total", "reason"))
			}
			t.Logf("%s: app got %d of %d bytes intact, then ECONNRESET", mode, len(got), len(want))
		})
	}
	if errs := nk.Grep(`"level":"ERROR"`); len(errs) > 0 {
		t.Fatalf("error-level logs:\n%s", strings.Join(errs, "\n"))
	}
}
