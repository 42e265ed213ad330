//go:build !linux

package relay

// newUpstreamReaders uses a goroutine per socket where epoll is not available.
func newUpstreamReaders(u *udpRoute) (upstreamReaders, error) {
	return &goReaders{u: u}, nil
}
