package main

import (
	"net/netip"
	"os"
	"syscall"
)

// statsSignal asks the echo server to write its counters to -stats-file.
var statsSignal os.Signal = syscall.SIGUSR1

// raiseNoFile lifts the soft RLIMIT_NOFILE to the hard limit and returns it
// (0 if it cannot be read: no limit known).
func raiseNoFile() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl)
		_ = syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl)
	}
	return rl.Cur
}

// ipBindAddressNoPort is IP_BIND_ADDRESS_NO_PORT (linux/in.h): binding a
// source address without a port defers the port choice to connect, which
// then only needs a free 4-tuple, not a port unused on that address.
const ipBindAddressNoPort = 24

// bindNoPort returns a net.Dialer Control function that sets
// IP_BIND_ADDRESS_NO_PORT on sockets bound to the IPv4 source src.
func bindNoPort(src netip.Addr) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if src.Is4() {
				serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, ipBindAddressNoPort, 1)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}
}
