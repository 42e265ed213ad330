package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"unsafe"

	"github.com/natkeep/natkeep/sockopt"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// recvBatch is a set of receive slots read with recvmmsg. x/net's
// ReadBatch would do the call, but it allocates a net.Addr for every
// datagram (golang/net#126: unavoidable with its API), and the datagram
// path allocates nothing; x/sys has no Recvmmsg yet (golang/go#80434).
// So this is the one system call written here; sends use x/net.
type recvBatch struct {
	hs    []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet6 // large enough for either family
	mem   []byte                  // the slots' payload buffers, mmap'd
	oob   []byte                  // oobSize bytes per slot, or nil
	oobSz int

	// State of the blocking read through a RawConn, kept here so the
	// callback is built once.
	conn   *net.UDPConn
	rc     syscall.RawConn
	n      int
	err    error
	readFn func(fd uintptr) bool
	zones  map[uint32]string // IPv6 scope IDs seen, by interface name
}

// mmsghdr is struct mmsghdr; Go pads it to its alignment as C does.
type mmsghdr struct {
	hdr unix.Msghdr
	len uint32
}

// newRecvBatch maps slots receive slots of maxDatagram bytes, each with
// oobSize bytes for control messages (0: none).
func newRecvBatch(slots, oobSize int) (*recvBatch, error) {
	// An anonymous mapping commits a page only when the kernel writes a
	// datagram into it: a Go slice of the same size might be zeroed (and so
	// made resident) by the allocator.
	mem, err := unix.Mmap(-1, 0, slots*maxDatagram, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, fmt.Errorf("mmap receive slots: %w", err)
	}
	r := &recvBatch{
		hs: make([]mmsghdr, slots), iovs: make([]unix.Iovec, slots), names: make([]unix.RawSockaddrInet6, slots),
		mem: mem, oobSz: oobSize, zones: make(map[uint32]string),
	}
	if oobSize > 0 {
		r.oob = make([]byte, slots*oobSize)
	}
	for i := range r.hs {
		r.iovs[i].Base = &mem[i*maxDatagram]
		h := &r.hs[i].hdr
		h.Name = (*byte)(unsafe.Pointer(&r.names[i]))
		h.Iov = &r.iovs[i]
		h.SetIovlen(1)
		if oobSize > 0 {
			h.Control = &r.oob[i*oobSize]
		}
	}
	r.readFn = func(fd uintptr) bool {
		r.n, r.err = r.recv(int(fd), 0, len(r.hs))
		return r.err != unix.EAGAIN // EAGAIN: park in Go's poller until readable
	}
	return r, nil
}

// slots returns how many datagrams the batch holds.
func (r *recvBatch) slots() int { return len(r.hs) }

// free unmaps the slots; nothing may use the batch afterwards.
func (r *recvBatch) free() {
	if r.mem != nil {
		_ = unix.Munmap(r.mem)
		r.mem = nil
	}
}

// recv reads up to max datagrams from the non-blocking socket fd into the
// slots from off on, with one recvmmsg, and returns how many it read.
func (r *recvBatch) recv(fd, off, max int) (int, error) {
	hs := r.hs[off : off+max]
	for i := range hs {
		hs[i].hdr.Namelen = unix.SizeofSockaddrInet6
		hs[i].hdr.SetControllen(r.oobSz)
		hs[i].hdr.Flags = 0
		r.iovs[off+i].SetLen(maxDatagram)
	}
	for {
		n, _, errno := unix.Syscall6(unix.SYS_RECVMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hs[0])), uintptr(len(hs)), 0, 0, 0)
		if errno == unix.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(n), nil
	}
}

// read blocks until at least one datagram from c is in the slots from 0
// on and returns how many were read.
func (r *recvBatch) read(c *net.UDPConn) (int, error) {
	if r.conn != c { // SyscallConn allocates: once per socket
		rc, err := c.SyscallConn()
		if err != nil {
			return 0, err
		}
		r.conn, r.rc = c, rc
	}
	r.n, r.err = 0, nil
	if err := r.rc.Read(r.readFn); err != nil {
		return 0, err
	}
	if r.err != nil {
		return 0, r.err
	}
	return r.n, nil
}

// datagram returns slot i's payload; ok is false if the kernel cut it
// (which full-size slots make impossible, but it is never relayed cut).
func (r *recvBatch) datagram(i int) (b []byte, ok bool) {
	n := int(r.hs[i].len)
	return r.mem[i*maxDatagram : i*maxDatagram+n : (i+1)*maxDatagram], r.hs[i].hdr.Flags&unix.MSG_TRUNC == 0
}

// control returns slot i's control messages.
func (r *recvBatch) control(i int) []byte {
	if r.oob == nil {
		return nil
	}
	return r.oob[i*r.oobSz : i*r.oobSz+int(r.hs[i].hdr.Controllen)]
}

// from returns slot i's source address as ReadFromUDPAddrPort would
// (IPv4 clients of an IPv6 socket as mapped addresses).
func (r *recvBatch) from(i int) netip.AddrPort {
	sa := &r.names[i]
	switch sa.Family {
	case unix.AF_INET:
		sa4 := (*unix.RawSockaddrInet4)(unsafe.Pointer(sa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), port(sa4.Port))
	case unix.AF_INET6:
		a := netip.AddrFrom16(sa.Addr)
		if sa.Scope_id != 0 {
			a = a.WithZone(r.zone(sa.Scope_id))
		}
		return netip.AddrPortFrom(a, port(sa.Port))
	}
	return netip.AddrPort{}
}

// port converts a sockaddr's port, stored in network byte order.
func port(p uint16) uint16 {
	return binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&p))[:])
}

// zone names an IPv6 scope ID as Go's net package does (the interface
// name, else the number), remembered so a link-local client's datagrams
// do not look the interface up each time.
func (r *recvBatch) zone(id uint32) string {
	if z, ok := r.zones[id]; ok {
		return z
	}
	z := strconv.FormatUint(uint64(id), 10)
	if ifi, err := net.InterfaceByIndex(int(id)); err == nil {
		z = ifi.Name
	}
	if len(r.zones) < 256 {
		r.zones[id] = z
	}
	return z
}

// batchConn is what sendBatch writes with: x/net's ipv4 or ipv6
// PacketConn (their Message types are the same type).
type batchConn interface {
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

// GSO limits: a run of datagrams sent as one is at most gsoMaxSegments
// datagrams (the kernel's UDP_MAX_SEGMENTS) of at most gsoMaxSize bytes
// each (segments must fit the path MTU unfragmented: 1,500 less IPv6 and
// UDP headers), gsoMaxTotal bytes in all (one IPv4 datagram's payload).
const (
	gsoMaxSegments = 64
	gsoMaxSize     = 1452
	gsoMaxTotal    = 65507
)

// gso is the process-wide UDP GSO probe: done once, logged once.
var gso struct {
	probe, log sync.Once
	ok         bool
	err        error
}

// gsoProbe reports whether UDP GSO is available, probing c's kernel once
// per process.
func gsoProbe(c *net.UDPConn) bool {
	gso.probe.Do(func() {
		gso.err = sockopt.GSOSupported(c)
		gso.ok = gso.err == nil
	})
	return gso.ok
}

// logGSO logs the probe's outcome once per process; routes call it when
// they start, after every listener is bound, so a start-up error stays
// the only line.
func logGSO(log *slog.Logger) {
	gso.log.Do(func() {
		if gso.ok {
			log.Info("UDP GSO available: a burst of replies to one client leaves in one send")
		} else {
			log.Info("UDP GSO not available: replies leave one datagram per message", "err", gso.err)
		}
	})
}

// sendBatch queues datagrams for one unconnected socket (the listener)
// and sends them with sendmmsg; with GSO, a run of equal-sized datagrams
// to one address is one message of the batch. Each goroutine that writes
// to the listener owns one. Queued payloads must stay untouched until
// flush.
type sendBatch struct {
	c     batchConn
	log   *slog.Logger
	gso   bool             // coalesce runs (the probe's result, until the kernel refuses one)
	ms    []ipv4.Message   // one per queued datagram, in order
	iov   [][]byte         // the queued payloads, in order: runs are slices of it
	addrs []net.UDPAddr    // destinations as x/net takes them, one per slot
	ips   [][16]byte       // the addresses' bytes
	tos   []netip.AddrPort // destinations as queued, for counting
	kinds []sendKind

	out   []ipv4.Message // what flush sends: ms, or runs of it with GSO
	first []int          // out[j]'s first datagram in ms
	cmsgs []byte         // a UDP_SEGMENT control message per out slot
	done  func(kind sendKind, to netip.AddrPort, size int, err error)
}

// newSendBatch makes a batch of slots datagrams for c; done counts each
// datagram once sent or failed.
func newSendBatch(c *net.UDPConn, slots int, log *slog.Logger, done func(sendKind, netip.AddrPort, int, error)) *sendBatch {
	var bc batchConn = ipv4.NewPacketConn(c)
	if la, ok := c.LocalAddr().(*net.UDPAddr); ok && la.IP.To4() == nil {
		bc = ipv6.NewPacketConn(c)
	}
	return &sendBatch{
		c: bc, log: log, gso: gsoProbe(c),
		ms: make([]ipv4.Message, 0, slots), iov: make([][]byte, slots), addrs: make([]net.UDPAddr, slots),
		ips: make([][16]byte, slots), tos: make([]netip.AddrPort, slots), kinds: make([]sendKind, slots),
		out: make([]ipv4.Message, 0, slots), first: make([]int, slots), cmsgs: make([]byte, slots*sockopt.SegmentControlSize),
		done: done,
	}
}

// queue adds b for to, sending the batch first if it is full.
func (w *sendBatch) queue(kind sendKind, to netip.AddrPort, b []byte) {
	if len(w.ms) == cap(w.ms) {
		w.flush()
	}
	i := len(w.ms)
	w.iov[i] = b
	a := &w.addrs[i]
	w.ips[i] = to.Addr().As16()
	if to.Addr().Is4() {
		a.IP = w.ips[i][12:16]
	} else {
		a.IP = w.ips[i][:]
	}
	a.Port, a.Zone = int(to.Port()), to.Addr().Zone()
	w.tos[i], w.kinds[i] = to, kind
	w.ms = append(w.ms, ipv4.Message{Buffers: w.iov[i : i+1], Addr: a})
}

// flush sends what is queued, in order. sendmmsg stops at the first
// message it cannot send: that one is counted as failed (or, a GSO run,
// sent again datagram by datagram without GSO) and the rest are sent on.
func (w *sendBatch) flush() {
	w.plan()
	for j := 0; j < len(w.out); {
		n, err := w.c.WriteBatch(w.out[j:], 0)
		n = max(n, 0) // -1 on an error
		for k := j; k < j+n; k++ {
			w.reportRun(k, nil)
		}
		j += n
		if err == nil && n == 0 {
			err = errShortBatch
		}
		if err != nil && j < len(w.out) {
			if len(w.out[j].Buffers) > 1 {
				w.refused(j, err)
			} else {
				w.reportRun(j, err)
			}
			j++
		}
	}
	clear(w.iov[:len(w.ms)]) // keep no reference to the reader's slots
	w.ms, w.out = w.ms[:0], w.out[:0]
}

// plan fills out: with GSO, each run of datagrams to one address, of one
// size (the last may be shorter) and not empty, becomes one message.
func (w *sendBatch) plan() {
	for i := 0; i < len(w.ms); {
		j := i + 1
		if w.gso {
			size, total := len(w.iov[i]), len(w.iov[i])
			for size > 0 && size <= gsoMaxSize && j < len(w.ms) && j-i < gsoMaxSegments && w.tos[j] == w.tos[i] {
				n := len(w.iov[j])
				if n == 0 || n > size || total+n > gsoMaxTotal {
					break
				}
				total += n
				j++
				if n < size {
					break // a shorter datagram ends a run
				}
			}
		}
		m := w.ms[i]
		if j > i+1 {
			k := len(w.out)
			m.Buffers = w.iov[i:j]
			m.OOB = sockopt.SegmentControl(w.cmsgs[k*sockopt.SegmentControlSize:(k+1)*sockopt.SegmentControlSize], uint16(len(w.iov[i])))
		}
		w.first[len(w.out)] = i
		w.out = append(w.out, m)
		i = j
	}
}

// refused sends run j's datagrams one by one after the kernel refused
// them as one (a device without checksum offload, a path MTU below the
// segment size), and stops using GSO on this socket.
func (w *sendBatch) refused(j int, err error) {
	if w.gso {
		w.gso = false
		w.log.Info("UDP GSO refused by the kernel: replies leave one datagram per message from now on", "err", err)
	}
	for i := w.first[j]; i < w.first[j]+len(w.out[j].Buffers); i++ {
		_, err := w.c.WriteBatch(w.ms[i:i+1], 0)
		w.report(i, err)
	}
}

// reportRun reports each datagram of out[j].
func (w *sendBatch) reportRun(j int, err error) {
	for i := w.first[j]; i < w.first[j]+len(w.out[j].Buffers); i++ {
		w.report(i, err)
	}
}

func (w *sendBatch) report(i int, err error) {
	w.done(w.kinds[i], w.tos[i], len(w.iov[i]), err)
}

var errShortBatch = errors.New("sendmmsg sent nothing")
