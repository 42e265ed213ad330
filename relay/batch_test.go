package relay

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/natkeep/natkeep/sockopt"
)

// seqEcho is an upstream that echoes every datagram and checks that each
// upstream socket's datagrams carry the sequence numbers 0, 1, 2, ... in
// its first 8 bytes: the relay's upstream direction neither reorders nor
// loses (the client checks the downstream direction). Errors are kept
// for the test goroutine.
type seqEcho struct {
	c    *net.UDPConn
	mu   sync.Mutex
	next map[netip.AddrPort]uint64
	errs []error
}

func newSeqEcho(t *testing.T, network, addr string) *seqEcho {
	t.Helper()
	s := &seqEcho{next: make(map[netip.AddrPort]uint64)}
	s.c = servePeer(t, network, addr, 0, func(c *net.UDPConn, b []byte, from netip.AddrPort) {
		if len(b) >= 8 {
			seq := binary.BigEndian.Uint64(b)
			s.mu.Lock()
			if want := s.next[from]; seq != want && len(s.errs) < 10 {
				s.errs = append(s.errs, fmt.Errorf("upstream socket %v: got seq %d, want %d", from, seq, want))
			}
			s.next[from] = seq + 1
			s.mu.Unlock()
		}
		_, _ = c.WriteToUDPAddrPort(b, from)
	})
	bigBuffers(t, s.c) // before any datagram: the test sends only after this returns
	return s
}

func (s *seqEcho) check(t *testing.T) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, err := range s.errs {
		t.Error(err)
	}
}

// bigBuffers gives a test socket 8 MiB of buffer each way (forced, as
// root), so a burst never overflows it: loss in these tests is the
// relay's.
func bigBuffers(t *testing.T, c *net.UDPConn) {
	t.Helper()
	if _, err := sockopt.SetRecvBuffer(c, 8<<20); err != nil {
		t.Logf("receive buffer: %v", err)
	}
	if _, err := sockopt.SetSendBuffer(c, 8<<20); err != nil {
		t.Logf("send buffer: %v", err)
	}
}

// TestUDPBatchOrderPerFlow: 64 flows send 10,000 numbered datagrams each
// through the relay at once, so the listener and the upstream readers
// read full batches with many flows in each; every flow's echoes must come
// back complete and in order, and the upstream must see each flow's
// datagrams in order. Each flow keeps at most 16 datagrams in flight
// (windowed by its echoes), which the socket buffers hold many times
// over: a missing datagram is the relay's loss, not the kernel's.
func TestUDPBatchOrderPerFlow(t *testing.T) {
	const flows, count, window = 64, 10_000, 16
	srv := newSeqEcho(t, "udp4", "127.0.0.1:0")
	r, _ := startRelay(t, newRouteUDP("127.0.0.1:0", srv.c.LocalAddr().String(), udpOpts()))
	var wg sync.WaitGroup
	errs := make(chan error, flows)
	for i := range flows {
		c := dialUDP(t, r.Addrs()[0])
		bigBuffers(t, c)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- seqFlow(c, count, window, 16+i%64)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	srv.check(t)
	if got, want := counter(r.udp[0].st.dgUp), float64(flows*count); got != want {
		t.Errorf("upstream datagrams = %v, want %v", got, want)
	}
}

// seqFlow sends count datagrams of size bytes numbered 0..count-1 on c,
// at most window ahead of the echoes, and checks the echoes arrive in
// order; every wait is bounded.
func seqFlow(c *net.UDPConn, count, window, size int) error {
	w := make([]byte, size)
	r := make([]byte, 2048)
	sent := 0
	for got := 0; got < count; got++ {
		for sent < count && sent-got < window {
			binary.BigEndian.PutUint64(w, uint64(sent))
			if _, err := c.Write(w); err != nil {
				return fmt.Errorf("flow %v: write %d: %w", c.LocalAddr(), sent, err)
			}
			sent++
		}
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(r)
		if err != nil {
			return fmt.Errorf("flow %v: waiting for echo %d: %w (lost)", c.LocalAddr(), got, err)
		}
		if n != size {
			return fmt.Errorf("flow %v: echo %d has %d bytes, want %d", c.LocalAddr(), got, n, size)
		}
		if seq := binary.BigEndian.Uint64(r); seq != uint64(got) {
			return fmt.Errorf("flow %v: got echo %d, want %d (reordered or lost)", c.LocalAddr(), seq, got)
		}
	}
	return nil
}

// TestUDPBatchSizes sends datagrams of every interesting size, largest
// included, back to back with up to 160 KiB in flight, so datagrams of
// mixed sizes share receive batches each way: each must come back whole,
// byte for byte, in order, never cut.
func TestUDPBatchSizes(t *testing.T) {
	for _, network := range []string{"udp4", "udp6"} {
		t.Run(network, func(t *testing.T) {
			host, largest := "127.0.0.1", 65507
			if network == "udp6" {
				host, largest = "[::1]", 65527
				if c, err := net.ListenUDP("udp6", &net.UDPAddr{IP: net.IPv6loopback}); err != nil {
					t.Skipf("IPv6 loopback unavailable: %v", err)
				} else {
					c.Close()
				}
			}
			srv := newSeqEcho(t, network, host+":0")
			r, _ := startRelay(t, newRouteUDP(host+":0", srv.c.LocalAddr().String(), udpOpts()))
			c := dialUDP(t, r.Addrs()[0])
			bigBuffers(t, c)
			sizes := []int{8, 9, 1472, 1473, 8192, largest - 1, largest}
			var burst []int // every size four times, large ones next to each other
			for range 4 {
				burst = append(burst, sizes...)
			}
			burst = append(burst, largest, largest, largest, largest)
			rand.Shuffle(len(burst)-4, func(i, j int) { burst[i], burst[j] = burst[j], burst[i] })
			// In flight at most 160 KiB: the flow's upstream socket has the
			// default receive buffer, which holds three 64 KiB datagrams.
			const inFlight = 160 << 10
			var want [][]byte
			pending, next := 0, 0
			for seq, n := range burst {
				msg := make([]byte, n)
				for k := range msg {
					msg[k] = byte(seq*7 + k)
				}
				binary.BigEndian.PutUint64(msg, uint64(seq))
				for pending > 0 && pending+n > inFlight {
					got := readWithin(t, c, testDeadline)
					if !bytes.Equal(got, want[next]) {
						t.Fatalf("datagram %d: got %d bytes, want %d (equal=%v)", next, len(got), len(want[next]), bytes.Equal(got, want[next]))
					}
					pending -= len(got)
					next++
				}
				want = append(want, msg)
				pending += n
				if _, err := c.Write(msg); err != nil {
					t.Fatalf("size %d: write: %v", n, err)
				}
			}
			for ; next < len(want); next++ {
				got := readWithin(t, c, testDeadline)
				if !bytes.Equal(got, want[next]) {
					t.Fatalf("datagram %d: got %d bytes, want %d (equal=%v)", next, len(got), len(want[next]), bytes.Equal(got, want[next]))
				}
			}
			srv.check(t)
			// Empty datagrams pass too (they carry no number to check).
			if _, err := c.Write(nil); err != nil {
				t.Fatal(err)
			}
			if got := readWithin(t, c, testDeadline); len(got) != 0 {
				t.Fatalf("empty datagram came back with %d bytes", len(got))
			}
			if d := counter(r.udp[0].st.dropClientErr); d != 0 {
				t.Fatalf("client_error drops = %v (a cut datagram?)", d)
			}
		})
	}
}
