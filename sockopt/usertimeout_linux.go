package sockopt

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SetUserTimeout sets TCP_USER_TIMEOUT in ms (0 turns it off) so a connection whose sent data stays unacknowledged that long is aborted with ETIMEDOUT instead of retransmitting for ~15 minutes.
func SetUserTimeout(c syscall.Conn, d time.Duration) error {
	if err := ValidateUserTimeout(d); err != nil {
		return fmt.Errorf("sockopt: %w", err)
	}
	ms := int(d / time.Millisecond)
	return control(c, "TCP_USER_TIMEOUT", func(fd int) error {
		return setInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", ms)
	})
}

// GetUserTimeout reads TCP_USER_TIMEOUT back from the kernel (0 means off).
func GetUserTimeout(c syscall.Conn) (time.Duration, error) {
	var ms int
	err := control(c, "TCP_USER_TIMEOUT", func(fd int) error {
		var err error
		ms, err = getInt(fd, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT")
		return err
	})
	if err != nil {
		return 0, err
	}
	return time.Duration(ms) * time.Millisecond, nil
}
