package relay

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A proxied connection is two directions (halves), each reading one socket
// and writing the other. A half that waits for data holds no goroutine: its
// source socket is parked in the route's epoll set (EPOLLONESHOT). When it
// becomes readable, the epoll goroutine splices what is queued through a
// pipe borrowed from a small pool and parks the half again. Only when the
// destination cannot take it all, or a burst is bulk-sized, does a
// goroutine take the half over: it waits in Go's poller for the
// destination, and for more data while it keeps coming (up to linger),
// then parks the half and ends. Ends go to the teardown, as they do where
// each direction has a goroutine (copy_other.go).
//
// Sockets stay *net.TCPConns (Close, CloseWrite and the teardown keep Go's
// safety): every access goes through syscall.RawConn, whose callbacks never
// wait in the epoll goroutine, so Close never races a reused descriptor,
// and once a socket is closed every later access fails, which is how a
// half learns that natkeep closed it.

const (
	// pipeSize is what each pipe is grown to, as Go's own splice pipes
	// are: one pair of splice calls then moves up to a MiB.
	pipeSize = 1 << 20
	// freePipes is how many empty pipes the pool keeps for the next burst;
	// more are closed, so a quiet relay holds few descriptors.
	freePipes = 8
	// inlineRounds is how many full pipes the epoll goroutine moves for
	// one half before a goroutine takes over, so one bulk transfer cannot
	// hold up the other connections.
	inlineRounds = 4
	// bulkBurst is a burst large enough to hand the half from the epoll
	// goroutine to a goroutine of its own, like a full destination does.
	bulkBurst = 64 << 10
	// linger is how long a half's goroutine waits in Go's poller for more
	// data before it parks the half and ends: while data flows, a burst
	// then costs no epoll_ctl and no hand-over, and a connection that
	// falls silent holds the goroutine this long at most.
	linger = 50 * time.Millisecond
)

// tcpPoller is one route's epoll set of parked halves and its goroutine,
// shaped like the UDP readers (readers_linux.go).
type tcpPoller struct {
	log    *slog.Logger
	epfd   int
	wakefd int // eventfd that ends the loop

	mu      sync.Mutex
	halves  map[regKey]*half
	lastKey regKey
	pipes   []*splicePipe // empty pipes for the next burst

	done     chan struct{}
	stopOnce sync.Once
}

// splicePipe is a pipe that carries one burst from socket to socket.
type splicePipe struct{ r, w, size int }

// halfState says who runs a half; guarded by parkedConn.mu.
type halfState uint8

const (
	halfRunning halfState = iota // a goroutine (or the epoll loop) owns it
	halfParked                   // in the epoll set; whoever takes it owns it
	halfDone                     // ended
)

// half is one direction of a parked connection.
type half struct {
	c            *parkedConn
	src, dst     *net.TCPConn
	srcRC, dstRC syscall.RawConn
	toUp         bool
	key          regKey
	state        halfState // guarded by c.mu

	// Owned by whoever runs the half (state halfRunning).
	armed   bool        // added to the epoll set once
	n       int64       // bytes copied
	pipe    *splicePipe // borrowed while a burst is in it
	queued  int         // bytes in pipe
	short   bool        // the last read did not fill the pipe: the source is likely drained
	wait    bool        // flush (and fill) may wait in Go's poller
	blocked bool        // flush found the destination full and could not wait
	got     int         // result of the last fill
	err     error       // of the last fill or flush
	fill    func(fd uintptr) bool
	flush   func(fd uintptr) bool
}

// parkedConn is a connection whose halves park in a tcpPoller.
type parkedConn struct {
	p      *tcpPoller
	td     teardown
	active *atomic.Int64 // stamped per burst for the idle timeout; nil without one
	ended  func(copyOutcome)

	mu   sync.Mutex
	h    [2]half // client->upstream, upstream->client
	left int     // halves not done
}

// newTCPPoller starts the epoll loop.
func newTCPPoller(log *slog.Logger) (*tcpPoller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	wakefd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	ev := wakeKey.event(unix.EPOLLIN)
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wakefd, &ev); err != nil {
		unix.Close(epfd)
		unix.Close(wakefd)
		return nil, fmt.Errorf("epoll_ctl: %w", err)
	}
	p := &tcpPoller{log: log, epfd: epfd, wakefd: wakefd, halves: make(map[regKey]*half), lastKey: wakeKey, done: make(chan struct{})}
	go p.loop()
	return p, nil
}

// proxy parks both halves of the connection; the halves and the teardown
// call t.ended once both are done.
func (t *tcpRoute) proxy(pc *proxyConn, up *net.TCPConn, drainBound time.Duration, active *atomic.Int64) {
	c, err := t.park.conn(pc.client, up, drainBound, active, func(o copyOutcome) { t.ended(pc, o) })
	if err != nil {
		resetClose(pc.client)
		resetClose(up)
		t.ended(pc, copyOutcome{reason: endError, err: err})
		return
	}
	t.mu.Lock()
	pc.wake = c.wake
	t.mu.Unlock()
	c.start()
}

// conn sets up a connection's halves, both running (owned by the caller).
func (p *tcpPoller) conn(client, up *net.TCPConn, drainBound time.Duration, active *atomic.Int64, ended func(copyOutcome)) (*parkedConn, error) {
	crc, err := client.SyscallConn()
	if err != nil {
		return nil, err
	}
	urc, err := up.SyscallConn()
	if err != nil {
		return nil, err
	}
	c := &parkedConn{p: p, active: active, ended: ended, left: 2}
	c.td = teardown{client: client, up: up, drainBound: drainBound, wake: c.wake}
	c.h[0] = half{c: c, src: client, dst: up, srcRC: crc, dstRC: urc, toUp: true}
	c.h[1] = half{c: c, src: up, dst: client, srcRC: urc, dstRC: crc}
	p.mu.Lock()
	for i := range c.h {
		h := &c.h[i]
		h.key = p.newKey()
		p.halves[h.key] = h
		h.fill = h.fillFn
		h.flush = h.flushFn
	}
	p.mu.Unlock()
	return c, nil
}

// start parks the upstream's half and runs the client's at once without
// waiting (a client usually sent its request while natkeep dialed), so the
// connection's goroutine ends here unless the upstream is slow to take it.
func (c *parkedConn) start() {
	c.h[1].park(false)
	c.h[0].run(true)
}

// newKey returns a key that neither the eventfd nor a live half holds;
// p.mu is held.
func (p *tcpPoller) newKey() regKey {
	for {
		p.lastKey++
		if _, live := p.halves[p.lastKey]; !live && p.lastKey != wakeKey {
			return p.lastKey
		}
	}
}

// take makes the caller the owner of a parked half.
func (h *half) take() bool {
	h.c.mu.Lock()
	defer h.c.mu.Unlock()
	if h.state != halfParked {
		return false
	}
	h.state = halfRunning
	return true
}

// wake lets parked halves see that natkeep closed the sockets: each is
// taken and run in a goroutine, where its next read fails with ErrClosed
// (or, if nothing was closed, finds nothing and parks again).
func (c *parkedConn) wake() {
	for i := range c.h {
		if h := &c.h[i]; h.take() {
			go h.run(false)
		}
	}
}

// park gives the half up to the epoll set until its source is readable.
// The state changes first: once armed, the event may be taken at once.
func (h *half) park(nowait bool) {
	h.short, h.got = false, 0 // the next owner starts with a read
	op := unix.EPOLL_CTL_MOD
	if !h.armed {
		op, h.armed = unix.EPOLL_CTL_ADD, true
	}
	h.c.mu.Lock()
	h.state = halfParked
	h.c.mu.Unlock()
	var cerr error
	err := h.srcRC.Control(func(fd uintptr) {
		// RDHUP: a FIN wakes the half, which then reads the end of stream.
		ev := h.key.event(unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT)
		cerr = unix.EpollCtl(h.c.p.epfd, op, int(fd), &ev)
	})
	if err == nil && cerr == nil {
		return
	}
	if !h.take() {
		return // a wake took it: its goroutine sees the socket closed
	}
	if err == nil {
		err = os.NewSyscallError("epoll_ctl", cerr)
	}
	h.end(err, nowait) // Control fails on a closed socket: ErrClosed, as a read would
}

// run copies bursts until the source would block, then parks the half;
// nowait: run by the epoll goroutine (or at the start), which must not
// wait, so a destination that is full hands the half to a goroutine.
func (h *half) run(nowait bool) {
	for round := 0; ; round++ {
		if h.queued > 0 {
			h.wait, h.blocked, h.err = !nowait, false, nil
			if err := h.dstRC.Write(h.flush); err != nil {
				h.end(err, nowait)
				return
			}
			if h.err != nil {
				h.end(os.NewSyscallError("splice", h.err), nowait)
				return
			}
			if h.blocked {
				go h.run(false)
				return
			}
		}
		if nowait && (round >= inlineRounds || h.got >= bulkBurst) {
			go h.run(false) // a bulk transfer: off the epoll goroutine
			return
		}
		if nowait && h.short {
			// Arming re-checks readiness: if more arrived meanwhile the
			// event comes at once, so no read to see EAGAIN.
			h.short = false
			h.putPipe()
			h.park(nowait)
			return
		}
		if h.pipe == nil {
			var err error
			if h.pipe, err = h.c.p.getPipe(); err != nil {
				h.end(err, nowait)
				return
			}
		}
		h.got, h.err, h.wait = 0, nil, !nowait
		if h.wait {
			_ = h.src.SetReadDeadline(time.Now().Add(linger))
		}
		if err := h.srcRC.Read(h.fill); err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				// Silent for linger: give the goroutine up.
				_ = h.src.SetReadDeadline(time.Time{})
				h.putPipe()
				h.park(nowait)
				return
			}
			h.end(err, nowait)
			return
		}
		switch {
		case h.err == unix.EAGAIN:
			h.putPipe()
			h.park(nowait)
			return
		case h.err != nil:
			h.end(os.NewSyscallError("splice", h.err), nowait)
			return
		case h.got == 0:
			h.end(nil, nowait) // orderly end of stream
			return
		}
		if h.c.active != nil {
			h.c.active.Store(mono())
		}
		h.n += int64(h.got)
		h.queued = h.got
		h.short = h.got < h.pipe.size
	}
}

// fillFn splices what the source has queued into the pipe. With nothing
// queued it waits in Go's poller only in a half's own goroutine (h.wait),
// under the linger deadline; the epoll goroutine never waits.
func (h *half) fillFn(fd uintptr) bool {
	for {
		n, err := unix.Splice(int(fd), nil, h.pipe.w, nil, h.pipe.size, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		if err == unix.EINTR {
			continue
		}
		if err == unix.EAGAIN && h.wait {
			return false
		}
		h.got, h.err = int(n), err
		return true
	}
}

// flushFn splices the pipe into the destination; when it is full it waits
// in Go's poller (h.wait) or reports blocked.
func (h *half) flushFn(fd uintptr) bool {
	for h.queued > 0 {
		n, err := unix.Splice(h.pipe.r, nil, int(fd), nil, h.queued, unix.SPLICE_F_NONBLOCK|unix.SPLICE_F_MOVE)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			if h.wait {
				return false
			}
			h.blocked = true
			return true
		case err != nil:
			h.err = err
			return true
		case n == 0:
			h.err = io.ErrShortWrite
			return true
		}
		h.queued -= int(n)
	}
	return true
}

// end reports the half's end to the teardown; err nil is a clean EOF. The
// epoll goroutine passes failures on to a goroutine: the teardown may drain
// for seconds.
func (h *half) end(err error, nowait bool) {
	if err != nil && nowait {
		go h.end(err, false)
		return
	}
	h.dropPipe()
	c := h.c
	c.td.finish(copyResult{toUpstream: h.toUp, n: h.n, err: err})
	c.p.mu.Lock()
	delete(c.p.halves, h.key)
	c.p.mu.Unlock()
	c.mu.Lock()
	h.state = halfDone
	c.left--
	last := c.left == 0
	c.mu.Unlock()
	if !last {
		return
	}
	if nowait && c.td.blocks() {
		go c.ended(c.td.done())
		return
	}
	c.ended(c.td.done())
}

// getPipe borrows a pipe from the pool, or makes one.
func (p *tcpPoller) getPipe() (*splicePipe, error) {
	p.mu.Lock()
	if n := len(p.pipes); n > 0 {
		sp := p.pipes[n-1]
		p.pipes = p.pipes[:n-1]
		p.mu.Unlock()
		return sp, nil
	}
	p.mu.Unlock()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, os.NewSyscallError("pipe2", err)
	}
	// Best effort, as in Go's own pool: past the per-user pipe quota the
	// pipe keeps its default size.
	size, err := unix.FcntlInt(uintptr(fds[0]), unix.F_SETPIPE_SZ, pipeSize)
	if err != nil {
		if size, err = unix.FcntlInt(uintptr(fds[0]), unix.F_GETPIPE_SZ, 0); err != nil || size <= 0 {
			size = 1 << 16
		}
	}
	return &splicePipe{r: fds[0], w: fds[1], size: size}, nil
}

// putPipe returns the half's empty pipe to the pool.
func (h *half) putPipe() {
	sp := h.pipe
	if sp == nil {
		return
	}
	h.pipe = nil
	p := h.c.p
	p.mu.Lock()
	if len(p.pipes) < freePipes {
		p.pipes = append(p.pipes, sp)
		sp = nil
	}
	p.mu.Unlock()
	if sp != nil {
		sp.close()
	}
}

// dropPipe lets the pipe go at the half's end: back to the pool if empty,
// closed if it still holds bytes that can no longer be delivered.
func (h *half) dropPipe() {
	if h.pipe != nil && h.queued > 0 {
		h.pipe.close()
		h.pipe, h.queued = nil, 0
	}
	h.putPipe()
}

func (sp *splicePipe) close() {
	unix.Close(sp.r)
	unix.Close(sp.w)
}

// stop ends the loop; call it once no connection is left.
func (p *tcpPoller) stop() {
	p.stopOnce.Do(func() {
		one := [8]byte{1}
		if _, err := unix.Write(p.wakefd, one[:]); err == nil || err == unix.EAGAIN {
			<-p.done
		}
		p.mu.Lock()
		for _, sp := range p.pipes {
			sp.close()
		}
		p.pipes = nil
		p.mu.Unlock()
	})
}

// loop parks in Go's netpoller on the epoll fd itself, as the UDP readers
// do, and runs each half whose source became readable.
func (p *tcpPoller) loop() {
	defer close(p.done)
	defer unix.Close(p.wakefd)
	epollLoop(p.log, p.epfd, "TCP epoll fd", "idle connections stop", func(key regKey) {
		p.mu.Lock()
		h := p.halves[key]
		p.mu.Unlock()
		if h != nil && h.take() {
			h.run(true)
		}
	}, nil)
}
