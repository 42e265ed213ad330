package sockopt

import (
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// SetMark sets SO_MARK, the fwmark every packet the socket sends carries; natkeep marks its own upstream and reply sockets with the bypass mark so that its interception rules never catch its own traffic. It needs CAP_NET_ADMIN (or CAP_NET_RAW on Linux 5.17 and later); without it the error wraps EPERM.
func SetMark(c syscall.Conn, mark uint32) error {
	return control(c, "SO_MARK", func(fd int) error { return setMark(fd, mark) })
}

// MarkControl returns a net.Dialer.Control / net.ListenConfig.Control hook that sets SO_MARK to mark before the socket connects or binds, so even the first packet (a TCP SYN) carries it.
func MarkControl(mark uint32) func(network, address string, c syscall.RawConn) error {
	return func(network, address string, c syscall.RawConn) error {
		return rawControl(c, "SO_MARK", func(fd int) error { return setMark(fd, mark) })
	}
}

func setMark(fd int, mark uint32) error {
	// SetsockoptInt passes an int32: marks above 0x7fffffff keep their bits.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		return fmt.Errorf("sockopt: set SO_MARK=%#x: %w", mark, err)
	}
	return nil
}
