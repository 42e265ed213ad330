package sockopt

import (
	"fmt"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// TransparentControl sets IP_TRANSPARENT (IPv6 sockets: IPV6_TRANSPARENT) and SO_REUSEADDR before bind, for use as net.ListenConfig.Control or net.Dialer.Control on the sockets of transparent interception: the TPROXY listeners and the UDP reply sockets bound to an app's original destination.
//
// IP_TRANSPARENT lets the socket bind (and send from) an address that is
// not local to the namespace, which is how a reply reaches the app from the
// peer it talked to, and it is what TPROXY requires of the socket it
// diverts packets to. SO_REUSEADDR lets several reply sockets bind the same
// foreign address and port (one original destination, several app flows).
// Setting either transparent option needs CAP_NET_ADMIN or CAP_NET_RAW.
//
// The family is taken from the socket itself (SO_DOMAIN), so the function
// is right for "udp", "udp4", "udp6", "tcp", "tcp4" and "tcp6" alike; on an
// IPv6 socket IPV6_TRANSPARENT also covers IPv4-mapped traffic of a
// dual-stack socket (both options set the same socket flag).
func TransparentControl(network, address string, c syscall.RawConn) error {
	return rawControl(c, transparentName(network), func(fd int) error {
		if _, _, err := setTransparent(fd); err != nil {
			return err
		}
		return setInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, "SO_REUSEADDR", 1)
	})
}

// RecvOrigDstControl sets IP_TRANSPARENT and IP_RECVORIGDSTADDR (IPv6 sockets: IPV6_TRANSPARENT and IPV6_RECVORIGDSTADDR, plus IP_RECVORIGDSTADDR unless the socket is IPv6-only) before bind, for the UDP listener that TPROXY diverts intercepted datagrams to; read them with ReadMsgUDPAddrPort and an oob buffer of OrigDstOOBSize bytes and take each datagram's original destination from ParseOrigDst.
//
// Unlike TransparentControl it does not set SO_REUSEADDR: the listener's
// port should belong to one socket only.
func RecvOrigDstControl(network, address string, c syscall.RawConn) error {
	return rawControl(c, transparentName(network)+"+"+origDstName(network), func(fd int) error {
		v6, dual, err := setTransparent(fd)
		if err != nil {
			return err
		}
		if !v6 || dual {
			// An IPv4 datagram on a dual-stack socket carries IPv4 control
			// messages, so it needs the IPv4 option too.
			if err := setInt(fd, unix.IPPROTO_IP, unix.IP_RECVORIGDSTADDR, "IP_RECVORIGDSTADDR", 1); err != nil {
				return err
			}
		}
		if v6 {
			if err := setInt(fd, unix.IPPROTO_IPV6, unix.IPV6_RECVORIGDSTADDR, "IPV6_RECVORIGDSTADDR", 1); err != nil {
				return err
			}
		}
		return nil
	})
}

// setTransparent sets the transparent option of fd's family and reports
// whether fd is IPv6 and, if so, whether it also takes IPv4 (not V6ONLY).
func setTransparent(fd int) (v6, dual bool, err error) {
	v6, dual, err = socketFamily(fd)
	if err != nil {
		return false, false, err
	}
	if v6 {
		return v6, dual, setInt(fd, unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT, "IPV6_TRANSPARENT", 1)
	}
	return false, false, setInt(fd, unix.IPPROTO_IP, unix.IP_TRANSPARENT, "IP_TRANSPARENT", 1)
}

// socketFamily reads SO_DOMAIN: the family is the socket's, whatever
// network string the caller used. For IPv6 it also reads IPV6_V6ONLY.
func socketFamily(fd int) (v6, dual bool, err error) {
	dom, err := getInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN, "SO_DOMAIN")
	if err != nil {
		return false, false, err
	}
	switch dom {
	case unix.AF_INET:
		return false, false, nil
	case unix.AF_INET6:
		only, err := getInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, "IPV6_V6ONLY")
		if err != nil {
			return true, false, err
		}
		return true, only == 0, nil
	}
	return false, false, fmt.Errorf("sockopt: socket family %d is neither IPv4 nor IPv6", dom)
}

// rawControl is control for a RawConn handed to a Control hook: the error
// of f and the error of RawConn.Control are kept apart.
func rawControl(c syscall.RawConn, what string, f func(fd int) error) error {
	var ferr error
	if err := c.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return fmt.Errorf("sockopt: %s: %w", what, err)
	}
	return ferr
}

// transparentName names the option a Control failure concerns, by the
// network string (the socket is not inspected when Control itself fails).
func transparentName(network string) string {
	if strings.HasSuffix(network, "6") {
		return "IPV6_TRANSPARENT"
	}
	return "IP_TRANSPARENT"
}

func origDstName(network string) string {
	if strings.HasSuffix(network, "6") {
		return "IPV6_RECVORIGDSTADDR"
	}
	return "IP_RECVORIGDSTADDR"
}
