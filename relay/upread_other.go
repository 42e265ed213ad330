//go:build !linux

package relay

import (
	"errors"
	"net"
	"sync"
)

// newUpstreamReaders uses a goroutine per socket where epoll is not available.
func newUpstreamReaders(u *udpRoute) (upstreamReaders, error) {
	return &goReaders{u: u}, nil
}

// goReaders is the portable implementation: a goroutine per socket.
type goReaders struct {
	u  *udpRoute
	wg sync.WaitGroup
}

func (g *goReaders) watch(f *flow, c *net.UDPConn, fromClient bool) error {
	handle := g.u.fromUpstream
	if fromClient {
		handle = g.u.fromClientConn
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		buf := make([]byte, maxDatagram)
		for {
			n, err := c.Read(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				g.u.upstreamError(f, c, err)
				continue
			}
			handle(f, buf[:n])
		}
	}()
	return nil
}

// unwatch is a no-op: closing the socket ends its goroutine.
func (g *goReaders) unwatch(*net.UDPConn) {}

func (g *goReaders) stop() { g.wg.Wait() }
