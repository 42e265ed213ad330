package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natkeep/natkeep/relay"
)

// TestAdminServerLimits: the admin server bounds every phase of a
// connection (zero would mean no limit at all).
func TestAdminServerLimits(t *testing.T) {
	s := newAdminServer(http.NotFoundHandler())
	for name, tc := range map[string]struct{ got, want time.Duration }{
		"ReadHeaderTimeout": {s.ReadHeaderTimeout, 5 * time.Second},
		"ReadTimeout":       {s.ReadTimeout, 10 * time.Second},
		"WriteTimeout":      {s.WriteTimeout, 10 * time.Second},
		"IdleTimeout":       {s.IdleTimeout, 60 * time.Second},
	} {
		if tc.got != tc.want {
			t.Errorf("%s = %v, want %v", name, tc.got, tc.want)
		}
	}
	if s.MaxHeaderBytes != 8<<10 {
		t.Errorf("MaxHeaderBytes = %d, want 8 KiB", s.MaxHeaderBytes)
	}
}

// adminTestServer serves the real admin handler with newAdminServer's
// limits, IdleTimeout replaced by idle, on a loopback port.
func adminTestServer(t *testing.T, idle time.Duration) string {
	t.Helper()
	reg := prometheus.NewRegistry()
	r, err := relay.New(relay.Config{}, nil, relay.NewMetrics(reg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	s := newAdminServer(adminHandler(reg, r))
	s.IdleTimeout = idle
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ln) }()
	t.Cleanup(func() {
		s.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("admin server: %v", err)
		}
	})
	return ln.Addr().String()
}

// adminRequest sends one raw HTTP/1.1 request with extra header lines on c
// and reads the response, body included.
func adminRequest(t *testing.T, c net.Conn, br *bufio.Reader, path string, extra ...string) *http.Response {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	req := "GET " + path + " HTTP/1.1\r\nHost: natkeep\r\n"
	for _, h := range extra {
		req += h + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestAdminServerClosesIdleConnections: after a /metrics scrape on a
// keep-alive connection, the server itself closes the connection once it
// has been idle for IdleTimeout (shortened here), not before.
func TestAdminServerClosesIdleConnections(t *testing.T) {
	const idle = 300 * time.Millisecond
	addr := adminTestServer(t, idle)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	start := time.Now() // the idle timer starts after this request is answered
	resp := adminRequest(t, c, br, "/metrics")
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("/metrics: %s, close %v; want 200 on a kept-alive connection", resp.Status, resp.Close)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if b, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("idle connection: read %q, %v; want EOF, the server closing it", b, err)
	}
	if d := time.Since(start); d < idle {
		t.Fatalf("closed after %v, before IdleTimeout %v", d, idle)
	}
}

// TestAdminServerRejectsHugeHeaders: request headers far beyond
// MaxHeaderBytes are refused with 431, not buffered.
func TestAdminServerRejectsHugeHeaders(t *testing.T) {
	addr := adminTestServer(t, time.Minute)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := fmt.Sprintf("X-Padding: %s", strings.Repeat("a", 4*adminMaxHeaderBytes))
	if resp := adminRequest(t, c, bufio.NewReader(c), "/healthz", big); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("%d KiB of headers: %s, want 431", 4*adminMaxHeaderBytes>>10, resp.Status)
	}
}
