package relay

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/natkeep/natkeep/keepalive"
)

// TestResponderRateLimit: 500 Binding Requests from one source as fast as
// it can send them (well within a second): the responder answers at most
// its burst plus what the rate earns in the time taken, counts every other
// one as a stun_rate_limited drop and forwards none of them; another
// source address still gets its answer at once.
func TestResponderRateLimit(t *testing.T) {
	srv := newHostilePeer(t, "udp4", "127.0.0.1:0", 0)
	o := udpOpts()
	o.Role = RoleResponder
	rt := hostileRoute("127.0.0.1:0", srv.addr(), o)
	r := hostileStart(t, rt)
	c := hostileClient(t, r, 0)
	const n = 500
	start := time.Now()
	for range n {
		if _, err := c.Write(keepalive.AppendBindingRequest(nil, keepalive.NewTxID())); err != nil {
			t.Fatal(err)
		}
	}
	elapsed := time.Since(start)
	eventually(t, "every request accounted for", func() bool {
		return r.routeMetric(t, rt.Name, "natkeep_udp_stun_requests_answered_total")+r.drops(t, rt.Name)["stun_rate_limited"] == n
	})
	answered := r.routeMetric(t, rt.Name, "natkeep_udp_stun_requests_answered_total")
	limit := responderBurst + responderRate*(elapsed+100*time.Millisecond).Seconds()
	if answered > limit || answered < responderBurst {
		t.Fatalf("answered %v of %d requests sent in %v; want between the burst %d and %.0f", answered, n, elapsed, responderBurst, limit)
	}
	got := hostileCollect(t, c, int(answered), 200*time.Millisecond)
	if float64(len(got)) != answered {
		t.Fatalf("client received %d answers, metric says %v", len(got), answered)
	}
	for _, b := range got {
		if len(b) != 40 { // 20 header + 12 XOR-MAPPED-ADDRESS + 8 FINGERPRINT, as the request had one
			t.Fatalf("answer of %d bytes, want 40", len(b))
		}
	}
	if len(srv.received()) != 0 {
		t.Fatalf("%d requests were forwarded to the server", len(srv.received()))
	}
	// Another source has a budget of its own.
	other, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 2)}, r.Addrs()[0].(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if _, err := other.Write(keepalive.AppendBindingRequest(nil, keepalive.NewTxID())); err != nil {
		t.Fatal(err)
	}
	if b := readWithin(t, other, testDeadline); len(b) != 40 {
		t.Fatalf("second source got %d bytes", len(b))
	}
	t.Logf("%d requests in %v from one source: %v answered, %v dropped", n, elapsed.Round(time.Millisecond), answered, r.drops(t, rt.Name)["stun_rate_limited"])
}

// TestSourceLimiter drives the per-source buckets on timestamps: the burst,
// the refill rate, independent sources, the table bound with its shared
// overflow bucket, and the sweep of idle sources.
func TestSourceLimiter(t *testing.T) {
	const sec = int64(time.Second)
	l := newSourceLimiter(20, 40, 2)
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	now := 100 * sec
	count := func(src netip.Addr, at int64, n int) (ok int) {
		for range n {
			if l.allow(src, at) {
				ok++
			}
		}
		return ok
	}
	if got := count(a, now, 100); got != 40 {
		t.Fatalf("burst: %d allowed, want 40", got)
	}
	if got := count(a, now+sec/2, 100); got != 10 {
		t.Fatalf("after 0.5 s: %d allowed, want 10 (20/s)", got)
	}
	if got := count(b, now, 100); got != 40 {
		t.Fatalf("second source: %d allowed, want its own 40", got)
	}
	// The table holds 2: a third source shares the overflow bucket.
	if got := count(c, now+sec/2, 100); got != 40 {
		t.Fatalf("overflow bucket: %d allowed, want 40", got)
	}
	if _, ok := l.m[c]; ok {
		t.Fatal("a source beyond the bound entered the table")
	}
	// Two seconds refill a bucket completely: both are swept, c gets its own.
	if got := count(c, now+3*sec, 1); got != 1 || l.m[c] == nil || len(l.m) != 1 {
		t.Fatalf("after the sweep: allowed %d, table %v", got, l.m)
	}
}

// stunRequest builds a Binding Request with the given attributes and a
// FINGERPRINT.
func stunRequest(id keepalive.TxID, attrs ...[]byte) []byte {
	var body []byte
	for _, a := range attrs {
		body = append(body, a...)
	}
	return hostileSTUN(0x0001, id, body, true)
}

// TestResponderResponsePort: a request with RESPONSE-PORT is answered to
// the request's source IP at that port (RFC 5780), carrying the request's
// source as mapped address; the requesting socket gets nothing. A request
// with CHANGE-REQUEST gets 420, and an ICE check (USERNAME,
// MESSAGE-INTEGRITY) passes to the server untouched.
func TestResponderResponsePort(t *testing.T) {
	srv := newHostilePeer(t, "udp4", "127.0.0.1:0", 0)
	o := udpOpts()
	o.Role = RoleResponder
	rt := hostileRoute("127.0.0.1:0", srv.addr(), o)
	r := hostileStart(t, rt)
	x, y := hostileClient(t, r, 0), hostileClient(t, r, 0)
	xAddr := netip.MustParseAddrPort(x.LocalAddr().String())
	yPort := uint16(y.LocalAddr().(*net.UDPAddr).Port)
	id := keepalive.NewTxID()
	port := []byte{byte(yPort >> 8), byte(yPort), 0, 0}
	if _, err := x.Write(stunRequest(id, hostileAttr(0x0027, port))); err != nil {
		t.Fatal(err)
	}
	resp, err := keepalive.ParseBindingResponse(readWithin(t, y, testDeadline))
	if err != nil || resp.ID != id || resp.Mapped != xAddr {
		t.Fatalf("at the RESPONSE-PORT socket: %+v, %v; want id %x mapped %v", resp, err, id, xAddr)
	}
	expectNothing(t, x, 200*time.Millisecond)

	if _, err := x.Write(stunRequest(keepalive.NewTxID(), hostileAttr(0x0003, []byte{0, 0, 0, 6}))); err != nil {
		t.Fatal(err)
	}
	if typ, _, ok := keepalive.PeekTxID(readWithin(t, x, testDeadline)); !ok || typ != 0x0111 {
		t.Fatalf("CHANGE-REQUEST answered with type %#x, want a Binding Error Response (420)", typ)
	}
	if v := r.routeMetric(t, rt.Name, "natkeep_udp_stun_requests_rejected_total"); v != 1 {
		t.Fatalf("rejected = %v, want 1", v)
	}

	ice := stunRequest(keepalive.NewTxID(), hostileAttr(0x0006, []byte("a:b")), hostileAttr(0x0008, make([]byte, 20)))
	if _, err := x.Write(ice); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the ICE check at the server", func() bool {
		for _, g := range srv.received() {
			if string(g.data) == string(ice) {
				return true
			}
		}
		return false
	})
}
