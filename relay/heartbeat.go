package relay

import (
	"errors"
	"fmt"
	"net"

	"github.com/natkeep/natkeep/keepalive"
	"github.com/natkeep/natkeep/sockopt"
)

// Heartbeats: what a flow sends while its app is silent, with the
// per-datagram TTL that lets a heartbeat refresh a nearby NAT and then
// expire before it reaches the server.

// flowOpts are the options a flow runs with, plus what is derived from them once.
type flowOpts struct {
	UDPOptions
	ttlOOB4, ttlOOB6 []byte // per-heartbeat TTL control messages
}

func newFlowOpts(o UDPOptions) (*flowOpts, error) {
	fo := &flowOpts{UDPOptions: o}
	if o.TTL > 0 {
		var err error
		if fo.ttlOOB4, err = sockopt.TTLControl(false, o.TTL); err != nil {
			return nil, fmt.Errorf("heartbeat ttl: %w", err)
		}
		if fo.ttlOOB6, err = sockopt.TTLControl(true, o.TTL); err != nil {
			return nil, fmt.Errorf("heartbeat ttl: %w", err)
		}
	}
	return fo, nil
}

// sendHeartbeat sends one heartbeat on the flow's upstream socket, with the
// configured TTL set on this datagram only unless full asks for the normal
// TTL (a heal heartbeat).
func (u *udpRoute) sendHeartbeat(f *flow, id keepalive.TxID, full bool) {
	b := f.opt.Payload.Bytes
	if f.opt.Payload.Kind == keepalive.PayloadSTUN {
		u.hbBuf = keepalive.AppendBindingRequest(u.hbBuf[:0], id)
		b = u.hbBuf
	}
	f.lastBeat.Store(mono())
	if err := u.writeUpstream(f, b, !full); err != nil {
		if errors.Is(err, net.ErrClosed) {
			return // the flow is gone
		}
		u.st.dropUpErr.Inc()
		u.logError("heartbeat send failed", err, "client", f.key.client)
		return
	}
	u.st.heartbeats.Inc()
	if full && f.opt.ttlOOB4 != nil {
		u.st.heals.Inc()
	}
}

// write sends b on c, with the heartbeat TTL when limited and one is set.
func (o *flowOpts) write(c *net.UDPConn, b []byte, limited bool) error {
	if limited {
		if oob := o.ttlOOB(c); oob != nil {
			_, _, err := c.WriteMsgUDP(b, oob, nil)
			return err
		}
	}
	_, err := c.Write(b)
	return err
}

// ttlOOB returns the TTL control message for c's address family, or nil.
func (o *flowOpts) ttlOOB(c *net.UDPConn) []byte {
	if o.ttlOOB4 == nil {
		return nil
	}
	if ra, ok := c.RemoteAddr().(*net.UDPAddr); ok && ra.IP.To4() == nil {
		return o.ttlOOB6
	}
	return o.ttlOOB4
}
