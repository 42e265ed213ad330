package relay

import "sync/atomic"

// Budget is what the machine lets natkeep's flows and connections hold,
// across all routes. The caller derives it from RLIMIT_NOFILE (less a
// reserve for the admin server, accepts and DNS) and the ephemeral port
// range (less the application's share), so that new flows are refused,
// cleanly and counted, before the process or the namespace runs out. Zero
// fields are unlimited.
type Budget struct {
	Descriptors int // file descriptors flows and connections may hold
	Ports       int // ephemeral ports UDP flows may hold (one each)
}

// Reasons a new flow or connection is refused, for natkeep_udp_flows_refused_total.
const (
	refuseLimit       = "limit"        // the route's (or intercept rule's) max_flows
	refuseSource      = "source_quota" // the source address's max_flows_per_source
	refuseDescriptors = "descriptors"  // the descriptor budget
	refusePorts       = "ports"        // the ephemeral port budget
)

var refuseReasons = []string{refuseLimit, refuseSource, refuseDescriptors, refusePorts}

// budget counts what the relay's flows and connections hold against Budget.
type budget struct {
	limit       Budget
	descriptors atomic.Int64
	ports       atomic.Int64
}

// take reserves fds descriptors and ports ports, or returns why not ("" = taken).
func (b *budget) take(fds, ports int) string {
	if b.limit.Ports > 0 && ports > 0 {
		if b.ports.Add(int64(ports)) > int64(b.limit.Ports) {
			b.ports.Add(-int64(ports))
			return refusePorts
		}
	}
	if b.limit.Descriptors > 0 {
		if b.descriptors.Add(int64(fds)) > int64(b.limit.Descriptors) {
			b.descriptors.Add(-int64(fds))
			if b.limit.Ports > 0 && ports > 0 {
				b.ports.Add(-int64(ports))
			}
			return refuseDescriptors
		}
	}
	return ""
}

// give returns what take reserved.
func (b *budget) give(fds, ports int) {
	if b.limit.Ports > 0 && ports > 0 {
		b.ports.Add(-int64(ports))
	}
	if b.limit.Descriptors > 0 {
		b.descriptors.Add(-int64(fds))
	}
}
