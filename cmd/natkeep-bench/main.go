// Command natkeep-bench is the load generator and echo server behind
// cmd/natkeep-bench/run.sh, which compares natkeep with a direct path and
// with socat, nginx (stream) and HAProxy on loopback.
//
//	natkeep-bench echo      -udp ADDR[,ADDR] -tcp ADDR[,ADDR]
//	natkeep-bench udp-rr    -target ADDR -flows N -duration D
//	natkeep-bench udp-idle  -target ADDR -flows N -hold D
//	natkeep-bench tcp-rate  -target ADDR -duration D -conc C
//	natkeep-bench tcp-idle  -target ADDR[,ADDR] -conns N -hold D
//	natkeep-bench table     -in results.tsv
//
// Every load mode stops by itself (its duration, or its hold time, or
// SIGTERM/SIGINT) and prints one JSON object on stdout. Network traffic goes
// only to the addresses given, which run.sh keeps on loopback.
package main

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	args := os.Args[2:]
	var err error
	switch os.Args[1] {
	case "echo":
		err = runEcho(args)
	case "udp-rr":
		err = runUDPRR(args)
	case "udp-idle":
		err = runUDPIdle(args)
	case "tcp-rate":
		err = runTCPRate(args)
	case "tcp-idle":
		err = runTCPIdle(args)
	case "table":
		err = runTable(args)
	case "help", "-h", "-help", "--help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "natkeep-bench: unknown mode %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "natkeep-bench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: natkeep-bench MODE [flags]   (MODE -h lists its flags)
  echo      -udp ADDR[,ADDR] -tcp ADDR[,ADDR]        UDP and TCP echo servers
  udp-rr    -target ADDR -flows N -duration D        request/response rate and latency
  udp-idle  -target ADDR -flows N -hold D            open N flows, hold them idle
  tcp-rate  -target ADDR -duration D -conc C         connections per second
  tcp-idle  -target ADDR[,ADDR] -conns N -hold D     open N connections, hold them idle
  table     -in FILE                                 Markdown table from run.sh results
`)
}

// fdBudget is how many of want sockets fit under the descriptor limit
// nofile (from raiseNoFile), 64 kept spare; nofile 0 (unknown) caps nothing.
func fdBudget(want int, nofile uint64) int {
	if nofile == 0 {
		return want
	}
	return min(want, int(nofile)-64)
}

// printJSON writes v as one line of JSON on stdout.
func printJSON(v any) {
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "natkeep-bench: json: %v\n", err)
		return
	}
	fmt.Println(string(b))
}

// writeReady writes v as JSON to path (if set) atomically, so a script that
// polls for the file never reads half of it.
func writeReady(path string, v any) {
	if path == "" {
		return
	}
	b, _ := json.Marshal(v)
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err == nil {
		_ = os.Rename(tmp, path)
	}
}

// splitAddrs parses a comma-separated list of host:port.
func splitAddrs(s string) ([]netip.AddrPort, error) {
	var out []netip.AddrPort
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		ap, err := netip.ParseAddrPort(f)
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", f, err)
		}
		out = append(out, ap)
	}
	return out, nil
}

// hold waits for d or a SIGTERM/SIGINT, whichever comes first.
func hold(d time.Duration) (interrupted bool) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sig)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return false
	case <-sig:
		return true
	}
}

// sourceAddrs hands out local addresses for many client sockets toward a
// loopback target: 127.0.0.2, 127.0.0.3, ... (IPv6: ::1 only), each with
// ports first..last when explicit ports are wanted. Spreading over source
// addresses keeps clear of the ephemeral port range (which the relay needs
// for its own upstream sockets) and of the 4-tuple limit per source address.
type sourceAddrs struct {
	v6          bool
	first, last uint16 // explicit port range; 0 = let the kernel choose
	perIP       int    // sockets per source address when the kernel chooses
	ip          netip.Addr
	port        uint16
	n           int
}

func newSourceAddrs(target netip.AddrPort, first, last uint16, perIP int) *sourceAddrs {
	s := &sourceAddrs{first: first, last: last, perIP: perIP, port: first}
	if target.Addr().Is6() && !target.Addr().Is4In6() {
		s.v6 = true
		s.ip = netip.IPv6Loopback()
	} else {
		s.ip = netip.AddrFrom4([4]byte{127, 0, 0, 2})
	}
	return s
}

// next returns the next local address to bind, or ok=false when the
// addresses are used up.
func (s *sourceAddrs) next() (netip.AddrPort, bool) {
	if s.first == 0 {
		if s.n > 0 && s.n%s.perIP == 0 && !s.v6 {
			s.ip = s.ip.Next()
		}
		s.n++
		if !s.ip.IsLoopback() {
			return netip.AddrPort{}, false
		}
		return netip.AddrPortFrom(s.ip, 0), true
	}
	if s.port > s.last || s.port < s.first {
		if s.v6 {
			return netip.AddrPort{}, false
		}
		s.ip = s.ip.Next()
		s.port = s.first
	}
	if !s.ip.IsLoopback() {
		return netip.AddrPort{}, false
	}
	ap := netip.AddrPortFrom(s.ip, s.port)
	s.port++
	return ap, true
}
