//go:build !linux

package sockopt

import "syscall"

// GSOSupported is not supported on this platform.
func GSOSupported(syscall.Conn) error { return notSupported("UDP_SEGMENT") }

// SegmentControl is not supported on this platform: it returns b empty.
func SegmentControl(b []byte, _ uint16) []byte { return b[:0] }

// SegmentControlSize is the room SegmentControl needs.
var SegmentControlSize = 0
