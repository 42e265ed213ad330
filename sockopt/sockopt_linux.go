package sockopt

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// control runs f on c's file descriptor. The error of f and the error of
// RawConn.Control are kept in separate variables: assigning both to one
// variable would let Control's nil return hide a failed setsockopt.
// what names the option(s) so a Control failure (e.g. a closed conn) still
// says which option could not be applied.
func control(c syscall.Conn, what string, f func(fd int) error) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("sockopt: %s: %w", what, err)
	}
	var ferr error
	if err := raw.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return fmt.Errorf("sockopt: %s: %w", what, err)
	}
	return ferr
}

// setInt sets an int option and names it (with the value) in the error.
func setInt(fd, level, opt int, name string, v int) error {
	if err := unix.SetsockoptInt(fd, level, opt, v); err != nil {
		return fmt.Errorf("sockopt: set %s=%d: %w", name, v, err)
	}
	return nil
}

// getInt reads an int option and names it in the error.
func getInt(fd, level, opt int, name string) (int, error) {
	v, err := unix.GetsockoptInt(fd, level, opt)
	if err != nil {
		return 0, fmt.Errorf("sockopt: get %s: %w", name, err)
	}
	return v, nil
}
