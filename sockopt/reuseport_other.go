//go:build !linux

package sockopt

import "syscall"

// ReusePortControl returns ErrNotSupported: one listener per address on this platform.
func ReusePortControl(network, address string, c syscall.RawConn) error {
	return notSupported("SO_REUSEPORT")
}
