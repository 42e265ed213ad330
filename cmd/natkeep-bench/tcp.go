package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// dialerFrom returns a dialer whose connections leave from src (port 0).
func dialerFrom(src netip.Addr, timeout time.Duration) *net.Dialer {
	d := &net.Dialer{Timeout: timeout, KeepAlive: -1}
	if src.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(netip.AddrPortFrom(src, 0))
		d.Control = bindNoPort(src)
	}
	return d
}

// loopbackSource returns the i-th extra loopback source address for an
// IPv4 loopback target (127.0.0.2 + i), or the zero Addr (kernel's choice).
func loopbackSource(target netip.AddrPort, i int) netip.Addr {
	a := target.Addr().Unmap()
	if !a.Is4() || !a.IsLoopback() || i < 0 || i > 250 {
		return netip.Addr{}
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, byte(2 + i)})
}

type rateResult struct {
	Mode      string  `json:"mode"`
	Target    string  `json:"target"`
	Conc      int     `json:"conc"`
	DurationS float64 `json:"duration_s"`
	Conns     uint64  `json:"conns"`       // completed connect+request+response+close in the window
	ConnsAll  uint64  `json:"conns_total"` // including warm-up
	Rate      float64 `json:"rate"`        // completed connections per second
	P50us     float64 `json:"p50_us"`
	P99us     float64 `json:"p99_us"`
	Errors    uint64  `json:"errors"`
	FirstErr  string  `json:"first_error,omitempty"`
}

// runTCPRate runs C workers that each loop: connect, one 64-byte
// request/response, close.
func runTCPRate(args []string) error {
	fs := flag.NewFlagSet("tcp-rate", flag.ExitOnError)
	target := fs.String("target", "", "relay or echo address (host:port)")
	duration := fs.Duration("duration", 10*time.Second, "measured time")
	warmup := fs.Duration("warmup", 200*time.Millisecond, "unmeasured time first")
	conc := fs.Int("conc", 8, "concurrent workers")
	size := fs.Int("size", 64, "request bytes")
	timeout := fs.Duration("timeout", 2*time.Second, "per-connection time limit")
	_ = fs.Parse(args)
	raiseNoFile()
	ap, err := netip.ParseAddrPort(*target)
	if err != nil {
		return fmt.Errorf("-target: %w", err)
	}
	if *conc < 1 || *conc > 10000 || *size < 1 || *size > 65536 {
		return errors.New("want 1 <= -conc <= 10000 and 1 <= -size <= 65536")
	}
	start := time.Now()
	measureFrom := start.Add(*warmup)
	end := measureFrom.Add(*duration)
	type workerOut struct {
		h         hist
		n, all, e uint64
	}
	outs := make([]workerOut, *conc)
	var ferr firstErr
	var wg sync.WaitGroup
	for i := range outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			o := &outs[i]
			d := dialerFrom(loopbackSource(ap, i%64), *timeout)
			w := make([]byte, *size)
			r := make([]byte, *size)
			for k := 0; k < 1<<30; k++ {
				t0 := time.Now()
				if !t0.Before(end) {
					return
				}
				if err := oneConn(d, *target, w, r, t0.Add(*timeout)); err != nil {
					o.e++
					ferr.add(err)
					time.Sleep(time.Millisecond)
					continue
				}
				o.all++
				if !t0.Before(measureFrom) {
					o.n++
					o.h.record(time.Since(t0))
				}
			}
		}()
	}
	wg.Wait()
	res := rateResult{Mode: "tcp-rate", Target: *target, Conc: *conc, DurationS: duration.Seconds(), FirstErr: ferr.msg}
	var h hist
	for i := range outs {
		h.merge(&outs[i].h)
		res.Conns += outs[i].n
		res.ConnsAll += outs[i].all
		res.Errors += outs[i].e
	}
	res.Rate = float64(res.Conns) / duration.Seconds()
	res.P50us, res.P99us = us(h.quantile(0.5)), us(h.quantile(0.99))
	printJSON(res)
	return nil
}

func oneConn(d *net.Dialer, target string, w, r []byte, deadline time.Time) error {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", target)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(deadline)
	if _, err := c.Write(w); err != nil {
		return err
	}
	_, err = io.ReadFull(c, r)
	return err
}

// runTCPIdle opens N connections (round robin over the targets), does one
// 64-byte request/response on each, then holds them idle.
func runTCPIdle(args []string) error {
	fs := flag.NewFlagSet("tcp-idle", flag.ExitOnError)
	targetList := fs.String("target", "", "relay addresses, comma-separated (connections are spread round robin)")
	conns := fs.Int("conns", 10000, "connections to open")
	holdFor := fs.Duration("hold", 30*time.Second, "hold the connections open this long after opening (SIGTERM ends it early)")
	ready := fs.String("ready", "", "write a JSON summary here once every connection is opened")
	workers := fs.Int("workers", 128, "connections opened in parallel")
	timeout := fs.Duration("timeout", 2*time.Second, "per-connection time limit for connect and the echo")
	openLimit := fs.Duration("open-limit", 120*time.Second, "give up opening after this long")
	maxFails := fs.Int("max-fails", 256, "give up opening after this many failures in a row (the relay is out of file descriptors)")
	perIP := fs.Int("per-source", 20000, "connections per loopback source address (127.0.0.2, .3, ...)")
	_ = fs.Parse(args)
	nofile := raiseNoFile()
	targets, err := splitAddrs(*targetList)
	if err != nil || len(targets) == 0 {
		return fmt.Errorf("-target: want host:port[,host:port...] (%v)", err)
	}
	res := idleResult{Mode: "tcp-idle", Target: *targetList, Requested: *conns, NoFile: nofile}
	res.Attempted = fdBudget(*conns, nofile)
	if res.Attempted < 1 {
		return fmt.Errorf("RLIMIT_NOFILE %d too low", nofile)
	}
	open := make([]net.Conn, res.Attempted)
	defer func() {
		for _, c := range open {
			if c != nil {
				c.Close()
			}
		}
	}()
	var answered atomic.Int64
	var ferr firstErr
	var fails streak
	fails.limit = int64(*maxFails)
	giveUp := time.Now().Add(*openLimit)
	idx := make(chan int, *workers)
	start := time.Now()
	var wg sync.WaitGroup
	for range max(*workers, 1) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := make([]byte, 64)
			r := make([]byte, 64)
			for i := range idx {
				if time.Now().After(giveUp) || fails.stop.Load() {
					continue
				}
				tg := targets[i%len(targets)]
				d := dialerFrom(loopbackSource(tg, i/max(*perIP, 1)), *timeout)
				deadline := time.Now().Add(*timeout)
				c, err := d.Dial("tcp", tg.String())
				if err != nil {
					ferr.add(err)
					fails.fail()
					continue
				}
				open[i] = c
				_ = c.SetDeadline(deadline)
				w[0], w[1] = byte(i), byte(i>>8)
				if _, err := c.Write(w); err == nil {
					if _, err = io.ReadFull(c, r); err == nil && r[0] == w[0] && r[1] == w[1] {
						answered.Add(1)
						fails.ok()
						_ = c.SetDeadline(time.Time{})
						continue
					}
					ferr.add(fmt.Errorf("echo: %v", err))
				} else {
					ferr.add(err)
				}
				fails.fail()
			}
		}()
	}
	for i := range res.Attempted {
		idx <- i
	}
	close(idx)
	wg.Wait()
	opened := 0
	for _, c := range open {
		if c != nil {
			opened++
		}
	}
	res.finish(start, opened, int(answered.Load()), &ferr, fails.stop.Load() || time.Now().After(giveUp), *ready, *holdFor)
	return nil
}
