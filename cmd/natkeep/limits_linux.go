package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"
	"syscall"

	"github.com/natkeep/natkeep/relay"
)

// warnLimits logs once at start-up when the flow limits promise more than
// the host can give: each UDP flow needs a descriptor and an ephemeral port,
// each TCP connection two descriptors, and past those limits new flows fail
// as setup drops instead of clean refusals.
func warnLimits(log *slog.Logger, routes []relay.Route) {
	var udpFlows, maxRoute int
	for _, r := range routes {
		if r.Proto == relay.UDP {
			udpFlows += r.UDP.MaxFlows
			maxRoute = max(maxRoute, r.UDP.MaxFlows)
		}
	}
	if udpFlows == 0 {
		return
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err == nil && uint64(udpFlows) > rl.Cur {
		log.Warn("UDP flow limits exceed the open-file limit; raise nofile or lower NATKEEP_UDP_MAX_FLOWS",
			"max_flows_total", udpFlows, "nofile", rl.Cur)
	}
	if lo, hi, ok := portRange(); ok && maxRoute > hi-lo+1 {
		// Info, not a warning: the default limit (65536) is above the
		// default range (28232), and most routes never come close.
		log.Info("a UDP route's flow limit exceeds the ephemeral port range (one local port per flow); widen net.ipv4.ip_local_port_range or lower NATKEEP_UDP_MAX_FLOWS",
			"max_flows", maxRoute, "ports", hi-lo+1)
	}
}

// portRange reads net.ipv4.ip_local_port_range.
func portRange() (lo, hi int, ok bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, false
	}
	if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &lo, &hi); err != nil || hi < lo {
		return 0, 0, false
	}
	return lo, hi, true
}
