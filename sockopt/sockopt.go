// Package sockopt talks to the kernel: it sets and reads the socket options
// natkeep relies on to keep NAT mappings alive and to notice dead peers
// quickly (TCP keepalive, TCP_USER_TIMEOUT, SO_LINGER, per-datagram TTL,
// socket buffer sizes) and reads back the kernel's view of a connection
// (SO_ERROR, TCP_INFO) to explain why it ended.
//
// The real implementation lives in *_linux.go files and uses
// golang.org/x/sys/unix. Every *_other.go twin builds on all other
// platforms and returns an error wrapping [ErrNotSupported] that names the
// option, so callers can degrade gracefully instead of failing to compile.
//
// Functions take a [syscall.Conn] (implemented by *net.TCPConn,
// *net.UDPConn, *net.IPConn, *os.File, ...) and do all their work inside
// a single RawConn.Control call, so the file descriptor cannot be closed
// underneath them. The error from the option call is always kept apart
// from the error of Control itself: neither may overwrite the other.
package sockopt

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"
)

// ErrNotSupported is wrapped by every error for an option this platform lacks.
var ErrNotSupported = errors.New("not supported on this platform")

// Linux limits for the keepalive options (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL
// and MAX_TCP_KEEPCNT in include/net/tcp.h); setsockopt rejects anything else
// with EINVAL, so Validate catches it early with a readable message.
const (
	maxKeepIdle  = 32767 * time.Second
	maxKeepIntvl = 32767 * time.Second
	maxKeepCnt   = 127
)

// Keepalive is TCP keepalive timing: idle before first probe, interval between probes, probes before giving up.
type Keepalive struct {
	// Idle is how long the connection must be idle before the first probe
	// (TCP_KEEPIDLE); it must stay below the NAT's idle timeout.
	Idle time.Duration
	// Interval is the time between unanswered probes (TCP_KEEPINTVL).
	Interval time.Duration
	// Count is how many unanswered probes mark the peer dead (TCP_KEEPCNT).
	Count int
}

// Validate reports values the kernel cannot take, naming the field, so a bad configuration fails at startup rather than on the first connection.
//
// On Linux idle and interval must be whole seconds in 1s..32767s and count
// must be in 1..127. Sub-second or fractional values are errors rather than
// being silently rounded, because rounding would change the dead-peer
// detection time the operator asked for. All offending fields are reported.
func (k Keepalive) Validate() error {
	return errors.Join(
		validateSeconds("keepalive idle", k.Idle, maxKeepIdle),
		validateSeconds("keepalive interval", k.Interval, maxKeepIntvl),
		validateCount("keepalive count", k.Count, maxKeepCnt),
	)
}

// validateSeconds checks that d is a whole number of seconds in 1s..max.
func validateSeconds(field string, d, max time.Duration) error {
	if d < time.Second || d > max {
		return fmt.Errorf("%s %s out of range 1s..%s", field, fmtSeconds(d), fmtSeconds(max))
	}
	if d%time.Second != 0 {
		return fmt.Errorf("%s %s is not a whole number of seconds", field, fmtSeconds(d))
	}
	return nil
}

// validateCount checks that n is in 1..max.
func validateCount(field string, n, max int) error {
	if n < 1 || n > max {
		return fmt.Errorf("%s %d out of range 1..%d", field, n, max)
	}
	return nil
}

// fmtSeconds prints d in seconds ("40000s", "1.5s") because the kernel
// options are in seconds and time.Duration.String ("11h6m40s") hides that.
func fmtSeconds(d time.Duration) string {
	return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) + "s"
}

// fmtMillis prints d in milliseconds ("1500ms", "0.5ms") because
// TCP_USER_TIMEOUT is in milliseconds.
func fmtMillis(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', -1, 64) + "ms"
}

// MaxUserTimeout is the largest TCP_USER_TIMEOUT the kernel takes (INT_MAX milliseconds).
const MaxUserTimeout = time.Duration(math.MaxInt32) * time.Millisecond

// ValidateUserTimeout checks d is 0 (off) or a whole number of milliseconds in 1ms..MaxUserTimeout, so config errors surface before any socket exists.
func ValidateUserTimeout(d time.Duration) error {
	if d == 0 {
		return nil
	}
	if d < time.Millisecond || d > MaxUserTimeout {
		return fmt.Errorf("user timeout %s out of range 1ms..%s (or 0 for off)", fmtMillis(d), fmtMillis(MaxUserTimeout))
	}
	if d%time.Millisecond != 0 {
		return fmt.Errorf("user timeout %s is not a whole number of milliseconds", fmtMillis(d))
	}
	return nil
}

// TCPInfo is the subset of struct tcp_info used to explain why a connection ended.
type TCPInfo struct {
	// State is the kernel TCP state (1 = ESTABLISHED, 7 = CLOSE, ...; see
	// include/net/tcp_states.h).
	State uint8
	// Retransmits is the number of consecutive unanswered retransmissions
	// of the oldest unacknowledged segment.
	Retransmits uint8
	// Probes is the number of unanswered keepalive or zero-window probes.
	Probes uint8
	// Backoff is the exponential backoff count of the retransmission timer.
	Backoff uint8
	// Unacked is the number of segments sent but not yet acknowledged.
	Unacked uint32
	// LastDataRecv is the time since data was last received.
	LastDataRecv time.Duration
	// LastAckRecv is the time since an ACK was last received.
	LastAckRecv time.Duration
	// RTT is the kernel's smoothed round-trip time estimate.
	RTT time.Duration
	// BytesAcked is how many bytes the peer has acknowledged (tcpi_bytes_acked).
	BytesAcked uint64
	// BytesReceived is how many bytes have been received (tcpi_bytes_received).
	BytesReceived uint64
}
