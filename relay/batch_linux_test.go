package relay

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"

	"golang.org/x/net/ipv4"
	"golang.org/x/sys/unix"
)

// TestRecvBatchReadsQueued: datagrams queued on a socket, large ones
// among them, come out of one read, whole, in order, with their source.
func TestRecvBatchReadsQueued(t *testing.T) {
	srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	bigBuffers(t, srv)
	c := dialUDP(t, srv.LocalAddr())
	sizes := []int{0, 1, 65507, 1472, 65507, 1473, 8192}
	for i, n := range sizes {
		if _, err := c.Write(bytes.Repeat([]byte{byte(i)}, n)); err != nil {
			t.Fatal(err)
		}
	}
	rb, err := newRecvBatch(len(sizes)+1, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rb.free()
	n, err := rb.read(srv)
	if err != nil {
		t.Fatal(err)
	}
	if n != len(sizes) {
		t.Fatalf("one read returned %d datagrams, want all %d queued", n, len(sizes))
	}
	me := netip.MustParseAddrPort(c.LocalAddr().String())
	for i, size := range sizes {
		b, ok := rb.datagram(i)
		if !ok || !bytes.Equal(b, bytes.Repeat([]byte{byte(i)}, size)) {
			t.Errorf("datagram %d: %d bytes (whole=%v), want %d", i, len(b), ok, size)
		}
		if from := rb.from(i); from != me {
			t.Errorf("datagram %d: from %v, want %v", i, from, me)
		}
	}
}

// TestBatchDualStack: an IPv6 socket that also takes IPv4 sees an IPv4
// client as a mapped address, as ReadFromUDPAddrPort does, and a batch of
// replies to that address reaches the client (sendmmsg with an IPv4
// address on an IPv6 socket). A destination the socket cannot reach in
// the middle of a batch fails alone: the datagrams after it still go.
func TestBatchDualStack(t *testing.T) {
	// Go's net refuses a mapped address for "udp6", so the socket is made
	// by hand: IPv6, V6ONLY off, bound to IPv4 loopback as a mapped address.
	fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		t.Skipf("no IPv6 sockets: %v", err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
		unix.Close(fd)
		t.Skipf("no dual-stack sockets: %v", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet6{Addr: netip.MustParseAddr("::ffff:127.0.0.1").As16()}); err != nil {
		unix.Close(fd)
		t.Skipf("cannot bind a mapped address: %v", err)
	}
	f := os.NewFile(uintptr(fd), "dual-stack")
	pc, err := net.FilePacketConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	ln := pc.(*net.UDPConn)
	defer ln.Close()
	port := ln.LocalAddr().(*net.UDPAddr).Port
	c := dialUDP(t, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	rb, err := newRecvBatch(4, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rb.free()
	if n, err := rb.read(ln); err != nil || n != 1 {
		t.Fatalf("read = %d, %v", n, err)
	}
	from := rb.from(0)
	if want := netip.AddrPortFrom(netip.MustParseAddr("::ffff:127.0.0.1"), uint16(c.LocalAddr().(*net.UDPAddr).Port)); from != want {
		t.Fatalf("from = %v, want %v", from, want)
	}

	type result struct {
		to  netip.AddrPort
		err error
	}
	var results []result
	w := newSendBatch(ln, 4, slog.New(slog.DiscardHandler), func(_ sendKind, to netip.AddrPort, _ int, err error) { results = append(results, result{to, err}) })
	unreachable := netip.MustParseAddrPort("[::ffff:127.0.0.1]:0") // port 0: EINVAL
	w.queue(sendReply, from, []byte("one"))
	w.queue(sendReply, unreachable, []byte("lost"))
	w.queue(sendReply, from, []byte("two"))
	w.flush()
	if len(results) != 3 || results[0].err != nil || results[1].err == nil || results[2].err != nil {
		t.Fatalf("results = %+v, want ok, error, ok", results)
	}
	for _, want := range []string{"one", "two"} {
		if got := string(readWithin(t, c, testDeadline)); got != want {
			t.Fatalf("client got %q, want %q", got, want)
		}
	}
}

// countingConn wraps a batchConn, counting the messages handed to the
// kernel, and refuses GSO messages (those with a control message) with
// refuse, as a kernel or device without GSO does.
type countingConn struct {
	batchConn
	msgs   int
	refuse error
}

func (c *countingConn) WriteBatch(ms []ipv4.Message, flags int) (int, error) {
	for i := range ms {
		if c.refuse != nil && len(ms[i].OOB) > 0 {
			if i == 0 {
				return -1, c.refuse
			}
			ms = ms[:i]
			break
		}
	}
	n, err := c.batchConn.WriteBatch(ms, flags)
	c.msgs += max(n, 0)
	return n, err
}

// TestSendBatchGSO: a burst of replies to one client (equal sizes, the
// last shorter) arrives as the same datagrams, in order, whether GSO is
// used (one message), off (the probe's "unsupported", forced here), or
// refused by the kernel at send time (the run goes again datagram by
// datagram, and GSO stays off).
func TestSendBatchGSO(t *testing.T) {
	ln, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c := dialUDP(t, ln.LocalAddr())
	bigBuffers(t, c)
	to := netip.MustParseAddrPort(c.LocalAddr().String())
	other := dialUDP(t, ln.LocalAddr())
	otherTo := netip.MustParseAddrPort(other.LocalAddr().String())
	log := slog.New(slog.DiscardHandler)
	probed := gsoProbe(ln)
	t.Logf("GSO probe: %v", probed)

	for _, mode := range []string{"gso", "unsupported", "refused"} {
		t.Run(mode, func(t *testing.T) {
			if mode == "gso" && !probed {
				t.Skip("the kernel has no UDP GSO")
			}
			var errs []error
			w := newSendBatch(ln, 32, log, func(_ sendKind, _ netip.AddrPort, _ int, err error) { errs = append(errs, err) })
			cc := &countingConn{batchConn: w.c}
			w.c = cc
			switch mode {
			case "unsupported":
				w.gso = false
			case "refused":
				w.gso, cc.refuse = true, syscall.EIO
			}
			sizes := []int{100, 100, 100, 100, 100, 40, 100, 0, 100}
			var want [][]byte
			for i, n := range sizes {
				b := bytes.Repeat([]byte{byte(i + 1)}, n)
				want = append(want, b)
				w.queue(sendReply, to, b)
			}
			w.queue(sendReply, otherTo, []byte("other")) // another address ends a run
			w.flush()
			if len(errs) != len(sizes)+1 {
				t.Fatalf("%d datagrams reported, want %d", len(errs), len(sizes)+1)
			}
			for i, err := range errs {
				if err != nil {
					t.Errorf("datagram %d: %v", i, err)
				}
			}
			for i, b := range want {
				if got := readWithin(t, c, testDeadline); !bytes.Equal(got, b) {
					t.Fatalf("datagram %d: got %d bytes of %x, want %d of %x", i, len(got), got[:min(1, len(got))], len(b), i+1)
				}
			}
			if got := string(readWithin(t, other, testDeadline)); got != "other" {
				t.Fatalf("other client got %q", got)
			}
			switch mode {
			case "gso": // [100 x5, 40] [100] [0] [100] [other]
				if cc.msgs != 5 {
					t.Errorf("GSO: %d messages, want 5", cc.msgs)
				}
			default:
				if cc.msgs != len(sizes)+1 || w.gso {
					t.Errorf("%s: %d messages (gso still %v), want %d without GSO", mode, cc.msgs, w.gso, len(sizes)+1)
				}
			}
		})
	}
}
