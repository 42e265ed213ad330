package natlab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// InNetns runs fn on a locked OS thread switched into namespace ns. Sockets
// created by fn keep that namespace for their whole life, so they work from
// any goroutine afterwards.
func InNetns(ns string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current netns: %w", err)
	}
	defer unix.Close(orig)
	target, err := unix.Open(filepath.Join("/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", ns, err)
	}
	restored := false
	defer func() {
		if restored {
			runtime.UnlockOSThread()
		}
		// Otherwise leave the thread locked: the runtime terminates it when
		// this goroutine exits, so no other goroutine inherits the wrong netns.
	}()
	ferr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("setns back from %s: %w", ns, err))
	}
	restored = true
	return ferr
}

// ListenUDP opens a UDP socket bound to addr inside namespace ns; cleanup
// closes it.
func (l *Lab) ListenUDP(t testing.TB, ns string, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := InNetns(ns, func() error {
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp", ua)
		return err
	})
	if err != nil {
		t.Fatalf("NAT lab: listenUDP %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// DialUDP opens a connected UDP socket to raddr inside namespace ns;
// cleanup closes it.
func (l *Lab) DialUDP(t testing.TB, ns string, raddr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := InNetns(ns, func() error {
		ua, err := net.ResolveUDPAddr("udp", raddr)
		if err != nil {
			return err
		}
		c, err = net.DialUDP("udp", nil, ua)
		return err
	})
	if err != nil {
		t.Fatalf("NAT lab: dialUDP %s in %s: %v", raddr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ListenTCP opens a TCP listener on addr inside namespace ns; cleanup
// closes it. Go's default TCP keepalive is disabled on accepted
// connections so that the lab's own sockets never keep a mapping alive by
// themselves; call SetKeepAlive(true) on a connection if a test wants it.
func (l *Lab) ListenTCP(t testing.TB, ns string, addr string) *net.TCPListener {
	t.Helper()
	var ln *net.TCPListener
	err := InNetns(ns, func() error {
		lc := net.ListenConfig{KeepAlive: -1}
		x, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			return err
		}
		ln = x.(*net.TCPListener)
		return nil
	})
	if err != nil {
		t.Fatalf("NAT lab: listenTCP %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// DialTCP connects to raddr from inside namespace ns (5s connect timeout);
// cleanup closes the connection. Go's default TCP keepalive is disabled
// (see ListenTCP).
func (l *Lab) DialTCP(t testing.TB, ns string, raddr string) *net.TCPConn {
	t.Helper()
	var c *net.TCPConn
	err := InNetns(ns, func() error {
		d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}
		x, err := d.Dial("tcp", raddr)
		if err != nil {
			return err
		}
		c = x.(*net.TCPConn)
		return nil
	})
	if err != nil {
		t.Fatalf("NAT lab: dialTCP %s in %s: %v", raddr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// HTTPClient is an HTTP client whose connections are made inside ns,
// without keep-alive (so it leaves no descriptor open in the server).
func (l *Lab) HTTPClient(ns string) *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(_ context.Context, _, addr string) (net.Conn, error) {
			var c net.Conn
			err := InNetns(ns, func() error {
				var err error
				c, err = net.DialTimeout("tcp", addr, 5*time.Second)
				return err
			})
			return c, err
		},
	}}
}

// EtcFiles creates /etc/netns/NS/ with the given files. `ip netns exec NS`
// bind-mounts each of them over /etc/NAME for the programs it starts, so a
// process started afterwards in ns sees them. The returned func rewrites a
// file in place (same inode, so the bind mount shows the new content).
// Cleanup removes the directory.
func EtcFiles(t testing.TB, ns string, files map[string]string) (rewrite func(name, content string)) {
	t.Helper()
	parent := "/etc/netns"
	_, statErr := os.Stat(parent)
	dir := filepath.Join(parent, ns)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create %s: %v", dir, err)
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("remove %s: %v", dir, err)
		}
		if os.IsNotExist(statErr) {
			_ = os.Remove(parent) // only if empty: another user may have entries
		}
	})
	rewrite = func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, content := range files {
		rewrite(name, content)
	}
	return rewrite
}
