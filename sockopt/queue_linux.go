package sockopt

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// SendQueue returns the bytes in a TCP socket's send queue that the peer has not yet acknowledged (SIOCOUTQ): before a proxy resets a socket whose other side failed, it waits for this to reach 0, so that bytes it already acknowledged to one peer are not thrown away on their way to the other.
func SendQueue(c syscall.Conn) (int, error) {
	var n int
	err := control(c, "SIOCOUTQ", func(fd int) error {
		v, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
		if err != nil {
			return fmt.Errorf("sockopt: ioctl SIOCOUTQ: %w", err)
		}
		n = v
		return nil
	})
	return n, err
}
