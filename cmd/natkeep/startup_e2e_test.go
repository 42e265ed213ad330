//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

// TestBinaryAddressInUseExits2: an address natkeep cannot bind, the admin
// address or a route's listen address, ends start-up like a bad variable:
// exit status 2 and one line naming the variable (and the route entry),
// the address and the cause, said once.
func TestBinaryAddressInUseExits2(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	taken := ln.Addr().String()
	udpRoute := fmt.Sprintf("udp://127.0.0.1:%d/127.0.0.1:9", nktest.FreePort(t, "udp"))
	tcpRoute := fmt.Sprintf("tcp://%s/127.0.0.1:9", taken)
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"admin address", []string{"NATKEEP_ROUTES=" + udpRoute, "NATKEEP_ADMIN_ADDR=" + taken},
			fmt.Sprintf("natkeep: NATKEEP_ADMIN_ADDR=%q: listen %s: address already in use\n", taken, taken)},
		{"route listen address", []string{"NATKEEP_ROUTES=" + udpRoute + "," + tcpRoute, fmt.Sprintf("NATKEEP_ADMIN_ADDR=127.0.0.1:%d", nktest.FreePort(t, "tcp"))},
			fmt.Sprintf("natkeep: NATKEEP_ROUTES entry 2 %q: listen %s: address already in use\n", tcpRoute, taken)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, natlab.NatkeepBinary(t))
			cmd.Env = append(os.Environ(), tc.env...)
			out, err := cmd.CombinedOutput()
			ee, ok := err.(*exec.ExitError)
			if !ok || ee.ExitCode() != 2 {
				t.Fatalf("exit %v, want status 2; output:\n%s", err, out)
			}
			if string(out) != tc.want {
				t.Fatalf("output %q, want %q", out, tc.want)
			}
		})
	}
}

// TestBinarySIGHUPIgnored: SIGHUP (by default the end of a Go program) is
// logged at info and ignored: natkeep keeps relaying, and SIGTERM still
// drains and exits 0.
func TestBinarySIGHUPIgnored(t *testing.T) {
	echo := nktest.EchoUDP(t, nktest.LoopbackUDP(t))
	port := nktest.FreePort(t, "udp")
	nk := startHost(t, fmt.Sprintf("NATKEEP_ROUTES=udp://127.0.0.1:%d/%s", port, echo.LocalAddr()), "NATKEEP_ADMIN_ADDR=off")
	if !nk.WaitFor(20*time.Second, `"msg":"natkeep started"`) {
		t.Fatalf("not started:\n%s", nk.Output())
	}
	app, err := net.Dial("udp4", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	roundTrip := func(msg string) {
		t.Helper()
		if _, err := app.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 64)
		_ = app.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := app.Read(buf)
		if err != nil || string(buf[:n]) != msg {
			t.Fatalf("echo of %q: %q, %v", msg, buf[:n], err)
		}
	}
	roundTrip("before")

	if err := nk.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	if !nk.WaitFor(10*time.Second, `"level":"INFO"`, `"msg":"SIGHUP ignored: configuration is environment-only, nothing to reload"`) {
		t.Fatalf("no SIGHUP line logged (exited: %v):\n%s", nk.Exited(), nk.Output())
	}
	roundTrip("after SIGHUP")
	if nk.Exited() {
		t.Fatalf("natkeep exited on SIGHUP:\n%s", nk.Output())
	}

	if err := nk.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := nk.Wait(15 * time.Second); err != nil {
		t.Fatalf("exit after SIGTERM: %v, want status 0\n%s", err, nk.Output())
	}
}
