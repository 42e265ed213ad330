//go:build !linux

package sockopt

import "syscall"

// SetLingerZero is not supported on this platform.
func SetLingerZero(c syscall.Conn) error {
	return notSupported("SO_LINGER")
}
