package sockopt

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// SetLingerZero sets SO_LINGER {on,0} so Close sends RST and the peer sees failure at once, instead of a clean FIN that hides why the relay gave up.
func SetLingerZero(c syscall.Conn) error {
	return control(c, "SO_LINGER", func(fd int) error {
		if err := unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0}); err != nil {
			return fmt.Errorf("sockopt: set SO_LINGER={on,0}: %w", err)
		}
		return nil
	})
}
