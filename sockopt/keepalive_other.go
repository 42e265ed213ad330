//go:build !linux

package sockopt

import (
	"fmt"
	"syscall"
)

// SetKeepalive is not supported on this platform; it still validates k so configuration errors are reported first.
func SetKeepalive(c syscall.Conn, k Keepalive) error {
	if err := k.Validate(); err != nil {
		return fmt.Errorf("sockopt: %w", err)
	}
	return notSupported("TCP_KEEPIDLE")
}

// GetKeepalive is not supported on this platform.
func GetKeepalive(c syscall.Conn) (enabled bool, k Keepalive, err error) {
	return false, Keepalive{}, notSupported("TCP_KEEPIDLE")
}
