package relay

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"testing"
	"time"
)

// echoTCP is an upstream that echoes every connection.
func echoTCP(t *testing.T) string {
	t.Helper()
	return tcpServer(t, func(c *net.TCPConn) { _, _ = io.Copy(c, c) })
}

// tcpWorks reports whether a round trip through c succeeds.
func tcpWorks(c *net.TCPConn, msg string) bool {
	_ = c.SetDeadline(time.Now().Add(testDeadline))
	if _, err := c.Write([]byte(msg)); err != nil {
		return false
	}
	buf := make([]byte, len(msg))
	_, err := io.ReadFull(c, buf)
	return err == nil && string(buf) == msg
}

// TestTCPDescriptorBudget: each proxied connection holds two descriptors
// of the relay's budget; with 6, three connections are proxied and the
// fourth is reset and counted, and a connection that ends gives its share
// back.
func TestTCPDescriptorBudget(t *testing.T) {
	rt := newRouteTCP("127.0.0.1:0", echoTCP(t), tcpOpts())
	h := hostileStartConfig(t, Config{Routes: []Route{rt}, ResolveInterval: time.Second, Budget: Budget{Descriptors: 6}})
	var conns []*net.TCPConn
	for range 3 {
		c := dialTCP(t, h.Addrs()[0])
		if !tcpWorks(c, "hi") {
			t.Fatal("a connection within the budget does not work")
		}
		conns = append(conns, c)
	}
	// The reset can beat the dialer's own completion of connect (its
	// SO_ERROR then reads ECONNRESET): that is the reset too.
	extra, err := net.DialTimeout("tcp", h.Addrs()[0].String(), testDeadline)
	if err == nil {
		defer extra.Close()
		_ = extra.SetDeadline(time.Now().Add(testDeadline))
		_, err = io.ReadAll(extra)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the connection beyond the budget: %v, want a reset", err)
	}
	eventually(t, "conn_limit counted", func() bool {
		return h.routeMetric(t, rt.Name, "natkeep_tcp_connection_ends_total", "reason", "conn_limit") == 1
	})
	conns[0].Close()
	eventually(t, "the closed connection's share back", func() bool { return h.Stats().TCPConns == 2 })
	if c := dialTCP(t, h.Addrs()[0]); !tcpWorks(c, "again") {
		t.Fatal("no connection after one ended")
	}
}

// TestTCPIdleTimeout: with an idle timeout of 500 ms, a silent connection
// is closed (counted as idle_timeout) while one that carries data every
// 100 ms lives on.
func TestTCPIdleTimeout(t *testing.T) {
	o := tcpOpts()
	o.IdleTimeout = 500 * time.Millisecond
	rt := newRouteTCP("127.0.0.1:0", echoTCP(t), o)
	h := hostileStart(t, rt)
	idle, busy := dialTCP(t, h.Addrs()[0]), dialTCP(t, h.Addrs()[0])
	if !tcpWorks(idle, "x") || !tcpWorks(busy, "x") {
		t.Fatal("no echo")
	}
	start := time.Now()
	closed := make(chan time.Duration, 1)
	go func() {
		_ = idle.SetReadDeadline(time.Now().Add(testDeadline))
		_, err := io.ReadAll(idle)
		if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
			closed <- -1
			return
		}
		closed <- time.Since(start)
	}()
	for time.Since(start) < 1500*time.Millisecond {
		if !tcpWorks(busy, "ping") {
			t.Fatalf("the busy connection ended after %v", time.Since(start))
		}
		time.Sleep(100 * time.Millisecond)
	}
	after := <-closed
	if after < 500*time.Millisecond || after > 1500*time.Millisecond {
		t.Fatalf("idle connection closed after %v, want 0.5-1.5 s", after)
	}
	if v := h.routeMetric(t, rt.Name, "natkeep_tcp_connection_ends_total", "reason", "idle_timeout"); v != 1 {
		t.Fatalf("idle_timeout ends %v, want 1", v)
	}
}

// TestTCPBytesMoveWhileOpen: natkeep_tcp_bytes_total counts what an open
// connection has delivered (read from TCP_INFO at scrape time): during a
// 1 MB download that the server keeps open, the downstream counter rises
// to the full megabyte before the connection ends, never falls, and ends
// at exactly what was copied.
func TestTCPBytesMoveWhileOpen(t *testing.T) {
	const size = 1 << 20
	release := make(chan struct{})
	addr := tcpServer(t, func(c *net.TCPConn) {
		if _, err := c.Write(make([]byte, size)); err != nil {
			return
		}
		<-release // held open
	})
	rt := newRouteTCP("127.0.0.1:0", addr, tcpOpts())
	h := hostileStart(t, rt)
	app := dialTCP(t, h.Addrs()[0])
	down := func() float64 { return h.routeMetric(t, rt.Name, "natkeep_tcp_bytes_total", "direction", "downstream") }
	var seen []float64
	buf := make([]byte, 64<<10)
	got := 0
	for got < size {
		n, err := app.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		got += n
		seen = append(seen, down())
	}
	eventually(t, "the counter to reach 1 MB while open", func() bool { return down() == size })
	for i := 1; i < len(seen); i++ {
		if seen[i] < seen[i-1] {
			t.Fatalf("the counter fell from %v to %v", seen[i-1], seen[i])
		}
	}
	if h.Stats().TCPConns != 1 {
		t.Fatal("the connection is not open any more: the test proves nothing")
	}
	close(release)
	app.Close()
	eventually(t, "the connection to end", func() bool { return h.Stats().TCPConns == 0 })
	if v := down(); v != size {
		t.Fatalf("after the end the counter is %v, want %d", v, size)
	}
	mid := 0
	for _, v := range seen {
		if v > 0 && v < size {
			mid++
		}
	}
	t.Logf("%d readings during the transfer, %d of them strictly between 0 and 1 MB", len(seen), mid)
}

// TestTCPServeGoroutinesReused: connections one after another are served
// by a few waiting serve goroutines, not one new goroutine each, and the
// waiting ones end when the route closes.
func TestTCPServeGoroutinesReused(t *testing.T) {
	r, _ := startRelay(t, newRouteTCP("127.0.0.1:0", echoTCP(t), tcpOpts()))
	tr := r.tcp[0]
	for i := range 30 {
		c := dialTCP(t, r.Addrs()[0])
		if !tcpWorks(c, "hi") {
			t.Fatalf("connection %d: no echo", i)
		}
		c.Close()
		eventually(t, "a serve goroutine waiting", func() bool { return tr.idleServers.Load() >= 1 })
	}
	if n := tr.idleServers.Load(); n < 1 || n > maxIdleServers {
		t.Fatalf("%d serve goroutines waiting after 30 sequential connections, want 1..%d", n, maxIdleServers)
	}
	r.Close()
	if n := tr.idleServers.Load(); n != 0 {
		t.Fatalf("%d serve goroutines still waiting after Close", n)
	}
}
