//go:build !linux

package sockopt

import "syscall"

// SetRecvBuffer is not supported on this platform.
func SetRecvBuffer(c syscall.Conn, bytes int) (int, error) {
	return 0, notSupported("SO_RCVBUF")
}

// SetSendBuffer is not supported on this platform.
func SetSendBuffer(c syscall.Conn, bytes int) (int, error) {
	return 0, notSupported("SO_SNDBUF")
}
