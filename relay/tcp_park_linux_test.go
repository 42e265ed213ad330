package relay

// Idle TCP connections park in the route's epoll set without goroutines;
// half-close, resets and keepalive / user-timeout failures that happen
// while both directions are parked end the connection exactly as they do
// for a connection whose directions are copying.

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/natkeep/natkeep/sockopt"
)

// parkedHalves counts the route's directions waiting in its epoll set.
func parkedHalves(tr *tcpRoute) int {
	tr.park.mu.Lock()
	hs := make([]*half, 0, len(tr.park.halves))
	for _, h := range tr.park.halves {
		hs = append(hs, h)
	}
	tr.park.mu.Unlock()
	n := 0
	for _, h := range hs {
		h.c.mu.Lock()
		if h.state == halfParked {
			n++
		}
		h.c.mu.Unlock()
	}
	return n
}

// waitParked waits until n directions of the route are parked.
func waitParked(t *testing.T, tr *tcpRoute, n int) {
	t.Helper()
	eventually(t, "directions parked", func() bool { return parkedHalves(tr) == n })
}

// heldServer accepts connections and hands each to the test, which serves
// it from its own goroutine: the upstream adds no goroutine per connection.
func heldServer(t *testing.T) (string, <-chan *net.TCPConn) {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *net.TCPConn, 1024)
	done := make(chan struct{})
	t.Cleanup(func() { l.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := l.AcceptTCP()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			ch <- c
		}
	}()
	return l.Addr().String(), ch
}

// accepted returns the next connection the held server accepted.
func accepted(t *testing.T, ch <-chan *net.TCPConn) *net.TCPConn {
	t.Helper()
	select {
	case c := <-ch:
		_ = c.SetDeadline(time.Now().Add(3 * testDeadline))
		return c
	case <-time.After(testDeadline):
		t.Fatal("the upstream never saw the connection")
		return nil
	}
}

// roundTrip sends msg from a to b and checks it arrives.
func roundTrip(t *testing.T, a, b *net.TCPConn, msg string) {
	t.Helper()
	if _, err := a.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(b, buf); err != nil || string(buf) != msg {
		t.Fatalf("got %q, %v; want %q", buf, err, msg)
	}
}

// parkedPair opens one connection through a new relay, exchanges a message
// each way and waits until both directions are parked.
func parkedPair(t *testing.T, o TCPOptions) (h *hostileRelay, app, srv *net.TCPConn) {
	t.Helper()
	addr, ch := heldServer(t)
	rt := newRouteTCP("127.0.0.1:0", addr, o)
	h = hostileStart(t, rt)
	app = dialTCP(t, h.Addrs()[0])
	srv = accepted(t, ch)
	roundTrip(t, app, srv, "request")
	roundTrip(t, srv, app, "response")
	waitParked(t, h.tcp[0], 2)
	return h, app, srv
}

// ends reads natkeep_tcp_connection_ends_total for reason.
func ends(t *testing.T, h *hostileRelay, reason string) float64 {
	return h.routeMetric(t, h.tcp[0].route.Name, "natkeep_tcp_connection_ends_total", "reason", reason)
}

// TestTCPParkedHoldNoGoroutines: 200 idle connections through the relay
// add no goroutines once their directions are parked (a few at most, for
// whatever the runtime starts meanwhile), and they still carry data.
func TestTCPParkedHoldNoGoroutines(t *testing.T) {
	const n = 200
	addr, ch := heldServer(t)
	r, _ := startRelay(t, newRouteTCP("127.0.0.1:0", addr, tcpOpts()))
	// Settle the relay's own goroutines (accept loop, resolver, epoll loop).
	app := dialTCP(t, r.Addrs()[0])
	srv := accepted(t, ch)
	roundTrip(t, app, srv, "warm")
	waitParked(t, r.tcp[0], 2)
	before := runtime.NumGoroutine()
	apps, srvs := make([]*net.TCPConn, n), make([]*net.TCPConn, n)
	for i := range n {
		apps[i] = dialTCP(t, r.Addrs()[0])
		srvs[i] = accepted(t, ch)
		roundTrip(t, apps[i], srvs[i], "ping")
		roundTrip(t, srvs[i], apps[i], "pong")
	}
	waitParked(t, r.tcp[0], 2*(n+1))
	var after int
	eventually(t, "goroutines back to the count before", func() bool {
		after = runtime.NumGoroutine()
		return after <= before+5
	})
	t.Logf("%d goroutines before, %d with %d more idle connections", before, after, n)
	// Parked connections wake up: one of them carries data both ways.
	roundTrip(t, apps[n/2], srvs[n/2], "late request")
	roundTrip(t, srvs[n/2], apps[n/2], "late push")
}

// TestTCPParkedHalfClose: a FIN while both directions are parked is passed
// on as a half-close, the other direction still carries data afterwards,
// and the connection ends as closed by the side that finished first.
func TestTCPParkedHalfClose(t *testing.T) {
	t.Run("client first", func(t *testing.T) {
		h, app, srv := parkedPair(t, tcpOpts())
		_ = app.CloseWrite()
		if b, err := io.ReadAll(srv); err != nil || len(b) != 0 {
			t.Fatalf("upstream read %q, %v; want the end of stream", b, err)
		}
		roundTrip(t, srv, app, "after the client's FIN")
		_ = srv.CloseWrite()
		if b, err := io.ReadAll(app); err != nil || len(b) != 0 {
			t.Fatalf("app read %q, %v; want the end of stream", b, err)
		}
		eventually(t, "client_closed counted", func() bool { return ends(t, h, endClientClosed) == 1 })
		eventually(t, "the connection gone", func() bool { return h.Stats().TCPConns == 0 })
	})
	t.Run("server first", func(t *testing.T) {
		h, app, srv := parkedPair(t, tcpOpts())
		_ = srv.CloseWrite()
		if b, err := io.ReadAll(app); err != nil || len(b) != 0 {
			t.Fatalf("app read %q, %v; want the end of stream", b, err)
		}
		waitParked(t, h.tcp[0], 1) // the client's direction waits again
		roundTrip(t, app, srv, "after the server's FIN")
		_ = app.CloseWrite()
		if b, err := io.ReadAll(srv); err != nil || len(b) != 0 {
			t.Fatalf("upstream read %q, %v; want the end of stream", b, err)
		}
		eventually(t, "upstream_closed counted", func() bool { return ends(t, h, endUpstreamClosed) == 1 })
	})
}

// TestTCPParkedReset: a reset from either side while both directions are
// parked reaches the other side as a reset and is counted as that side's.
func TestTCPParkedReset(t *testing.T) {
	t.Run("upstream", func(t *testing.T) {
		h, app, srv := parkedPair(t, tcpOpts())
		_ = sockopt.SetLingerZero(srv)
		srv.Close()
		if _, err := io.ReadAll(app); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("app read ended with %v, want a reset", err)
		}
		eventually(t, "upstream_reset counted", func() bool { return ends(t, h, endUpstreamReset) == 1 })
	})
	t.Run("client", func(t *testing.T) {
		h, app, srv := parkedPair(t, tcpOpts())
		_ = sockopt.SetLingerZero(app)
		app.Close()
		if _, err := io.ReadAll(srv); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("upstream read ended with %v, want a reset", err)
		}
		eventually(t, "client_reset counted", func() bool { return ends(t, h, endClientReset) == 1 })
	})
}

// TestTCPParkedIdleTimeoutAndShutdown: natkeep closing parked connections
// (the idle timeout, Close) ends them as it ends copying ones.
func TestTCPParkedIdleTimeoutAndShutdown(t *testing.T) {
	t.Run("idle timeout", func(t *testing.T) {
		o := tcpOpts()
		o.IdleTimeout = time.Second
		h, app, _ := parkedPair(t, o)
		if _, err := io.ReadAll(app); err != nil {
			t.Fatalf("app read ended with %v, want the end of stream", err)
		}
		eventually(t, "idle_timeout counted", func() bool { return ends(t, h, endIdle) == 1 })
		eventually(t, "the connection gone", func() bool { return h.Stats().TCPConns == 0 })
	})
	t.Run("close", func(t *testing.T) {
		h, app, _ := parkedPair(t, tcpOpts())
		h.Close()
		if _, err := io.ReadAll(app); !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("app read ended with %v, want a reset", err)
		}
		if h.Stats().TCPConns != 0 {
			t.Fatal("a connection is left after Close")
		}
	})
}

// TestTCPParkedDeadPeer: the upstream stops answering (its packets are
// dropped, in a network namespace of its own) while the connection is
// parked: keepalive finds it dead when idle, the user timeout when data
// is in flight; the app gets a reset and the end is counted with the
// right reason.
func TestTCPParkedDeadPeer(t *testing.T) {
	inOwnNetns(t, func(t *testing.T) {
		loopbackUp(t)
		cases := []struct {
			name   string
			reason string
			o      func(*TCPOptions)
			send   bool
		}{
			{"keepalive", endKeepaliveTimeout, func(o *TCPOptions) {
				o.Keepalive = sockopt.Keepalive{Idle: time.Second, Interval: time.Second, Count: 2}
				o.UserTimeout = 0
			}, false},
			{"user timeout", endUserTimeout, func(o *TCPOptions) {
				o.Keepalive = sockopt.Keepalive{Idle: 30 * time.Second, Interval: 10 * time.Second, Count: 3}
				o.UserTimeout = 2 * time.Second
			}, true},
		}
		for i, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				o := tcpOpts()
				tc.o(&o)
				h, app, srv := parkedPair(t, o)
				dropFrom(t, uint16(srv.LocalAddr().(*net.TCPAddr).Port), i)
				if tc.send {
					// Spliced to the upstream, never acknowledged; both
					// directions park again with it in flight.
					if _, err := app.Write([]byte("unacknowledged")); err != nil {
						t.Fatal(err)
					}
				}
				start := time.Now()
				_ = app.SetReadDeadline(time.Now().Add(3 * testDeadline))
				if _, err := io.ReadAll(app); !errors.Is(err, syscall.ECONNRESET) {
					t.Fatalf("app read ended after %v with %v, want a reset", time.Since(start), err)
				}
				eventually(t, tc.reason+" counted", func() bool { return ends(t, h, tc.reason) == 1 })
				t.Logf("app reset after %v", time.Since(start).Round(10*time.Millisecond))
			})
		}
	})
}

// dropFrom drops every TCP segment sent from port (filter OUTPUT on lo):
// the peer behind it has vanished.
func dropFrom(t *testing.T, port uint16, i int) {
	t.Helper()
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tbl := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "relay_test_drop" + string(rune('a'+i))})
	ch := conn.AddChain(&nftables.Chain{Name: "out", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	conn.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, port)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := conn.Flush(); err != nil {
		t.Fatalf("cannot install the drop rule: %v", err)
	}
}
