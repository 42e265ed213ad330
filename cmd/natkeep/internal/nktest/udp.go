// Package nktest holds the small helpers that natkeep's end-to-end tests
// share: peers that record what they receive (and echo or tag it), servers
// that run a handler per connection, round trips with deadlines, /metrics
// scraping, and bounded waits. It opens only the sockets it is given or
// loopback ones, imports nothing of natkeep's own, and every wait in it
// ends at a deadline.
package nktest

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// ServeUDP reads datagrams on c until it is closed and passes each to
// handle (data is only valid during the call); errors other than the close
// (such as ICMP errors on a connected socket) are skipped. The test's
// cleanup closes c and waits for the loop to end.
func ServeUDP(t testing.TB, c *net.UDPConn, handle func(from netip.AddrPort, data []byte)) {
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
			handle(netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), buf[:n])
		}
	}()
}

// EchoUDP answers every datagram c receives with the same bytes and
// returns c.
func EchoUDP(t testing.TB, c *net.UDPConn) *net.UDPConn {
	ServeUDP(t, c, func(from netip.AddrPort, data []byte) { _, _ = c.WriteToUDPAddrPort(data, from) })
	return c
}

// LoopbackUDP is a UDP socket on 127.0.0.1 and a free port; cleanup
// closes it.
func LoopbackUDP(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Datagram is one datagram a UDP peer received.
type Datagram struct {
	From netip.AddrPort
	Data string
	At   time.Time
}

// UDP is a socket that records every datagram it receives, in the
// background, and may answer them.
type UDP struct {
	Conn *net.UDPConn // the socket, for sending
	mu   sync.Mutex
	got  []Datagram
}

// NewUDP records what c receives until the test ends.
func NewUDP(t testing.TB, c *net.UDPConn) *UDP { return newUDP(t, c, "") }

// NewUDPTagged is NewUDP that also answers every non-empty datagram with
// "<data>@<tag>", so that a client can tell which server answered.
func NewUDPTagged(t testing.TB, c *net.UDPConn, tag string) *UDP { return newUDP(t, c, tag) }

func newUDP(t testing.TB, c *net.UDPConn, tag string) *UDP {
	p := &UDP{Conn: c}
	ServeUDP(t, c, func(from netip.AddrPort, data []byte) {
		p.mu.Lock()
		p.got = append(p.got, Datagram{from, string(data), time.Now()})
		p.mu.Unlock()
		if tag != "" && len(data) > 0 {
			_, _ = c.WriteToUDPAddrPort([]byte(string(data)+"@"+tag), from)
		}
	})
	return p
}

// All returns every datagram received so far, in order.
func (p *UDP) All() []Datagram {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]Datagram(nil), p.got...)
}

// WaitData waits up to d for a datagram with the given content.
func (p *UDP) WaitData(d time.Duration, data string) (Datagram, bool) {
	var found Datagram
	ok := Eventually(d, 20*time.Millisecond, func() bool {
		for _, g := range p.All() {
			if g.Data == data {
				found = g
				return true
			}
		}
		return false
	})
	return found, ok
}

// Count counts the received datagrams with the given content.
func (p *UDP) Count(data string) int {
	return p.countFunc(func(s string) bool { return s == data })
}

// CountPrefix counts the received datagrams starting with prefix.
func (p *UDP) CountPrefix(prefix string) int {
	return p.countFunc(func(s string) bool { return strings.HasPrefix(s, prefix) })
}

func (p *UDP) countFunc(match func(string) bool) int {
	n := 0
	for _, g := range p.All() {
		if match(g.Data) {
			n++
		}
	}
	return n
}

// Ask sends msg from p and waits up to 10 s for the answer "msg@<tag>" of
// a tagged server (NewUDPTagged), resending every second since the first
// datagram of a flow may race the NAT; it returns the tag.
func (p *UDP) Ask(t testing.TB, msg string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for try := 0; time.Now().Before(deadline); try++ {
		if try%10 == 0 {
			if _, err := p.Conn.Write([]byte(msg)); err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
				t.Fatal(err)
			}
		}
		for _, g := range p.All() {
			if tag, ok := strings.CutPrefix(g.Data, msg+"@"); ok {
				return tag
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no answer to %q within 10 s", msg)
	return ""
}

// UDPRoundTrip sends msg on c (to to, or on the connected socket when to
// is nil) and waits for it to come back, resending up to tries times, each
// waiting each (UDP may drop under a flood; a reply that never comes is
// the failure). It returns the time until the echo arrived.
func UDPRoundTrip(c *net.UDPConn, to *net.UDPAddr, msg string, tries int, each time.Duration) (time.Duration, error) {
	start := time.Now()
	buf := make([]byte, 2048)
	var err error
	for range tries {
		if to != nil {
			_, err = c.WriteToUDP([]byte(msg), to)
		} else {
			_, err = c.Write([]byte(msg))
		}
		if err != nil && !errors.Is(err, syscall.ECONNREFUSED) {
			return 0, err
		}
		_ = c.SetReadDeadline(time.Now().Add(each))
		for {
			n, rerr := c.Read(buf)
			if rerr != nil {
				var ne net.Error
				if errors.As(rerr, &ne) && ne.Timeout() {
					err = rerr
					break
				}
				if errors.Is(rerr, syscall.ECONNREFUSED) {
					err = rerr
					continue
				}
				return 0, rerr
			}
			if string(buf[:n]) == msg {
				return time.Since(start), nil
			}
		}
	}
	return 0, fmt.Errorf("no echo of %q after %d tries: %v", msg, tries, err)
}
