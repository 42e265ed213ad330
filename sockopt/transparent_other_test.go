//go:build !linux

package sockopt

import (
	"errors"
	"runtime"
	"syscall"
	"testing"
)

func TestTransparentNotSupported(t *testing.T) {
	var c syscall.Conn      // never touched on this platform
	var raw syscall.RawConn // likewise
	_, origErr := OriginalDst(c)
	for _, tt := range []struct {
		opt string
		err error
	}{
		{"IP_TRANSPARENT", TransparentControl("udp4", "", raw)},
		{"IPV6_TRANSPARENT", TransparentControl("udp6", "", raw)},
		{"IP_RECVORIGDSTADDR", RecvOrigDstControl("udp4", "", raw)},
		{"IPV6_RECVORIGDSTADDR", RecvOrigDstControl("udp6", "", raw)},
		{"SO_ORIGINAL_DST", origErr},
		{"SO_MARK", SetMark(c, 1)},
		{"SO_MARK", MarkControl(1)("tcp4", "", raw)},
	} {
		if !errors.Is(tt.err, ErrNotSupported) {
			t.Errorf("%s: err = %v, want ErrNotSupported", tt.opt, tt.err)
			continue
		}
		if want := "sockopt: " + tt.opt + ": not supported on " + runtime.GOOS; tt.err.Error() != want {
			t.Errorf("err = %q, want %q", tt.err, want)
		}
	}
	if _, ok := ParseOrigDst(make([]byte, OrigDstOOBSize)); ok {
		t.Error("ParseOrigDst found an original destination")
	}
}
