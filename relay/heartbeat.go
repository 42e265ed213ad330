package relay

import (
	"errors"
	"fmt"
	"net"
	"sync/atomic"

	"github.com/natkeep/natkeep/keepalive"
	"github.com/natkeep/natkeep/sockopt"
)

// Heartbeats: what a flow sends while its app is silent, with the
// per-datagram TTL that lets a heartbeat refresh a nearby NAT and then
// expire before it reaches the server.

// flowOpts are the options a flow runs with, plus what is derived from them once.
type flowOpts struct {
	UDPOptions
	ttl  atomic.Pointer[ttlControl] // the heartbeat TTL in force; nil = the normal TTL
	path *pathLearner               // interval=auto: the learned interval (and ttl=auto's TTL); nil otherwise
}

// ttlControl is a heartbeat TTL and its per-datagram control messages.
type ttlControl struct {
	ttl        int
	oob4, oob6 []byte
}

func newTTLControl(ttl int) (*ttlControl, error) {
	c := &ttlControl{ttl: ttl}
	var err error
	if c.oob4, err = sockopt.TTLControl(false, ttl); err != nil {
		return nil, fmt.Errorf("heartbeat ttl: %w", err)
	}
	if c.oob6, err = sockopt.TTLControl(true, ttl); err != nil {
		return nil, fmt.Errorf("heartbeat ttl: %w", err)
	}
	return c, nil
}

func newFlowOpts(o UDPOptions) (*flowOpts, error) {
	fo := &flowOpts{UDPOptions: o}
	if o.TTL > 0 {
		c, err := newTTLControl(o.TTL)
		if err != nil {
			return nil, err
		}
		fo.ttl.Store(c)
	}
	return fo, nil
}

// schedule returns the heartbeat schedule in force: the configured one,
// with a learned interval, and TTL-limited beats (whose replies never come)
// marked as such.
func (o *flowOpts) schedule() keepalive.Schedule {
	s := o.Heartbeat
	if o.path != nil {
		s.Interval = o.path.interval()
	}
	s.Limited = o.ttl.Load() != nil
	return s
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
	if full && f.opt.ttl.Load() != nil {
		u.st.heals.Inc()
	}
}

// write sends b on c, with the heartbeat TTL when limited and one is set.
func (o *flowOpts) write(c *upSock, b []byte, limited bool) error {
	if limited {
		if oob := o.ttlOOB(c); oob != nil {
			return c.writeMsg(b, oob)
		}
	}
	return c.write(b)
}

// ttlOOB returns the TTL control message for c's address family, or nil.
func (o *flowOpts) ttlOOB(c *upSock) []byte {
	t := o.ttl.Load()
	if t == nil {
		return nil
	}
	if c.v6 {
		return t.oob6
	}
	return t.oob4
}
