package relay

import (
	"errors"
	"io"
	"net"
	"os"
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
	extra := dialTCP(t, h.Addrs()[0])
	if _, err := io.ReadAll(extra); err == nil {
		t.Fatal("the connection beyond the budget was not reset")
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
