package sockopt

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Readers and switches the product never needs, kept for the tests that
// read options back from the kernel.

// disableKeepalive turns SO_KEEPALIVE off (Go enables it by default on every TCP conn), e.g. when the relay sends its own heartbeats.
func disableKeepalive(c syscall.Conn) error {
	return control(c, "SO_KEEPALIVE", func(fd int) error {
		return setInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, "SO_KEEPALIVE", 0)
	})
}

// getLinger reads SO_LINGER back from the kernel: whether lingering is on and for how many seconds.
func getLinger(c syscall.Conn) (on bool, sec int, err error) {
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

// getMark reads SO_MARK back from the kernel.
func getMark(c syscall.Conn) (uint32, error) {
	var m uint32
	err := control(c, "SO_MARK", func(fd int) error {
		v, err := getInt(fd, unix.SOL_SOCKET, unix.SO_MARK, "SO_MARK")
		m = uint32(v)
		return err
	})
	if err != nil {
		return 0, err
	}
	return m, nil
}

// socketError reads and clears SO_ERROR (nil if none; otherwise a syscall.Errno such as ETIMEDOUT, ECONNRESET), the kernel's own reason a connection failed.
func socketError(c syscall.Conn) (soErr error, err error) {
	var v int
	err = control(c, "SO_ERROR", func(fd int) error {
		var err error
		v, err = getInt(fd, unix.SOL_SOCKET, unix.SO_ERROR, "SO_ERROR")
		return err
	})
	if err != nil {
		return nil, err
	}
	if v == 0 {
		return nil, nil
	}
	return syscall.Errno(v), nil
}
