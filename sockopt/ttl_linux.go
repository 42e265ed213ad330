package sockopt

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// TTLControl returns a control message (oob) that sets the IP TTL (IPv4) or hop limit (IPv6) of one datagram sent with (*net.UDPConn).WriteMsgUDP(b, oob, nil), so heartbeats can be sized to reach the NAT but not the peer.
//
// ttl must be 1..255. The buffer is unix.CmsgSpace(4) bytes: a cmsghdr with
// length unix.CmsgLen(4) followed by a 4-byte native-endian int, which is
// what ip_cmsg_send / ip6_datagram_send_ctl expect. The result does not
// change per packet, so build it once per flow and reuse it.
func TTLControl(ipv6 bool, ttl int) ([]byte, error) {
	level, typ, name := unix.IPPROTO_IP, unix.IP_TTL, "IP_TTL"
	if ipv6 {
		level, typ, name = unix.IPPROTO_IPV6, unix.IPV6_HOPLIMIT, "IPV6_HOPLIMIT"
	}
	if ttl < 1 || ttl > 255 {
		return nil, fmt.Errorf("sockopt: %s %d out of range 1..255", name, ttl)
	}
	b := make([]byte, unix.CmsgSpace(4))
	// Go's allocator aligns this buffer to at least 8 bytes, which is all
	// struct cmsghdr needs; x/sys builds SCM_RIGHTS the same way.
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = int32(level)
	h.Type = int32(typ)
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(b[unix.CmsgLen(0):], uint32(ttl))
	return b, nil
}
