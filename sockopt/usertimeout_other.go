//go:build !linux

package sockopt

import (
	"fmt"
	"syscall"
	"time"
)

// SetUserTimeout is not supported on this platform; it still validates d so configuration errors are reported first.
func SetUserTimeout(c syscall.Conn, d time.Duration) error {
	if err := ValidateUserTimeout(d); err != nil {
		return fmt.Errorf("sockopt: %w", err)
	}
	return notSupported("TCP_USER_TIMEOUT")
}

// GetUserTimeout is not supported on this platform.
func GetUserTimeout(c syscall.Conn) (time.Duration, error) {
	return 0, notSupported("TCP_USER_TIMEOUT")
}
