package sockopt

import (
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// Reconnect points a connected UDP socket at a new peer with connect(2), keeping its local address and port: a flow whose upstream name now resolves elsewhere follows it without taking a new NAT mapping. The address family must be the socket's own. Go's cached RemoteAddr keeps the old address; the kernel sends to and accepts from the new one only.
func Reconnect(c syscall.Conn, to netip.AddrPort) error {
	return control(c, "connect", func(fd int) error {
		var sa unix.Sockaddr
		if a := to.Addr(); a.Is4() {
			sa = &unix.SockaddrInet4{Port: int(to.Port()), Addr: a.As4()}
		} else {
			sa = &unix.SockaddrInet6{Port: int(to.Port()), Addr: a.As16()}
		}
		if err := unix.Connect(fd, sa); err != nil {
			return fmt.Errorf("sockopt: connect to %v: %w", to, err)
		}
		return nil
	})
}
