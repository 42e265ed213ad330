package sockopt

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// SetKeepalive enables TCP keepalive with timing k, so idle flows keep their NAT mapping and dead peers are detected after Idle+Interval*Count.
//
// The timings are set before SO_KEEPALIVE is switched on so the keepalive
// timer is never armed with the system default idle (usually 2h).
func SetKeepalive(c syscall.Conn, k Keepalive) error {
	if err := k.Validate(); err != nil {
		return fmt.Errorf("sockopt: %w", err)
	}
	return control(c, "keepalive", func(fd int) error {
		if err := setInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, "TCP_KEEPIDLE", int(k.Idle/time.Second)); err != nil {
			return err
		}
		if err := setInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, "TCP_KEEPINTVL", int(k.Interval/time.Second)); err != nil {
			return err
		}
		if err := setInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, "TCP_KEEPCNT", k.Count); err != nil {
			return err
		}
		return setInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, "SO_KEEPALIVE", 1)
	})
}

// GetKeepalive reads the keepalive state back from the kernel, so callers and tests can verify what is really in effect.
func GetKeepalive(c syscall.Conn) (enabled bool, k Keepalive, err error) {
	err = control(c, "keepalive", func(fd int) error {
		on, err := getInt(fd, unix.SOL_SOCKET, unix.SO_KEEPALIVE, "SO_KEEPALIVE")
		if err != nil {
			return err
		}
		idle, err := getInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, "TCP_KEEPIDLE")
		if err != nil {
			return err
		}
		intvl, err := getInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, "TCP_KEEPINTVL")
		if err != nil {
			return err
		}
		cnt, err := getInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT, "TCP_KEEPCNT")
		if err != nil {
			return err
		}
		enabled = on != 0
		k = Keepalive{
			Idle:     time.Duration(idle) * time.Second,
			Interval: time.Duration(intvl) * time.Second,
			Count:    cnt,
		}
		return nil
	})
	if err != nil {
		return false, Keepalive{}, err
	}
	return enabled, k, nil
}
