//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

// These tests run the real natkeep binary in the client namespace of a NAT
// lab (package natlab): client (app + natkeep) -> MASQUERADE router with short
// conntrack timeouts -> server with no route back.

// udpNATRun is the UDP keepalive experiment: the app talks once, stays
// silent for idle, then the server pushes to the address it saw.
type udpNATRun struct {
	pushArrived bool
	server      *nktest.UDP
	mapped      netip.AddrPort // the flow's public address as the server saw it
	destroys    int            // conntrack DESTROY events for the flow
	natkeep     *natlab.Proc
}

func runUDPNAT(t *testing.T, idle time.Duration, natkeepEnv ...string) udpNATRun {
	l := natlab.New(t, natlab.Config{UDPTimeout: 2 * time.Second, UDPStreamTimeout: 2 * time.Second})
	events := l.ConntrackEvents(t, "udp")
	server := nktest.NewUDP(t, l.ListenUDP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 9000).String()))
	env := append([]string{fmt.Sprintf("NATKEEP_ROUTES=udp://127.0.0.1:5000/%s", netip.AddrPortFrom(l.ServerAddr, 9000))}, natkeepEnv...)
	nk := startNatkeep(t, l, env...)
	app := nktest.NewUDP(t, l.DialUDP(t, l.Client, "127.0.0.1:5000"))

	public := sayHello(t, l, app, server)
	if _, err := server.Conn.WriteToUDPAddrPort([]byte("welcome"), public); err != nil {
		t.Fatal(err)
	}
	if _, ok := app.WaitData(10*time.Second, "welcome"); !ok {
		t.Fatal("app never got the server's immediate reply")
	}
	time.Sleep(idle) // the experiment: a long silence, 5x the NAT timeout
	if _, err := server.Conn.WriteToUDPAddrPort([]byte("push"), public); err != nil {
		t.Fatal(err)
	}
	_, pushed := app.WaitData(3*time.Second, "push")
	// The flow's tuple on the router: natkeep's upstream socket -> server.
	destroys := events.Count("DESTROY", "dst="+l.ServerAddr.String(), "dport=9000")
	return udpNATRun{pushArrived: pushed, server: server, mapped: public, destroys: destroys, natkeep: nk}
}

// TestNATUDPHeartbeatsKeepMapping: with heartbeats every 1 s through a NAT
// that forgets idle UDP after 2 s, the server's push after 10 s of app
// silence reaches the app and the mapping never changes; without heartbeats
// (control) the same push is lost; with TTL 1 heartbeats the push arrives
// and the server never sees a heartbeat.
func TestNATUDPHeartbeatsKeepMapping(t *testing.T) {
	const idle = 10 * time.Second
	t.Run("heartbeats", func(t *testing.T) {
		t.Parallel()
		r := runUDPNAT(t, idle, "NATKEEP_UDP_HEARTBEAT_INTERVAL=1s")
		if !r.pushArrived {
			t.Fatal("push after 10 s idle was lost despite heartbeats")
		}
		if r.destroys != 0 {
			t.Fatalf("conntrack destroyed the mapping %d times", r.destroys)
		}
		beats := r.server.Count("")
		if beats < 7 {
			t.Fatalf("server saw %d heartbeats in 10 s at a 1 s interval", beats)
		}
		for _, g := range r.server.All() {
			if g.From != r.mapped {
				t.Fatalf("server saw the flow from %v and later %v: the mapping changed", r.mapped, g.From)
			}
		}
		t.Logf("heartbeats seen by server: %d; mapping %v kept for %v; DESTROY events: %d", beats, r.mapped, idle, r.destroys)
	})
	t.Run("control without heartbeats", func(t *testing.T) {
		t.Parallel()
		r := runUDPNAT(t, idle, "NATKEEP_UDP_HEARTBEAT_INTERVAL=0")
		if r.pushArrived {
			t.Fatal("push arrived without heartbeats: the NAT lab did not expire the mapping, so the other results prove nothing")
		}
		if n := r.server.Count(""); n != 0 {
			t.Fatalf("server saw %d heartbeats with heartbeats off", n)
		}
		t.Logf("control: push lost as expected; DESTROY events: %d", r.destroys)
	})
	t.Run("ttl 1", func(t *testing.T) {
		t.Parallel()
		r := runUDPNAT(t, idle, "NATKEEP_UDP_HEARTBEAT_INTERVAL=1s", "NATKEEP_UDP_HEARTBEAT_TTL=1")
		if !r.pushArrived {
			t.Fatal("push after 10 s idle was lost with TTL-1 heartbeats")
		}
		if n := len(r.server.All()); n != 1 || r.server.Count("hello") != 1 {
			t.Fatalf("server saw %d datagrams; with TTL 1 it must see only the app's hello", n)
		}
		if r.destroys != 0 {
			t.Fatalf("conntrack destroyed the mapping %d times", r.destroys)
		}
		t.Logf("ttl 1: push arrived, server saw no heartbeat, DESTROY events: %d", r.destroys)
	})
}

// tcpNATSetup connects app -> natkeep -> NAT -> server and returns both ends.
func tcpNATSetup(t *testing.T, l *natlab.Lab, natkeepEnv ...string) (app, server *net.TCPConn, nk *natlab.Proc) {
	t.Helper()
	ln := l.ListenTCP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 9100).String())
	env := append([]string{fmt.Sprintf("NATKEEP_ROUTES=tcp://127.0.0.1:5100/%s", netip.AddrPortFrom(l.ServerAddr, 9100))}, natkeepEnv...)
	nk = startNatkeep(t, l, env...)
	app = l.DialTCP(t, l.Client, "127.0.0.1:5100")
	server, err := nktest.AcceptWithin(ln, 15*time.Second)
	if err != nil {
		t.Fatalf("server never accepted the proxied connection: %v", err)
	}
	t.Cleanup(func() { server.Close() })
	exchange(t, app, server, "req1")
	exchange(t, server, app, "resp1")
	return app, server, nk
}

// TestNATTCPKeepaliveKeepsConnection: through a NAT that forgets idle TCP
// after 5 s (loose pickup off), keepalive every 1 s keeps a connection idle
// for 15 s usable both ways; without keepalive (control) it is not.
func TestNATTCPKeepaliveKeepsConnection(t *testing.T) {
	const idle = 15 * time.Second
	lab := natlab.Config{TCPEstablishedTimeout: 5 * time.Second}
	t.Run("keepalive", func(t *testing.T) {
		t.Parallel()
		l := natlab.New(t, lab)
		events := l.ConntrackEvents(t, "tcp")
		app, server, _ := tcpNATSetup(t, l, "NATKEEP_TCP_KEEPALIVE_IDLE=1s", "NATKEEP_TCP_KEEPALIVE_INTERVAL=1s", "NATKEEP_TCP_KEEPALIVE_COUNT=3")
		time.Sleep(idle)
		exchange(t, server, app, "push")
		exchange(t, app, server, "req2")
		if n := events.Count("DESTROY", "dst="+l.ServerAddr.String(), "dport=9100"); n != 0 {
			t.Fatalf("conntrack destroyed the connection's entry %d times", n)
		}
	})
	t.Run("control without keepalive", func(t *testing.T) {
		t.Parallel()
		l := natlab.New(t, lab)
		app, server, _ := tcpNATSetup(t, l, "NATKEEP_TCP_KEEPALIVE_IDLE=0")
		time.Sleep(idle)
		if err := nktest.Exchange(server, app, "push", 3*time.Second); err == nil {
			t.Fatal("push arrived without keepalive: the NAT lab did not expire the connection, so the other result proves nothing")
		}
	})
}

// TestNATTCPDeadPeerDetected blackholes the server in the router and
// measures how long the app waits before natkeep resets its connection:
// idle + interval*count when idle, the user timeout with data in flight.
func TestNATTCPDeadPeerDetected(t *testing.T) {
	lab := natlab.Config{TCPEstablishedTimeout: 60 * time.Second}
	waitReset := func(t *testing.T, app *net.TCPConn, limit time.Duration) time.Duration {
		t.Helper()
		start := time.Now()
		_ = app.SetReadDeadline(time.Now().Add(limit))
		_, err := io.ReadAll(app)
		took := time.Since(start)
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("app's connection ended after %v with %v, want a reset", took, err)
		}
		return took
	}
	t.Run("idle: keepalive", func(t *testing.T) {
		t.Parallel()
		l := natlab.New(t, lab)
		// idle 2 s + 1 s * 3 = 5 s; user timeout left at its default (5 s too).
		app, _, nk := tcpNATSetup(t, l, "NATKEEP_TCP_KEEPALIVE_IDLE=2s", "NATKEEP_TCP_KEEPALIVE_INTERVAL=1s", "NATKEEP_TCP_KEEPALIVE_COUNT=3")
		l.BlockServer(t)
		took := waitReset(t, app, 30*time.Second)
		if took < 4*time.Second {
			t.Fatalf("reset after %v, before keepalive could have expired", took)
		}
		if !nk.WaitFor(5*time.Second, `"reason":"keepalive_timeout"`) {
			t.Fatalf("natkeep did not log reason keepalive_timeout:\n%s", nk.Output())
		}
		t.Logf("idle connection: dead peer detected and app reset after %v (idle 2s + 1s*3 = 5s expected)", took.Round(10*time.Millisecond))
	})
	t.Run("data in flight: user timeout", func(t *testing.T) {
		t.Parallel()
		l := natlab.New(t, lab)
		// Keepalive would take 30+ s; the user timeout of 3 s must win.
		app, _, nk := tcpNATSetup(t, l, "NATKEEP_TCP_KEEPALIVE_IDLE=30s", "NATKEEP_TCP_KEEPALIVE_INTERVAL=10s", "NATKEEP_TCP_KEEPALIVE_COUNT=3", "NATKEEP_TCP_USER_TIMEOUT=3s")
		l.BlockServer(t)
		if _, err := app.Write([]byte("unacknowledged")); err != nil {
			t.Fatal(err)
		}
		took := waitReset(t, app, 30*time.Second)
		if took < 2*time.Second || took > 15*time.Second {
			t.Fatalf("reset after %v; want about the 3 s user timeout", took)
		}
		if !nk.WaitFor(5*time.Second, `"reason":"user_timeout"`) {
			t.Fatalf("natkeep did not log reason user_timeout:\n%s", nk.Output())
		}
		t.Logf("data in flight: app reset after %v (user timeout 3s)", took.Round(10*time.Millisecond))
	})
}
