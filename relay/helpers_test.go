package relay

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/natkeep/natkeep/keepalive"
)

// testDeadline bounds every wait in these tests: generous, never tuned.
const testDeadline = 10 * time.Second

// udpOpts returns UDP options with quiet defaults for tests.
func udpOpts() UDPOptions {
	p, _ := keepalive.ParsePayload("empty")
	r, _ := keepalive.ParseReply("", p)
	return UDPOptions{
		Role:            RoleClient,
		Payload:         p,
		FlowIdleTimeout: time.Minute,
		MaxFlows:        65536,
		Heartbeat:       keepalive.Schedule{DeadAfter: 3, Pong: r},
	}
}

// startRelay runs a relay with the given routes and returns it with its metrics.
func startRelay(t testing.TB, routes ...Route) (*Relay, *Metrics) {
	t.Helper()
	m := NewMetrics(prometheus.NewRegistry())
	r, err := New(Config{Routes: routes, ResolveInterval: time.Second}, nil, m)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r, m
}

// udpServer is an upstream on loopback that records what it receives and
// optionally echoes it.
type udpServer struct {
	conn *net.UDPConn
	echo bool
	mu   sync.Mutex
	got  []udpRecv
	cond *sync.Cond
}

type udpRecv struct {
	from netip.AddrPort
	data []byte
	at   time.Time
}

// servePeer listens on addr and hands each datagram a goroutine of its own
// reads to handle (b is reused once handle returns), until the test ends
// and closes the socket; readBuf > 0 sizes the socket's receive buffer.
// It is the loop every test peer below shares.
func servePeer(t testing.TB, network, addr string, readBuf int, handle func(c *net.UDPConn, b []byte, from netip.AddrPort)) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(addr)))
	if err != nil {
		t.Fatal(err)
	}
	if readBuf > 0 {
		_ = c.SetReadBuffer(readBuf)
	}
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			handle(c, buf[:n], from)
		}
	}()
	return c
}

func newUDPServer(t testing.TB, network, addr string, echo bool) *udpServer {
	t.Helper()
	s := &udpServer{echo: echo}
	s.cond = sync.NewCond(&s.mu)
	s.conn = servePeer(t, network, addr, 8<<20, func(c *net.UDPConn, b []byte, from netip.AddrPort) {
		d := bytes.Clone(b)
		// Record before echoing, so a client that has its echo can
		// rely on the server's record.
		s.mu.Lock()
		s.got = append(s.got, udpRecv{from, d, time.Now()})
		s.cond.Broadcast()
		s.mu.Unlock()
		if s.echo {
			_, _ = c.WriteToUDPAddrPort(d, from)
		}
	})
	return s
}

func (s *udpServer) addr() string { return s.conn.LocalAddr().String() }

// received returns a copy of everything received so far.
func (s *udpServer) received() []udpRecv {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]udpRecv(nil), s.got...)
}

// waitFor waits until pred holds over the received datagrams or the deadline passes.
func (s *udpServer) waitFor(t testing.TB, what string, pred func([]udpRecv) bool) []udpRecv {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for {
		got := s.received()
		if pred(got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s; server got %d datagrams", what, len(got))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// dialUDP opens a client socket connected to addr.
func dialUDP(t testing.TB, addr net.Addr) *net.UDPConn {
	t.Helper()
	c, err := net.DialUDP("udp", nil, addr.(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// readWithin reads one datagram or fails the test after d.
func readWithin(t testing.TB, c *net.UDPConn, d time.Duration) []byte {
	t.Helper()
	buf := make([]byte, 65536)
	_ = c.SetReadDeadline(time.Now().Add(d))
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	return buf[:n]
}

// expectNothing asserts no datagram arrives within d.
func expectNothing(t testing.TB, c *net.UDPConn, d time.Duration) {
	t.Helper()
	buf := make([]byte, 65536)
	_ = c.SetReadDeadline(time.Now().Add(d))
	n, err := c.Read(buf)
	if err == nil {
		t.Fatalf("unexpected datagram of %d bytes: %q", n, buf[:min(n, 64)])
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read: %v", err)
	}
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(testDeadline)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// counter reads a counter or gauge value.
func counter(c prometheus.Collector) float64 { return testutil.ToFloat64(c) }
