// Package machine reads the facts of the host that bound natkeep's flows
// and connections (the open-file limit and the ephemeral port range) and
// turns them into the relay's budget: refusals then happen, cleanly and
// counted, before the process or the network namespace runs out.
package machine

import (
	"fmt"

	"github.com/natkeep/natkeep/relay"
)

// Facts are the limits read from the host; zero means unknown (no limit).
type Facts struct {
	NoFile         uint64 // RLIMIT_NOFILE, soft limit
	PortLo, PortHi int    // net.ipv4.ip_local_port_range
	CPUs           int    // GOMAXPROCS: the CPUs the process may use (its affinity mask, its cgroup quota)
}

// Ports returns the size of the ephemeral port range (0 = unknown).
func (f Facts) Ports() int {
	if f.PortHi < f.PortLo || f.PortLo == 0 {
		return 0
	}
	return f.PortHi - f.PortLo + 1
}

// Reserve is how many descriptors natkeep keeps free for everything that
// is not a flow or a connection: the admin server and its scrapes, the
// sockets accept hands out before they are admitted, DNS lookups, the
// listeners, epoll, and splice's pipes. An eighth of the limit, at least
// 64 and at most 1024.
func (f Facts) Reserve() int {
	return int(min(max(f.NoFile/8, 64), 1024))
}

// PortShare is the part of the ephemeral port range natkeep's UDP flows may
// hold (one local port each): half, since the application and everything
// else in the network namespace draw from the same range.
const PortShare = 2 // 1/PortShare

// Budget derives the relay's budget from the facts.
func (f Facts) Budget() relay.Budget {
	var b relay.Budget
	if f.NoFile > 0 {
		b.Descriptors = max(int(f.NoFile)-f.Reserve(), 1)
	}
	if p := f.Ports(); p > 0 {
		b.Ports = max(p/PortShare, 1)
	}
	return b
}

// MaxFlows is the largest useful flow limit for one route: what the budget
// allows (0 = unlimited). A transparent flow holds two descriptors.
func (f Facts) MaxFlows(transparent bool) int {
	b := f.Budget()
	limit := 0
	if b.Ports > 0 {
		limit = b.Ports
	}
	if b.Descriptors > 0 {
		per := 1
		if transparent {
			per = 2
		}
		if d := b.Descriptors / per; limit == 0 || d < limit {
			limit = d
		}
	}
	return limit
}

// MaxConns is the largest useful TCP connection limit (two descriptors
// each; 0 = unlimited).
func (f Facts) MaxConns() int {
	return f.Budget().Descriptors / 2
}

// Describe says where the budget comes from, for errors and the start-up log.
func (f Facts) Describe() string {
	s := "RLIMIT_NOFILE unknown"
	if f.NoFile > 0 {
		s = fmt.Sprintf("RLIMIT_NOFILE %d less a reserve of %d", f.NoFile, f.Reserve())
	}
	if p := f.Ports(); p > 0 {
		s += fmt.Sprintf(", half of the %d ephemeral ports of net.ipv4.ip_local_port_range %d-%d", p, f.PortLo, f.PortHi)
	}
	return s
}
