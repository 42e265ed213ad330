package relay

import (
	"errors"
	"net"
	"syscall"
)

// upstreamReaders watch every upstream socket of a route and hand each
// datagram to the route (fromUpstream) and each receive error to
// upstreamError. On Linux one epoll goroutine serves all of a route's flows
// with one shared buffer, so an idle flow costs no goroutine and no buffer;
// elsewhere each flow gets a reading goroutine.
type upstreamReaders interface {
	// watch starts delivering c's datagrams for flow f: to fromUpstream,
	// or with fromClient (a transparent flow's client-side socket) to
	// fromClientConn.
	watch(f *flow, c *net.UDPConn, fromClient bool) error
	// unwatch stops delivering c's datagrams; call it before closing c.
	unwatch(c *net.UDPConn)
	// stop ends all watching and waits for the reader goroutines.
	stop()
}

// upstreamError counts and logs a receive error on a flow's upstream socket.
// The flow stays either way: ECONNREFUSED is an ICMP port unreachable (the
// upstream is not listening yet) and the next datagram tries again.
func (u *udpRoute) upstreamError(f *flow, c *net.UDPConn, err error) {
	if errors.Is(err, syscall.ECONNREFUSED) {
		u.st.dropUpRefused.Inc()
		u.logError("upstream refused (ICMP port unreachable)", err, "client", f.key.client, "upstream", c.RemoteAddr())
		return
	}
	u.st.dropUpErr.Inc()
	u.logError("upstream read failed", err, "client", f.key.client)
}
