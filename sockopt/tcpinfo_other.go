//go:build !linux

package sockopt

import "syscall"

// GetTCPInfo is not supported on this platform.
func GetTCPInfo(c syscall.Conn) (TCPInfo, error) {
	return TCPInfo{}, notSupported("TCP_INFO")
}
