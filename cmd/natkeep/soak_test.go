//go:build linux

package main

// Soak: natkeep behind a real NAT that forgets idle UDP after 3 s and idle
// TCP after 3 s, with 2,000 UDP flows and 200 TCP connections that the app
// opens once and then never speaks on again. The server pushes to every
// flow and connection at random times for the whole run. Every push must
// arrive, at the right socket, intact; the router must never destroy a
// live mapping; natkeep's goroutines and memory must stay flat; nothing
// may be logged at error level.
//
// NATKEEP_SOAK_DURATION sets the push phase (default 4m; e.g. 30m for a
// long run, with -timeout raised to match); -short skips the soak.

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

const (
	soakUDPFlows = 2000
	soakTCPConns = 200
	// soakGoroutineSlack is how many goroutines natkeep may gain after
	// warm-up on top of 2 % (see the check at the end of TestSoakNAT).
	soakGoroutineSlack = 4
)

// soakUDPApp is one app-side UDP socket (one natkeep flow).
type soakUDPApp struct {
	idx      int
	conn     *net.UDPConn
	welcomed atomic.Bool
	mu       sync.Mutex
	got      map[int]int // push sequence number -> times received
	bad      []string    // datagrams that were not this flow's
}

func (a *soakUDPApp) read() {
	buf := make([]byte, 2048)
	for {
		n, err := a.conn.Read(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		msg := string(buf[:n])
		f := strings.Fields(msg)
		switch {
		case len(f) == 2 && f[0] == "welcome" && f[1] == strconv.Itoa(a.idx):
			a.welcomed.Store(true)
		case len(f) == 3 && f[0] == "push" && f[1] == strconv.Itoa(a.idx):
			seq, _ := strconv.Atoi(f[2])
			a.mu.Lock()
			a.got[seq]++
			a.mu.Unlock()
		default:
			a.mu.Lock()
			a.bad = append(a.bad, msg)
			a.mu.Unlock()
		}
	}
}

// soakTCPApp is one app-side TCP connection.
type soakTCPApp struct {
	idx      int
	conn     *net.TCPConn
	welcomed chan struct{}
	mu       sync.Mutex
	next     int // next expected push sequence number
	bad      []string
	err      error // why reading stopped, if it did
}

func (a *soakTCPApp) read() {
	sc := bufio.NewScanner(a.conn)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		a.mu.Lock()
		switch {
		case len(f) == 2 && f[0] == "welcome" && f[1] == strconv.Itoa(a.idx):
			close(a.welcomed)
		case len(f) == 3 && f[0] == "push" && f[1] == strconv.Itoa(a.idx) && f[2] == strconv.Itoa(a.next):
			a.next++
		default:
			a.bad = append(a.bad, sc.Text())
		}
		a.mu.Unlock()
	}
	a.mu.Lock()
	a.err = sc.Err()
	if a.err == nil {
		a.err = errors.New("EOF")
	}
	a.mu.Unlock()
}

// soakServer is the server side in the server namespace.
type soakServer struct {
	udp        *net.UDPConn
	mu         sync.Mutex
	mapped     []netip.AddrPort // UDP flow -> its public address (router's outer side)
	byAddr     map[netip.AddrPort]int
	remaps     []string
	strangers  int // datagrams from addresses that are no flow's
	heartbeats int
	tcp        []*net.TCPConn
	tcpPorts   map[uint16]bool
}

// datagram handles one datagram at the server: a flow's hello (recorded
// and welcomed), a heartbeat, or a stranger's.
func (s *soakServer) datagram(from netip.AddrPort, data []byte) {
	f := strings.Fields(string(data))
	s.mu.Lock()
	switch {
	case len(data) == 0:
		if _, ok := s.byAddr[from]; ok {
			s.heartbeats++
		} else {
			s.strangers++
		}
	case len(f) == 2 && f[0] == "hello":
		i, err := strconv.Atoi(f[1])
		if err != nil || i < 0 || i >= len(s.mapped) {
			s.strangers++
			break
		}
		if old := s.mapped[i]; old.IsValid() && old != from {
			s.remaps = append(s.remaps, fmt.Sprintf("flow %d: %v then %v", i, old, from))
		}
		s.mapped[i] = from
		s.byAddr[from] = i
		s.mu.Unlock()
		_, _ = s.udp.WriteToUDPAddrPort([]byte("welcome "+f[1]), from)
		return
	default:
		s.strangers++
	}
	s.mu.Unlock()
}

// conn records a TCP connection by its hello, welcomes it and holds it
// open (the app sends nothing more) until it is closed.
func (s *soakServer) conn(c *net.TCPConn) {
	br := bufio.NewReader(c)
	_ = c.SetReadDeadline(time.Now().Add(30 * time.Second))
	line, err := br.ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 2 || f[0] != "hello" {
		return
	}
	j, err := strconv.Atoi(f[1])
	if err != nil || j < 0 || j >= len(s.tcp) {
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	s.mu.Lock()
	s.tcp[j] = c
	s.tcpPorts[uint16(c.RemoteAddr().(*net.TCPAddr).Port)] = true
	s.mu.Unlock()
	_, _ = c.Write([]byte("welcome " + f[1] + "\n"))
	_, _ = io.Copy(io.Discard, br)
}

// soakPush is one scheduled push.
type soakPush struct {
	at  time.Duration
	tcp bool
	idx int
	seq int
}

// soakSchedule spreads n pushes per target over d: push k falls at a random
// time in the k-th of n equal slots, so every target hears something at
// least every two slots and the load is even across the run.
func soakSchedule(rng *rand.Rand, d time.Duration, targets, n int, tcp bool) []soakPush {
	slot := d / time.Duration(n)
	out := make([]soakPush, 0, targets*n)
	for i := range targets {
		for k := range n {
			out = append(out, soakPush{at: time.Duration(k)*slot + time.Duration(rng.Int64N(int64(slot))), tcp: tcp, idx: i, seq: k})
		}
	}
	return out
}

// soakSample is natkeep's state at one moment.
type soakSample struct {
	at         time.Time
	goroutines float64
	rss        float64
	cpu        time.Duration
}

func TestSoakNAT(t *testing.T) {
	if testing.Short() {
		t.Skip("soak skipped in -short mode (NATKEEP_SOAK_DURATION=30m go test -run Soak -timeout 45m ./cmd/natkeep/ runs a long one)")
	}
	dur := 4 * time.Minute
	if v := os.Getenv("NATKEEP_SOAK_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 30*time.Second {
			t.Fatalf("NATKEEP_SOAK_DURATION=%q: want a duration of at least 30s", v)
		}
		dur = d
	}
	if dl, ok := t.Deadline(); ok && time.Until(dl) < dur+2*time.Minute {
		t.Fatalf("%v left before the test timeout, too little for a %v soak: run with -timeout %v or more", time.Until(dl).Round(time.Second), dur, (dur + 5*time.Minute).Round(time.Minute))
	}
	natlab.SkipUnlessCapable(t, false)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err == nil && lim.Cur < 16384 {
		want := min(lim.Max, 65536)
		if want < 8192 {
			t.Skipf("RLIMIT_NOFILE hard limit %d is too low for %d flows", lim.Max, soakUDPFlows)
		}
		old := lim.Cur
		lim.Cur = want
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			t.Fatalf("raise RLIMIT_NOFILE: %v", err)
		}
		t.Cleanup(func() { lim.Cur = old; _ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim) })
	}

	l := natlab.New(t, natlab.Config{UDPTimeout: 3 * time.Second, UDPStreamTimeout: 3 * time.Second, TCPEstablishedTimeout: 3 * time.Second})
	udpEvents := l.ConntrackEvents(t, "udp")
	tcpEvents := l.ConntrackEvents(t, "tcp")
	srv := &soakServer{mapped: make([]netip.AddrPort, soakUDPFlows), byAddr: map[netip.AddrPort]int{},
		tcp: make([]*net.TCPConn, soakTCPConns), tcpPorts: map[uint16]bool{}}
	srv.udp = l.ListenUDP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 9000).String())
	_ = srv.udp.SetReadBuffer(4 << 20)
	nktest.ServeUDP(t, srv.udp, srv.datagram)
	nktest.ServeTCP(t, l.ListenTCP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 9100).String()), srv.conn)
	routes := fmt.Sprintf("udp://127.0.0.1:5000/%s,tcp://127.0.0.1:5100/%s", netip.AddrPortFrom(l.ServerAddr, 9000), netip.AddrPortFrom(l.ServerAddr, 9100))
	nk := startNatkeep(t, l, "NATKEEP_ROUTES="+routes, "NATKEEP_LOG_LEVEL=info", "NATKEEP_UDP_HEARTBEAT_INTERVAL=1s",
		"NATKEEP_TCP_KEEPALIVE_IDLE=1s", "NATKEEP_TCP_KEEPALIVE_INTERVAL=1s", "NATKEEP_TCP_KEEPALIVE_COUNT=3")
	admin := l.HTTPClient(l.Client)
	sample := func() soakSample {
		f := nktest.Scrape(t, admin, "127.0.0.1:9299")
		return soakSample{at: time.Now(), goroutines: nktest.Value(f, "go_goroutines", nil),
			rss: nktest.Value(f, "process_resident_memory_bytes", nil), cpu: nk.CPUTime(t)}
	}
	setupStart := time.Now()

	// The app's UDP flows: each says hello once (resent until welcomed).
	udpApps := make([]*soakUDPApp, soakUDPFlows)
	for i := range udpApps {
		a := &soakUDPApp{idx: i, conn: l.DialUDP(t, l.Client, "127.0.0.1:5000"), got: map[int]int{}}
		_ = a.conn.SetReadBuffer(256 << 10)
		udpApps[i] = a
		go a.read()
		_, _ = a.conn.Write([]byte(fmt.Sprintf("hello %d", i)))
		if i%25 == 24 {
			// Pace flow creation, so conntrack -E keeps up with the burst of
			// NEW and ASSURED events (ENOBUFS would lose DESTROY events).
			time.Sleep(100 * time.Millisecond)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		waiting := 0
		for i, a := range udpApps {
			if !a.welcomed.Load() {
				waiting++
				_, _ = a.conn.Write([]byte(fmt.Sprintf("hello %d", i)))
			}
		}
		if waiting == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d UDP flows never got their welcome", waiting, soakUDPFlows)
		}
		time.Sleep(time.Second)
	}
	// The app's TCP connections.
	tcpApps := make([]*soakTCPApp, soakTCPConns)
	for j := range tcpApps {
		a := &soakTCPApp{idx: j, conn: l.DialTCP(t, l.Client, "127.0.0.1:5100"), welcomed: make(chan struct{})}
		tcpApps[j] = a
		go a.read()
		if _, err := a.conn.Write([]byte(fmt.Sprintf("hello %d\n", j))); err != nil {
			t.Fatalf("TCP connection %d: %v", j, err)
		}
		if j%20 == 19 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	for j, a := range tcpApps {
		select {
		case <-a.welcomed:
		case <-time.After(time.Until(deadline.Add(30 * time.Second))):
			t.Fatalf("TCP connection %d never got its welcome", j)
		}
	}
	srv.mu.Lock()
	for i, m := range srv.mapped {
		if !m.IsValid() {
			srv.mu.Unlock()
			t.Fatalf("server never saw UDP flow %d", i)
		}
	}
	srv.mu.Unlock()
	setupTook := time.Since(setupStart)
	// The first scrapes warm natkeep's metrics path (about 2.5 MiB of RSS
	// on first use): not a trend, so done before anything is measured.
	sample()
	sample()

	// Pushes: UDP every ~20 s per flow, TCP every ~10 s per connection,
	// each at least 5 times.
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 42))
	nUDP := max(5, int(dur/(20*time.Second)))
	nTCP := max(5, int(dur/(10*time.Second)))
	plan := append(soakSchedule(rng, dur, soakUDPFlows, nUDP, false), soakSchedule(rng, dur, soakTCPConns, nTCP, true)...)
	slices.SortFunc(plan, func(a, b soakPush) int { return int(a.at - b.at) })
	warmup := min(max(dur/4, 15*time.Second), time.Minute)
	t.Logf("soak: %d UDP flows and %d TCP connections set up in %v; pushing for %v (%d per flow, %d per connection, %d in all); warm-up %v",
		soakUDPFlows, soakTCPConns, setupTook.Round(time.Millisecond), dur, nUDP, nTCP, len(plan), warmup)

	var sendErrs []string
	start := time.Now()
	// natkeep's memory and goroutines every 5 s, for the report.
	var seriesMu sync.Mutex
	var series []string
	stopSeries := make(chan struct{})
	seriesDone := make(chan struct{})
	go func() {
		defer close(seriesDone)
		tick := time.NewTicker(5 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-stopSeries:
				return
			case <-tick.C:
			}
			rss, _ := nk.Memory(t)
			seriesMu.Lock()
			series = append(series, fmt.Sprintf("%ds:%.1f", int(time.Since(start).Seconds()), float64(rss)/(1<<20)))
			seriesMu.Unlock()
		}
	}()
	var warm soakSample
	warmTaken := false
	nextProgress := start.Add(5 * time.Minute)
	for _, p := range plan {
		if !warmTaken && time.Since(start) >= warmup {
			warm, warmTaken = sample(), true
		}
		if time.Now().After(nextProgress) {
			t.Logf("soak progress: %v of %v", time.Since(start).Round(time.Second), dur)
			nextProgress = nextProgress.Add(5 * time.Minute)
		}
		if nk.Exited() {
			t.Fatalf("natkeep exited during the soak:\n%s", nk.Output())
		}
		time.Sleep(time.Until(start.Add(p.at)))
		var err error
		if p.tcp {
			srv.mu.Lock()
			c := srv.tcp[p.idx]
			srv.mu.Unlock()
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			_, err = c.Write([]byte(fmt.Sprintf("push %d %d\n", p.idx, p.seq)))
		} else {
			srv.mu.Lock()
			to := srv.mapped[p.idx]
			srv.mu.Unlock()
			_, err = srv.udp.WriteToUDPAddrPort([]byte(fmt.Sprintf("push %d %d", p.idx, p.seq)), to)
		}
		if err != nil {
			sendErrs = append(sendErrs, fmt.Sprintf("%+v: %v", p, err))
		}
	}
	if !warmTaken {
		warm = sample()
	}
	// Let the last pushes arrive.
	lost := func() (udpLost, tcpLost int) {
		for _, a := range udpApps {
			a.mu.Lock()
			for k := range nUDP {
				if a.got[k] == 0 {
					udpLost++
				}
			}
			a.mu.Unlock()
		}
		for _, a := range tcpApps {
			a.mu.Lock()
			tcpLost += nTCP - a.next
			a.mu.Unlock()
		}
		return udpLost, tcpLost
	}
	grace := time.Now().Add(15 * time.Second)
	for {
		u, c := lost()
		if u+c == 0 || time.Now().After(grace) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	end := sample()
	close(stopSeries)
	<-seriesDone
	udpLost, tcpLost := lost()

	// Everything the apps saw.
	var dups, wrong int
	var examples []string
	for _, a := range udpApps {
		a.mu.Lock()
		for k, n := range a.got {
			if k >= nUDP {
				wrong++
			} else if n > 1 {
				dups += n - 1
			}
		}
		wrong += len(a.bad)
		for _, b := range a.bad {
			if len(examples) < 5 {
				examples = append(examples, fmt.Sprintf("UDP app %d got %q", a.idx, b))
			}
		}
		a.mu.Unlock()
	}
	var tcpEnded []string
	for _, a := range tcpApps {
		a.mu.Lock()
		wrong += len(a.bad)
		for _, b := range a.bad {
			if len(examples) < 5 {
				examples = append(examples, fmt.Sprintf("TCP app %d got %q", a.idx, b))
			}
		}
		if a.err != nil {
			tcpEnded = append(tcpEnded, fmt.Sprintf("conn %d: %v", a.idx, a.err))
		}
		a.mu.Unlock()
	}
	udpDestroys := udpEvents.Count("DESTROY", "dst="+l.ServerAddr.String(), "dport=9000")
	tcpDestroys := tcpEvents.Count("DESTROY", "dst="+l.ServerAddr.String(), "dport=9100")
	enobufs := strings.Contains(udpEvents.Output()+tcpEvents.Output(), "ENOBUFS")

	// The router still holds every mapping, with the ports the server saw.
	// A netlink dump of a busy table is not atomic (an entry being updated
	// can be skipped), so an entry counts as present if any of three dumps
	// shows it.
	ctUDP, ctTCP := map[uint16]bool{}, map[uint16]bool{}
	for range 3 {
		for p := range soakConntrackPorts(l.ConntrackList(t, "udp"), "9000") {
			ctUDP[p] = true
		}
		for p := range soakConntrackPorts(l.ConntrackList(t, "tcp"), "9100") {
			ctTCP[p] = true
		}
	}
	srv.mu.Lock()
	var missingUDP, missingTCP int
	var missingPorts []string
	for _, m := range srv.mapped {
		if !ctUDP[m.Port()] {
			missingUDP++
			missingPorts = append(missingPorts, fmt.Sprintf("udp/%d", m.Port()))
		}
	}
	for p := range srv.tcpPorts {
		if !ctTCP[p] {
			missingTCP++
			missingPorts = append(missingPorts, fmt.Sprintf("tcp/%d", p))
		}
	}
	heartbeats, strangers, remaps := srv.heartbeats, srv.strangers, slices.Clone(srv.remaps)
	srv.mu.Unlock()

	f := nktest.Scrape(t, admin, "127.0.0.1:9299")
	var udpL, tcpL map[string]string // every route: the metric names say the protocol
	flowsActive := nktest.Value(f, "natkeep_udp_flows_active", udpL)
	flowsCreated := nktest.Value(f, "natkeep_udp_flows_created_total", udpL)
	connsActive := nktest.Value(f, "natkeep_tcp_connections_active", tcpL)
	connsTotal := nktest.Value(f, "natkeep_tcp_connections_total", tcpL)
	var drops []string
	if fam := f["natkeep_udp_drops_total"]; fam != nil {
		for _, m := range fam.GetMetric() {
			if v := m.GetCounter().GetValue(); v > 0 {
				for _, lp := range m.GetLabel() {
					if lp.GetName() == "reason" {
						drops = append(drops, fmt.Sprintf("%s=%v", lp.GetValue(), v))
					}
				}
			}
		}
	}

	warns := nk.Grep(`"level":"WARN"`)
	errs := nk.Grep(`"level":"ERROR"`)
	t.Logf("soak %v: %d UDP flows, %d TCP connections; pushes %d UDP + %d TCP = %d; lost %d UDP, %d TCP; duplicates %d; misdelivered/garbled %d; send errors %d",
		dur, soakUDPFlows, soakTCPConns, soakUDPFlows*nUDP, soakTCPConns*nTCP, len(plan), udpLost, tcpLost, dups, wrong, len(sendErrs))
	t.Logf("natkeep at warm-up end (+%v): %v goroutines, RSS %s; at the end: %v goroutines, RSS %s; CPU %v over %v",
		warm.at.Sub(start).Round(time.Second), warm.goroutines, mib(int64(warm.rss)), end.goroutines, mib(int64(end.rss)),
		(end.cpu - warm.cpu).Round(10*time.Millisecond), end.at.Sub(warm.at).Round(time.Second))
	t.Logf("server saw %d heartbeats, %d datagrams from strangers, %d remaps; conntrack DESTROY events for live flows: %d UDP, %d TCP (ENOBUFS: %v); router entries missing at the end: %d UDP, %d TCP",
		heartbeats, strangers, len(remaps), udpDestroys, tcpDestroys, enobufs, missingUDP, missingTCP)
	t.Logf("natkeep metrics: flows active %v created %v, connections active %v total %v, drops %v; WARN lines %d, ERROR lines %d",
		flowsActive, flowsCreated, connsActive, connsTotal, drops, len(warns), len(errs))
	t.Logf("natkeep RSS (MiB) every 5 s: %s", strings.Join(series, " "))
	for i, w := range warns {
		if i == 10 {
			t.Logf("... and %d more WARN lines", len(warns)-10)
			break
		}
		t.Logf("WARN: %s", w)
	}

	if udpLost+tcpLost > 0 {
		t.Errorf("pushes lost: %d UDP, %d TCP", udpLost, tcpLost)
	}
	if wrong > 0 || dups > 0 {
		t.Errorf("%d misdelivered or garbled datagrams/lines and %d duplicates, e.g. %q", wrong, dups, examples)
	}
	if len(sendErrs) > 0 {
		t.Errorf("server push errors: %d, first %s", len(sendErrs), sendErrs[0])
	}
	if len(tcpEnded) > 0 {
		t.Errorf("%d TCP connections ended during the soak, e.g. %s", len(tcpEnded), tcpEnded[0])
	}
	if udpDestroys+tcpDestroys > 0 {
		t.Errorf("the router destroyed live mappings: %d UDP, %d TCP", udpDestroys, tcpDestroys)
	}
	if enobufs {
		t.Errorf("conntrack -E lost events (ENOBUFS): the DESTROY check is incomplete")
	}
	if strangers > 0 || len(remaps) > 0 {
		t.Errorf("mappings changed: %d datagrams from unknown addresses, remaps %q", strangers, remaps)
	}
	if missingUDP+missingTCP > 0 {
		// The criteria are the pushes (all arrived) and DESTROY events
		// during the run (none). An entry absent from the final dumps with
		// neither is reported, not failed: seen once on a machine whose
		// both cores were saturated by another benchmark, where a
		// keepalive probe can slip past the 3 s timeout after the last push.
		t.Logf("NOTE: %d UDP and %d TCP router entries absent from the final dumps (public ports %v)", missingUDP, missingTCP, missingPorts)
	}
	if flowsActive != soakUDPFlows || flowsCreated != soakUDPFlows || connsActive != soakTCPConns || connsTotal != soakTCPConns {
		t.Errorf("natkeep: flows active %v created %v, connections active %v total %v; want exactly %d and %d throughout",
			flowsActive, flowsCreated, connsActive, connsTotal, soakUDPFlows, soakTCPConns)
	}
	if end.rss > warm.rss*1.10 {
		t.Errorf("RSS grew from %s to %s after warm-up (more than 10%%)", mib(int64(warm.rss)), mib(int64(end.rss)))
	}
	// A few goroutines of slack besides the 2 %: idle TCP connections hold
	// none, so natkeep runs only a dozen or so, and the runtime starts some
	// of its own later (a GC mark worker per P at the first collection), or
	// a connection's direction has one while a push moves. A leak per flow
	// or connection would still be hundreds.
	if end.goroutines > warm.goroutines*1.02+soakGoroutineSlack {
		t.Errorf("goroutines grew from %v to %v after warm-up (more than 2%% + %d)", warm.goroutines, end.goroutines, soakGoroutineSlack)
	}
	if len(errs) > 0 {
		t.Errorf("%d ERROR lines, e.g. %s", len(errs), errs[0])
	}
}

// soakConntrackPorts returns the reply-direction destination ports (the
// public ports the NAT chose) of the entries whose original destination
// port is dport, from `conntrack -L` output.
func soakConntrackPorts(out, dport string) map[uint16]bool {
	ports := map[uint16]bool{}
	for _, line := range strings.Split(out, "\n") {
		var dports []string
		for _, f := range strings.Fields(line) {
			if v, ok := strings.CutPrefix(f, "dport="); ok {
				dports = append(dports, v)
			}
		}
		if len(dports) != 2 || dports[0] != dport {
			continue
		}
		if p, err := strconv.ParseUint(dports[1], 10, 16); err == nil {
			ports[uint16(p)] = true
		}
	}
	return ports
}
