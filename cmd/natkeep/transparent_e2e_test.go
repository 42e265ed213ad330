//go:build linux

package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

// transparentEnv is natkeep's environment in transparent mode for these
// tests: natkeep runs as root here, so its traffic bypasses interception by
// its SO_MARK, not by UID (UID 0 would exempt the app too).
func transparentEnv(intercept string, extra ...string) []string {
	return append([]string{
		"NATKEEP_INTERCEPT=" + intercept,
		"NATKEEP_INTERCEPT_UID=off",
		"NATKEEP_UDP_HEARTBEAT_INTERVAL=1s",
		"NATKEEP_TCP_KEEPALIVE_IDLE=1s", "NATKEEP_TCP_KEEPALIVE_INTERVAL=1s", "NATKEEP_TCP_KEEPALIVE_COUNT=3",
	}, extra...)
}

// installIntercept runs `natkeep intercept install` in the client namespace
// and removes the rules at cleanup.
func installIntercept(t *testing.T, l *natlab.Lab, env []string) {
	t.Helper()
	cmd := func(verb string) []string {
		args := append([]string{"ip", "netns", "exec", l.Client, "env"}, env...)
		return append(args, natlab.NatkeepBinary(t), "intercept", verb)
	}
	if out, err := l.TryRun("", cmd("install")...); err != nil {
		t.Fatalf("intercept install: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if out, err := l.TryRun("", cmd("remove")...); err != nil {
			t.Errorf("intercept remove: %v\n%s", err, out)
		}
	})
}

// TestTransparentUDPKeepsMapping: an unmodified app sends straight to the
// server's real address; interception hands the flow to natkeep, whose
// heartbeats keep the router's 2 s mapping alive, so the server's push after
// 10 s of silence reaches the app, from the server's own address. Without
// natkeep (control) the same push is lost.
func TestTransparentUDPKeepsMapping(t *testing.T) {
	const idle = 10 * time.Second
	run := func(t *testing.T, withNatkeep bool) (pushed bool, from netip.AddrPort, server *nktest.UDP) {
		l := natlab.New(t, natlab.Config{UDPTimeout: 2 * time.Second, UDPStreamTimeout: 2 * time.Second})
		server = nktest.NewUDP(t, l.ListenUDP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 9000).String()))
		if withNatkeep {
			env := transparentEnv("udp:9000")
			installIntercept(t, l, env)
			startNatkeep(t, l, env...)
		}
		serverAddr := netip.AddrPortFrom(l.ServerAddr, 9000)
		app := nktest.NewUDP(t, l.DialUDP(t, l.Client, serverAddr.String()))
		if _, err := app.Conn.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		hello, ok := server.WaitData(10*time.Second, "hello")
		if !ok {
			t.Fatal("server never got the app's datagram")
		}
		if _, err := server.Conn.WriteToUDPAddrPort([]byte("welcome"), hello.From); err != nil {
			t.Fatal(err)
		}
		w, ok := app.WaitData(10*time.Second, "welcome")
		if !ok {
			t.Fatal("app never got the immediate reply")
		}
		if w.From != serverAddr {
			t.Fatalf("app saw the reply from %v, want the server's address %v", w.From, serverAddr)
		}
		time.Sleep(idle)
		if _, err := server.Conn.WriteToUDPAddrPort([]byte("push"), hello.From); err != nil {
			t.Fatal(err)
		}
		g, pushed := app.WaitData(3*time.Second, "push")
		return pushed, g.From, server
	}
	t.Run("natkeep", func(t *testing.T) {
		t.Parallel()
		pushed, from, server := run(t, true)
		if !pushed {
			t.Fatal("push after 10 s idle lost despite transparent natkeep")
		}
		if from.Addr() != server.Conn.LocalAddr().(*net.UDPAddr).AddrPort().Addr() || from.Port() != 9000 {
			t.Fatalf("push came from %v, want the server's address", from)
		}
		if n := server.Count(""); n < 5 {
			t.Fatalf("server saw %d heartbeats", n)
		}
	})
	t.Run("control without natkeep", func(t *testing.T) {
		t.Parallel()
		if pushed, _, _ := run(t, false); pushed {
			t.Fatal("push arrived without natkeep: the lab did not expire the mapping")
		}
	})
}

// TestTransparentTCPKeepsConnection: the same for TCP: the app connects to
// the server's real address, natkeep's keepalive keeps the router's 5 s
// established entry alive, and the server's push after 15 s arrives.
func TestTransparentTCPKeepsConnection(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("ipv6=%v", v6), func(t *testing.T) {
			t.Parallel()
			l := natlab.New(t, natlab.Config{TCPEstablishedTimeout: 5 * time.Second, IPv6: v6})
			serverIP := l.ServerAddr
			if v6 {
				serverIP = l.ServerAddr6
			}
			serverAddr := netip.AddrPortFrom(serverIP, 9100)
			ln := l.ListenTCP(t, l.Server, serverAddr.String())
			env := transparentEnv("tcp:9100")
			installIntercept(t, l, env)
			nk := startNatkeep(t, l, env...)
			app := l.DialTCP(t, l.Client, serverAddr.String())
			server, err := nktest.AcceptWithin(ln, 15*time.Second)
			if err != nil {
				t.Fatalf("server never accepted: %v", err)
			}
			t.Cleanup(func() { server.Close() })
			exchange(t, app, server, "req1")
			exchange(t, server, app, "resp1")
			admin := l.HTTPClient(l.Client)
			if n := nktest.Value(nktest.Scrape(t, admin, "127.0.0.1:9299"), "natkeep_tcp_connections_active", map[string]string{"route": "intercept tcp"}); n != 1 {
				t.Fatalf("natkeep proxies %v intercepted connections, want 1", n)
			}
			time.Sleep(15 * time.Second)
			exchange(t, server, app, "push")
			exchange(t, app, server, "req2")
			_ = nk
		})
	}
}

// TestTransparentDirectConnectionReset: a connection made straight to the
// transparent TCP listener (not redirected) has no original destination;
// natkeep resets it instead of dialing itself in a loop.
func TestTransparentDirectConnectionReset(t *testing.T) {
	l := natlab.New(t, natlab.Config{})
	env := transparentEnv("tcp:9100")
	installIntercept(t, l, env)
	nk := startNatkeep(t, l, env...)
	// On loopback the reset can beat the connect call completing: then
	// the dial itself reports it.
	var c net.Conn
	err := natlab.InNetns(l.Client, func() error {
		var err error
		c, err = net.DialTimeout("tcp", "127.0.0.1:15001", 5*time.Second)
		return err
	})
	if err == nil {
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = c.Read(make([]byte, 1))
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("direct connection ended with %v, want a reset", err)
	}
	admin := l.HTTPClient(l.Client)
	f := nktest.Scrape(t, admin, "127.0.0.1:9299")
	if n := nktest.Value(f, "natkeep_tcp_connections_total", map[string]string{"route": "intercept tcp"}); n != 1 {
		t.Fatalf("connections total = %v, want 1 (no loop)", n)
	}
	_ = nk
}

// TestTransparentRefusesWithoutBypass: natkeep neither running as the
// exempt UID nor able to mark its sockets must refuse to start.
func TestTransparentRefusesWithoutBypass(t *testing.T) {
	if os.Geteuid() != 0 {
		natlab.Skip(t, "needs root to drop CAP_NET_ADMIN from a child")
	}
	bin := natlab.NatkeepBinaryCopy(t) // uid 1000 may run it
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin)
	cmd.Env = append(os.Environ(), "NATKEEP_INTERCEPT=tcp:9100", "NATKEEP_INTERCEPT_UID=65532", "NATKEEP_ADMIN_ADDR=off", "NATKEEP_INTERCEPT_TCP_PORT="+fmt.Sprint(nktest.FreePort(t, "tcp")))
	// Run as uid 1000 with no capabilities: neither bypass works.
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 1000, Gid: 1000}}
	out, err := cmd.CombinedOutput()
	ee, ok := err.(*exec.ExitError)
	if !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "cannot mark its sockets") {
		t.Fatalf("exit %v, output %s", err, out)
	}
}
