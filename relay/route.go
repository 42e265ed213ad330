package relay

import (
	"net/netip"
	"strconv"
	"time"

	"github.com/natkeep/natkeep/keepalive"
	"github.com/natkeep/natkeep/sockopt"
)

// Proto is a route's transport protocol.
type Proto string

// Supported protocols.
const (
	UDP Proto = "udp"
	TCP Proto = "tcp"
)

// Role says what a UDP route does with heartbeats.
type Role string

// UDP route roles.
const (
	RoleClient    Role = "client"    // send heartbeats upstream
	RoleResponder Role = "responder" // answer STUN Binding Requests from clients, never forward them
)

// Route is one listener and the upstream it relays to.
type Route struct {
	Name     string // the route as configured, for logs and metric labels
	Proto    Proto
	Listen   string // host:port to bind
	Upstream string // host:port; the host may be a DNS name
	UDP      UDPOptions
	TCP      TCPOptions

	// Transparent routes take intercepted traffic (nftables REDIRECT for
	// TCP, TPROXY for UDP): each flow's upstream is the destination the app
	// originally addressed, and Upstream is unused.
	Transparent bool
	Intercept   []InterceptRule // options by original destination; first match wins, else UDP/TCP above
	BypassMark  uint32          // SO_MARK on natkeep's own sockets so its traffic is never intercepted; 0 = none
}

// InterceptRule selects intercepted traffic by destination and gives its
// flows their options.
type InterceptRule struct {
	Proto          Proto
	Prefix         netip.Prefix // invalid = any destination
	PortLo, PortHi uint16
	UDP            UDPOptions
	TCP            TCPOptions
}

// String describes the rule for logs, e.g. "udp 10.0.0.0/8 port 5060-5070".
func (r InterceptRule) String() string {
	dst := "any"
	if r.Prefix.IsValid() {
		dst = r.Prefix.String()
	}
	ports := strconv.Itoa(int(r.PortLo))
	if r.PortHi != r.PortLo {
		ports += "-" + strconv.Itoa(int(r.PortHi))
	}
	return string(r.Proto) + " " + dst + " port " + ports
}

// Matches reports whether the rule covers traffic to dst.
func (r InterceptRule) Matches(dst netip.AddrPort) bool {
	if dst.Port() < r.PortLo || dst.Port() > r.PortHi {
		return false
	}
	return !r.Prefix.IsValid() || r.Prefix.Contains(dst.Addr().Unmap())
}

// UDPOptions tune a UDP route.
type UDPOptions struct {
	Role            Role
	Heartbeat       keepalive.Schedule
	Payload         keepalive.Payload
	TTL             int           // IP TTL / hop limit of heartbeats only; 0 = the socket's default
	STUNStrict      bool          // responder: answer only Binding Requests that end in a valid FINGERPRINT
	AnswerRate      int           // responder: answers per second per source address, burst twice that; 0 = 20
	FlowIdleTimeout time.Duration // forget a flow after this long without application traffic
	// UnansweredTimeout forgets a flow whose upstream has sent nothing at
	// all after this long without application traffic, as conntrack's
	// unreplied timeout does; 0 = FlowIdleTimeout applies to every flow.
	UnansweredTimeout time.Duration
	MaxFlows          int
	MaxFlowsPerSource int // flows one client address may hold; 0 = no quota (fairness still applies when the route is full)
	// Path turns on path learning (interval=auto, ttl=auto); with
	// AutoInterval, Heartbeat.Interval is ignored and Path.Fallback is in
	// force until a lifetime is learned.
	Path PathOptions
}

// TCPOptions tune a TCP route.
type TCPOptions struct {
	Keepalive      sockopt.Keepalive // Idle 0 = leave kernel keepalive off
	UserTimeout    time.Duration     // TCP_USER_TIMEOUT; 0 = off
	ConnectTimeout time.Duration
	MaxConns       int           // 0 = unlimited
	IdleTimeout    time.Duration // close a connection idle both ways this long; 0 = never (idle connections are what natkeep keeps)
}

// Config is everything the relay needs besides the logger and metrics.
type Config struct {
	Routes          []Route
	Budget          Budget        // what the machine lets flows and connections hold
	ResolveInterval time.Duration // how often upstream DNS names are re-resolved
	// Workers is the number of listeners of every non-transparent UDP route
	// (SO_REUSEPORT): each has its own flow table, scheduler and epoll loop,
	// and the kernel keeps each client on one. 0 or 1 = one per route.
	Workers int
}
