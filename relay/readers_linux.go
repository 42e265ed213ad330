package relay

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// maxBurst caps the datagrams read from one socket per wake-up, so one busy
// flow cannot starve the others sharing the epoll loop.
const maxBurst = 16

// epollReaders watch a route's flow sockets with one epoll instance and
// one goroutine. Upstream sockets are bare descriptors (upSock) that only
// this set watches; a transparent flow's client-side socket stays a
// *net.UDPConn, read through syscall.RawConn.Read with a callback that
// never waits, so Close can never race a read of a reused fd. Each read is
// a recvmmsg into the next free slots of one batch shared by all sockets;
// the handlers' replies are flushed when the slots run out and when a
// wake-up's sockets are all read, so they leave together.
type epollReaders struct {
	log    *slog.Logger
	onErr  readErrorHandler
	flush  func() // sends what the handlers queued; the slots are reused after it
	epfd   int
	wakefd int // eventfd that ends the loop
	rb     *recvBatch
	used   int // slots holding datagrams not yet flushed

	cur     *watchReg             // the registration rawRead serves; loop goroutine only
	rawRead func(fd uintptr) bool // reads cur's socket; built once, so no closure per socket

	mu      sync.Mutex
	regs    map[regKey]*watchReg
	byConn  map[*net.UDPConn]regKey // client-side sockets; an upSock keeps its key itself
	lastKey regKey                  // the key handed out last

	done     chan struct{}
	stopOnce sync.Once
}

// watchReg is one watched socket: an upstream upSock s, or a client-side
// c with its RawConn.
type watchReg struct {
	f      *flow
	s      *upSock
	c      *net.UDPConn
	rc     syscall.RawConn
	onData datagramHandler
}

// regKey identifies a watched socket in the epoll set: all 8 bytes of
// epoll_event's data, which x/sys splits into Fd and Pad. 64 bits do not
// run out in practice, so an unwatched socket's key is not handed out again
// and a stale event still in flight for it finds no registration.
type regKey uint64

// wakeKey is the epoll data of the eventfd; no socket gets it.
const wakeKey regKey = 0

// event is the epoll_event that registers key for events.
func (k regKey) event(events uint32) unix.EpollEvent {
	return unix.EpollEvent{Events: events, Fd: int32(uint32(k)), Pad: int32(uint32(k >> 32))}
}

// eventKey returns the key an epoll_event carries.
func eventKey(ev *unix.EpollEvent) regKey {
	return regKey(uint32(ev.Fd)) | regKey(uint32(ev.Pad))<<32
}

// newKey returns a key that neither the eventfd nor a live registration
// holds. Counting up from the last key never wraps in practice; the checks
// keep even a wrap from handing out a key in use. Call with e.mu held.
func (e *epollReaders) newKey() regKey {
	for {
		e.lastKey++
		if _, live := e.regs[e.lastKey]; !live && e.lastKey != wakeKey && e.lastKey != goneKey {
			return e.lastKey
		}
	}
}

// newFlowReaders starts the epoll loop; onErr takes receive errors, flush
// is called when the datagrams handed out so far are done with.
func newFlowReaders(log *slog.Logger, onErr readErrorHandler, flush func()) (flowReaders, error) {
	rb, err := newRecvBatch(replyBatch, 0)
	if err != nil {
		return nil, err
	}
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		rb.free()
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		rb.free()
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := wakeKey.event(unix.EPOLLIN)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		rb.free()
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	e := &epollReaders{
		log: log, onErr: onErr, flush: flush, epfd: epfd, wakefd: wakefd, rb: rb,
		regs: make(map[regKey]*watchReg), byConn: make(map[*net.UDPConn]regKey),
		lastKey: wakeKey, done: make(chan struct{}),
	}
	e.rawRead = func(fd uintptr) bool {
		e.readFrom(e.cur, int(fd))
		return true // never wait in Go's poller: epoll tells us when
	}
	go e.loop()
	return e, nil
}

// readFrom reads up to maxBurst datagrams from reg's socket fd and hands
// them to its handler.
func (e *epollReaders) readFrom(reg *watchReg, fd int) {
	for tries := 0; tries < maxBurst; {
		if e.used == e.rb.slots() {
			e.release()
		}
		want := min(maxBurst-tries, e.rb.slots()-e.used)
		n, err := e.rb.recv(fd, e.used, want)
		if err == unix.EAGAIN {
			return
		}
		if err != nil {
			e.onErr(reg.f, err)
			tries++
			continue // the error is cleared; queued datagrams may follow
		}
		for i := e.used; i < e.used+n; i++ {
			if b, ok := e.rb.datagram(i); ok {
				reg.onData(reg.f, b)
			} else {
				e.onErr(reg.f, errTruncated)
			}
		}
		e.used += n
		tries += n
		if n < want {
			return // drained
		}
	}
}

// add enters reg under a new key and registers fd for it.
func (e *epollReaders) add(reg *watchReg, fd int) error {
	e.mu.Lock()
	if reg.s != nil && reg.s.key == goneKey {
		e.mu.Unlock()
		return net.ErrClosed // unwatched (the flow was removed) before it was watched
	}
	key := e.newKey()
	e.regs[key] = reg
	if reg.c != nil {
		e.byConn[reg.c] = key
	}
	if reg.s != nil {
		reg.s.key = key
	}
	e.mu.Unlock()
	ev := key.event(unix.EPOLLIN)
	if err := unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		e.mu.Lock()
		delete(e.regs, key)
		delete(e.byConn, reg.c)
		e.mu.Unlock()
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	return nil
}

// goneKey marks an upSock that was unwatched: it is never watched again.
const goneKey = ^regKey(0)

func (e *epollReaders) watchUp(f *flow, s *upSock, onData datagramHandler) error {
	if !s.acquire() {
		return net.ErrClosed
	}
	defer s.release()
	return e.add(&watchReg{f: f, s: s, onData: onData}, s.fd)
}

// unwatchUp forgets s. Its descriptor leaves the epoll set when it is
// closed (natkeep never duplicates it), which saves an epoll_ctl per flow;
// an event already in flight finds no registration.
func (e *epollReaders) unwatchUp(s *upSock) {
	e.mu.Lock()
	if s.key != wakeKey && s.key != goneKey {
		delete(e.regs, s.key)
	}
	s.key = goneKey
	e.mu.Unlock()
}

func (e *epollReaders) watch(f *flow, c *net.UDPConn, onData datagramHandler) error {
	rc, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var aerr error
	err = rc.Control(func(fd uintptr) {
		aerr = e.add(&watchReg{f: f, c: c, rc: rc, onData: onData}, int(fd))
	})
	return errors.Join(err, aerr)
}

// forget drops c's registration and returns it.
func (e *epollReaders) forget(c *net.UDPConn) *watchReg {
	e.mu.Lock()
	defer e.mu.Unlock()
	key, ok := e.byConn[c]
	if !ok {
		return nil
	}
	reg := e.regs[key]
	delete(e.regs, key)
	delete(e.byConn, c)
	return reg
}

func (e *epollReaders) unwatch(c *net.UDPConn) {
	reg := e.forget(c)
	if reg == nil {
		return
	}
	// Closing the socket would drop it from the epoll set too, but Go's
	// net may hold a duplicate; deleting it first means no event for it is
	// delivered after this returns.
	_ = reg.rc.Control(func(fd uintptr) {
		_ = unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// release flushes the handlers' output and frees every slot. Handlers
// queue output only for datagrams in slots, so with none used there is
// nothing to flush.
func (e *epollReaders) release() {
	if e.used > 0 {
		e.flush()
		e.used = 0
	}
}

func (e *epollReaders) stop() {
	e.stopOnce.Do(func() {
		one := [8]byte{1}
		if _, err := unix.Write(e.wakefd, one[:]); err == nil || err == unix.EAGAIN {
			<-e.done
		}
	})
}

// loop parks in Go's netpoller on the epoll fd itself (epoll fds nest)
// rather than blocking a thread in epoll_wait: a blocked thread makes the
// runtime hand its processor to another thread on every wake-up, which
// doubled the per-datagram cost.
func (e *epollReaders) loop() {
	defer close(e.done)
	defer e.rb.free()
	defer unix.Close(e.wakefd)
	epollLoop(e.log, e.epfd, "epoll fd", "upstream replies stop", func(key regKey) {
		e.mu.Lock()
		reg := e.regs[key]
		e.mu.Unlock()
		if reg == nil {
			return // unwatched while the event was in flight
		}
		if reg.s != nil {
			if reg.s.acquire() {
				e.readFrom(reg, reg.s.fd)
				reg.s.release()
			}
			return
		}
		e.cur = reg
		if err := reg.rc.Read(e.rawRead); err != nil && !errors.Is(err, net.ErrClosed) {
			e.onErr(reg.f, err)
		}
	}, e.release) // the wake-up's replies leave together before parking
}

// epollLoop runs an epoll set in Go's netpoller until its wakeKey event
// fires: it owns epfd (closed on return), calls ready for each other event
// and idle (if not nil) whenever no event is left, before parking and
// before returning. name and stops say in its error logs which loop failed
// and what that stops.
func epollLoop(log *slog.Logger, epfd int, name, stops string, ready func(regKey), idle func()) {
	if err := unix.SetNonblock(epfd, true); err != nil {
		log.Error(name+": cannot make it non-blocking; "+stops, "err", err)
		unix.Close(epfd)
		return
	}
	ef := os.NewFile(uintptr(epfd), "epoll") // owns epfd from here on
	defer ef.Close()
	rc, err := ef.SyscallConn()
	if err != nil {
		log.Error(name+": no raw access; "+stops, "err", err)
		return
	}
	if idle == nil {
		idle = func() {}
	}
	events := make([]unix.EpollEvent, 128)
	stop := false
	// wait returns false (park until the epoll fd is readable) when no
	// event is ready, and true to stop.
	wait := func(fd uintptr) bool {
		for {
			n, err := unix.EpollWait(int(fd), events, 0)
			if err == unix.EINTR {
				continue
			}
			if err != nil {
				log.Error("epoll_wait failed; "+stops, "err", err)
				stop = true
				return true
			}
			if n == 0 {
				idle()
				return false
			}
			for i := range n {
				key := eventKey(&events[i])
				if key == wakeKey {
					idle()
					stop = true
					return true
				}
				ready(key)
			}
		}
	}
	for !stop {
		if err := rc.Read(wait); err != nil {
			if !errors.Is(err, net.ErrClosed) {
				log.Error(name+" read failed; "+stops, "err", err)
			}
			return
		}
	}
}
