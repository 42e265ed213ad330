package sockopt

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// SetRecvBuffer sets SO_RCVBUF (SO_RCVBUFFORCE first, so root can exceed net.core.rmem_max) and returns the effective size the kernel reports, which is usually double the request.
func SetRecvBuffer(c syscall.Conn, bytes int) (int, error) {
	return setBuffer(c, bytes, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, "SO_RCVBUF")
}

// SetSendBuffer sets SO_SNDBUF (SO_SNDBUFFORCE first, so root can exceed net.core.wmem_max) and returns the effective size the kernel reports, which is usually double the request.
func SetSendBuffer(c syscall.Conn, bytes int) (int, error) {
	return setBuffer(c, bytes, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, "SO_SNDBUF")
}

// setBuffer tries the FORCE variant (needs CAP_NET_ADMIN) and silently
// falls back to the plain option, which the kernel caps at the sysctl max.
func setBuffer(c syscall.Conn, bytes, forceOpt, opt int, name string) (int, error) {
	if bytes <= 0 {
		return 0, fmt.Errorf("sockopt: set %s=%d: size must be positive", name, bytes)
	}
	var got int
	err := control(c, name, func(fd int) error {
		if unix.SetsockoptInt(fd, unix.SOL_SOCKET, forceOpt, bytes) != nil {
			if err := setInt(fd, unix.SOL_SOCKET, opt, name, bytes); err != nil {
				return err
			}
		}
		var err error
		got, err = getInt(fd, unix.SOL_SOCKET, opt, name)
		return err
	})
	if err != nil {
		return 0, err
	}
	return got, nil
}
