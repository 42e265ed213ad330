//go:build !linux

package sockopt

import (
	"errors"
	"net/netip"
	"syscall"
)

// ErrNotRedirected is wrapped by OriginalDst's error for a connection that no REDIRECT rule diverted.
var ErrNotRedirected = errors.New("the connection was not redirected")

// OrigDstOOBSize is the oob size the Linux implementation needs; kept here
// so callers compile everywhere.
const OrigDstOOBSize = 64

// ParseOrigDst finds nothing on this platform: no socket here carries an
// original destination.
func ParseOrigDst(oob []byte) (netip.AddrPort, bool) { return netip.AddrPort{}, false }

// OriginalDst is not supported on this platform.
func OriginalDst(c syscall.Conn) (netip.AddrPort, error) {
	return netip.AddrPort{}, notSupported("SO_ORIGINAL_DST")
}
