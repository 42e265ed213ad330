package relay

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natkeep/natkeep/sockopt"
)

// tcpBytes is natkeep_tcp_bytes_total: what closed connections carried,
// plus what open ones have delivered so far, read from the kernel
// (TCP_INFO tcpi_bytes_acked) at scrape time. The counter moves during a
// long transfer while the copy path stays a bare splice with no per-packet
// accounting.
type tcpBytes struct {
	desc   *prometheus.Desc
	mu     sync.Mutex
	routes []*tcpRoute
}

func newTCPBytes() *tcpBytes {
	return &tcpBytes{desc: prometheus.NewDesc("natkeep_tcp_bytes_total",
		"TCP payload bytes proxied, by direction: closed connections' totals plus what open ones have had acknowledged so far (read at scrape time).",
		[]string{"route", "direction"}, nil)}
}

// add makes t's connections part of the counter.
func (c *tcpBytes) add(t *tcpRoute) {
	c.mu.Lock()
	c.routes = append(c.routes, t)
	c.mu.Unlock()
}

// Describe implements prometheus.Collector.
func (c *tcpBytes) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *tcpBytes) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	routes := append([]*tcpRoute(nil), c.routes...)
	c.mu.Unlock()
	for _, t := range routes {
		up, down := t.bytes()
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(up), t.route.Name, "upstream")
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(down), t.route.Name, "downstream")
	}
}

// liveBytes is a connection's share of natkeep_tcp_bytes_total while it is
// open: the most each direction has been reported, so the counter never
// goes back when the connection ends.
type liveBytes struct {
	up, down atomic.Uint64
	ended    bool // its bytes moved to the route's closed totals; guarded by tcpRoute.mu
}

// raise records n as direction d's share if it is more than before.
func raise(d *atomic.Uint64, n uint64) uint64 {
	for {
		old := d.Load()
		if n <= old || d.CompareAndSwap(old, n) {
			return max(n, old)
		}
	}
}

// bytes returns the route's totals each way: closed connections, plus each
// open connection's delivered bytes as its sockets report them now.
func (t *tcpRoute) bytes() (up, down uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	up, down = t.closedUp, t.closedDown
	for pc := range t.conns {
		if pc.upstream == nil || pc.live.ended {
			continue
		}
		if ti, err := sockopt.GetTCPInfo(pc.upstream); err == nil && sendOpen(ti.State) {
			raise(&pc.live.up, ti.BytesAcked)
		}
		if ti, err := sockopt.GetTCPInfo(pc.client); err == nil && sendOpen(ti.State) {
			raise(&pc.live.down, ti.BytesAcked)
		}
		up += pc.live.up.Load()
		down += pc.live.down.Load()
	}
	return up, down
}

// closeBytes moves a connection's bytes to the route's closed totals.
func (t *tcpRoute) closeBytes(pc *proxyConn, toUp, toDown int64) {
	t.mu.Lock()
	t.closedUp += raise(&pc.live.up, uint64(max(toUp, 0)))
	t.closedDown += raise(&pc.live.down, uint64(max(toDown, 0)))
	pc.live.ended = true
	t.mu.Unlock()
}

// sendOpen reports whether a socket in TCP state st has not sent its FIN:
// once acknowledged, a FIN counts one byte in tcpi_bytes_acked that no
// payload carried, so later readings are not taken.
func sendOpen(st uint8) bool {
	const established, closeWait = 1, 8 // include/net/tcp_states.h
	return st == established || st == closeWait
}
