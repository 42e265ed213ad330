//go:build !linux

package sockopt

import "syscall"

// SetLingerZero is not supported on this platform.
func SetLingerZero(c syscall.Conn) error {
	return notSupported("SO_LINGER")
}

// GetLinger is not supported on this platform.
func GetLinger(c syscall.Conn) (on bool, sec int, err error) {
	return false, 0, notSupported("SO_LINGER")
}
