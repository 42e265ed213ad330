package natlab

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// nsPrefix is the prefix of every namespace this test binary creates;
// Main checks that none survive.
var nsPrefix = fmt.Sprintf("nk-%d-", os.Getpid())

var labCounter atomic.Int64

// cmdTimeout bounds every helper command that Run and TryRun start.
const cmdTimeout = 30 * time.Second

// Config chooses the router's conntrack timeouts.
type Config struct {
	// UDPTimeout and UDPStreamTimeout are nf_conntrack_udp_timeout and
	// nf_conntrack_udp_timeout_stream, set in the router namespace; whole
	// seconds; each defaults to 3s. Note that the kernel switches a UDP flow
	// that has seen a reply to the *stream* timeout once the flow is older
	// than 2s, so tests that want a short idle timeout must set both.
	UDPTimeout, UDPStreamTimeout time.Duration
	// TCPEstablishedTimeout is nf_conntrack_tcp_timeout_established
	// (default 5s).
	TCPEstablishedTimeout time.Duration
	// TCPLoose is nf_conntrack_tcp_loose (default false → 0: a mid-stream
	// packet of an unknown connection does not create a new conntrack entry,
	// so it is not de-NATed).
	TCPLoose bool
	// IPv6 also configures IPv6 addresses (fd00::/8) and ip6tables
	// MASQUERADE.
	IPv6 bool
	// ExtraHop puts a plain router (forwarding, no NAT) between the client
	// and the NAT router, so the NAT is two hops away (IPv4 only).
	ExtraHop bool
}

// Lab is three namespaces: client (app + natkeep) -- router (MASQUERADE
// out its server-side interface) -- server. The server has NO route back to
// the client subnet (only to the router's outer address on its link), so a
// reply only arrives through the NAT mapping.
type Lab struct {
	Client, Router, Server string // namespace names
	Hop                    string // the plain router's namespace with Config.ExtraHop, else ""

	// IPv4: client subnet 10.A.B.0/24, server subnet 10.A.B+1.0/24.
	ClientAddr, RouterInner, RouterOuter, ServerAddr netip.Addr
	// IPv6 equivalents (valid only when Config.IPv6): fd00:A:B:1::/64
	// (client side) and fd00:A:B:2::/64 (server side).
	ClientAddr6, RouterInner6, RouterOuter6, ServerAddr6 netip.Addr

	// Interface names (each lives inside its namespace).
	ClientIf, RouterInnerIf, RouterOuterIf, ServerIf string

	// With Config.ExtraHop: the plain router's addresses on the client side
	// (the client's gateway) and on the NAT router's side.
	HopInner, HopOuter netip.Addr

	cfg Config
}

// usedSubnets avoids handing the same address pair to two labs of this
// process (they would not clash, being in separate namespaces, but distinct
// addresses make logs unambiguous).
var usedSubnets sync.Map

// RequireEnv names the variable that, set to 1 (as .ci/run does), turns
// every lab skip into a failure: in CI a missing tool, a build that cannot
// be made or a lack of root must not pass quietly as a skip.
const RequireEnv = "LAB_REQUIRE_E2E"

// Skip skips the test with the reason, or fails it when RequireEnv is set.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv(RequireEnv) == "1" {
		t.Fatalf(format+" (%s=1: this test must run here)", append(args, RequireEnv)...)
	}
	t.Skipf(format, args...)
}

// SkipUnlessCapable skips the test unless it runs as root on Linux with
// the tools a lab needs (ip6tables too with ipv6).
func SkipUnlessCapable(t testing.TB, ipv6 bool) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("NAT lab needs root and ip/iptables/conntrack: not Linux")
	}
	if os.Geteuid() != 0 {
		Skip(t, "NAT lab needs root and ip/iptables/conntrack: not running as root")
	}
	tools := []string{"ip", "iptables", "conntrack", "sysctl"}
	if ipv6 {
		tools = append(tools, "ip6tables")
	}
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		Skip(t, "NAT lab needs root and ip/iptables/conntrack: missing %s (apt-get install -y iproute2 iptables conntrack)", strings.Join(missing, ", "))
	}
}

// New builds a fresh client/router/server topology. Everything it creates
// is removed by t.Cleanup, also on failure.
func New(t testing.TB, cfg Config) *Lab {
	t.Helper()
	SkipUnlessCapable(t, cfg.IPv6)
	cfg = cfg.withDefaults(t)
	id := labCounter.Add(1)
	l := &Lab{
		Client:        fmt.Sprintf("%s%d-client", nsPrefix, id),
		Router:        fmt.Sprintf("%s%d-router", nsPrefix, id),
		Server:        fmt.Sprintf("%s%d-server", nsPrefix, id),
		ClientIf:      "eth0",
		RouterInnerIf: "in0",
		RouterOuterIf: "out0",
		ServerIf:      "eth0",
		cfg:           cfg,
	}
	if cfg.ExtraHop {
		if cfg.IPv6 {
			t.Fatal("NAT lab: ExtraHop is IPv4 only")
		}
		l.Hop = fmt.Sprintf("%s%d-hop", nsPrefix, id)
	}
	l.pickAddresses(t)
	l.createNamespaces(t)
	l.link(t)
	l.route(t)
	l.setUpRouter(t)
	// Sanity: the server cannot reach the client subnet at all (no route).
	if out, err := l.TryRun(l.Server, "ip", "route", "get", l.ClientAddr.String()); err == nil {
		t.Fatalf("NAT lab: server unexpectedly has a route to the client subnet:\n%s", out)
	}
	return l
}

// withDefaults fills in the default timeouts and checks that the kernel
// can take them.
func (cfg Config) withDefaults(t testing.TB) Config {
	t.Helper()
	if cfg.UDPTimeout == 0 {
		cfg.UDPTimeout = 3 * time.Second
	}
	if cfg.UDPStreamTimeout == 0 {
		cfg.UDPStreamTimeout = 3 * time.Second
	}
	if cfg.TCPEstablishedTimeout == 0 {
		cfg.TCPEstablishedTimeout = 5 * time.Second
	}
	for _, d := range []time.Duration{cfg.UDPTimeout, cfg.UDPStreamTimeout, cfg.TCPEstablishedTimeout} {
		if d < time.Second || d%time.Second != 0 {
			t.Fatalf("natlab.Config: conntrack timeouts must be whole seconds ≥1s, got %v", d)
		}
	}
	return cfg
}

// pickAddresses chooses a random /24 pair 10.A.B.0/24 + 10.A.B+1.0/24,
// unique within this process, and the IPv6 equivalents.
func (l *Lab) pickAddresses(t testing.TB) {
	var a, b int
	for {
		a, b = 64+rand.IntN(190), 2*rand.IntN(127)
		if _, dup := usedSubnets.LoadOrStore([2]int{a, b}, true); !dup {
			break
		}
	}
	t.Cleanup(func() { usedSubnets.Delete([2]int{a, b}) })
	v4 := func(c, d int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(a), byte(c), byte(d)}) }
	l.ClientAddr, l.RouterInner = v4(b, 2), v4(b, 1)
	l.RouterOuter, l.ServerAddr = v4(b+1, 1), v4(b+1, 2)
	if l.Hop != "" {
		// The client's /24 split in two: client -- hop on the lower half,
		// hop -- router on the upper.
		l.HopInner, l.HopOuter, l.RouterInner = v4(b, 1), v4(b, 129), v4(b, 130)
	}
	v6 := func(sub, host int) netip.Addr {
		return netip.MustParseAddr(fmt.Sprintf("fd00:%x:%x:%x::%x", a, b, sub, host))
	}
	l.ClientAddr6, l.RouterInner6 = v6(1, 2), v6(1, 1)
	l.RouterOuter6, l.ServerAddr6 = v6(2, 1), v6(2, 2)
}

// createNamespaces adds the three namespaces (deleted at cleanup) with lo
// up and IPv6 duplicate address detection off, so that the interfaces'
// link-local addresses (and their routes) exist as soon as a link is up
// instead of appearing a second or two later, in the middle of a test.
func (l *Lab) createNamespaces(t testing.TB) {
	t.Helper()
	for _, ns := range []string{l.Client, l.Hop, l.Router, l.Server} {
		if ns == "" {
			continue
		}
		l.Run(t, "", "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := l.TryRun("", "ip", "netns", "del", ns); err != nil {
				t.Errorf("NAT lab cleanup: ip netns del %s: %v\n%s", ns, err, out)
			}
		})
		l.Run(t, ns, "ip", "link", "set", "lo", "up")
		// Without IPv6 in the kernel there is nothing to detect.
		_, _ = l.TryRun(ns, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
}

// link creates the two veth pairs directly inside the namespaces (no names
// in the host namespace), addresses them and brings them up.
func (l *Lab) link(t testing.TB) {
	t.Helper()
	if l.Hop != "" {
		l.linkWithHop(t)
		return
	}
	l.Run(t, "", "ip", "-n", l.Client, "link", "add", l.ClientIf, "type", "veth", "peer", "name", l.RouterInnerIf, "netns", l.Router)
	l.Run(t, "", "ip", "-n", l.Server, "link", "add", l.ServerIf, "type", "veth", "peer", "name", l.RouterOuterIf, "netns", l.Router)
	addr := func(ns, ifname string, a netip.Addr, bits int) {
		if a.Is4() {
			l.Run(t, ns, "ip", "addr", "add", netip.PrefixFrom(a, bits).String(), "dev", ifname)
		} else {
			l.Run(t, ns, "ip", "-6", "addr", "add", netip.PrefixFrom(a, bits).String(), "dev", ifname, "nodad")
		}
	}
	addr(l.Client, l.ClientIf, l.ClientAddr, 24)
	addr(l.Router, l.RouterInnerIf, l.RouterInner, 24)
	addr(l.Router, l.RouterOuterIf, l.RouterOuter, 24)
	addr(l.Server, l.ServerIf, l.ServerAddr, 24)
	if l.cfg.IPv6 {
		addr(l.Client, l.ClientIf, l.ClientAddr6, 64)
		addr(l.Router, l.RouterInnerIf, l.RouterInner6, 64)
		addr(l.Router, l.RouterOuterIf, l.RouterOuter6, 64)
		addr(l.Server, l.ServerIf, l.ServerAddr6, 64)
	}
	l.Run(t, l.Client, "ip", "link", "set", l.ClientIf, "up")
	l.Run(t, l.Router, "ip", "link", "set", l.RouterInnerIf, "up")
	l.Run(t, l.Router, "ip", "link", "set", l.RouterOuterIf, "up")
	l.Run(t, l.Server, "ip", "link", "set", l.ServerIf, "up")
}

// linkWithHop is link for Config.ExtraHop: client -- hop -- router -- server.
func (l *Lab) linkWithHop(t testing.TB) {
	t.Helper()
	l.Run(t, "", "ip", "-n", l.Client, "link", "add", l.ClientIf, "type", "veth", "peer", "name", "in0", "netns", l.Hop)
	l.Run(t, "", "ip", "-n", l.Hop, "link", "add", "out0", "type", "veth", "peer", "name", l.RouterInnerIf, "netns", l.Router)
	l.Run(t, "", "ip", "-n", l.Server, "link", "add", l.ServerIf, "type", "veth", "peer", "name", l.RouterOuterIf, "netns", l.Router)
	for _, a := range []struct {
		ns, ifname string
		addr       netip.Addr
		bits       int
	}{
		{l.Client, l.ClientIf, l.ClientAddr, 25}, {l.Hop, "in0", l.HopInner, 25},
		{l.Hop, "out0", l.HopOuter, 25}, {l.Router, l.RouterInnerIf, l.RouterInner, 25},
		{l.Router, l.RouterOuterIf, l.RouterOuter, 24}, {l.Server, l.ServerIf, l.ServerAddr, 24},
	} {
		l.Run(t, a.ns, "ip", "addr", "add", netip.PrefixFrom(a.addr, a.bits).String(), "dev", a.ifname)
		l.Run(t, a.ns, "ip", "link", "set", a.ifname, "up")
	}
	l.Run(t, l.Hop, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	l.Run(t, l.Hop, "ip", "route", "add", "default", "via", l.RouterInner.String())
	// The NAT router reaches the client's half through the hop.
	l.Run(t, l.Router, "ip", "route", "add", netip.PrefixFrom(l.ClientAddr, 25).Masked().String(), "via", l.HopOuter.String())
}

// route gives the client a default route via the router (or the hop); the
// server only knows its own link (connected route), no default route.
func (l *Lab) route(t testing.TB) {
	t.Helper()
	if l.Hop != "" {
		l.Run(t, l.Client, "ip", "route", "add", "default", "via", l.HopInner.String())
		return
	}
	l.Run(t, l.Client, "ip", "route", "add", "default", "via", l.RouterInner.String())
	if l.cfg.IPv6 {
		l.Run(t, l.Client, "ip", "-6", "route", "add", "default", "via", l.RouterInner6.String())
	}
}

// setUpRouter turns on forwarding, MASQUERADE first (so conntrack is
// active in the router's namespace), then the conntrack sysctls, and reads
// them back.
func (l *Lab) setUpRouter(t testing.TB) {
	t.Helper()
	l.Run(t, l.Router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	l.Run(t, l.Router, "iptables", "-w", "5", "-t", "nat", "-A", "POSTROUTING", "-o", l.RouterOuterIf, "-j", "MASQUERADE")
	if l.cfg.IPv6 {
		l.Run(t, l.Router, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
		l.Run(t, l.Router, "ip6tables", "-w", "5", "-t", "nat", "-A", "POSTROUTING", "-o", l.RouterOuterIf, "-j", "MASQUERADE")
	}
	loose := "0"
	if l.cfg.TCPLoose {
		loose = "1"
	}
	sysctls := [][2]string{
		{"net.netfilter.nf_conntrack_udp_timeout", secs(l.cfg.UDPTimeout)},
		{"net.netfilter.nf_conntrack_udp_timeout_stream", secs(l.cfg.UDPStreamTimeout)},
		{"net.netfilter.nf_conntrack_tcp_timeout_established", secs(l.cfg.TCPEstablishedTimeout)},
		{"net.netfilter.nf_conntrack_tcp_loose", loose},
	}
	for _, kv := range sysctls {
		l.Run(t, l.Router, "sysctl", "-q", "-w", kv[0]+"="+kv[1])
	}
	for _, kv := range sysctls {
		got := strings.TrimSpace(l.Run(t, l.Router, "sysctl", "-n", kv[0]))
		if got != kv[1] {
			t.Fatalf("NAT lab: %s in router ns reads back %q, want %q", kv[0], got, kv[1])
		}
	}
}

func secs(d time.Duration) string { return strconv.Itoa(int(d / time.Second)) }

// Exec runs args inside namespace ns ("" = the test's own namespace),
// bounded by ctx, and returns the combined output.
func Exec(ctx context.Context, ns string, args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("natlab.Exec: no command")
	}
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return string(out), err
}

// Run runs a command inside namespace ns (ip netns exec; ns "" = the
// test's own namespace), bounded by cmdTimeout, and returns the combined
// output. It calls t.Fatal on error; use TryRun to handle errors yourself.
func (l *Lab) Run(t testing.TB, ns string, args ...string) string {
	t.Helper()
	out, err := l.TryRun(ns, args...)
	if err != nil {
		where := ns
		if where == "" {
			where = "host"
		}
		t.Fatalf("NAT lab [%s] %s: %v\n%s", where, strings.Join(args, " "), err, out)
	}
	return out
}

// TryRun is Run without t.Fatal.
func (l *Lab) TryRun(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	return Exec(ctx, ns, args...)
}

// BlockServer inserts `iptables -I FORWARD -s <server> -j DROP` (and the
// ip6tables equivalent for IPv6 labs) in the router, simulating a
// blackholed server. The returned func removes the rule(s); it is
// idempotent.
func (l *Lab) BlockServer(t testing.TB) (unblock func()) {
	t.Helper()
	l.Run(t, l.Router, "iptables", "-w", "5", "-I", "FORWARD", "-s", l.ServerAddr.String(), "-j", "DROP")
	if l.cfg.IPv6 {
		l.Run(t, l.Router, "ip6tables", "-w", "5", "-I", "FORWARD", "-s", l.ServerAddr6.String(), "-j", "DROP")
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			if out, err := l.TryRun(l.Router, "iptables", "-w", "5", "-D", "FORWARD", "-s", l.ServerAddr.String(), "-j", "DROP"); err != nil {
				t.Errorf("NAT lab: unblock server: %v\n%s", err, out)
			}
			if l.cfg.IPv6 {
				if out, err := l.TryRun(l.Router, "ip6tables", "-w", "5", "-D", "FORWARD", "-s", l.ServerAddr6.String(), "-j", "DROP"); err != nil {
					t.Errorf("NAT lab: unblock server (v6): %v\n%s", err, out)
				}
			}
		})
	}
}
