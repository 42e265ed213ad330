//go:build !linux

package sockopt

import "syscall"

// SetMark is not supported on this platform.
func SetMark(c syscall.Conn, mark uint32) error { return notSupported("SO_MARK") }

// MarkControl returns a hook that fails: SO_MARK is not supported on this platform.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error { return notSupported("SO_MARK") }
}
