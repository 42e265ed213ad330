package relay

import (
	"fmt"
	"math"
	"net"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestEpollNewKeySkipsLiveAndWake: counting on from the top of the range,
// newKey wraps past the eventfd's key and past keys live registrations
// hold, and never hands out a key twice while it is live.
func TestEpollNewKeySkipsLiveAndWake(t *testing.T) {
	e := &epollReaders{regs: map[regKey]*watchReg{math.MaxUint64: {}, 1: {}, 3: {}}, lastKey: math.MaxUint64 - 2}
	var got []regKey
	for range 4 {
		k := e.newKey()
		e.regs[k] = &watchReg{}
		got = append(got, k)
	}
	if want := []regKey{math.MaxUint64 - 1, 2, 4, 5}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("keys %v, want %v (MaxUint64, 1 and 3 are live, 0 is the eventfd's)", got, want)
	}
	// The first key of a fresh set follows the eventfd's.
	if k := (&epollReaders{regs: map[regKey]*watchReg{}, lastKey: wakeKey}).newKey(); k != 1 {
		t.Fatalf("first key %d, want 1", k)
	}
}

// TestEpollKeyAllEightBytes: a key survives the trip through the kernel's
// epoll_event data whole, high 32 bits included.
func TestEpollKeyAllEightBytes(t *testing.T) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(epfd)
	for _, k := range []regKey{1, math.MaxInt32, math.MaxInt32 + 1, math.MaxUint32, math.MaxUint32 + 1, 0xdead_beef_0000_0001, math.MaxUint64} {
		if got := eventKey(new(k.event(unix.EPOLLIN))); got != k {
			t.Errorf("eventKey(%#x.event()) = %#x", uint64(k), uint64(got))
		}
		fd, err := unix.Eventfd(1, unix.EFD_CLOEXEC) // readable at once
		if err != nil {
			t.Fatal(err)
		}
		ev := k.event(unix.EPOLLIN)
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			t.Fatal(err)
		}
		events := make([]unix.EpollEvent, 2)
		n, err := unix.EpollWait(epfd, events, int(testDeadline/time.Millisecond))
		if err != nil || n != 1 {
			t.Fatalf("epoll_wait = %d, %v; want the one ready eventfd", n, err)
		}
		if got := eventKey(&events[0]); got != k {
			t.Errorf("the kernel returned key %#x for %#x", uint64(got), uint64(k))
		}
		if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_DEL, fd, nil); err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
	}
}

// TestEpollKeysPastBoundaries: flows registered with keys around 2^31 and
// 2^32 and across the wrap of 2^64 each get their own replies, and the flow
// holding key 1 from before the wrap keeps getting its own.
func TestEpollKeysPastBoundaries(t *testing.T) {
	srv := newUDPServer(t, "udp4", "127.0.0.1:0", true)
	r, _ := startRelay(t, newRouteUDP("127.0.0.1:0", srv.addr(), udpOpts()))
	e := r.udp[0].readers.(*epollReaders)
	var clients []*net.UDPConn
	roundTrip := func(c *net.UDPConn, msg string) {
		t.Helper()
		if _, err := c.Write([]byte(msg)); err != nil {
			t.Fatal(err)
		}
		if got := readWithin(t, c, testDeadline); string(got) != msg {
			t.Fatalf("client got %q, want its own %q", got, msg)
		}
	}
	early := dialUDP(t, r.Addrs()[0]) // registered with key 1, live across the wrap
	roundTrip(early, "early")
	e.mu.Lock()
	if e.lastKey != 1 {
		t.Fatalf("the first flow got key %d, want 1", e.lastKey)
	}
	e.mu.Unlock()
	clients = append(clients, early)
	for _, start := range []regKey{math.MaxInt32 - 1, math.MaxUint32 - 1, math.MaxUint64 - 1} {
		e.mu.Lock()
		e.lastKey = start
		e.mu.Unlock()
		for i := range 3 {
			c := dialUDP(t, r.Addrs()[0])
			roundTrip(c, fmt.Sprintf("from %#x+%d", uint64(start), i))
			clients = append(clients, c)
		}
	}
	for i, c := range clients {
		roundTrip(c, fmt.Sprintf("again %d", i))
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.regs) != len(clients) {
		t.Fatalf("%d registrations for %d flows", len(e.regs), len(clients))
	}
}
