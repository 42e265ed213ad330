package relay

// No acknowledged byte is lost: when one side fails, the other first gets
// what natkeep already accepted for it, then the reset.

import (
	"bytes"
	"crypto/rand"
	"errors"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/natkeep/natkeep/sockopt"
)

// slowApp dials addr with a small receive buffer, so what the proxy sends
// it piles up in the proxy's queues.
func slowApp(t *testing.T, addr net.Addr) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: testDeadline, Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) }); err != nil {
			return err
		}
		return serr
	}}
	c, err := d.Dial("tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(3 * testDeadline))
	return c.(*net.TCPConn)
}

// waitAcked waits until c's peer has acknowledged everything c sent.
func waitAcked(t *testing.T, c *net.TCPConn) {
	t.Helper()
	eventually(t, "the proxy to acknowledge every byte", func() bool {
		n, err := sockopt.SendQueue(c)
		return err == nil && n == 0
	})
}

// TestTCPUpstreamResetKeepsAcknowledgedBytes: the server sends 1 MiB,
// waits until natkeep has acknowledged all of it, then resets. The app,
// which reads slowly, still receives all 1,048,576 bytes and then the
// reset; the close log says how many bytes reached it and that none were
// discarded.
func TestTCPUpstreamResetKeepsAcknowledgedBytes(t *testing.T) {
	const size = 1 << 20
	payload := make([]byte, size)
	_, _ = rand.Read(payload)
	addr := tcpServer(t, func(c *net.TCPConn) {
		if _, err := c.Write(payload); err != nil {
			t.Errorf("server write: %v", err)
			return
		}
		waitAcked(t, c)
		_ = sockopt.SetLingerZero(c) // the deferred Close sends the RST
	})
	rt := newRouteTCP("127.0.0.1:0", addr, tcpOpts())
	r := hostileStart(t, rt)
	app := slowApp(t, r.Addrs()[0])
	// Read slowly, so most of the megabyte is still inside natkeep when
	// the reset arrives.
	var got bytes.Buffer
	buf := make([]byte, 8192)
	var rerr error
	for {
		n, err := app.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			rerr = err
			break
		}
		time.Sleep(time.Millisecond)
	}
	if got.Len() != size || !bytes.Equal(got.Bytes(), payload) {
		t.Fatalf("app received %d of %d bytes (intact prefix: %v)", got.Len(), size, bytes.HasPrefix(payload, got.Bytes()))
	}
	if !errors.Is(rerr, syscall.ECONNRESET) {
		t.Fatalf("after the data the app saw %v, want the reset", rerr)
	}
	eventually(t, "the close log", func() bool { return len(r.logs.lines(`"bytes_delivered":1048576`)) >= 1 })
	line := r.logs.lines(`"bytes_delivered":1048576`)[0]
	for _, want := range []string{`"reason":"upstream_reset"`, `"drained":"client"`, `"bytes_discarded":0`} {
		if !strings.Contains(line, want) {
			t.Fatalf("close log lacks %s: %s", want, line)
		}
	}
	t.Logf("app received %d bytes, then %v; %s", got.Len(), rerr, line)
}

// TestTCPClientResetKeepsAcknowledgedBytes is the same the other way: the
// app sends 1 MiB to a server that reads slowly and resets once natkeep
// has acknowledged it all; the server still gets every byte, then the
// reset.
func TestTCPClientResetKeepsAcknowledgedBytes(t *testing.T) {
	const size = 1 << 20
	payload := make([]byte, size)
	_, _ = rand.Read(payload)
	type result struct {
		n   int
		ok  bool
		err error
	}
	res := make(chan result, 1)
	ready := make(chan struct{})
	l, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := setRcvBuf(l); err != nil {
		t.Fatal(err)
	}
	go func() {
		c, err := l.AcceptTCP()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * testDeadline))
		<-ready
		var got bytes.Buffer
		buf := make([]byte, 8192)
		for {
			n, err := c.Read(buf)
			got.Write(buf[:n])
			if err != nil {
				res <- result{n: got.Len(), ok: bytes.Equal(got.Bytes(), payload), err: err}
				return
			}
			time.Sleep(time.Millisecond)
		}
	}()
	r := hostileStart(t, newRouteTCP("127.0.0.1:0", l.Addr().String(), tcpOpts()))
	app := dialTCP(t, r.Addrs()[0])
	if _, err := app.Write(payload); err != nil {
		t.Fatal(err)
	}
	waitAcked(t, app)
	_ = sockopt.SetLingerZero(app)
	app.Close()
	close(ready)
	select {
	case got := <-res:
		if got.n != size || !got.ok {
			t.Fatalf("server received %d of %d bytes (intact: %v)", got.n, size, got.ok)
		}
		if !errors.Is(got.err, syscall.ECONNRESET) {
			t.Fatalf("after the data the server saw %v, want the reset", got.err)
		}
	case <-time.After(3 * testDeadline):
		t.Fatal("the server never finished reading")
	}
}

// setRcvBuf gives sockets accepted from l a small receive buffer.
func setRcvBuf(l *net.TCPListener) error {
	rc, err := l.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 4096) }); err != nil {
		return err
	}
	return serr
}
