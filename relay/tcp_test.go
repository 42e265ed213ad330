package relay

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natkeep/natkeep/sockopt"
)

func tcpOpts() TCPOptions {
	return TCPOptions{
		Keepalive:      sockopt.Keepalive{Idle: 30 * time.Second, Interval: 5 * time.Second, Count: 4},
		UserTimeout:    50 * time.Second,
		ConnectTimeout: 5 * time.Second,
	}
}

func newRouteTCP(listen, upstream string, o TCPOptions) Route {
	return Route{Name: "tcp://" + listen + "/" + upstream, Proto: TCP, Listen: listen, Upstream: upstream, TCP: o}
}

// tcpServer accepts on loopback and runs handle for each connection.
func tcpServer(t testing.TB, handle func(*net.TCPConn)) string {
	t.Helper()
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { l.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.AcceptTCP()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); defer c.Close(); handle(c) }()
		}
	}()
	return l.Addr().String()
}

func dialTCP(t testing.TB, addr net.Addr) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr.String(), testDeadline)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(3 * testDeadline))
	return c.(*net.TCPConn)
}

// TestTCPLargeTransferBothWays sends 32 MiB each way at once through the
// proxy, with half-close, and compares checksums.
func TestTCPLargeTransferBothWays(t *testing.T) {
	const size = 32 << 20
	down := make([]byte, size)
	_, _ = rand.Read(down)
	var upSum [32]byte
	var upN int64
	srvDone := make(chan struct{})
	addr := tcpServer(t, func(c *net.TCPConn) {
		defer close(srvDone)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			h := sha256.New()
			upN, _ = io.Copy(h, c)
			copy(upSum[:], h.Sum(nil))
		}()
		_, _ = c.Write(down)
		_ = c.CloseWrite()
		wg.Wait()
	})
	r, m := startRelay(t, newRouteTCP("127.0.0.1:0", addr, tcpOpts()))
	c := dialTCP(t, r.Addrs()[0])
	up := make([]byte, size)
	_, _ = rand.Read(up)
	go func() {
		_, _ = c.Write(up)
		_ = c.CloseWrite()
	}()
	h := sha256.New()
	n, err := io.Copy(h, c)
	if err != nil {
		t.Fatal(err)
	}
	if n != size || !bytes.Equal(h.Sum(nil), sha256Sum(down)) {
		t.Fatalf("downstream: %d bytes, checksum match=%v", n, bytes.Equal(h.Sum(nil), sha256Sum(down)))
	}
	<-srvDone
	if upN != size || upSum != [32]byte(sha256Sum(up)) {
		t.Fatalf("upstream: %d bytes, checksum mismatch", upN)
	}
	eventually(t, "connection end counted", func() bool {
		return counter(m.connEnds.WithLabelValues(r.tcp[0].route.Name, endClientClosed))+
			counter(m.connEnds.WithLabelValues(r.tcp[0].route.Name, endUpstreamClosed)) == 1
	})
	if got, _ := r.tcp[0].bytes(); got != size {
		t.Fatalf("bytes upstream metric = %v", got)
	}
}

func sha256Sum(b []byte) []byte { s := sha256.Sum256(b); return s[:] }

// TestTCPHalfClose: each side may finish writing first and still receive
// everything the other side sends afterwards.
func TestTCPHalfClose(t *testing.T) {
	t.Run("client first", func(t *testing.T) {
		addr := tcpServer(t, func(c *net.TCPConn) {
			req, _ := io.ReadAll(c) // until the client's FIN
			_, _ = c.Write(append([]byte("got:"), req...))
		})
		r, _ := startRelay(t, newRouteTCP("127.0.0.1:0", addr, tcpOpts()))
		c := dialTCP(t, r.Addrs()[0])
		_, _ = c.Write([]byte("request"))
		_ = c.CloseWrite()
		resp, err := io.ReadAll(c)
		if err != nil || string(resp) != "got:request" {
			t.Fatalf("resp %q err %v", resp, err)
		}
	})
	t.Run("server first", func(t *testing.T) {
		got := make(chan string, 1)
		addr := tcpServer(t, func(c *net.TCPConn) {
			_, _ = c.Write([]byte("banner"))
			_ = c.CloseWrite()
			b, _ := io.ReadAll(c)
			got <- string(b)
		})
		r, _ := startRelay(t, newRouteTCP("127.0.0.1:0", addr, tcpOpts()))
		c := dialTCP(t, r.Addrs()[0])
		b, err := io.ReadAll(c) // server's FIN arrives as EOF, our side still open
		if err != nil || string(b) != "banner" {
			t.Fatalf("banner %q err %v", b, err)
		}
		_, _ = c.Write([]byte("after-eof"))
		_ = c.CloseWrite()
		select {
		case s := <-got:
			if s != "after-eof" {
				t.Fatalf("server got %q", s)
			}
		case <-time.After(testDeadline):
			t.Fatal("server never got the data sent after its FIN")
		}
	})
}

// TestTCPManyConnections runs 200 concurrent echo connections.
func TestTCPManyConnections(t *testing.T) {
	addr := tcpServer(t, func(c *net.TCPConn) { _, _ = io.Copy(c, c) })
	r, _ := startRelay(t, newRouteTCP("127.0.0.1:0", addr, tcpOpts()))
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.DialTimeout("tcp", r.Addrs()[0].String(), testDeadline)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(3 * testDeadline))
			msg := bytes.Repeat(fmt.Appendf(nil, "conn-%d;", i), 1000)
			go func() { _, _ = c.Write(msg); _ = c.(*net.TCPConn).CloseWrite() }()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("conn %d: %d bytes, err %v", i, len(got), err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	eventually(t, "all connections closed", func() bool { return r.Stats().TCPConns == 0 })
}

// TestTCPOptionsOnBothSockets reads keepalive and TCP_USER_TIMEOUT back from
// the accepted and the dialed socket with getsockopt.
func TestTCPOptionsOnBothSockets(t *testing.T) {
	type seen struct {
		enabled bool
		ka      sockopt.Keepalive
		ut      time.Duration
	}
	got := make(chan [2]seen, 1)
	testHookProxying = func(client, up *net.TCPConn) {
		var s [2]seen
		for i, c := range []*net.TCPConn{client, up} {
			var err error
			if s[i].enabled, s[i].ka, err = sockopt.GetKeepalive(c); err != nil {
				t.Error(err)
			}
			if s[i].ut, err = sockopt.GetUserTimeout(c); err != nil {
				t.Error(err)
			}
		}
		got <- s
	}
	defer func() { testHookProxying = nil }()
	addr := tcpServer(t, func(c *net.TCPConn) { _, _ = io.Copy(io.Discard, c) })
	o := tcpOpts()
	r, _ := startRelay(t, newRouteTCP("127.0.0.1:0", addr, o))
	c := dialTCP(t, r.Addrs()[0])
	_, _ = c.Write([]byte("x"))
	select {
	case s := <-got:
		for i, side := range []string{"client", "upstream"} {
			if !s[i].enabled || s[i].ka != o.Keepalive || s[i].ut != o.UserTimeout {
				t.Errorf("%s socket: keepalive %v %+v user timeout %v; want %+v %v", side, s[i].enabled, s[i].ka, s[i].ut, o.Keepalive, o.UserTimeout)
			}
		}
	case <-time.After(testDeadline):
		t.Fatal("connection never proxied")
	}
}

// TestTCPUpstreamResetPropagates: when the upstream resets, the client sees
// a reset (not a clean EOF) promptly, and the end is classified.
func TestTCPUpstreamResetPropagates(t *testing.T) {
	addr := tcpServer(t, func(c *net.TCPConn) {
		buf := make([]byte, 5)
		_, _ = io.ReadFull(c, buf)
		_ = sockopt.SetLingerZero(c)
	})
	r, m := startRelay(t, newRouteTCP("127.0.0.1:0", addr, tcpOpts()))
	c := dialTCP(t, r.Addrs()[0])
	_, _ = c.Write([]byte("hello"))
	start := time.Now()
	_, err := io.ReadAll(c)
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read ended with %v, want connection reset", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("reset took %v to reach the client", d)
	}
	eventually(t, "upstream_reset counted", func() bool {
		return counter(m.connEnds.WithLabelValues(r.tcp[0].route.Name, endUpstreamReset)) == 1
	})
}

// TestTCPClientResetPropagates: the client resets; the upstream sees a reset.
func TestTCPClientResetPropagates(t *testing.T) {
	upErr := make(chan error, 1)
	addr := tcpServer(t, func(c *net.TCPConn) {
		_ = c.SetDeadline(time.Now().Add(testDeadline))
		_, err := io.ReadAll(c)
		upErr <- err
	})
	r, m := startRelay(t, newRouteTCP("127.0.0.1:0", addr, tcpOpts()))
	c := dialTCP(t, r.Addrs()[0])
	_, _ = c.Write([]byte("hello"))
	eventually(t, "connection proxied", func() bool {
		r.tcp[0].mu.Lock()
		defer r.tcp[0].mu.Unlock()
		for pc := range r.tcp[0].conns {
			return pc.upstream != nil
		}
		return false
	})
	_ = sockopt.SetLingerZero(c)
	c.Close()
	select {
	case err := <-upErr:
		if !errors.Is(err, syscall.ECONNRESET) {
			t.Fatalf("upstream read ended with %v, want connection reset", err)
		}
	case <-time.After(testDeadline):
		t.Fatal("upstream never saw the client's reset")
	}
	eventually(t, "client_reset counted", func() bool {
		return counter(m.connEnds.WithLabelValues(r.tcp[0].route.Name, endClientReset)) == 1
	})
}

// TestTCPDialFailureResetsClient: nothing listens upstream; the client is
// reset promptly instead of being left hanging or given a clean EOF.
func TestTCPDialFailureResetsClient(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	r, m := startRelay(t, newRouteTCP("127.0.0.1:0", addr, tcpOpts()))
	start := time.Now()
	c, err := net.DialTimeout("tcp", r.Addrs()[0].String(), testDeadline)
	if err == nil {
		// On loopback the reset may even beat the client's connect
		// completing; either way the client must see a reset.
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(testDeadline))
		_, err = io.ReadAll(c)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("client read ended with %v, want connection reset", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("dial failure took %v to reach the client", d)
	}
	if got := counter(m.connEnds.WithLabelValues(r.tcp[0].route.Name, endDialError)); got != 1 {
		t.Fatalf("dial_error = %v", got)
	}
}

// TestTCPMaxConns refuses connections beyond the limit with a reset.
func TestTCPMaxConns(t *testing.T) {
	addr := tcpServer(t, func(c *net.TCPConn) { _, _ = io.Copy(c, c) })
	o := tcpOpts()
	o.MaxConns = 2
	r, _ := startRelay(t, newRouteTCP("127.0.0.1:0", addr, o))
	a, b := dialTCP(t, r.Addrs()[0]), dialTCP(t, r.Addrs()[0])
	for _, c := range []*net.TCPConn{a, b} {
		_, _ = c.Write([]byte("ok"))
		buf := make([]byte, 2)
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	// The reset may beat the client's connect completing on loopback.
	extra, err := net.DialTimeout("tcp", r.Addrs()[0].String(), testDeadline)
	if err == nil {
		defer extra.Close()
		_ = extra.SetDeadline(time.Now().Add(testDeadline))
		_, err = io.ReadAll(extra)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("connection over the limit ended with %v, want reset", err)
	}
}

// TestTCPDrain: Shutdown lets an open connection finish within the drain
// timeout with every byte delivered, and refuses new connections.
func TestTCPDrain(t *testing.T) {
	release := make(chan struct{})
	addr := tcpServer(t, func(c *net.TCPConn) {
		<-release
		_, _ = c.Write([]byte("late reply"))
	})
	r, _ := startRelay(t, newRouteTCP("127.0.0.1:0", addr, tcpOpts()))
	c := dialTCP(t, r.Addrs()[0])
	eventually(t, "connection open", func() bool { return r.Stats().TCPConns == 1 })
	done := make(chan error, 1)
	ctx, cancel := context.WithTimeout(context.Background(), testDeadline)
	defer cancel()
	go func() { done <- r.Shutdown(ctx) }()
	eventually(t, "not ready while draining", func() bool { return !r.Ready() })
	if _, err := net.DialTimeout("tcp", r.Addrs()[0].String(), time.Second); err == nil {
		t.Fatal("listener still accepting while draining")
	}
	close(release)
	b, err := io.ReadAll(c)
	if err != nil || string(b) != "late reply" {
		t.Fatalf("got %q err %v", b, err)
	}
	c.Close() // the app finishes its side too
	if err := <-done; err != nil {
		t.Fatalf("shutdown: %v", err)
	}
}

// TestTCPKeepaliveInheritedFromListener: the route's keepalive is set once
// on the listener when every class shares it, and accepted sockets have it
// without setting it again; a route whose intercept rules differ sets it per
// connection, and a socket whose class differs from what it inherited gets
// its own class's values.
func TestTCPKeepaliveInheritedFromListener(t *testing.T) {
	m := NewMetrics(prometheus.NewRegistry())
	listen := func(t *testing.T, rt Route) *tcpRoute {
		t.Helper()
		tr, err := newTCPRoute(context.Background(), rt, time.Second, slog.New(slog.DiscardHandler), m, &budget{})
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.listen(context.Background()); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tr.close)
		return tr
	}
	o := tcpOpts()
	t.Run("uniform", func(t *testing.T) {
		rule := InterceptRule{Proto: TCP, Prefix: netip.MustParsePrefix("10.0.0.0/8"), PortLo: 1, PortHi: 9, TCP: o}
		tr := listen(t, Route{Name: "uniform", Proto: TCP, Listen: "127.0.0.1:0", TCP: o, Transparent: true, Intercept: []InterceptRule{rule}})
		if tr.lnKeepalive != o.Keepalive {
			t.Fatalf("listener keepalive %+v, want %+v", tr.lnKeepalive, o.Keepalive)
		}
		c := dialTCP(t, tr.ln.Addr())
		a, err := tr.ln.AcceptTCP()
		if err != nil {
			t.Fatal(err)
		}
		defer a.Close()
		defer c.Close()
		if on, k, err := sockopt.GetKeepalive(a); err != nil || !on || k != o.Keepalive {
			t.Fatalf("accepted socket: keepalive %v %+v %v; want it inherited as %+v", on, k, err, o.Keepalive)
		}
		// A class with other values overrides what the socket inherited.
		other := o
		other.Keepalive.Idle = 77 * time.Second
		if err := applyOptions(a, &other, tr.lnKeepalive); err != nil {
			t.Fatal(err)
		}
		if on, k, err := sockopt.GetKeepalive(a); err != nil || !on || k != other.Keepalive {
			t.Fatalf("after applyOptions: keepalive %v %+v %v; want %+v", on, k, err, other.Keepalive)
		}
	})
	t.Run("rules differ", func(t *testing.T) {
		rule := InterceptRule{Proto: TCP, Prefix: netip.MustParsePrefix("10.0.0.0/8"), PortLo: 1, PortHi: 9, TCP: o}
		rule.TCP.Keepalive.Count = 9
		tr := listen(t, Route{Name: "differ", Proto: TCP, Listen: "127.0.0.1:0", TCP: o, Transparent: true, Intercept: []InterceptRule{rule}})
		if tr.lnKeepalive != (sockopt.Keepalive{}) {
			t.Fatalf("listener keepalive %+v with rules that differ, want none", tr.lnKeepalive)
		}
		if on, _, err := sockopt.GetKeepalive(tr.ln); err != nil || on {
			t.Fatalf("listener SO_KEEPALIVE %v (%v), want off", on, err)
		}
	})
}
