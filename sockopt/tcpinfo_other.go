//go:build !linux

package sockopt

import "syscall"

// SocketError is not supported on this platform.
func SocketError(c syscall.Conn) (soErr error, err error) {
	return nil, notSupported("SO_ERROR")
}

// GetTCPInfo is not supported on this platform.
func GetTCPInfo(c syscall.Conn) (TCPInfo, error) {
	return TCPInfo{}, notSupported("TCP_INFO")
}
