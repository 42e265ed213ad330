//go:build !linux

package sockopt

import (
	"errors"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestNotSupported(t *testing.T) {
	var c syscall.Conn // never touched on this platform
	k := Keepalive{Idle: 25 * time.Second, Interval: 5 * time.Second, Count: 3}
	_, _, getKA := GetKeepalive(c)
	_, getUT := GetUserTimeout(c)
	_, ti := GetTCPInfo(c)
	_, ttl4 := TTLControl(false, 7)
	_, ttl6 := TTLControl(true, 7)
	_, rbuf := SetRecvBuffer(c, 1<<20)
	_, sbuf := SetSendBuffer(c, 1<<20)
	for _, tt := range []struct {
		opt string
		err error
	}{
		{"TCP_KEEPIDLE", SetKeepalive(c, k)},
		{"TCP_KEEPIDLE", getKA},
		{"TCP_USER_TIMEOUT", SetUserTimeout(c, time.Second)},
		{"TCP_USER_TIMEOUT", getUT},
		{"SO_LINGER", SetLingerZero(c)},
		{"TCP_INFO", ti},
		{"IP_TTL", ttl4},
		{"IPV6_HOPLIMIT", ttl6},
		{"SO_RCVBUF", rbuf},
		{"SO_SNDBUF", sbuf},
	} {
		if !errors.Is(tt.err, ErrNotSupported) {
			t.Errorf("%s: err = %v, want ErrNotSupported", tt.opt, tt.err)
			continue
		}
		if want := "sockopt: " + tt.opt + ": not supported on " + runtime.GOOS; tt.err.Error() != want {
			t.Errorf("err = %q, want %q", tt.err, want)
		}
	}
	// Configuration errors still win over "not supported".
	if err := SetKeepalive(c, Keepalive{}); err == nil || errors.Is(err, ErrNotSupported) || !strings.Contains(err.Error(), "keepalive idle") {
		t.Errorf("SetKeepalive(invalid) = %v, want a validation error", err)
	}
}
