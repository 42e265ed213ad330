package intercept

// Real-kernel tests of `natkeep intercept`: the rules are installed into the
// client namespace of a NAT lab (the app's and natkeep's namespace), plain
// test sockets stand in for the app, for natkeep's transparent listeners and
// for the server, and every packet stays inside the lab's namespaces.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/config"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
	"github.com/natkeep/natkeep/sockopt"
)

// icptWait bounds every blocking step of these tests.
const icptWait = 5 * time.Second

// icptRun runs `natkeep intercept VERB` in this process, inside ns, as
// main does: LoadIntercept, then Install, Remove or Show.
func icptRun(t *testing.T, ns string, env map[string]string, verb string) (string, error) {
	t.Helper()
	commands := map[string]func(*config.Intercept, io.Writer) error{"install": Install, "remove": Remove, "show": Show}
	var out bytes.Buffer
	var err error
	if nerr := natlab.InNetns(ns, func() error {
		var cfg *config.Intercept
		if cfg, err = config.LoadIntercept(env); err == nil {
			err = commands[verb](cfg, &out)
		}
		return nil
	}); nerr != nil {
		t.Fatal(nerr)
	}
	return out.String(), err
}

func icptMustRun(t *testing.T, ns string, env map[string]string, verb string) string {
	t.Helper()
	out, err := icptRun(t, ns, env, verb)
	if err != nil {
		t.Fatalf("natkeep intercept %s: %v\n%s", verb, err, out)
	}
	return out
}

// icptSnapshot is the namespace's whole netfilter and routing state:
// nft list ruleset (or, without nft, the same read through netlink), the
// policy rules and every routing table of both families.
func icptSnapshot(t *testing.T, l *natlab.Lab, ns string) string {
	t.Helper()
	var b strings.Builder
	if _, err := exec.LookPath("nft"); err == nil {
		b.WriteString(l.Run(t, ns, "nft", "list", "ruleset"))
	} else {
		b.WriteString(icptNetlinkRuleset(t, ns))
	}
	for _, args := range [][]string{
		{"ip", "-4", "rule"}, {"ip", "-6", "rule"},
		{"ip", "-4", "route", "show", "table", "all"}, {"ip", "-6", "route", "show", "table", "all"},
	} {
		fmt.Fprintf(&b, "--- %s\n%s", strings.Join(args, " "), l.Run(t, ns, args...))
	}
	return b.String()
}

// icptNetlinkRuleset lists every table, chain and rule through netlink, for
// machines without the nft tool.
func icptNetlinkRuleset(t *testing.T, ns string) string {
	t.Helper()
	var lines []string
	err := natlab.InNetns(ns, func() error {
		conn, err := nftables.New()
		if err != nil {
			return err
		}
		chains, err := conn.ListChains()
		if err != nil {
			return err
		}
		tables, err := conn.ListTables()
		if err != nil {
			return err
		}
		for _, tb := range tables {
			lines = append(lines, fmt.Sprintf("table %d %s", tb.Family, tb.Name))
		}
		for _, ch := range chains {
			rules, err := conn.GetRules(ch.Table, ch)
			if err != nil {
				return err
			}
			lines = append(lines, fmt.Sprintf("chain %d %s %s: %d rules", ch.Table.Family, ch.Table.Name, ch.Name, len(rules)))
			for _, r := range rules {
				lines = append(lines, "  "+renderRule(ch.Name, r.Exprs))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("listing nftables in %s: %v", ns, err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

func icptEnv(kv ...string) map[string]string {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

// TestInterceptInstallRemoveRestores: install, install again, change the
// configuration, remove: the namespace ends exactly as it began, including
// unrelated state natkeep must not touch (another nft table, another policy
// rule, another route in natkeep's routing table).
func TestInterceptInstallRemoveRestores(t *testing.T) {
	l := natlab.New(t, natlab.Config{IPv6: true})
	ns := l.Client
	l.Run(t, ns, "iptables", "-w", "5", "-A", "OUTPUT", "-p", "tcp", "--dport", "9", "-j", "ACCEPT")
	l.Run(t, ns, "ip", "rule", "add", "fwmark", "0x99", "lookup", "200")
	l.Run(t, ns, "ip", "route", "add", "192.0.2.0/24", "dev", "lo", "table", "100")
	l.Run(t, ns, "ip", "-6", "route", "add", "2001:db8::/32", "dev", "lo", "table", "100")
	before := icptSnapshot(t, l, ns)

	full := icptEnv("NATKEEP_INTERCEPT", "udp:5060,udp:10.0.0.0/8:3478,tcp:5432,tcp:[fd00::/8]:8000-8100")
	// Once through the real binary, as an init container runs it.
	bin := natlab.NatkeepBinary(t)
	p := l.StartProcess(t, ns, []string{"NATKEEP_INTERCEPT=" + full["NATKEEP_INTERCEPT"]}, bin, "intercept", "install")
	if err := p.Wait(30 * time.Second); err != nil {
		t.Fatalf("natkeep intercept install: %v\n%s", err, p.Output())
	}
	if !strings.Contains(p.Output(), "natkeep: intercept installed: nftables table inet natkeep, 5 rules for 4 entries of NATKEEP_INTERCEPT") {
		t.Errorf("install output:\n%s", p.Output())
	}
	once := icptSnapshot(t, l, ns)
	for _, want := range []string{"table inet natkeep", "chain tcp_redirect", "chain udp_mark", "chain udp_tproxy",
		"tproxy to :15002", "redirect to :15001", "fwmark 0x4e4b lookup 100", "local default dev lo table 100"} {
		if !strings.Contains(once, want) && !strings.Contains(strings.ReplaceAll(once, "\t", ""), want) {
			t.Errorf("after install, no %q in:\n%s", want, once)
		}
	}
	if n := strings.Count(once, "fwmark 0x4e4b lookup 100"); n != 2 {
		t.Errorf("%d fwmark rules after install, want 2 (IPv4, IPv6)", n)
	}

	icptMustRun(t, ns, full, "install")
	if twice := icptSnapshot(t, l, ns); twice != once {
		t.Errorf("a second install changed the state:\n--- once\n%s\n--- twice\n%s", once, twice)
	}

	show := icptMustRun(t, ns, full, "show")
	for _, want := range []string{
		"natkeep intercept: installed",
		`meta l4proto tcp tcp dport 5432 meta oif != "lo" meta skuid != 65532 meta mark != 0x00004e4c counter packets 0 bytes 0 redirect to :15001 # tcp:5432`,
		`meta nfproto ipv6 ip6 daddr fd00::/8 meta l4proto tcp tcp dport 8000-8100`,
		`meta nfproto ipv4 ip daddr 10.0.0.0/8 meta l4proto udp udp dport 3478 meta oif != "lo" meta skuid != 65532 meta mark != 0x00004e4c ct direction original counter packets 0 bytes 0 meta mark set 0x00004e4b # udp:10.0.0.0/8:3478`,
		`meta iif "lo" meta mark 0x00004e4b meta l4proto udp counter packets 0 bytes 0 tproxy to :15002 meta mark set 0x00004e4b accept`,
		"ip rule: 32764: from all fwmark 0x4e4b lookup 100", // 32765 is the 0x99 rule that was there first
		"ip -6 route: local default dev lo table 100",
	} {
		if !strings.Contains(show, want) {
			t.Errorf("show lacks %q:\n%s", want, show)
		}
	}

	// TCP only: the UDP chains and the policy routing go.
	icptMustRun(t, ns, icptEnv("NATKEEP_INTERCEPT", "tcp:5432"), "install")
	tcpOnly := icptSnapshot(t, l, ns)
	if strings.Contains(tcpOnly, "fwmark 0x4e4b") || strings.Contains(tcpOnly, "udp_mark") || !strings.Contains(tcpOnly, "tcp_redirect") {
		t.Errorf("after a TCP-only install:\n%s", tcpOnly)
	}
	// Another mark and table: the old routing is replaced, not kept.
	icptMustRun(t, ns, icptEnv("NATKEEP_INTERCEPT", "udp:5060", "NATKEEP_INTERCEPT_MARK", "0x77", "NATKEEP_INTERCEPT_TABLE", "101"), "install")
	icptMustRun(t, ns, icptEnv("NATKEEP_INTERCEPT", "udp:5060", "NATKEEP_INTERCEPT_MARK", "0x78", "NATKEEP_INTERCEPT_TABLE", "102"), "install")
	moved := icptSnapshot(t, l, ns)
	if strings.Contains(moved, "fwmark 0x77 ") || strings.Count(moved, "fwmark 0x78 lookup 102") != 2 || strings.Contains(moved, "tcp_redirect") {
		t.Errorf("after re-installing with mark 0x78 table 102:\n%s", moved)
	}

	// Remove with the default environment: what was installed (recorded in
	// the table) goes, whatever the environment says now.
	out := icptMustRun(t, ns, nil, "remove")
	if !strings.Contains(out, "natkeep: intercept removed: nftables table inet natkeep, 4 policy routing rules and routes") {
		t.Errorf("remove output: %s", out)
	}
	if after := icptSnapshot(t, l, ns); after != before {
		t.Errorf("remove did not restore the namespace:\n--- before\n%s\n--- after\n%s", before, after)
	}
	if out := icptMustRun(t, ns, nil, "remove"); out != "natkeep: intercept: nothing installed\n" {
		t.Errorf("second remove: %q", out)
	}
	if out := icptMustRun(t, ns, nil, "show"); out != "natkeep intercept: not installed\n" {
		t.Errorf("show after remove: %q", out)
	}
	if after := icptSnapshot(t, l, ns); after != before {
		t.Errorf("a second remove changed the namespace:\n%s", after)
	}
}

// TestInterceptCapabilities: what installing needs is CAP_NET_ADMIN, not
// root as such, and a non-root user with the capability merely in its
// bounding set (what Kubernetes' capabilities.add gives a non-root
// container) does not have it.
func TestInterceptCapabilities(t *testing.T) {
	l := natlab.New(t, natlab.Config{})
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("needs setpriv (util-linux)")
	}
	bin := natlab.NatkeepBinaryCopy(t) // uid 65532 may run it
	env := []string{"NATKEEP_INTERCEPT=udp:5060,tcp:5432"}
	try := func(setpriv ...string) (int, string) {
		args := append(append([]string{"setpriv"}, setpriv...), "--", bin, "intercept", "install")
		p := l.StartProcess(t, l.Client, env, args[0], args[1:]...)
		if err := p.Wait(30 * time.Second); errors.Is(err, natlab.ErrWaitTimeout) {
			t.Fatalf("%v: still running", args)
		}
		return p.ExitCode(), p.Output()
	}
	root := []string{"--inh-caps=-all", "--ambient-caps=-all"}
	if code, out := try(append(root, "--bounding-set=-all")...); code != 1 || !strings.Contains(out, "needs CAP_NET_ADMIN in this network namespace") {
		t.Errorf("root without capabilities: exit %d\n%s", code, out)
	}
	if code, out := try(append(root, "--bounding-set=-all,+net_admin")...); code != 0 {
		t.Errorf("root with only NET_ADMIN: exit %d\n%s", code, out)
	}
	nonroot := []string{"--reuid=65532", "--regid=65532", "--clear-groups", "--inh-caps=-all,+net_admin", "--bounding-set=-all,+net_admin"}
	if code, out := try(nonroot...); code != 1 || !strings.Contains(out, "needs CAP_NET_ADMIN") {
		t.Errorf("uid 65532 with NET_ADMIN only in the bounding set: exit %d\n%s", code, out)
	}
	if code, out := try(append(nonroot, "--ambient-caps=+net_admin")...); code != 0 {
		t.Errorf("uid 65532 with NET_ADMIN ambient: exit %d\n%s", code, out)
	}
	icptMustRun(t, l.Client, nil, "remove")
}

// icptExpectAccept accepts one connection and checks that it came from an
// app that believes it is talking to want.
func icptExpectAccept(t *testing.T, ln *net.TCPListener, what string) *net.TCPConn {
	t.Helper()
	c, err := nktest.AcceptWithin(ln, icptWait)
	if err != nil {
		t.Fatalf("%s: accept on %v: %v", what, ln.Addr(), err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// icptExpectNoAccept checks that nothing arrives at ln.
func icptExpectNoAccept(t *testing.T, ln *net.TCPListener, what string) {
	t.Helper()
	if c, err := nktest.AcceptWithin(ln, 300*time.Millisecond); err == nil {
		c.Close()
		t.Errorf("%s: a connection from %v reached %v", what, c.RemoteAddr(), ln.Addr())
	}
}

// icptDial dials from inside ns with an optional Control hook; fsuid, if
// not 0, is the filesystem UID the socket is created with (its owner, which
// meta skuid matches).
func icptDial(t *testing.T, ns, network, addr string, ctrl func(string, string, syscall.RawConn) error, fsuid int) net.Conn {
	t.Helper()
	var c net.Conn
	err := natlab.InNetns(ns, func() error {
		if fsuid != 0 {
			// Per thread, and this thread is locked: only this socket.
			if err := unix.Setfsuid(fsuid); err != nil {
				return err
			}
			defer unix.Setfsuid(0)
		}
		d := net.Dialer{Timeout: icptWait, KeepAlive: -1, Control: ctrl}
		var err error
		c, err = d.Dial(network, addr)
		return err
	})
	if err != nil {
		t.Fatalf("dial %s %s in %s: %v", network, addr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestInterceptTCPRedirect: an app's connection to a matching destination
// lands on natkeep's listener, which recovers the original destination;
// natkeep's own connections (bypass mark or UID), non-matching ports and
// loopback go straight through.
func TestInterceptTCPRedirect(t *testing.T) {
	l := natlab.New(t, natlab.Config{})
	icptMustRun(t, l.Client, icptEnv("NATKEEP_INTERCEPT", "tcp:5432"), "install")
	t.Cleanup(func() { icptRun(t, l.Client, nil, "remove") })

	natkeep := l.ListenTCP(t, l.Client, "127.0.0.1:15001") // stands in for natkeep
	server := l.ListenTCP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 5432).String())
	other := l.ListenTCP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 5433).String())
	local := l.ListenTCP(t, l.Client, "127.0.0.1:5432")
	orig := netip.AddrPortFrom(l.ServerAddr, 5432)

	app := icptDial(t, l.Client, "tcp", orig.String(), nil, 0)
	c := icptExpectAccept(t, natkeep, "app to the server")
	got, err := sockopt.OriginalDst(c)
	if err != nil {
		t.Fatal(err)
	}
	if got != orig {
		t.Errorf("OriginalDst = %v, want %v", got, orig)
	}
	if app.RemoteAddr().String() != orig.String() || c.RemoteAddr().String() != app.LocalAddr().String() {
		t.Errorf("app %v -> %v, natkeep accepted %v -> %v", app.LocalAddr(), app.RemoteAddr(), c.RemoteAddr(), c.LocalAddr())
	}
	icptExpectNoAccept(t, server, "app to the server")

	// natkeep's upstream, marked: straight to the server, through the NAT.
	up := icptDial(t, l.Client, "tcp", orig.String(), sockopt.MarkControl(0x4e4c), 0)
	sc := icptExpectAccept(t, server, "bypass mark")
	if got := sc.RemoteAddr().(*net.TCPAddr).AddrPort().Addr(); got != l.RouterOuter {
		t.Errorf("server sees the marked connection from %v, want the NAT's %v", got, l.RouterOuter)
	}
	icptExpectNoAccept(t, natkeep, "bypass mark")
	// The data path works both ways.
	if _, err := up.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	sc.SetReadDeadline(time.Now().Add(icptWait))
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("server read %q, %v", buf, err)
	}

	// natkeep's upstream by UID only (no mark): straight through too.
	icptDial(t, l.Client, "tcp", orig.String(), nil, 65532)
	icptExpectAccept(t, server, "natkeep's UID")
	icptExpectNoAccept(t, natkeep, "natkeep's UID")
	// Another UID is intercepted.
	icptDial(t, l.Client, "tcp", orig.String(), nil, 1000)
	icptExpectAccept(t, natkeep, "UID 1000")

	// A port that is not listed is untouched.
	icptDial(t, l.Client, "tcp", netip.AddrPortFrom(l.ServerAddr, 5433).String(), nil, 0)
	icptExpectAccept(t, other, "port 5433")
	icptExpectNoAccept(t, natkeep, "port 5433")

	// Loopback is never intercepted, even on a listed port.
	icptDial(t, l.Client, "tcp", "127.0.0.1:5432", nil, 0)
	icptExpectAccept(t, local, "loopback")
	icptExpectNoAccept(t, natkeep, "loopback")
}

// icptTProxyListener stands in for natkeep's TPROXY listener: a UDP socket
// in ns that receives each datagram's original destination.
func icptTProxyListener(t *testing.T, ns, network, addr string) *net.UDPConn {
	t.Helper()
	var ln *net.UDPConn
	if err := natlab.InNetns(ns, func() error {
		pc, err := (&net.ListenConfig{Control: sockopt.RecvOrigDstControl}).ListenPacket(context.Background(), network, addr)
		if err == nil {
			ln = pc.(*net.UDPConn)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// TestInterceptUDPTProxy: an app's datagram to a matching destination lands
// on natkeep's transparent listener with its original destination; a reply
// from a transparent socket bound to that destination reaches the app from
// the server's address; natkeep's own upstream socket is not intercepted.
func TestInterceptUDPTProxy(t *testing.T) {
	l := natlab.New(t, natlab.Config{})
	icptMustRun(t, l.Client, icptEnv("NATKEEP_INTERCEPT", "udp:5060,udp:10.0.0.0/8:3478"), "install")
	t.Cleanup(func() { icptRun(t, l.Client, nil, "remove") })

	ln := icptTProxyListener(t, l.Client, "udp", ":15002")
	server := l.ListenUDP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 5060).String())
	orig := netip.AddrPortFrom(l.ServerAddr, 5060)

	// The app uses source port 5060 too, as SIP phones do: natkeep's reply
	// to it then has destination port 5060 and must still not be caught.
	app := l.ListenUDP(t, l.Client, netip.AddrPortFrom(l.ClientAddr, 5060).String())
	appAddr := app.LocalAddr().(*net.UDPAddr).AddrPort()

	readListener := func(want string) (src, dst netip.AddrPort) {
		t.Helper()
		buf := make([]byte, 64)
		oob := make([]byte, sockopt.OrigDstOOBSize)
		ln.SetReadDeadline(time.Now().Add(icptWait))
		n, oobn, _, src, err := ln.ReadMsgUDPAddrPort(buf, oob)
		if err != nil {
			t.Fatalf("listener: %v", err)
		}
		if string(buf[:n]) != want {
			t.Fatalf("listener read %q, want %q", buf[:n], want)
		}
		dst, ok := sockopt.ParseOrigDst(oob[:oobn])
		if !ok {
			t.Fatalf("no original destination in oob %x", oob[:oobn])
		}
		return netip.AddrPortFrom(src.Addr().Unmap(), src.Port()), dst
	}
	if _, err := app.WriteToUDPAddrPort([]byte("INVITE"), orig); err != nil {
		t.Fatal(err)
	}
	src, dst := readListener("INVITE")
	if src != appAddr || dst != orig {
		t.Errorf("listener got a datagram %v -> %v, want %v -> %v", src, dst, appAddr, orig)
	}

	// natkeep's upstream socket, marked: reaches the server, and the
	// server's answer comes back through the NAT.
	var up *net.UDPConn
	if err := natlab.InNetns(l.Client, func() error {
		d := net.Dialer{Control: sockopt.MarkControl(0x4e4c)}
		c, err := d.Dial("udp", orig.String())
		if err == nil {
			up = c.(*net.UDPConn)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { up.Close() })
	if _, err := up.Write([]byte("INVITE")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	server.SetReadDeadline(time.Now().Add(icptWait))
	n, from, err := server.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "INVITE" {
		t.Fatalf("server read %q, %v", buf[:n], err)
	}
	if from.Addr() != l.RouterOuter {
		t.Errorf("server sees natkeep's datagram from %v, want the NAT's %v", from, l.RouterOuter)
	}
	if _, err := server.WriteToUDPAddrPort([]byte("200 OK"), from); err != nil {
		t.Fatal(err)
	}
	up.SetReadDeadline(time.Now().Add(icptWait))
	if n, err := up.Read(buf); err != nil || string(buf[:n]) != "200 OK" {
		t.Fatalf("natkeep's upstream read %q, %v", buf[:n], err)
	}

	// The reply to the app from the original destination: a transparent,
	// marked socket bound to the server's address.
	var reply *net.UDPConn
	if err := natlab.InNetns(l.Client, func() error {
		lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
			if err := sockopt.TransparentControl(network, address, c); err != nil {
				return err
			}
			return sockopt.MarkControl(0x4e4c)(network, address, c)
		}}
		pc, err := lc.ListenPacket(context.Background(), "udp4", orig.String())
		if err == nil {
			reply = pc.(*net.UDPConn)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reply.Close() })
	if _, err := reply.WriteToUDPAddrPort([]byte("200 OK"), appAddr); err != nil {
		t.Fatal(err)
	}
	app.SetReadDeadline(time.Now().Add(icptWait))
	n, from, err = app.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "200 OK" {
		t.Fatalf("app read %q, %v", buf[:n], err)
	}
	if from != orig {
		t.Errorf("app got the reply from %v, want the server's %v", from, orig)
	}

	// The flow goes on through natkeep; the prefix rule works too; a port
	// that is not listed goes straight to the server.
	if _, err := app.WriteToUDPAddrPort([]byte("ACK"), orig); err != nil {
		t.Fatal(err)
	}
	if src, dst := readListener("ACK"); src != appAddr || dst != orig {
		t.Errorf("second datagram %v -> %v", src, dst)
	}
	stun := netip.AddrPortFrom(l.ServerAddr, 3478)
	if _, err := app.WriteToUDPAddrPort([]byte("BIND"), stun); err != nil {
		t.Fatal(err)
	}
	if _, dst := readListener("BIND"); dst != stun {
		t.Errorf("udp:10.0.0.0/8:3478: original destination %v, want %v", dst, stun)
	}
	other := l.ListenUDP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 5061).String())
	if _, err := app.WriteToUDPAddrPort([]byte("OPTIONS"), netip.AddrPortFrom(l.ServerAddr, 5061)); err != nil {
		t.Fatal(err)
	}
	other.SetReadDeadline(time.Now().Add(icptWait))
	if n, err := other.Read(buf); err != nil || string(buf[:n]) != "OPTIONS" {
		t.Fatalf("port 5061 (not listed): server read %q, %v", buf[:n], err)
	}

	// A peer that contacts the app first (here the router, from port 5060):
	// the app's answer to it has destination port 5060 but belongs to a flow
	// the app did not start, so it goes straight back, untouched.
	peer := l.ListenUDP(t, l.Router, netip.AddrPortFrom(l.RouterInner, 5060).String())
	if _, err := peer.WriteToUDPAddrPort([]byte("REGISTER"), appAddr); err != nil {
		t.Fatal(err)
	}
	app.SetReadDeadline(time.Now().Add(icptWait))
	n, from, err = app.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "REGISTER" {
		t.Fatalf("app read %q, %v", buf[:n], err)
	}
	if _, err := app.WriteToUDPAddrPort([]byte("401"), from); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(icptWait))
	if n, err := peer.Read(buf); err != nil || string(buf[:n]) != "401" {
		t.Fatalf("the app's answer to an inbound flow: peer read %q, %v", buf[:n], err)
	}

	ln.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := ln.ReadFromUDPAddrPort(buf); err == nil {
		t.Errorf("listener got %q that it should not have", buf[:n])
	}
}

// TestInterceptIPv6: IPv6 TCP redirect (and UDP TPROXY) to an fd00::/8
// server; IPv4 traffic to the same port is not caught by the IPv6 prefix.
func TestInterceptIPv6(t *testing.T) {
	l := natlab.New(t, natlab.Config{IPv6: true})
	icptMustRun(t, l.Client, icptEnv("NATKEEP_INTERCEPT", "tcp:[fd00::/8]:8000-8100,udp:[fd00::/8]:3478"), "install")
	t.Cleanup(func() { icptRun(t, l.Client, nil, "remove") })

	natkeep := l.ListenTCP(t, l.Client, ":15001") // dual-stack, as natkeep would
	server4 := l.ListenTCP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 8080).String())
	orig := netip.AddrPortFrom(l.ServerAddr6, 8080)

	app := icptDial(t, l.Client, "tcp", orig.String(), nil, 0)
	c := icptExpectAccept(t, natkeep, "IPv6 app")
	got, err := sockopt.OriginalDst(c)
	if err != nil {
		t.Fatal(err)
	}
	if got != orig {
		t.Errorf("OriginalDst = %v, want %v", got, orig)
	}
	if app.RemoteAddr().String() != orig.String() {
		t.Errorf("the app sees %v, want %v", app.RemoteAddr(), orig)
	}

	icptDial(t, l.Client, "tcp", netip.AddrPortFrom(l.ServerAddr, 8080).String(), nil, 0)
	icptExpectAccept(t, server4, "IPv4 to the same port")
	icptExpectNoAccept(t, natkeep, "IPv4 to the same port")

	ln := icptTProxyListener(t, l.Client, "udp6", "[::]:15002")
	stun := netip.AddrPortFrom(l.ServerAddr6, 3478)
	u := l.DialUDP(t, l.Client, stun.String())
	if _, err := u.Write([]byte("BIND")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	oob := make([]byte, sockopt.OrigDstOOBSize)
	ln.SetReadDeadline(time.Now().Add(icptWait))
	n, oobn, _, src, err := ln.ReadMsgUDPAddrPort(buf, oob)
	if err != nil || string(buf[:n]) != "BIND" {
		t.Fatalf("listener read %q, %v", buf[:n], err)
	}
	if dst, ok := sockopt.ParseOrigDst(oob[:oobn]); !ok || dst != stun || src.String() != u.LocalAddr().String() {
		t.Errorf("listener got %v -> %v (%v), want %v -> %v", src, dst, ok, u.LocalAddr(), stun)
	}
}

// TestMain removes the natkeep build and checks that no lab namespace
// leaked.
func TestMain(m *testing.M) { natlab.Main(m) }
