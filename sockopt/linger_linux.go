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

// GetLinger reads SO_LINGER back from the kernel: whether lingering is on and for how many seconds.
func GetLinger(c syscall.Conn) (on bool, sec int, err error) {
	var l *unix.Linger
	err = control(c, "SO_LINGER", func(fd int) error {
		var err error
		if l, err = unix.GetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER); err != nil {
			return fmt.Errorf("sockopt: get SO_LINGER: %w", err)
		}
		return nil
	})
	if err != nil {
		return false, 0, err
	}
	return l.Onoff != 0, int(l.Linger), nil
}
