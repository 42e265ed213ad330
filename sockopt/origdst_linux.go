package sockopt

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"
)

// OrigDstOOBSize is enough oob space for ReadMsgUDPAddrPort to receive the IP_ORIGDSTADDR or IPV6_ORIGDSTADDR control message that RecvOrigDstControl asks for (one cmsg holding a sockaddr_in6 is 48 bytes on 64-bit Linux).
const OrigDstOOBSize = 64

// ip6tSOOriginalDst is IP6T_SO_ORIGINAL_DST (linux/netfilter_ipv6/ip6_tables.h),
// which x/sys does not export; it shares SO_ORIGINAL_DST's number but lives
// at level SOL_IPV6.
const ip6tSOOriginalDst = 80

// cmsgLenSize is the size of cmsghdr.cmsg_len (size_t): 8 bytes on 64-bit,
// 4 on 32-bit; level and type are two int32 after it.
const cmsgLenSize = unix.SizeofCmsghdr - 8

// ParseOrigDst returns the original destination that an IP_ORIGDSTADDR or IPV6_ORIGDSTADDR control message in oob (as filled by ReadMsgUDPAddrPort on a socket set up by RecvOrigDstControl) carries, and false if there is none or oob is malformed or truncated.
//
// It walks the cmsg headers itself and does not allocate, so it can run
// for every datagram. An IPv4 datagram on a dual-stack socket carries the
// IPv4 message: the result is then a plain IPv4 address, not IPv4-mapped.
func ParseOrigDst(oob []byte) (netip.AddrPort, bool) {
	hdr := unix.CmsgLen(0) // the aligned header
	for len(oob) >= unix.SizeofCmsghdr {
		var n uint64
		if cmsgLenSize == 8 {
			n = binary.NativeEndian.Uint64(oob)
		} else {
			n = uint64(binary.NativeEndian.Uint32(oob))
		}
		level := int32(binary.NativeEndian.Uint32(oob[cmsgLenSize:]))
		typ := int32(binary.NativeEndian.Uint32(oob[cmsgLenSize+4:]))
		if n < uint64(hdr) || n > uint64(len(oob)) {
			return netip.AddrPort{}, false
		}
		data := oob[hdr:n]
		switch {
		case level == unix.IPPROTO_IP && typ == unix.IP_ORIGDSTADDR && len(data) >= unix.SizeofSockaddrInet4:
			// struct sockaddr_in: family (host order), port (network
			// order), address.
			if binary.NativeEndian.Uint16(data) != unix.AF_INET {
				return netip.AddrPort{}, false
			}
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(data[4:8])), binary.BigEndian.Uint16(data[2:4])), true
		case level == unix.IPPROTO_IPV6 && typ == unix.IPV6_ORIGDSTADDR && len(data) >= unix.SizeofSockaddrInet6:
			// struct sockaddr_in6: family, port, flowinfo, address, scope.
			if binary.NativeEndian.Uint16(data) != unix.AF_INET6 {
				return netip.AddrPort{}, false
			}
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(data[8:24])), binary.BigEndian.Uint16(data[2:4])), true
		}
		next := unix.CmsgSpace(int(n) - hdr)
		if next >= len(oob) {
			break
		}
		oob = oob[next:]
	}
	return netip.AddrPort{}, false
}

// ErrNotRedirected is wrapped by OriginalDst's error for a connection that no REDIRECT rule diverted: one made straight to the listener.
var ErrNotRedirected = errors.New("the connection was not redirected")

// OriginalDst returns the destination an app originally connected to, for a TCP connection that a nat REDIRECT rule diverted to natkeep's listener: SO_ORIGINAL_DST (IPv4, also an IPv4 connection accepted on a dual-stack listener) or IP6T_SO_ORIGINAL_DST (IPv6), both read from conntrack. Neither option needs a capability.
//
// A connection made straight to the listener was not redirected; the error
// then wraps ErrNotRedirected, so a proxy never dials itself. Conntrack
// either does not know such a connection (the error also wraps ENOENT) or
// reports the connection's own local address as its "original" destination,
// which OriginalDst turns into the same error.
func OriginalDst(c syscall.Conn) (netip.AddrPort, error) {
	var ap, local netip.AddrPort
	err := control(c, "SO_ORIGINAL_DST", func(fd int) error {
		v6, _, err := socketFamily(fd)
		if err != nil {
			return err
		}
		sa, err := unix.Getsockname(fd)
		if err != nil {
			return fmt.Errorf("sockopt: get SO_ORIGINAL_DST: getsockname: %w", err)
		}
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			local = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
		case *unix.SockaddrInet6:
			local = netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
		}
		if v6 {
			if !local.Addr().Is4In6() {
				// IPv6MTUInfo starts with a struct sockaddr_in6 and is
				// larger than one, so x/sys's getter reads it without unsafe.
				mi, gerr := unix.GetsockoptIPv6MTUInfo(fd, unix.IPPROTO_IPV6, ip6tSOOriginalDst)
				if gerr != nil {
					return origDstError("IP6T_SO_ORIGINAL_DST", gerr)
				}
				if mi.Addr.Family != unix.AF_INET6 {
					return fmt.Errorf("sockopt: get IP6T_SO_ORIGINAL_DST: address family %d, want AF_INET6", mi.Addr.Family)
				}
				ap = netip.AddrPortFrom(netip.AddrFrom16(mi.Addr.Addr), ntohs(mi.Addr.Port))
				return nil
			}
			// An IPv4 connection on a dual-stack socket: conntrack has an
			// IPv4 entry, which the IPv4 option reads from the same socket.
		}
		// IPv6Mreq is 20 bytes, more than a struct sockaddr_in (16), so
		// x/sys's getter reads one without unsafe.
		mr, gerr := unix.GetsockoptIPv6Mreq(fd, unix.IPPROTO_IP, unix.SO_ORIGINAL_DST)
		if gerr != nil {
			return origDstError("SO_ORIGINAL_DST", gerr)
		}
		b := mr.Multiaddr[:]
		if binary.NativeEndian.Uint16(b) != unix.AF_INET {
			return fmt.Errorf("sockopt: get SO_ORIGINAL_DST: address family %d, want AF_INET", binary.NativeEndian.Uint16(b))
		}
		ap = netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), binary.BigEndian.Uint16(b[2:4]))
		return nil
	})
	if err != nil {
		return netip.AddrPort{}, err
	}
	if ap.Addr().Unmap() == local.Addr().Unmap() && ap.Port() == local.Port() {
		// Tracked, but nothing was rewritten: made straight to the listener.
		return netip.AddrPort{}, fmt.Errorf("sockopt: SO_ORIGINAL_DST: %s is the connection's own local address: %w", ap, ErrNotRedirected)
	}
	return ap, nil
}

// origDstError names the option and explains its usual errno; ENOENT
// (conntrack does not know the connection) also wraps ErrNotRedirected.
func origDstError(name string, err error) error {
	switch err {
	case unix.ENOENT:
		return fmt.Errorf("sockopt: get %s: %w (conntrack has no entry: %w)", name, err, ErrNotRedirected)
	case unix.ENOPROTOOPT:
		return fmt.Errorf("sockopt: get %s: %w (not a TCP or SCTP socket, or nf_conntrack is not loaded)", name, err)
	}
	return fmt.Errorf("sockopt: get %s: %w", name, err)
}

// ntohs turns a port stored in network byte order in a uint16 field into
// its value.
func ntohs(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}
