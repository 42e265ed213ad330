package sockopt

import (
	"encoding/binary"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// GSOSupported reports whether the kernel segments UDP for c (UDP_SEGMENT,
// Linux 4.18): one send of several equal-sized datagrams to one address.
// Probe it once at start; a device without checksum offload can still
// refuse a send with EIO, which callers must fall back from.
func GSOSupported(c syscall.Conn) error {
	return control(c, "UDP_SEGMENT", func(fd int) error {
		_, err := getInt(fd, unix.IPPROTO_UDP, unix.UDP_SEGMENT, "UDP_SEGMENT")
		return err
	})
}

// SegmentControl writes into b (at least SegmentControlSize bytes) the
// control message that sends one write as datagrams of size bytes each
// (the last may be shorter) and returns it.
func SegmentControl(b []byte, size uint16) []byte {
	b = b[:unix.CmsgSpace(2)]
	clear(b)
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level = unix.IPPROTO_UDP
	h.Type = unix.UDP_SEGMENT
	h.SetLen(unix.CmsgLen(2))
	binary.NativeEndian.PutUint16(b[unix.CmsgLen(0):], size)
	return b
}

// SegmentControlSize is the room SegmentControl needs.
var SegmentControlSize = unix.CmsgSpace(2)
