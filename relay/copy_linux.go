package relay

import (
	"io"
	"net"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// spliceCopy copies src to dst until EOF or an error, like io.Copy, but
// waits for data before it asks the kernel to splice: io.Copy between two
// *net.TCPConns parks inside splice holding a pipe pair (two descriptors and
// the per-user pipe quota) for as long as the connection is idle. Here an
// idle direction holds nothing but its parked goroutine, and each burst
// borrows a pipe from Go's pool only while it moves.
// Each burst stamps active (mono time) when it is not nil, for the idle timeout.
func spliceCopy(dst, src *net.TCPConn, active *atomic.Int64) (int64, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return io.Copy(dst, src)
	}
	var (
		total int64
		avail int
		werr  error
		peek  [1]byte
	)
	wait := func(fd uintptr) bool {
		n, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ)
		if err != nil {
			werr = err
			return true
		}
		if n > 0 {
			avail = n
			return true
		}
		// Nothing queued: no data yet, or end of stream, or an error.
		m, _, err := unix.Recvfrom(int(fd), peek[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		switch {
		case err == unix.EAGAIN:
			return false // park in the netpoller until readable
		case err != nil:
			werr = err
		case m == 0:
			avail = 0 // orderly end of stream
		default:
			avail = m
		}
		return true
	}
	for {
		avail, werr = 0, nil
		if err := rc.Read(wait); err != nil {
			return total, err
		}
		if werr != nil {
			return total, os.NewSyscallError("recvfrom", werr)
		}
		if avail == 0 {
			return total, nil
		}
		if active != nil {
			active.Store(mono())
		}
		n, err := dst.ReadFrom(&io.LimitedReader{R: src, N: int64(avail)})
		total += n
		if err != nil {
			return total, err
		}
	}
}
