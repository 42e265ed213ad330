//go:build !linux

package sockopt

import (
	"strings"
	"syscall"
)

// TransparentControl is not supported on this platform.
func TransparentControl(network, address string, c syscall.RawConn) error {
	if strings.HasSuffix(network, "6") {
		return notSupported("IPV6_TRANSPARENT")
	}
	return notSupported("IP_TRANSPARENT")
}

// RecvOrigDstControl is not supported on this platform.
func RecvOrigDstControl(network, address string, c syscall.RawConn) error {
	if strings.HasSuffix(network, "6") {
		return notSupported("IPV6_RECVORIGDSTADDR")
	}
	return notSupported("IP_RECVORIGDSTADDR")
}
