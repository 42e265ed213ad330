package relay

import (
	"errors"
	"fmt"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestStartListenError: a listen address already in use fails Start with a
// *ListenError naming the route by position, its address and the bare
// cause once ("address already in use", not net's "listen tcp X: bind:"
// around it), and the routes bound before it are released.
func TestStartListenError(t *testing.T) {
	for _, proto := range []Proto{TCP, UDP} {
		t.Run(string(proto), func(t *testing.T) {
			var taken string
			if proto == TCP {
				ln, err := net.Listen("tcp4", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				taken = ln.Addr().String()
			} else {
				c, err := net.ListenPacket("udp4", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				taken = c.LocalAddr().String()
			}
			first := newRouteUDP("127.0.0.1:0", "127.0.0.1:9", udpOpts())
			second := newRouteUDP(taken, "127.0.0.1:9", udpOpts())
			if proto == TCP {
				second = newRouteTCP(taken, "127.0.0.1:9", tcpOpts())
			}
			r, err := New(Config{Routes: []Route{first, second}, ResolveInterval: time.Second}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			err = r.Start()
			var le *ListenError
			if !errors.As(err, &le) || le.Index != 1 || le.Route.Name != second.Name || !errors.Is(err, syscall.EADDRINUSE) {
				t.Fatalf("Start = %v (%T), want a *ListenError for route 1 wrapping EADDRINUSE", err, err)
			}
			if want := fmt.Sprintf("route %q: listen %s %s: address already in use", second.Name, proto, taken); err.Error() != want {
				t.Fatalf("Start = %q, want %q", err, want)
			}
			if r.Ready() {
				t.Fatal("ready after a failed Start")
			}
			// The first route's listener was closed: its port binds again.
			if c, err := net.ListenPacket("udp4", r.udp[0].ln.LocalAddr().String()); err != nil {
				t.Fatalf("the first route's port is still held: %v", err)
			} else {
				c.Close()
			}
		})
	}
}
