package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/signal"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/natkeep/natkeep/relay"
)

// probeUsage is `natkeep probe`'s synopsis.
const probeUsage = "usage: natkeep probe [--json] [--max-lifetime DURATION] [--no-hops] HOST:PORT"

// probeReport is the JSON form of a probe's result; durations in seconds.
type probeReport struct {
	Server          string   `json:"server"`
	Local           string   `json:"local"`
	Mapped          string   `json:"mapped"`
	NAT             bool     `json:"nat"`
	Mapping         string   `json:"mapping"`
	ResponsePort    bool     `json:"response_port"`
	LifetimeSeconds *float64 `json:"binding_lifetime_seconds"`      // null: not learned
	ExpiredSeconds  *float64 `json:"binding_expired_after_seconds"` // null: no probe expired (lifetime is a lower bound)
	Hops            int      `json:"nat_hops"`
	HopsNote        string   `json:"nat_hops_note,omitempty"`
	RTTSeconds      float64  `json:"rtt_seconds"`
	Recommended     struct {
		Interval string `json:"interval"`
		TTL      string `json:"ttl"`
		Payload  string `json:"payload"`
	} `json:"recommended"`
	Sent           int64   `json:"datagrams_sent"`
	Received       int64   `json:"datagrams_received"`
	ElapsedSeconds float64 `json:"elapsed_seconds"`
	Error          string  `json:"error,omitempty"`
}

// probe is `natkeep probe HOST:PORT`: path learning run once against a STUN
// server or natkeep responder, reported for an operator before deploying.
// Exit status 0 when it learned something, 1 when the server never
// answered STUN, 2 on bad arguments.
func probe(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("natkeep probe", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	asJSON := fs.Bool("json", false, "print the result as JSON")
	maxLifetime := fs.Duration("max-lifetime", 0, "the longest silence probed")
	noHops := fs.Bool("no-hops", false, "skip the NAT distance search")
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(stderr, "natkeep probe: %v\n%s\n", err, probeUsage)
		return 2
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "natkeep probe: want one HOST:PORT, got %d arguments\n%s\n", fs.NArg(), probeUsage)
		return 2
	}
	if *maxLifetime < 0 || (*maxLifetime > 0 && *maxLifetime < 4*time.Second) {
		fmt.Fprintf(stderr, "natkeep probe: --max-lifetime %s: want at least 4s\n%s\n", *maxLifetime, probeUsage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	server, err := resolveProbeTarget(ctx, fs.Arg(0))
	if err != nil {
		fmt.Fprintf(stderr, "natkeep probe: %v\n%s\n", err, probeUsage)
		return 2
	}
	start := time.Now()
	progress := func(msg string) {
		fmt.Fprintf(stderr, "natkeep probe: [%s] %s\n", time.Since(start).Round(time.Second), msg)
	}
	progress(fmt.Sprintf("probing %s: this takes about twice the NAT's binding lifetime plus a few seconds per narrowing round (minutes on real NATs); Ctrl-C stops", server))
	// A line every 30 s while a long silence runs, so nobody wonders whether it hung.
	ticker := time.NewTicker(30 * time.Second)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-ticker.C:
				progress("still probing")
			case <-done:
				return
			}
		}
	}()
	rep, err := relay.ProbePath(ctx, relay.ProbeOptions{Server: server, MaxLifetime: *maxLifetime, SkipHops: *noHops, Progress: progress})
	ticker.Stop()
	close(done)
	code := 0
	switch {
	case errors.Is(err, relay.ErrNoSTUN):
		code = 1
	case err != nil && !rep.Mapped.IsValid():
		code = 1
	}
	if *asJSON {
		if e := writeProbeJSON(stdout, rep, err); e != nil {
			fmt.Fprintf(stderr, "natkeep probe: %v\n", e)
			return 1
		}
	} else {
		writeProbeText(stdout, rep, err)
	}
	if err != nil {
		fmt.Fprintf(stderr, "natkeep probe: %v\n", err)
	}
	return code
}

// resolveProbeTarget parses HOST:PORT, resolving a name.
func resolveProbeTarget(ctx context.Context, s string) (netip.AddrPort, error) {
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("%q: %v", s, err)
	}
	pn, err := strconv.ParseUint(port, 10, 16)
	if err != nil || pn == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: bad port %q", s, port)
	}
	if a, err := netip.ParseAddr(host); err == nil {
		return netip.AddrPortFrom(a.Unmap(), uint16(pn)), nil
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupNetIP(rctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return netip.AddrPort{}, fmt.Errorf("%q: cannot resolve %q: %v", s, host, err)
	}
	return netip.AddrPortFrom(addrs[0].Unmap(), uint16(pn)), nil
}

// recommendation is what natkeep probe suggests for the route's variables.
func recommendation(rep relay.PathReport) (interval, ttl, payload string) {
	interval, ttl, payload = "auto", "0", "stun"
	if rep.Learned {
		interval = rep.Interval.Round(100 * time.Millisecond).String()
	}
	if rep.Hops > 0 {
		ttl = strconv.Itoa(rep.Hops)
	}
	return interval, ttl, payload
}

func writeProbeText(w io.Writer, rep relay.PathReport, err error) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, v string) { fmt.Fprintf(tw, "%s\t%s\n", k, v) }
	row("server", rep.Server.String())
	if !rep.Mapped.IsValid() {
		row("answer", "none: "+errString(err))
		_ = tw.Flush()
		return
	}
	nat := "no NAT: the server sees the local address"
	if rep.NAT {
		nat = "behind a NAT (local " + rep.Local.String() + ")"
	}
	row("mapped address", rep.Mapped.String()+"  "+nat)
	row("mapping", rep.Mapping)
	switch {
	case rep.Learned && rep.Lifetime.Expires == 0:
		row("binding lifetime", fmt.Sprintf("at least %s (every probe survived)", rep.Lifetime.Survives))
	case rep.Learned && rep.Lifetime.Survives == 0:
		row("binding lifetime", fmt.Sprintf("shorter than %s (even the shortest probe expired)", rep.Lifetime.Expires))
	case rep.Learned:
		row("binding lifetime", fmt.Sprintf("%s (a mapping silent %s survived, one silent %s did not)", rep.Lifetime.Survives, rep.Lifetime.Survives, rep.Lifetime.Expires))
	default:
		row("binding lifetime", "not measured: "+errString(err))
	}
	if rep.Hops > 0 {
		row("NAT distance", fmt.Sprintf("%d hop(s): heartbeats with TTL %d keep the mapping and never reach the server", rep.Hops, rep.Hops))
	} else {
		row("NAT distance", "unknown: "+rep.HopsNote)
	}
	row("rtt", rep.RTT.Round(10*time.Microsecond).String())
	row("probe cost", fmt.Sprintf("%d datagrams sent, %d received in %s", rep.Sent, rep.Received, rep.Elapsed.Round(time.Second)))
	_ = tw.Flush()
	interval, ttl, payload := recommendation(rep)
	fmt.Fprintf(w, "\nrecommended settings (or interval=auto, and ttl=auto with payload=stun, to learn them in place):\n")
	fmt.Fprintf(w, "  NATKEEP_UDP_HEARTBEAT_INTERVAL=%s\n  NATKEEP_UDP_HEARTBEAT_TTL=%s\n  NATKEEP_UDP_HEARTBEAT_PAYLOAD=%s\n", interval, ttl, payload)
}

func writeProbeJSON(w io.Writer, rep relay.PathReport, err error) error {
	var out probeReport
	out.Server, out.NAT, out.Mapping, out.ResponsePort = rep.Server.String(), rep.NAT, rep.Mapping, rep.ResponsePort
	if rep.Mapped.IsValid() {
		out.Local, out.Mapped = rep.Local.String(), rep.Mapped.String()
	}
	if rep.Learned {
		s := rep.Lifetime.Survives.Seconds()
		out.LifetimeSeconds = &s
		if rep.Lifetime.Expires > 0 {
			e := rep.Lifetime.Expires.Seconds()
			out.ExpiredSeconds = &e
		}
	}
	out.Hops, out.HopsNote, out.RTTSeconds = rep.Hops, rep.HopsNote, rep.RTT.Seconds()
	out.Recommended.Interval, out.Recommended.TTL, out.Recommended.Payload = recommendation(rep)
	out.Sent, out.Received, out.ElapsedSeconds = rep.Sent, rep.Received, rep.Elapsed.Seconds()
	if err != nil {
		out.Error = err.Error()
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func errString(err error) string {
	if err == nil {
		return "-"
	}
	return err.Error()
}
