//go:build !linux

package relay

import (
	"errors"
	"log/slog"
	"net"
	"sync"
)

// newFlowReaders uses a goroutine per socket where epoll is not available.
// Handlers run in each socket's goroutine and send at once, so there is
// nothing to flush.
func newFlowReaders(_ *slog.Logger, onErr readErrorHandler, _ func()) (flowReaders, error) {
	return &goReaders{onErr: onErr}, nil
}

// goReaders is the portable implementation: a goroutine per socket.
type goReaders struct {
	onErr readErrorHandler
	wg    sync.WaitGroup
}

func (g *goReaders) watch(f *flow, c *net.UDPConn, onData datagramHandler) error {
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
				g.onErr(f, err)
				continue
			}
			onData(f, buf[:n])
		}
	}()
	return nil
}

func (g *goReaders) watchUp(f *flow, s *upSock, onData datagramHandler) error {
	return g.watch(f, s.c, onData)
}

// unwatchUp is a no-op: closing the socket ends its goroutine.
func (g *goReaders) unwatchUp(*upSock) {}

// unwatch is a no-op: closing the socket ends its goroutine.
func (g *goReaders) unwatch(*net.UDPConn) {}

func (g *goReaders) stop() { g.wg.Wait() }
