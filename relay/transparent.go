package relay

import (
	"errors"
	"net"
	"net/netip"
	"syscall"

	"github.com/natkeep/natkeep/sockopt"
)

// serveIntercepted reads datagrams that TPROXY diverted to the transparent
// listener. Each carries the destination the app addressed; a flow is one
// (app address, original destination) pair, relayed to that destination.
// Once a flow exists, its own client-side socket (bound to the original
// destination, connected to the app) takes the app's further datagrams, as
// TPROXY prefers an exact socket match, and sends the replies, so the app
// sees them come from the peer it addressed.
func (u *udpRoute) serveIntercepted() {
	rb := u.lnBatch
	u.readListener(func(slot int, b []byte, from netip.AddrPort) {
		dst, ok := sockopt.ParseOrigDst(rb.control(slot))
		if !ok {
			u.st.dropNoOrigDst.Inc()
			u.logError("intercepted datagram without its original destination", errNoOrigDst, "client", from)
			return
		}
		key := flowKey{client: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), dst: dst}
		f := u.lookup(key)
		if f == nil {
			if f = u.newInterceptedFlow(key); f == nil {
				return
			}
		}
		u.sendUpstream(f, b)
	})
}

// lnOOB is the control-message room a listener datagram needs: its
// original destination on a transparent route.
func (u *udpRoute) lnOOB() int {
	if u.route.Transparent {
		return sockopt.OrigDstOOBSize
	}
	return 0
}

var errNoOrigDst = errors.New("no IP_ORIGDSTADDR control message")

// classFor returns the class of the first intercept rule matching dst, or
// the route's own.
func (u *udpRoute) classFor(dst netip.AddrPort) *flowClass {
	for _, c := range u.rules {
		if c.rule.Matches(dst) {
			return c
		}
	}
	return u.def
}

// newInterceptedFlow opens the flow's client-side socket and the flow.
func (u *udpRoute) newInterceptedFlow(key flowKey) *flow {
	out, err := u.dialClientSide(key)
	if err != nil {
		u.st.dropSetup.Inc()
		u.logError("cannot open a socket bound to the original destination", err, "client", key.client, "dst", key.dst)
		return nil
	}
	f := u.newFlow(key, u.classFor(key.dst), out)
	if f == nil {
		out.Close()
		return nil
	}
	if err := u.readers.watch(f, out, u.fromApp); err != nil {
		u.logError("cannot watch the flow's client-side socket", err, "client", key.client)
	}
	return f
}

// dialClientSide opens a transparent socket bound to the original
// destination and connected to the app.
func (u *udpRoute) dialClientSide(key flowKey) (*net.UDPConn, error) {
	mark := u.dialControl
	d := net.Dialer{
		LocalAddr: net.UDPAddrFromAddrPort(key.dst),
		Control: func(network, address string, c syscall.RawConn) error {
			if err := sockopt.TransparentControl(network, address, c); err != nil {
				return err
			}
			if mark != nil {
				return mark(network, address, c)
			}
			return nil
		},
	}
	c, err := d.DialContext(u.ctx, "udp", key.client.String())
	if err != nil {
		return nil, err
	}
	return c.(*net.UDPConn), nil
}

// fromApp relays a datagram the app sent on an existing transparent flow
// (it arrived on the flow's client-side socket).
func (u *udpRoute) fromApp(f *flow, b []byte) { u.sendUpstream(f, b) }
