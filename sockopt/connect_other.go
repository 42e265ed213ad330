//go:build !linux

package sockopt

import (
	"net/netip"
	"syscall"
)

// Reconnect is not supported on this platform.
func Reconnect(c syscall.Conn, to netip.AddrPort) error { return notSupported("connect") }
