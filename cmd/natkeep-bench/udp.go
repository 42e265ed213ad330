package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

type rrResult struct {
	Mode          string  `json:"mode"`
	Target        string  `json:"target"`
	Flows         int     `json:"flows"`
	Window        int     `json:"window"`
	Payload       int     `json:"payload"`
	DurationS     float64 `json:"duration_s"`
	Requests      uint64  `json:"requests"`       // answered round trips in the measured window
	TotalRequests uint64  `json:"total_requests"` // answered round trips including warm-up
	Rate          float64 `json:"rate"`           // answered round trips per second
	P50us         float64 `json:"p50_us"`
	P99us         float64 `json:"p99_us"`
	P999us        float64 `json:"p999_us"`
	MaxUs         float64 `json:"max_us"`
	Errors        uint64  `json:"errors"`
	Timeouts      uint64  `json:"timeouts"`
	Stale         uint64  `json:"stale"` // late replies to requests already counted as timed out
}

// runUDPRR runs N flows, each with its own connected socket keeping
// -window requests in flight (a new one for each answer), and reports rate
// and latency.
func runUDPRR(args []string) error {
	fs := flag.NewFlagSet("udp-rr", flag.ExitOnError)
	target := fs.String("target", "", "relay or echo address (host:port)")
	flows := fs.Int("flows", 1, "concurrent flows, one socket each")
	window := fs.Int("window", 1, "requests each flow keeps in flight")
	duration := fs.Duration("duration", 10*time.Second, "measured time")
	warmup := fs.Duration("warmup", 300*time.Millisecond, "unmeasured time first (flow set-up)")
	size := fs.Int("size", 64, "payload bytes (at least 16)")
	timeout := fs.Duration("timeout", 500*time.Millisecond, "a request unanswered this long counts as a timeout")
	_ = fs.Parse(args)
	raiseNoFile()
	ap, err := netip.ParseAddrPort(*target)
	if err != nil {
		return fmt.Errorf("-target: %w", err)
	}
	if *flows < 1 || *flows > 100000 || *size < 16 || *size > 65000 || *window < 1 || *window > 1024 {
		return errors.New("want 1 <= -flows <= 100000, 1 <= -window <= 1024 and 16 <= -size <= 65000")
	}
	raddr := net.UDPAddrFromAddrPort(ap)
	conns := make([]*net.UDPConn, *flows)
	for i := range conns {
		if conns[i], err = net.DialUDP("udp", nil, raddr); err != nil {
			return err
		}
		defer conns[i].Close()
	}

	start := time.Now()
	measureFrom := start.Add(*warmup)
	end := measureFrom.Add(*duration)
	type flowOut struct {
		h                                hist
		n, total, errs, timeouts, stales uint64
	}
	outs := make([]flowOut, *flows)
	var wg sync.WaitGroup
	for i, c := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := &outs[i]
			w := make([]byte, *size)
			for j := 16; j < len(w); j++ {
				w[j] = byte(j)
			}
			binary.LittleEndian.PutUint64(w[8:], uint64(i))
			r := make([]byte, 65536)
			// slots[seq % window] is a request in flight (seq 0: free).
			slots := make([]struct {
				seq uint64
				t0  time.Time
			}, *window)
			inflight, next := 0, uint64(1)
			for {
				now := time.Now()
				for inflight < *window && now.Before(end) {
					sl := &slots[next%uint64(*window)]
					if sl.seq != 0 { // an older request never answered: written off
						o.timeouts++
						inflight--
					}
					binary.LittleEndian.PutUint64(w, next)
					if _, err := c.Write(w); err != nil {
						o.errs++
						sl.seq = 0
						time.Sleep(time.Millisecond) // e.g. ECONNREFUSED: nothing listens
						break
					}
					sl.seq, sl.t0 = next, time.Now()
					next++
					inflight++
				}
				if inflight == 0 {
					if !now.Before(end) {
						return
					}
					continue
				}
				_ = c.SetReadDeadline(now.Add(*timeout))
				n, err := c.Read(r)
				if err != nil {
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						o.timeouts += uint64(inflight) // every request in flight is lost
						clear(slots)
						inflight = 0
					} else {
						o.errs++
						time.Sleep(time.Millisecond)
					}
					continue
				}
				seq := uint64(0)
				if n == len(w) {
					seq = binary.LittleEndian.Uint64(r)
				}
				sl := &slots[seq%uint64(*window)]
				if seq == 0 || sl.seq != seq {
					o.stales++
					continue
				}
				sl.seq = 0
				inflight--
				o.total++
				if !sl.t0.Before(measureFrom) && sl.t0.Before(end) {
					o.n++
					o.h.record(time.Since(sl.t0))
				}
			}
		}()
	}
	wg.Wait()
	var h hist
	res := rrResult{Mode: "udp-rr", Target: *target, Flows: *flows, Window: *window, Payload: *size, DurationS: duration.Seconds()}
	for i := range outs {
		o := &outs[i]
		h.merge(&o.h)
		res.Requests += o.n
		res.TotalRequests += o.total
		res.Errors += o.errs
		res.Timeouts += o.timeouts
		res.Stale += o.stales
	}
	res.Rate = float64(res.Requests) / duration.Seconds()
	res.P50us, res.P99us, res.P999us, res.MaxUs = us(h.quantile(0.5)), us(h.quantile(0.99)), us(h.quantile(0.999)), us(h.max)
	printJSON(res)
	return nil
}

type idleResult struct {
	Mode        string  `json:"mode"`
	Target      string  `json:"target"`
	Requested   int     `json:"requested"`
	Attempted   int     `json:"attempted"` // requested, capped by RLIMIT_NOFILE
	Opened      int     `json:"opened"`
	Answered    int     `json:"answered"`
	OpenErrors  int     `json:"open_errors"`
	FirstError  string  `json:"first_error,omitempty"`
	OpenS       float64 `json:"open_s"`
	HeldS       float64 `json:"held_s,omitempty"`
	Interrupted bool    `json:"interrupted,omitempty"`
	GaveUp      bool    `json:"gave_up,omitempty"` // stopped opening early: too many failures in a row or -open-limit
	NoFile      uint64  `json:"nofile"`            // RLIMIT_NOFILE; 0 = unknown
}

// finish fills in how opening went, signals readiness, holds the sockets
// open for hold and prints the result: the common end of udp-idle and
// tcp-idle.
func (res *idleResult) finish(start time.Time, opened, answered int, ferr *firstErr, gaveUp bool, ready string, holdFor time.Duration) {
	res.OpenS = time.Since(start).Seconds()
	res.Opened, res.Answered = opened, answered
	res.OpenErrors = int(ferr.n.Load())
	res.FirstError = ferr.msg
	res.GaveUp = gaveUp
	writeReady(ready, *res)
	fmt.Fprintf(os.Stderr, "natkeep-bench %s: %d opened, %d answered in %.1fs; holding %s\n", res.Mode, res.Opened, res.Answered, res.OpenS, holdFor)
	h0 := time.Now()
	res.Interrupted = hold(holdFor)
	res.HeldS = time.Since(h0).Seconds()
	printJSON(*res)
}

// parsePorts reads "first-last".
func parsePorts(s string) (uint16, uint16, error) {
	if s == "" || s == "0" {
		return 0, 0, nil
	}
	a, b, ok := strings.Cut(s, "-")
	first, err1 := strconv.ParseUint(a, 10, 16)
	last, err2 := strconv.ParseUint(b, 10, 16)
	if !ok || err1 != nil || err2 != nil || first == 0 || last < first {
		return 0, 0, fmt.Errorf("port range %q: want first-last", s)
	}
	return uint16(first), uint16(last), nil
}

// firstErr keeps the first error message seen.
type firstErr struct {
	mu  sync.Mutex
	msg string
	n   atomic.Int64
}

func (f *firstErr) add(err error) {
	f.n.Add(1)
	f.mu.Lock()
	if f.msg == "" {
		f.msg = err.Error()
	}
	f.mu.Unlock()
}

// streak stops an opening loop after too many failures in a row.
type streak struct {
	n, limit int64
	mu       sync.Mutex
	stop     atomic.Bool
}

func (s *streak) ok() { s.mu.Lock(); s.n = 0; s.mu.Unlock() }

func (s *streak) fail() {
	s.mu.Lock()
	s.n++
	if s.limit > 0 && s.n >= s.limit {
		s.stop.Store(true)
	}
	s.mu.Unlock()
}

// runUDPIdle opens N client sockets, sends one datagram on each and waits
// for its echo (so the relay has a flow for each), then holds them silent.
func runUDPIdle(args []string) error {
	fs := flag.NewFlagSet("udp-idle", flag.ExitOnError)
	target := fs.String("target", "", "relay address (host:port)")
	flows := fs.Int("flows", 10000, "client sockets (flows) to open")
	holdFor := fs.Duration("hold", 30*time.Second, "hold the flows open this long after opening (SIGTERM ends it early)")
	ready := fs.String("ready", "", "write a JSON summary here once every flow is opened")
	ports := fs.String("ports", "10000-32767", "explicit local ports per source address (127.0.0.2, .3, ...), kept below the ephemeral range the relay uses for its own sockets; 0 = kernel's choice")
	workers := fs.Int("workers", 128, "flows opened in parallel")
	timeout := fs.Duration("timeout", time.Second, "wait this long for each echo")
	tries := fs.Int("tries", 3, "send the first datagram up to this many times")
	openLimit := fs.Duration("open-limit", 120*time.Second, "give up opening after this long")
	maxFails := fs.Int("max-fails", 256, "give up opening after this many unanswered flows in a row (the relay is out of file descriptors or ports)")
	_ = fs.Parse(args)
	nofile := raiseNoFile()
	ap, err := netip.ParseAddrPort(*target)
	if err != nil {
		return fmt.Errorf("-target: %w", err)
	}
	first, last, err := parsePorts(*ports)
	if err != nil {
		return err
	}
	res := idleResult{Mode: "udp-idle", Target: *target, Requested: *flows, NoFile: nofile}
	res.Attempted = fdBudget(*flows, nofile)
	if res.Attempted < 1 {
		return fmt.Errorf("RLIMIT_NOFILE %d too low", nofile)
	}
	src := newSourceAddrs(ap, first, last, 20000)
	var srcMu sync.Mutex
	nextSrc := func() (netip.AddrPort, bool) { srcMu.Lock(); defer srcMu.Unlock(); return src.next() }

	raddr := net.UDPAddrFromAddrPort(ap)
	conns := make([]*net.UDPConn, res.Attempted)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	var answered atomic.Int64
	var ferr firstErr
	var fails streak
	fails.limit = int64(*maxFails)
	idx := make(chan int, *workers)
	giveUp := time.Now().Add(*openLimit)
	start := time.Now()
	var wg sync.WaitGroup
	for range max(*workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := make([]byte, 64)
			r := make([]byte, 2048)
			for i := range idx {
				if time.Now().After(giveUp) || fails.stop.Load() {
					continue
				}
				var c *net.UDPConn
				for k := 0; k < 16; k++ { // a few local addresses may be taken
					la, ok := nextSrc()
					if !ok {
						ferr.add(errors.New("out of local source addresses"))
						break
					}
					var laddr *net.UDPAddr
					if la.Port() != 0 || la.Addr() != netip.IPv6Loopback() {
						laddr = net.UDPAddrFromAddrPort(la)
					}
					var derr error
					c, derr = net.DialUDP("udp", laddr, raddr)
					if derr == nil {
						break
					}
					c = nil
					if !errors.Is(derr, syscall.EADDRINUSE) {
						ferr.add(derr)
						break
					}
				}
				if c == nil {
					fails.fail()
					continue
				}
				conns[i] = c
				binary.LittleEndian.PutUint64(w, uint64(i))
				ok := false
				for t := 0; t < *tries; t++ {
					if _, err := c.Write(w); err != nil {
						time.Sleep(*timeout / 4)
						continue
					}
					_ = c.SetReadDeadline(time.Now().Add(*timeout))
					n, err := c.Read(r)
					if err == nil && n == len(w) && binary.LittleEndian.Uint64(r) == uint64(i) {
						answered.Add(1)
						ok = true
						break
					}
				}
				if ok {
					fails.ok()
				} else {
					fails.fail()
				}
			}
		}()
	}
	for i := range res.Attempted {
		idx <- i
	}
	close(idx)
	wg.Wait()
	opened := 0
	for _, c := range conns {
		if c != nil {
			opened++
		}
	}
	res.finish(start, opened, int(answered.Load()), &ferr, fails.stop.Load() || time.Now().After(giveUp), *ready, *holdFor)
	return nil
}
