package natlab

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"
)

// ConntrackEvents starts `conntrack -E -p PROTO -o timestamp` in the router
// namespace and returns once it demonstrably receives events (a loopback
// probe flow inside the router ns shows up). Use Count / Grep / WaitFor
// with Tuple and "[DESTROY]" / "[NEW]" / "[UPDATE]".
//
// Event lines look like:
//
//	[1795522839.684204]	    [NEW] udp      17 30 src=10.1.1.2 dst=10.1.2.2 sport=5 dport=6 [UNREPLIED] src=10.1.2.2 dst=10.1.2.1 sport=6 dport=5
func (l *Lab) ConntrackEvents(t testing.TB, proto string) *Proc {
	t.Helper()
	if proto != "udp" && proto != "tcp" {
		t.Fatalf("ConntrackEvents: unsupported proto %q", proto)
	}
	p := l.StartProcess(t, l.Router, nil, "conntrack", "-E", "-p", proto, "-o", "timestamp")

	// Readiness handshake: create loopback flows in the router ns until one
	// is reported. Conntrack with nf_conntrack_events=2 only attaches event
	// state to connections created while a listener exists, so flows that
	// start before the listener is ready would be silently missing.
	deadline := time.Now().Add(10 * time.Second)
	for {
		if p.WaitFor(300*time.Millisecond, l.probeFlow(t, proto)...) {
			// Drop the probe entries so they do not clutter ConntrackList.
			_, _ = l.TryRun(l.Router, "conntrack", "-D", "-p", proto, "--orig-src", "127.0.0.1", "--orig-dst", "127.0.0.1")
			return p
		}
		if p.Exited() {
			t.Fatalf("NAT lab: conntrack -E exited early: %v\n%s", p.err, p.Output())
		}
		if time.Now().After(deadline) {
			t.Fatalf("NAT lab: conntrack -E reported no probe event within 10s:\n%s", p.Output())
		}
	}
}

// probeFlow makes one short loopback flow of proto in the router's
// namespace and returns what its event line contains.
func (l *Lab) probeFlow(t testing.TB, proto string) []string {
	t.Helper()
	if proto == "udp" {
		c := l.DialUDP(t, l.Router, "127.0.0.1:9")
		sport := c.LocalAddr().(*net.UDPAddr).Port
		_, _ = c.Write([]byte("natlab-probe"))
		c.Close()
		return []string{"dport=9", "sport=" + strconv.Itoa(sport)}
	}
	// A connect to a closed port: SYN (NEW) then RST (DESTROY).
	ln := l.ListenTCP(t, l.Router, "127.0.0.1:0")
	dport := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	var c net.Conn
	_ = InNetns(l.Router, func() error {
		var err error
		c, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", dport), time.Second)
		return err
	})
	if c != nil {
		c.Close()
	}
	return []string{"dport=" + strconv.Itoa(dport)}
}

// Tuple formats the original-direction tuple as conntrack prints it,
// e.g. "src=10.1.1.2 dst=10.1.2.2 sport=40000 dport=5000".
func Tuple(src, dst netip.AddrPort) string {
	return fmt.Sprintf("src=%s dst=%s sport=%d dport=%d", src.Addr(), dst.Addr(), src.Port(), dst.Port())
}

// ConntrackList returns `conntrack -L -p PROTO` output from the router ns
// (IPv4, plus IPv6 when the lab has IPv6).
func (l *Lab) ConntrackList(t testing.TB, proto string) string {
	t.Helper()
	out := l.Run(t, l.Router, "conntrack", "-L", "-p", proto)
	if l.cfg.IPv6 {
		out += l.Run(t, l.Router, "conntrack", "-L", "-f", "ipv6", "-p", proto)
	}
	return out
}
