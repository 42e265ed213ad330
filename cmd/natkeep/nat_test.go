//go:build linux

package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"
)

// These tests run the real natkeep binary in the client namespace of a NAT
// lab (lab_test.go): client (app + natkeep) -> MASQUERADE router with short
// conntrack timeouts -> server with no route back.

// startNatkeep runs the binary in the lab's client namespace and waits for
// its start-up line.
func startNatkeep(t *testing.T, l *natLab, env ...string) *labProc {
	t.Helper()
	env = append([]string{"NATKEEP_LOG_LEVEL=debug", "NATKEEP_LOG_FORMAT=json", "NATKEEP_ADMIN_ADDR=127.0.0.1:9299", "NATKEEP_DRAIN_TIMEOUT=2s"}, env...)
	p := l.startProcess(t, l.Client, env, natkeepBinary(t))
	if !p.waitFor(20*time.Second, `"msg":"natkeep started"`) {
		t.Fatalf("natkeep did not start:\n%s", p.Output())
	}
	return p
}

// udpPeer records datagrams received on a socket in the background.
type udpPeer struct {
	conn *net.UDPConn
	mu   sync.Mutex
	got  []udpGot
}

type udpGot struct {
	from netip.AddrPort
	data string
	at   time.Time
}

func newUDPPeer(t *testing.T, c *net.UDPConn) *udpPeer {
	p := &udpPeer{conn: c}
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue // ICMP errors on a connected socket: keep reading
			}
			p.mu.Lock()
			p.got = append(p.got, udpGot{from, string(buf[:n]), time.Now()})
			p.mu.Unlock()
		}
	}()
	return p
}

func (p *udpPeer) all() []udpGot {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]udpGot(nil), p.got...)
}

// waitData waits up to d for a datagram with the given content.
func (p *udpPeer) waitData(d time.Duration, data string) (udpGot, bool) {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		for _, g := range p.all() {
			if g.data == data {
				return g, true
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return udpGot{}, false
}

func (p *udpPeer) count(data string) int {
	n := 0
	for _, g := range p.all() {
		if g.data == data {
			n++
		}
	}
	return n
}

// udpNATRun is the UDP keepalive experiment: the app talks once, stays
// silent for idle, then the server pushes to the address it saw.
type udpNATRun struct {
	pushArrived bool
	server      *udpPeer
	mapped      netip.AddrPort // the flow's public address as the server saw it
	destroys    int            // conntrack DESTROY events for the flow
	natkeep     *labProc
}

func runUDPNAT(t *testing.T, idle time.Duration, natkeepEnv ...string) udpNATRun {
	l := newNATLab(t, labConfig{UDPTimeout: 2 * time.Second, UDPStreamTimeout: 2 * time.Second})
	events := l.conntrackEvents(t, "udp")
	server := newUDPPeer(t, l.listenUDP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 9000).String()))
	env := append([]string{fmt.Sprintf("NATKEEP_ROUTES=udp://127.0.0.1:5000/%s", netip.AddrPortFrom(l.ServerAddr, 9000))}, natkeepEnv...)
	nk := startNatkeep(t, l, env...)
	app := newUDPPeer(t, l.dialUDP(t, l.Client, "127.0.0.1:5000"))

	if _, err := app.conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	hello, ok := server.waitData(10*time.Second, "hello")
	if !ok {
		t.Fatal("server never got the app's first datagram")
	}
	if hello.from.Addr() != l.RouterOuter {
		t.Fatalf("server saw %v, want the router's outer address %v (MASQUERADE)", hello.from, l.RouterOuter)
	}
	if _, err := server.conn.WriteToUDPAddrPort([]byte("welcome"), hello.from); err != nil {
		t.Fatal(err)
	}
	if _, ok := app.waitData(10*time.Second, "welcome"); !ok {
		t.Fatal("app never got the server's immediate reply")
	}
	time.Sleep(idle) // the experiment: a long silence, 5x the NAT timeout
	if _, err := server.conn.WriteToUDPAddrPort([]byte("push"), hello.from); err != nil {
		t.Fatal(err)
	}
	_, pushed := app.waitData(3*time.Second, "push")
	// The flow's tuple on the router: natkeep's upstream socket -> server.
	destroys := events.count("DESTROY", "dst="+l.ServerAddr.String(), "dport=9000")
	return udpNATRun{pushArrived: pushed, server: server, mapped: hello.from, destroys: destroys, natkeep: nk}
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
		beats := r.server.count("")
		if beats < 7 {
			t.Fatalf("server saw %d heartbeats in 10 s at a 1 s interval", beats)
		}
		for _, g := range r.server.all() {
			if g.from != r.mapped {
				t.Fatalf("server saw the flow from %v and later %v: the mapping changed", r.mapped, g.from)
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
		if n := r.server.count(""); n != 0 {
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
		if n := len(r.server.all()); n != 1 || r.server.count("hello") != 1 {
			t.Fatalf("server saw %d datagrams; with TTL 1 it must see only the app's hello", n)
		}
		if r.destroys != 0 {
			t.Fatalf("conntrack destroyed the mapping %d times", r.destroys)
		}
		t.Logf("ttl 1: push arrived, server saw no heartbeat, DESTROY events: %d", r.destroys)
	})
}

// tcpNATSetup connects app -> natkeep -> NAT -> server and returns both ends.
func tcpNATSetup(t *testing.T, l *natLab, natkeepEnv ...string) (app, server *net.TCPConn, nk *labProc) {
	t.Helper()
	ln := l.listenTCP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 9100).String())
	env := append([]string{fmt.Sprintf("NATKEEP_ROUTES=tcp://127.0.0.1:5100/%s", netip.AddrPortFrom(l.ServerAddr, 9100))}, natkeepEnv...)
	nk = startNatkeep(t, l, env...)
	accepted := make(chan *net.TCPConn, 1)
	go func() {
		c, err := ln.AcceptTCP()
		if err == nil {
			accepted <- c
		}
	}()
	app = l.dialTCP(t, l.Client, "127.0.0.1:5100")
	select {
	case server = <-accepted:
		t.Cleanup(func() { server.Close() })
	case <-time.After(15 * time.Second):
		t.Fatal("server never accepted the proxied connection")
	}
	exchange(t, app, server, "req1")
	exchange(t, server, app, "resp1")
	return app, server, nk
}

// exchange writes msg on a and reads it on b within a generous deadline.
func exchange(t *testing.T, a, b *net.TCPConn, msg string) {
	t.Helper()
	if err := tryExchange(a, b, msg, 5*time.Second); err != nil {
		t.Fatalf("%s: %v", msg, err)
	}
}

func tryExchange(a, b *net.TCPConn, msg string, within time.Duration) error {
	_ = a.SetWriteDeadline(time.Now().Add(within))
	if _, err := a.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, len(msg))
	_ = b.SetReadDeadline(time.Now().Add(within))
	if _, err := io.ReadFull(b, buf); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(buf) != msg {
		return fmt.Errorf("got %q", buf)
	}
	return nil
}

// TestNATTCPKeepaliveKeepsConnection: through a NAT that forgets idle TCP
// after 5 s (loose pickup off), keepalive every 1 s keeps a connection idle
// for 15 s usable both ways; without keepalive (control) it is not.
func TestNATTCPKeepaliveKeepsConnection(t *testing.T) {
	const idle = 15 * time.Second
	lab := labConfig{TCPEstablishedTimeout: 5 * time.Second}
	t.Run("keepalive", func(t *testing.T) {
		t.Parallel()
		l := newNATLab(t, lab)
		events := l.conntrackEvents(t, "tcp")
		app, server, _ := tcpNATSetup(t, l, "NATKEEP_TCP_KEEPALIVE_IDLE=1s", "NATKEEP_TCP_KEEPALIVE_INTERVAL=1s", "NATKEEP_TCP_KEEPALIVE_COUNT=3")
		time.Sleep(idle)
		exchange(t, server, app, "push")
		exchange(t, app, server, "req2")
		if n := events.count("DESTROY", "dst="+l.ServerAddr.String(), "dport=9100"); n != 0 {
			t.Fatalf("conntrack destroyed the connection's entry %d times", n)
		}
	})
	t.Run("control without keepalive", func(t *testing.T) {
		t.Parallel()
		l := newNATLab(t, lab)
		app, server, _ := tcpNATSetup(t, l, "NATKEEP_TCP_KEEPALIVE_IDLE=0")
		time.Sleep(idle)
		if err := tryExchange(server, app, "push", 3*time.Second); err == nil {
			t.Fatal("push arrived without keepalive: the NAT lab did not expire the connection, so the other result proves nothing")
		}
	})
}

// TestNATTCPDeadPeerDetected blackholes the server in the router and
// measures how long the app waits before natkeep resets its connection:
// idle + interval*count when idle, the user timeout with data in flight.
func TestNATTCPDeadPeerDetected(t *testing.T) {
	lab := labConfig{TCPEstablishedTimeout: 60 * time.Second}
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
		l := newNATLab(t, lab)
		// idle 2 s + 1 s * 3 = 5 s; user timeout left at its default (5 s too).
		app, _, nk := tcpNATSetup(t, l, "NATKEEP_TCP_KEEPALIVE_IDLE=2s", "NATKEEP_TCP_KEEPALIVE_INTERVAL=1s", "NATKEEP_TCP_KEEPALIVE_COUNT=3")
		l.blockServer(t)
		took := waitReset(t, app, 30*time.Second)
		if took < 4*time.Second {
			t.Fatalf("reset after %v, before keepalive could have expired", took)
		}
		if !nk.waitFor(5*time.Second, `"reason":"keepalive_timeout"`) {
			t.Fatalf("natkeep did not log reason keepalive_timeout:\n%s", nk.Output())
		}
		t.Logf("idle connection: dead peer detected and app reset after %v (idle 2s + 1s*3 = 5s expected)", took.Round(10*time.Millisecond))
	})
	t.Run("data in flight: user timeout", func(t *testing.T) {
		t.Parallel()
		l := newNATLab(t, lab)
		// Keepalive would take 30+ s; the user timeout of 3 s must win.
		app, _, nk := tcpNATSetup(t, l, "NATKEEP_TCP_KEEPALIVE_IDLE=30s", "NATKEEP_TCP_KEEPALIVE_INTERVAL=10s", "NATKEEP_TCP_KEEPALIVE_COUNT=3", "NATKEEP_TCP_USER_TIMEOUT=3s")
		l.blockServer(t)
		if _, err := app.Write([]byte("unacknowledged")); err != nil {
			t.Fatal(err)
		}
		took := waitReset(t, app, 30*time.Second)
		if took < 2*time.Second || took > 15*time.Second {
			t.Fatalf("reset after %v; want about the 3 s user timeout", took)
		}
		if !nk.waitFor(5*time.Second, `"reason":"user_timeout"`) {
			t.Fatalf("natkeep did not log reason user_timeout:\n%s", nk.Output())
		}
		t.Logf("data in flight: app reset after %v (user timeout 3s)", took.Round(10*time.Millisecond))
	})
}
