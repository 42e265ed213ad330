package relay

// Benchmarks of the relay's data paths and bookkeeping, on loopback:
//
//	go test -run='^$' -bench . -benchmem ./relay/
//
// Allocation figures: allocs/op from -benchmem counts every allocation in
// the test process during the timed loop, which here includes the client
// and the echo or sink server. Those use only allocation-free calls (Write,
// Read, ReadFromUDPAddrPort, WriteToUDPAddrPort on preallocated buffers),
// but to attribute allocations to the relay alone the datagram benchmarks
// also report relay-allocs/op: the process's malloc count per operation
// through the relay minus the same count per operation of the identical
// loop run straight at the echo server (measured in the same benchmark).
// BenchmarkUDPPathFuncs calls the relay's per-datagram functions directly,
// which isolates them completely.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The relay's internal flow API is used only in the adapters below, so a
// change to it (flow keys, newFlow's parameters, the flow struct, the
// upstream readers) is fixed here, in one place.

// benchKey is the flow-table key of an ordinary (non-transparent) client.
func benchKey(client netip.AddrPort) flowKey { return flowKey{client: client} }

// benchLookup is the lookup serveClients does for every client datagram.
func benchLookup(u *udpRoute, client netip.AddrPort) *flow { return u.lookup(benchKey(client)) }

// benchNewFlow builds a flow as newFlow does, on an existing upstream
// socket c, and enters it in the flow table; no reader watches c.
func benchNewFlow(u *udpRoute, client netip.AddrPort, c *upSock, now int64) *flow {
	f := &flow{key: benchKey(client), class: u.def, opt: u.def.opts, out: u.ln, created: now, idx: -1}
	f.conn.Store(c)
	f.lastOut.Store(now)
	u.mu.Lock()
	u.flows[f.key] = f
	u.def.flows++
	u.mu.Unlock()
	return f
}

// benchFromUpstream hands the relay n datagrams from the flow's upstream,
// as one epoll wake-up does: each to fromUpstream, then one flush of the
// replies they queued.
func benchFromUpstream(u *udpRoute, f *flow, p []byte, n int) {
	for range n {
		u.fromUpstream(f, p)
	}
	u.flushReplies()
}

// benchRoute builds a UDP route that is never started (no listener, no
// scheduler goroutine); cleanup stops what newUDPRoute started.
func benchRoute(b *testing.B, o UDPOptions, upstream string) *udpRoute {
	b.Helper()
	u, err := newUDPRoute(context.Background(), newRouteUDP("127.0.0.1:0", upstream, o), time.Second, slog.New(slog.DiscardHandler), NewMetrics(nil), &budget{}, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(u.readers.stop)
	return u
}

// benchPayload is the size of one benchmark datagram: a small RPC or a VoIP
// frame, where per-datagram overhead dominates.
const benchPayload = 64

// benchUDPEcho runs an allocation-free echo server on loopback (the
// udpServer helper records every datagram, which a benchmark cannot afford).
func benchUDPEcho(b *testing.B) *net.UDPConn {
	b.Helper()
	return servePeer(b, "udp4", "127.0.0.1:0", 4<<20, func(c *net.UDPConn, p []byte, from netip.AddrPort) {
		_, _ = c.WriteToUDPAddrPort(p, from)
	})
}

// benchUDPSink counts datagrams arriving on a loopback socket and drops them.
type benchUDPSink struct {
	c    *net.UDPConn
	got  atomic.Int64
	from atomic.Pointer[netip.AddrPort] // sender of the first datagram
}

func newBenchUDPSink(b *testing.B) *benchUDPSink {
	b.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		b.Fatal(err)
	}
	_ = c.SetReadBuffer(4 << 20)
	s := &benchUDPSink{c: c}
	done := make(chan struct{})
	b.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			_, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			if s.from.Load() == nil {
				first := from // only this copy escapes: no allocation per datagram
				s.from.Store(&first)
			}
			s.got.Add(1)
		}
	}()
	return s
}

// mallocs returns the process's cumulative heap allocation count.
func mallocs() uint64 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.Mallocs
}

// udpRoundTrips does n request/response exchanges of benchPayload bytes on c.
func udpRoundTrips(b *testing.B, c *net.UDPConn, n int) {
	w := make([]byte, benchPayload)
	r := make([]byte, 2048)
	_ = c.SetReadDeadline(time.Now().Add(time.Minute))
	for i := range n {
		binary.LittleEndian.PutUint64(w, uint64(i))
		if _, err := c.Write(w); err != nil {
			b.Fatal(err)
		}
		for {
			m, err := c.Read(r)
			if err != nil {
				b.Fatalf("round trip %d: %v", i, err)
			}
			if m == len(w) && binary.LittleEndian.Uint64(r) == uint64(i) {
				break
			}
		}
	}
}

// BenchmarkUDPRoundTrip: one flow, client -> relay -> echo upstream ->
// relay -> client, one datagram in flight. "direct" is the same loop
// without the relay; "relay" also reports relay-allocs/op (see the top of
// this file) and rt/s.
func BenchmarkUDPRoundTrip(b *testing.B) {
	b.Run("direct", func(b *testing.B) {
		echo := benchUDPEcho(b)
		c := dialUDP(b, echo.LocalAddr())
		udpRoundTrips(b, c, 100) // warm up
		b.ReportAllocs()
		b.ResetTimer()
		udpRoundTrips(b, c, b.N)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rt/s")
	})
	b.Run("relay", func(b *testing.B) {
		echo := benchUDPEcho(b)
		r, _ := startRelay(b, newRouteUDP("127.0.0.1:0", echo.LocalAddr().String(), udpOpts()))
		c := dialUDP(b, r.Addrs()[0])
		direct := dialUDP(b, echo.LocalAddr())
		udpRoundTrips(b, c, 100) // creates the flow, warms up
		udpRoundTrips(b, direct, 100)

		// Baseline: the client's and echo server's own allocations.
		baseN := max(b.N, 1000)
		m0 := mallocs()
		udpRoundTrips(b, direct, baseN)
		basePerOp := float64(mallocs()-m0) / float64(baseN)

		b.ReportAllocs()
		m0 = mallocs()
		b.ResetTimer()
		udpRoundTrips(b, c, b.N)
		b.StopTimer()
		total := float64(mallocs()-m0) / float64(b.N)
		b.ReportMetric(max(total-basePerOp, 0), "relay-allocs/op")
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rt/s")
	})
}

// window keeps a sender at most w datagrams ahead of a receiver's count, so
// a one-way benchmark measures the relay rather than socket-buffer drops.
// Datagrams lost anyway (no progress for 100 ms) are written off and counted.
type window struct {
	w    int64
	got  func() int64
	sent int64
	lost int64
}

func (wd *window) wait() {
	if wd.sent-wd.got()-wd.lost < wd.w {
		return
	}
	last, since := wd.got(), time.Now()
	for spins := 0; wd.sent-wd.got()-wd.lost >= wd.w/2; spins++ {
		if g := wd.got(); g != last {
			last, since = g, time.Now()
		} else if time.Since(since) > 100*time.Millisecond {
			wd.lost += wd.sent - g - wd.lost
			return
		}
		if spins%64 == 63 {
			time.Sleep(10 * time.Microsecond)
		} else {
			runtime.Gosched()
		}
	}
}

// drain waits (at most 2 s) until every datagram sent has arrived or is written off.
func (wd *window) drain() {
	deadline := time.Now().Add(2 * time.Second)
	for wd.got()+wd.lost < wd.sent && time.Now().Before(deadline) {
		time.Sleep(50 * time.Microsecond)
	}
	if g := wd.got(); g+wd.lost < wd.sent {
		wd.lost = wd.sent - g
	}
}

func (wd *window) report(b *testing.B, start time.Time) {
	el := time.Since(start).Seconds()
	b.ReportMetric(float64(wd.got())/el, "pps")
	b.ReportMetric(float64(wd.lost), "lost")
}

// BenchmarkUDPUpstreamPath: client -> relay -> sink, one direction, with at
// most 64 datagrams in flight. pps counts datagrams that reached the sink.
func BenchmarkUDPUpstreamPath(b *testing.B) {
	sink := newBenchUDPSink(b)
	r, _ := startRelay(b, newRouteUDP("127.0.0.1:0", sink.c.LocalAddr().String(), udpOpts()))
	c := dialUDP(b, r.Addrs()[0])
	w := make([]byte, benchPayload)
	wd := &window{w: 64, got: sink.got.Load}
	for range 100 { // creates the flow and warms up
		wd.sent++
		_, _ = c.Write(w)
		wd.wait()
	}
	wd.drain()
	base := wd.got()
	wd = &window{w: 64, got: func() int64 { return sink.got.Load() - base }}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		binary.LittleEndian.PutUint64(w, uint64(i))
		if _, err := c.Write(w); err != nil {
			b.Fatal(err)
		}
		wd.sent++
		wd.wait()
	}
	wd.drain()
	b.StopTimer()
	wd.report(b, start)
}

// BenchmarkUDPDownstreamPath: upstream -> relay -> client, one direction:
// the upstream server sends to the flow's upstream socket and the client
// counts what the relay delivers.
func BenchmarkUDPDownstreamPath(b *testing.B) {
	srv := newBenchUDPSink(b) // the upstream: learns the flow's socket from its first datagram
	r, _ := startRelay(b, newRouteUDP("127.0.0.1:0", srv.c.LocalAddr().String(), udpOpts()))
	c := dialUDP(b, r.Addrs()[0])
	_ = c.SetReadBuffer(4 << 20)
	if _, err := c.Write([]byte("open")); err != nil {
		b.Fatal(err)
	}
	eventually(b, "flow opened", func() bool { return srv.from.Load() != nil })
	flowSock := *srv.from.Load()

	var got atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 65536)
		for {
			if _, err := c.Read(buf); err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			got.Add(1)
		}
	}()
	b.Cleanup(func() { c.Close(); <-done })

	w := make([]byte, benchPayload)
	wd := &window{w: 64, got: got.Load}
	for range 100 {
		wd.sent++
		_, _ = srv.c.WriteToUDPAddrPort(w, flowSock)
		wd.wait()
	}
	wd.drain()
	base := got.Load()
	wd = &window{w: 64, got: func() int64 { return got.Load() - base }}
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for i := range b.N {
		binary.LittleEndian.PutUint64(w, uint64(i))
		if _, err := srv.c.WriteToUDPAddrPort(w, flowSock); err != nil {
			b.Fatal(err)
		}
		wd.sent++
		wd.wait()
	}
	wd.drain()
	b.StopTimer()
	wd.report(b, start)
}

// BenchmarkUDPPathFuncs calls the relay's per-datagram functions directly
// on a live flow (sendUpstream: client datagram to the flow's upstream
// socket; fromUpstream: upstream datagram to the client, one send per
// datagram; fromUpstreamBatchN: N replies per sendmmsg, per datagram;
// lookup: the lookup every client datagram does), so allocs/op is the
// relay's alone.
// Nothing reads what is sent: loopback drops it once the buffers are full,
// which costs the sender the same syscall.
func BenchmarkUDPPathFuncs(b *testing.B) {
	sink := newBenchUDPSink(b)
	r, _ := startRelay(b, newRouteUDP("127.0.0.1:0", sink.c.LocalAddr().String(), udpOpts()))
	c := dialUDP(b, r.Addrs()[0])
	if _, err := c.Write([]byte("open")); err != nil {
		b.Fatal(err)
	}
	u := r.udp[0]
	client := netip.MustParseAddrPort(c.LocalAddr().String())
	var f *flow
	eventually(b, "flow opened", func() bool {
		f = benchLookup(u, client)
		return f != nil
	})
	p := make([]byte, benchPayload)
	b.Run("sendUpstream", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			u.sendUpstream(f, p)
		}
	})
	b.Run("fromUpstream", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			benchFromUpstream(u, f, p, 1)
		}
	})
	for _, n := range []int{8, replyBatch} {
		b.Run(fmt.Sprintf("fromUpstreamBatch%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i += n {
				benchFromUpstream(u, f, p, min(n, b.N-i))
			}
		})
	}
	b.Run("lookup", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			if benchLookup(u, client) != f {
				b.Fatal("wrong flow")
			}
		}
	})
}

// benchFlowKey returns the i-th of many distinct client addresses.
func benchFlowKey(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), uint16(1024+i%60000))
}

var benchSinkFlow *flow

// BenchmarkFlowLookup looks up flows by client address (netip.AddrPort) in
// a table of 100k, in random order: "map" is the bare map lookup the route
// does, "lookup" the route's whole lookup with its lock, as every client
// datagram does it.
func BenchmarkFlowLookup(b *testing.B) {
	const n = 100_000
	u := benchRoute(b, udpOpts(), "127.0.0.1:9")
	keys := make([]netip.AddrPort, n)
	for i := range keys {
		keys[i] = benchFlowKey(i)
		benchNewFlow(u, keys[i], nil, 0)
	}
	mapKeys := make([]flowKey, n)
	for i, k := range keys {
		mapKeys[i] = benchKey(k)
	}
	order := rand.Perm(n)
	b.Run("map", func(b *testing.B) {
		b.ReportAllocs()
		for i := range b.N {
			benchSinkFlow = u.flows[mapKeys[order[i%n]]]
		}
	})
	b.Run("lookup", func(b *testing.B) {
		b.ReportAllocs()
		for i := range b.N {
			benchSinkFlow = benchLookup(u, keys[order[i%n]])
		}
	})
	if benchSinkFlow == nil {
		b.Fatal("lookup missed")
	}
}

// BenchmarkSchedulerHeap100k: the route's scheduler (its real run loop and
// service function) wakes 100k idle flows whose heartbeat is due, sends a
// heartbeat on each and requeues it. One op is one such round: what natkeep
// spends every heartbeat interval on 100k idle flows. Flows are built as
// newFlow builds them, but share one upstream socket (100k sockets would
// need 100k file descriptors and local ports). Time is advanced by moving
// the package's monotonic epoch back 21 s before each round, so every
// heartbeat (due 16-20 s after the last) is due without waiting.
// cpu%@20s = the round's time / the default 20 s interval.
func BenchmarkSchedulerHeap100k(b *testing.B) {
	const n = 100_000
	sink := newBenchUDPSink(b)
	sndbuf := func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { _ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_SNDBUF, 4<<20) })
	}
	conn, err := dialUpSock(sink.c.LocalAddr().(*net.UDPAddr).AddrPort(), sndbuf)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	o := udpOpts()
	o.Heartbeat.Interval = 20 * time.Second
	o.FlowIdleTimeout = 1000 * time.Hour // rounds advance the clock 21 s each
	o.MaxFlows = n
	u := benchRoute(b, o, sink.c.LocalAddr().String())
	now := mono()
	for i := range n {
		u.sched.add(benchNewFlow(u, benchFlowKey(i), conn, now), now)
	}

	var serviced, target atomic.Int64
	roundDone := make(chan struct{}, 1)
	svc := func(f *flow, now int64) int64 {
		next := u.service(f, now)
		if serviced.Add(1) == target.Load() {
			roundDone <- struct{}{}
		}
		return next
	}
	await := func(what string) {
		select {
		case <-roundDone:
		case <-time.After(time.Minute):
			b.Fatalf("%s: scheduler serviced %d of %d", what, serviced.Load(), target.Load())
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); u.sched.run(ctx, svc) }()
	b.Cleanup(func() { cancel(); wg.Wait() })
	target.Store(n)
	await("first service (deadlines)") // each flow's first service computes its heartbeat deadline

	hb0 := counter(u.st.heartbeats)
	b.ResetTimer()
	for i := range b.N {
		target.Store(int64(n) * int64(i+2))
		// The scheduler reads the clock under its lock or after a kick, so
		// moving the epoch under the lock and then kicking is race-free.
		u.sched.mu.Lock()
		epoch = epoch.Add(-21 * time.Second)
		u.sched.mu.Unlock()
		select {
		case u.sched.kick <- struct{}{}:
		default:
		}
		await("heartbeat round")
	}
	b.StopTimer()
	if hb := counter(u.st.heartbeats) - hb0; hb != float64(n*b.N) {
		b.Fatalf("heartbeats sent = %v, want %d", hb, n*b.N)
	}
	perRound := b.Elapsed().Seconds() / float64(b.N)
	b.ReportMetric(perRound*1e9/n, "ns/flow")
	b.ReportMetric(perRound/20*100, "cpu%@20s")
}

// benchTCPSink accepts connections and reads everything with a 1 MiB
// buffer, sending each connection's byte count on the returned channel.
func benchTCPSink(b *testing.B) (string, <-chan int64) {
	counts := make(chan int64, 16)
	addr := tcpServer(b, func(c *net.TCPConn) {
		buf := make([]byte, 1<<20)
		var n int64
		for {
			m, err := c.Read(buf)
			n += int64(m)
			if err != nil {
				break
			}
		}
		counts <- n
	})
	return addr, counts
}

// tcpBulk writes b.N MiB on one connection to addr and waits until the
// sink has read all of it.
func tcpBulk(b *testing.B, addr string, counts <-chan int64) {
	c, err := net.DialTimeout("tcp", addr, testDeadline)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	_ = c.(*net.TCPConn).CloseWrite()
	select {
	case n := <-counts:
		if n != int64(b.N)*int64(len(buf)) {
			b.Fatalf("sink read %d bytes, want %d", n, int64(b.N)*int64(len(buf)))
		}
	case <-time.After(time.Minute):
		b.Fatal("sink never finished")
	}
	b.StopTimer()
}

// BenchmarkTCPProxyThroughput: one connection, client -> proxy -> sink, 1 MiB writes.
func BenchmarkTCPProxyThroughput(b *testing.B) {
	addr, counts := benchTCPSink(b)
	r, _ := startRelay(b, newRouteTCP("127.0.0.1:0", addr, tcpOpts()))
	tcpBulk(b, r.Addrs()[0].String(), counts)
}

// BenchmarkTCPDirectThroughput is BenchmarkTCPProxyThroughput without the proxy.
func BenchmarkTCPDirectThroughput(b *testing.B) {
	addr, counts := benchTCPSink(b)
	tcpBulk(b, addr, counts)
}

// tcpConnects does n times: connect, 1-byte request/response, close.
func tcpConnects(b *testing.B, addr string, n int) {
	w, r := []byte{'x'}, make([]byte, 1)
	for i := range n {
		c, err := net.DialTimeout("tcp", addr, testDeadline)
		if err != nil {
			b.Fatalf("connection %d: %v", i, err)
		}
		_ = c.SetDeadline(time.Now().Add(testDeadline))
		if _, err := c.Write(w); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, r); err != nil {
			b.Fatalf("connection %d: %v", i, err)
		}
		c.Close()
	}
}

// BenchmarkTCPConnectionSetup: connect, one 1-byte request/response, close,
// sequentially. "proxy" reports relay-allocs/op: the process's allocations
// per connection minus those of the same loop straight at the echo server
// (the client's dial and the server's accept), counted after the relay has
// finished tearing every connection down.
func BenchmarkTCPConnectionSetup(b *testing.B) {
	echo := func(c *net.TCPConn) {
		buf := make([]byte, 64)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				_, _ = c.Write(buf[:n])
			}
			if err != nil {
				return
			}
		}
	}
	b.Run("direct", func(b *testing.B) {
		addr := tcpServer(b, echo)
		tcpConnects(b, addr, 10)
		b.ReportAllocs()
		b.ResetTimer()
		tcpConnects(b, addr, b.N)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "conns/s")
	})
	b.Run("proxy", func(b *testing.B) {
		addr := tcpServer(b, echo)
		r, _ := startRelay(b, newRouteTCP("127.0.0.1:0", addr, tcpOpts()))
		proxy := r.Addrs()[0].String()
		tcpConnects(b, proxy, 10)
		tcpConnects(b, addr, 10)
		idle := func() {
			eventually(b, "proxied connections closed", func() bool { return r.Stats().TCPConns == 0 })
		}
		idle()
		baseN := min(max(b.N, 200), 2000)
		m0 := mallocs()
		tcpConnects(b, addr, baseN)
		basePerOp := float64(mallocs()-m0) / float64(baseN)

		b.ReportAllocs()
		m0 = mallocs()
		b.ResetTimer()
		tcpConnects(b, proxy, b.N)
		b.StopTimer()
		el := b.Elapsed()
		idle()
		total := float64(mallocs()-m0) / float64(b.N)
		b.ReportMetric(max(total-basePerOp, 0), "relay-allocs/op")
		b.ReportMetric(float64(b.N)/el.Seconds(), "conns/s")
	})
}
