package relay

import (
	"errors"
	"net"
	"net/netip"
	"strconv"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// upSock is a flow's upstream socket on Linux: a bare non-blocking
// descriptor that only the route's epoll set watches. A *net.UDPConn would
// also register it with Go's netpoller and keep a netFD, a pollDesc and two
// resolved addresses per flow, about 650 bytes and three system calls per
// flow that natkeep never uses. refs gives the descriptor the one guarantee
// Go's fdMutex gave it: it is closed only when no read or write is using
// it, so a write can never land on a reused descriptor of another flow.
type upSock struct {
	fd   int
	refs atomic.Uint32 // users in the low bits; sockClosed once Close ran
	v6   bool
	key  regKey // the epoll registration (wakeKey: none yet, goneKey: unwatched); guarded by epollReaders.mu
}

// sockClosed marks a closed upSock; the last user to leave closes the fd.
const sockClosed = 1 << 31

// sendWait bounds how long a write waits for room in a full send buffer
// before it fails (and is counted as a drop): a datagram is better lost
// than a listener stalled for every other flow.
const sendWait = 100 * time.Millisecond

// dialUpSock opens a UDP socket connected to addr; control (the bypass
// mark), when not nil, runs before connect as a net.Dialer's Control would.
func dialUpSock(addr netip.AddrPort, control func(network, address string, c syscall.RawConn) error) (*upSock, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	family, network := unix.AF_INET, "udp4"
	var sa unix.Sockaddr
	if a := addr.Addr(); a.Is4() {
		sa = &unix.SockaddrInet4{Port: int(addr.Port()), Addr: a.As4()}
	} else {
		family, network = unix.AF_INET6, "udp6"
		sa6 := &unix.SockaddrInet6{Port: int(addr.Port()), Addr: a.As16()}
		if z := a.Zone(); z != "" {
			if n, err := strconv.ParseUint(z, 10, 32); err == nil {
				sa6.ZoneId = uint32(n)
			} else if ifi, err := net.InterfaceByName(z); err == nil {
				sa6.ZoneId = uint32(ifi.Index)
			} else {
				return nil, &net.OpError{Op: "dial", Net: network, Addr: net.UDPAddrFromAddrPort(addr), Err: err}
			}
		}
		sa = sa6
	}
	fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, &net.OpError{Op: "socket", Net: network, Err: err}
	}
	s := &upSock{fd: fd, v6: family == unix.AF_INET6}
	fail := func(op string, err error) (*upSock, error) {
		unix.Close(fd)
		return nil, &net.OpError{Op: op, Net: network, Addr: net.UDPAddrFromAddrPort(addr), Err: err}
	}
	if !s.v6 {
		// As Go's net does for every UDP socket, so a broadcast upstream still works.
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_BROADCAST, 1); err != nil {
			return fail("setsockopt", err)
		}
	}
	if control != nil {
		if err := control(network, addr.String(), sockRawConn{s}); err != nil {
			return fail("dial", err)
		}
	}
	if err := unix.Connect(fd, sa); err != nil {
		return fail("dial", err)
	}
	return s, nil
}

// acquire marks a use of the descriptor; false once the socket is closed.
func (s *upSock) acquire() bool {
	for {
		v := s.refs.Load()
		if v&sockClosed != 0 {
			return false
		}
		if s.refs.CompareAndSwap(v, v+1) {
			return true
		}
	}
}

// release ends a use; the last use after Close closes the descriptor.
func (s *upSock) release() {
	if s.refs.Add(^uint32(0)) == sockClosed {
		unix.Close(s.fd)
	}
}

// Close closes the socket now, or when its last read or write ends.
func (s *upSock) Close() error {
	for {
		v := s.refs.Load()
		if v&sockClosed != 0 {
			return net.ErrClosed
		}
		if s.refs.CompareAndSwap(v, v|sockClosed) {
			if v == 0 {
				return unix.Close(s.fd)
			}
			return nil
		}
	}
}

// write sends one datagram to the connected peer.
func (s *upSock) write(b []byte) error { return s.writeMsg(b, nil) }

// writeMsg sends one datagram with the control message oob (may be nil).
func (s *upSock) writeMsg(b, oob []byte) error {
	if !s.acquire() {
		return net.ErrClosed
	}
	defer s.release()
	waited := false
	for {
		var err error
		if oob == nil {
			_, err = unix.Write(s.fd, b)
		} else {
			_, err = unix.SendmsgN(s.fd, b, oob, nil, 0)
		}
		switch {
		case err == nil:
			return nil
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN && !waited:
			waited = true
			pfd := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLOUT}}
			if _, perr := unix.Poll(pfd, int(sendWait/time.Millisecond)); perr != nil && perr != unix.EINTR {
				return &net.OpError{Op: "write", Net: "udp", Err: perr}
			}
			continue
		default:
			return &net.OpError{Op: "write", Net: "udp", Err: err}
		}
	}
}

// localAddr returns the socket's local address (a system call: for logs).
func (s *upSock) localAddr() netip.AddrPort {
	if !s.acquire() {
		return netip.AddrPort{}
	}
	defer s.release()
	sa, err := unix.Getsockname(s.fd)
	if err != nil {
		return netip.AddrPort{}
	}
	return sockaddrAddrPort(sa)
}

// sockaddrAddrPort converts an IPv4 or IPv6 socket address.
func sockaddrAddrPort(sa unix.Sockaddr) netip.AddrPort {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))
	}
	return netip.AddrPort{}
}

// SyscallConn gives socket-option helpers (sockopt.Reconnect, the bypass
// mark) the descriptor, held against a concurrent Close.
func (s *upSock) SyscallConn() (syscall.RawConn, error) { return sockRawConn{s}, nil }

// sockRawConn is the syscall.RawConn of an upSock. Only Control is used;
// reads go through the route's epoll loop, writes through writeMsg.
type sockRawConn struct{ s *upSock }

var errRawIO = errors.New("relay: raw reads and writes on an upstream socket go through the epoll loop")

func (r sockRawConn) Control(f func(fd uintptr)) error {
	if !r.s.acquire() {
		return net.ErrClosed
	}
	defer r.s.release()
	f(uintptr(r.s.fd))
	return nil
}

func (r sockRawConn) Read(func(fd uintptr) bool) error  { return errRawIO }
func (r sockRawConn) Write(func(fd uintptr) bool) error { return errRawIO }
