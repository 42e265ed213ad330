//go:build !linux

package main

import (
	"net/netip"
	"os"
	"syscall"
)

// statsSignal is nil: SIGUSR1 (-stats-file) is not supported on this
// platform.
var statsSignal os.Signal

// raiseNoFile returns 0 (no limit known): reading and raising RLIMIT_NOFILE
// is not supported on this platform.
func raiseNoFile() uint64 { return 0 }

// bindNoPort returns nil: IP_BIND_ADDRESS_NO_PORT is not supported on this
// platform, so a source address's port is chosen at bind, not at connect.
func bindNoPort(netip.Addr) func(network, address string, c syscall.RawConn) error {
	return nil
}
