//go:build !linux

package sockopt

import "syscall"

// SendQueue is not supported on this platform.
func SendQueue(c syscall.Conn) (int, error) { return 0, notSupported("SIOCOUTQ") }
