package relay

import (
	"errors"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// upSockTo dials an upSock to a fresh loopback server of network.
func upSockTo(t *testing.T, network, addr string) (*upSock, *net.UDPConn) {
	t.Helper()
	srv, err := net.ListenUDP(network, &net.UDPAddr{IP: net.ParseIP(addr)})
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	t.Cleanup(func() { srv.Close() })
	s, err := dialUpSock(srv.LocalAddr().(*net.UDPAddr).AddrPort(), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, srv
}

// inode identifies the socket behind fd, or 0 once fd is closed.
func inode(fd int) uint64 {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0
	}
	return st.Ino
}

func TestUpSockCloseWaitsForLastUser(t *testing.T) {
	s, _ := upSockTo(t, "udp4", "127.0.0.1")
	ino := inode(s.fd)
	if ino == 0 {
		t.Fatal("fresh socket has no inode")
	}
	if !s.acquire() {
		t.Fatal("acquire failed on an open socket")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := inode(s.fd); got != ino {
		t.Fatalf("descriptor closed (inode %d, want %d) while a write still used it", got, ino)
	}
	if s.acquire() {
		t.Fatal("acquire succeeded after Close")
	}
	s.release()
	if got := inode(s.fd); got == ino {
		t.Fatal("descriptor still open after its last user left")
	}
	if err := s.write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("write after close: %v, want net.ErrClosed", err)
	}
	if err := s.Close(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("second Close: %v, want net.ErrClosed", err)
	}
}

// TestUpSockConcurrentWriteClose: writers racing Close each either send
// or get net.ErrClosed; the race detector watches the rest.
func TestUpSockConcurrentWriteClose(t *testing.T) {
	for range 20 {
		s, _ := upSockTo(t, "udp4", "127.0.0.1")
		var wg sync.WaitGroup
		errs := make(chan error, 8*100)
		for range 8 {
			wg.Go(func() {
				for range 100 {
					if err := s.write([]byte("hello")); err != nil {
						errs <- err
					}
				}
			})
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("write racing Close: %v, want nil or net.ErrClosed", err)
			}
		}
	}
}

func TestUpSockSizesAndFamilies(t *testing.T) {
	for _, c := range []struct{ network, addr string }{{"udp4", "127.0.0.1"}, {"udp6", "::1"}} {
		t.Run(c.network, func(t *testing.T) {
			s, srv := upSockTo(t, c.network, c.addr)
			if s.v6 != (c.network == "udp6") {
				t.Fatalf("v6 = %v", s.v6)
			}
			la := s.localAddr()
			if !la.IsValid() || la.Port() == 0 {
				t.Fatalf("localAddr = %v", la)
			}
			buf := make([]byte, 70000)
			for _, n := range []int{0, 1, 1472, maxUDPPayload(c.network)} {
				if err := s.write(make([]byte, n)); err != nil {
					t.Fatalf("write %d: %v", n, err)
				}
				got, from, err := srv.ReadFromUDPAddrPort(buf)
				if err != nil {
					t.Fatal(err)
				}
				if got != n || from.Port() != la.Port() {
					t.Fatalf("sent %d bytes from %v, server got %d from %v", n, la, got, from)
				}
			}
		})
	}
}

// maxUDPPayload is the largest UDP payload of a family.
func maxUDPPayload(network string) int {
	if network == "udp6" {
		return 65527
	}
	return 65507
}

func TestUpSockControlRunsBeforeConnect(t *testing.T) {
	var sawFD uintptr
	mark := func(network, address string, c syscall.RawConn) error {
		if network != "udp4" || address != "127.0.0.1:9" {
			t.Errorf("control got %q %q", network, address)
		}
		return c.Control(func(fd uintptr) {
			sawFD = fd
			if _, err := unix.Getpeername(int(fd)); err == nil {
				t.Error("socket already connected when control ran")
			}
		})
	}
	s, err := dialUpSock(netip.MustParseAddrPort("127.0.0.1:9"), mark)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if sawFD != uintptr(s.fd) {
		t.Fatalf("control saw fd %d, socket is %d", sawFD, s.fd)
	}
	refuse := errors.New("refused by control")
	if _, err := dialUpSock(netip.MustParseAddrPort("127.0.0.1:9"), func(string, string, syscall.RawConn) error { return refuse }); !errors.Is(err, refuse) {
		t.Fatalf("dial with a failing control: %v", err)
	}
}
