package nktest

import (
	"io"
	"net"
	"net/http"
	"testing"
	"time"
)

// Eventually polls cond every poll until it holds or within has passed,
// and reports whether it held (checking once more at the deadline).
func Eventually(within, poll time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			return cond()
		}
		time.Sleep(poll)
	}
	return true
}

// HTTP is a client without keep-alive, so that it never leaves a
// connection (a file descriptor) open in the server it asks.
var HTTP = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// Status is the status code url answers with, 0 if it does not answer.
func Status(url string) int {
	resp, err := HTTP.Get(url)
	if err != nil {
		return 0
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// WaitStatus waits up to 20 s for url to answer status.
func WaitStatus(t testing.TB, url string, status int) {
	t.Helper()
	if !Eventually(20*time.Second, 20*time.Millisecond, func() bool { return Status(url) == status }) {
		t.Fatalf("%s never answered %d", url, status)
	}
}

// FreePort returns a loopback port of network ("udp" or "tcp") that was
// free a moment ago.
func FreePort(t testing.TB, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp4", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
