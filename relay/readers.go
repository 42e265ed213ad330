package relay

import (
	"errors"
	"net"
	"syscall"
)

// flowReaders read a route's flow sockets: every flow's upstream socket,
// and in transparent mode every flow's client-side socket too. Each
// datagram goes to the handler the socket was watched with, each receive
// error to the readers' error handler. On Linux one epoll goroutine serves
// all of a route's sockets with one shared buffer, so an idle flow costs no
// goroutine and no buffer; elsewhere each socket gets a reading goroutine.
type flowReaders interface {
	// watchUp starts delivering the upstream socket s's datagrams, with f, to onData.
	watchUp(f *flow, s *upSock, onData datagramHandler) error
	// unwatchUp stops delivering s's datagrams; call it before closing s.
	unwatchUp(s *upSock)
	// watch starts delivering c's datagrams, with f, to onData.
	watch(f *flow, c *net.UDPConn, onData datagramHandler) error
	// unwatch stops delivering c's datagrams; call it before closing c.
	unwatch(c *net.UDPConn)
	// stop ends all watching and waits for the reader goroutines.
	stop()
}

// datagramHandler takes one datagram read from a socket of flow f; b stays
// valid until the readers' flush function returns (a handler may queue it
// for a batched send), and must not be written to.
type datagramHandler func(f *flow, b []byte)

// readErrorHandler takes a receive error on a socket of flow f.
type readErrorHandler func(f *flow, err error)

// upstreamError counts and logs a receive error on a flow's upstream socket.
// The flow stays either way: ECONNREFUSED is an ICMP port unreachable (the
// upstream is not listening yet) and the next datagram tries again.
func (u *udpRoute) upstreamError(f *flow, err error) {
	if errors.Is(err, syscall.ECONNREFUSED) {
		u.st.dropUpRefused.Inc()
		u.logError("upstream refused (ICMP port unreachable)", err, "client", f.key.client, "upstream", f.upstream())
		return
	}
	u.st.dropUpErr.Inc()
	u.logError("upstream read failed", err, "client", f.key.client)
}
