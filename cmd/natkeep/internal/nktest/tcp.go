package nktest

import (
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// TCPServer runs a handler for every connection a listener accepts, until
// it is stopped.
type TCPServer struct {
	ln    *net.TCPListener
	mu    sync.Mutex
	conns []*net.TCPConn
	wg    sync.WaitGroup
}

// ServeTCP accepts connections on ln and runs handle for each in a
// goroutine of its own, closing the connection when handle returns; the
// test's cleanup stops the server.
func ServeTCP(t testing.TB, ln *net.TCPListener, handle func(*net.TCPConn)) *TCPServer {
	s := &TCPServer{ln: ln}
	t.Cleanup(s.Stop)
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.AcceptTCP()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, c)
			s.mu.Unlock()
			s.wg.Add(1)
			go func() { defer s.wg.Done(); defer c.Close(); handle(c) }()
		}
	}()
	return s
}

// Addr is the address the server listens on.
func (s *TCPServer) Addr() net.Addr { return s.ln.Addr() }

// Stop closes the listener and every connection and waits for the
// handlers to return (a server restart); stopping twice is harmless.
func (s *TCPServer) Stop() {
	s.ln.Close()
	s.mu.Lock()
	for _, c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// LoopbackTCP is a TCP listener on 127.0.0.1 and a free port; cleanup
// closes it.
func LoopbackTCP(t testing.TB) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// AcceptWithin accepts one connection on ln, or fails after d.
func AcceptWithin(ln *net.TCPListener, d time.Duration) (*net.TCPConn, error) {
	_ = ln.SetDeadline(time.Now().Add(d))
	defer func() { _ = ln.SetDeadline(time.Time{}) }()
	return ln.AcceptTCP()
}

// Echo is a handler that sends everything it receives back.
func Echo(c *net.TCPConn) { _, _ = io.Copy(c, c) }

// Discard is a handler that reads and drops everything.
func Discard(c *net.TCPConn) { _, _ = io.Copy(io.Discard, c) }

// Greet is a handler that writes "<tag>\n" and then echoes, so that a
// client can tell which server it reached.
func Greet(tag string) func(*net.TCPConn) {
	return func(c *net.TCPConn) {
		_, _ = c.Write([]byte(tag + "\n"))
		Echo(c)
	}
}

// ReadLine reads one line (without its '\n') within 10 s, one byte at a
// time so that nothing after it is consumed.
func ReadLine(c net.Conn) (string, error) {
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	defer func() { _ = c.SetReadDeadline(time.Time{}) }()
	var b []byte
	one := make([]byte, 1)
	for {
		if _, err := c.Read(one); err != nil {
			return string(b), err
		}
		if one[0] == '\n' {
			return string(b), nil
		}
		b = append(b, one[0])
	}
}

// Exchange writes msg on a and reads it on b, each within within.
func Exchange(a, b net.Conn, msg string, within time.Duration) error {
	_ = a.SetWriteDeadline(time.Now().Add(within))
	if _, err := a.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, len(msg))
	_ = b.SetReadDeadline(time.Now().Add(within))
	if _, err := io.ReadFull(b, buf); err != nil {
		return fmt.Errorf("read: %w", err)
	}
	if string(buf) != msg {
		return fmt.Errorf("got %q", buf)
	}
	return nil
}

// RoundTrip writes msg on c and reads the same bytes back (from an echo)
// within d.
func RoundTrip(c net.Conn, msg string, d time.Duration) error {
	_ = c.SetDeadline(time.Now().Add(d))
	defer func() { _ = c.SetDeadline(time.Time{}) }()
	if _, err := c.Write([]byte(msg)); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q, want %q", buf, msg)
	}
	return nil
}
