//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

// TestMain removes the natkeep build and checks that no lab namespace
// leaked.
func TestMain(m *testing.M) { natlab.Main(m) }

// startHost starts the natkeep binary on loopback in the test's own
// namespace with env (plus quiet test defaults), in its own process group;
// cleanup ends that group only.
func startHost(t *testing.T, env ...string) *natlab.Proc {
	t.Helper()
	return natlab.Start(t, append([]string{"NATKEEP_LOG_LEVEL=debug", "NATKEEP_LOG_FORMAT=json", "NATKEEP_DRAIN_TIMEOUT=2s"}, env...), natlab.NatkeepBinary(t))
}

// startNatkeep runs the binary in the lab's client namespace and waits for
// its start-up line.
func startNatkeep(t *testing.T, l *natlab.Lab, env ...string) *natlab.Proc {
	t.Helper()
	env = append([]string{"NATKEEP_LOG_LEVEL=debug", "NATKEEP_LOG_FORMAT=json", "NATKEEP_ADMIN_ADDR=127.0.0.1:9299", "NATKEEP_DRAIN_TIMEOUT=2s"}, env...)
	p := l.StartProcess(t, l.Client, env, natlab.NatkeepBinary(t))
	if !p.WaitFor(20*time.Second, `"msg":"natkeep started"`) {
		t.Fatalf("natkeep did not start:\n%s", p.Output())
	}
	return p
}

// healthcheckExit runs `natkeep healthcheck` and returns its exit status.
func healthcheckExit(t *testing.T, admin string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, natlab.NatkeepBinary(t), "healthcheck")
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

// exchange writes msg on a and reads it on b within a generous deadline.
func exchange(t *testing.T, a, b *net.TCPConn, msg string) {
	t.Helper()
	if err := nktest.Exchange(a, b, msg, 5*time.Second); err != nil {
		t.Fatalf("%s: %v", msg, err)
	}
}

// mib formats a byte count in MiB.
func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// sayHello opens a flow through the lab's NAT: the app says hello and the
// server learns the flow's public address, the router's (MASQUERADE).
func sayHello(t *testing.T, l *natlab.Lab, app, server *nktest.UDP) netip.AddrPort {
	t.Helper()
	if _, err := app.Conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	hello, ok := server.WaitData(10*time.Second, "hello")
	if !ok {
		t.Fatal("server never got the app's hello")
	}
	if hello.From.Addr() != l.RouterOuter {
		t.Fatalf("server saw %v, want the router's outer address %v (MASQUERADE)", hello.From, l.RouterOuter)
	}
	return hello.From
}
