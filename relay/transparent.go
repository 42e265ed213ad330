package relay

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"syscall"

	"github.com/natkeep/natkeep/sockopt"
)

// bypassControl returns a socket Control function that sets SO_MARK mark on
// natkeep's own upstream sockets, so the interception rules never catch
// natkeep's traffic (nil when mark is 0). Setting a mark needs CAP_NET_ADMIN;
// without it the socket is used unmarked and the rules' UID match keeps it
// out of interception instead, so a failure is logged, not fatal.
func bypassControl(mark uint32, limit *logLimiter, log *slog.Logger) func(network, address string, c syscall.RawConn) error {
	if mark == 0 {
		return nil
	}
	set := sockopt.MarkControl(mark)
	return func(network, address string, c syscall.RawConn) error {
		if err := set(network, address, c); err != nil {
			if ok, _ := limit.allow(); ok {
				log.Warn("cannot mark upstream socket; relying on the UID match to bypass interception", "mark", mark, "err", err)
			}
		}
		return nil
	}
}

// serveIntercepted reads datagrams that TPROXY diverted to the transparent
// listener. Each carries the destination the app addressed; a flow is one
// (app address, original destination) pair, relayed to that destination.
// Once a flow exists, its own client-side socket (bound to the original
// destination, connected to the app) takes the app's further datagrams, as
// TPROXY prefers an exact socket match, and sends the replies, so the app
// sees them come from the peer it addressed.
func (u *udpRoute) serveIntercepted() {
	buf := make([]byte, maxDatagram)
	oob := make([]byte, sockopt.OrigDstOOBSize)
	for {
		n, oobn, _, from, err := u.ln.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			u.logError("listener read failed", err)
			continue
		}
		dst, ok := sockopt.ParseOrigDst(oob[:oobn])
		if !ok {
			u.st.dropNoOrigDst.Inc()
			u.logError("intercepted datagram without its original destination", errNoOrigDst, "client", from)
			continue
		}
		key := flowKey{client: netip.AddrPortFrom(from.Addr().Unmap(), from.Port()), dst: dst}
		f := u.lookup(key)
		if f == nil {
			if f = u.newInterceptedFlow(key); f == nil {
				continue
			}
		}
		u.sendUpstream(f, buf[:n])
	}
}

var errNoOrigDst = errors.New("no IP_ORIGDSTADDR control message")

// optsFor returns the options of the first intercept rule matching dst.
func (u *udpRoute) optsFor(dst netip.AddrPort) *flowOpts {
	for i, ir := range u.route.Intercept {
		if ir.Proto == UDP && ir.Matches(dst) && u.ruleOpts[i] != nil {
			return u.ruleOpts[i]
		}
	}
	return u.fopt
}

// newInterceptedFlow opens the flow's client-side socket and the flow.
func (u *udpRoute) newInterceptedFlow(key flowKey) *flow {
	out, err := u.dialClientSide(key)
	if err != nil {
		u.st.dropSetup.Inc()
		u.logError("cannot open a socket bound to the original destination", err, "client", key.client, "dst", key.dst)
		return nil
	}
	f := u.newFlow(key, u.optsFor(key.dst), out)
	if f == nil {
		out.Close()
		return nil
	}
	if err := u.readers.watch(f, out, true); err != nil {
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

// fromClientConn relays a datagram the app sent on an existing transparent
// flow (it arrived on the flow's client-side socket).
func (u *udpRoute) fromClientConn(f *flow, b []byte) { u.sendUpstream(f, b) }
