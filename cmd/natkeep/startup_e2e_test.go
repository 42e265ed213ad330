//go:build linux

package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
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
	udpRoute := fmt.Sprintf("udp://127.0.0.1:%d/127.0.0.1:9", freePort(t, "udp"))
	tcpRoute := fmt.Sprintf("tcp://%s/127.0.0.1:9", taken)
	for _, tc := range []struct {
		name string
		env  []string
		want string
	}{
		{"admin address", []string{"NATKEEP_ROUTES=" + udpRoute, "NATKEEP_ADMIN_ADDR=" + taken},
			fmt.Sprintf("natkeep: NATKEEP_ADMIN_ADDR=%q: listen %s: address already in use\n", taken, taken)},
		{"route listen address", []string{"NATKEEP_ROUTES=" + udpRoute + "," + tcpRoute, fmt.Sprintf("NATKEEP_ADMIN_ADDR=127.0.0.1:%d", freePort(t, "tcp"))},
			fmt.Sprintf("natkeep: NATKEEP_ROUTES entry 2 %q: listen %s: address already in use\n", tcpRoute, taken)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, natkeepBinary(t))
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
