package sockopt

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// ReusePortControl is a net.ListenConfig.Control hook that sets SO_REUSEPORT before bind, so several sockets of this process (one per worker) can listen on one address; the kernel hashes each client's 4-tuple to one of them, which keeps a UDP flow on one worker. Only sockets of the same user can join the group.
func ReusePortControl(network, address string, c syscall.RawConn) error {
	return rawControl(c, "SO_REUSEPORT", func(fd int) error {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fmt.Errorf("sockopt: set SO_REUSEPORT: %w", err)
		}
		return nil
	})
}
