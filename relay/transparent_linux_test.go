package relay

// A transparent UDP route against real interception: the test re-runs
// itself in a network namespace of its own (gone with the child process,
// so nothing outlives the test and the host's rules are never touched),
// where one nftables rule diverts the app's datagrams with TPROXY to the
// route's listener, as `natkeep intercept install` does.

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// netnsChildEnv names the test a child test binary runs inside its own
// network namespace.
const netnsChildEnv = "NATKEEP_RELAY_TEST_NETNS"

// inOwnNetns runs body in a child copy of this test binary that lives in a
// fresh network namespace (CLONE_NEWNET), running only this (top-level)
// test; the child's verdict becomes the test's.
func inOwnNetns(t *testing.T, body func(t *testing.T)) {
	if os.Getenv(netnsChildEnv) == t.Name() {
		body(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root: a network namespace, nftables TPROXY and IP_TRANSPARENT")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*testDeadline)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), netnsChildEnv+"="+t.Name())
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	cmd.WaitDelay = time.Second
	out, err := cmd.CombinedOutput()
	switch {
	case err != nil:
		t.Fatalf("the test in its own network namespace: %v\n%s", err, out)
	case strings.Contains(string(out), "--- SKIP: "+t.Name()):
		t.Skipf("skipped in its own network namespace:\n%s", out)
	case !strings.Contains(string(out), "--- PASS: "+t.Name()):
		t.Fatalf("the test did not run in its own network namespace:\n%s", out)
	}
}

// loopbackUp brings up lo, which a fresh network namespace has down.
func loopbackUp(t *testing.T) {
	t.Helper()
	lo, err := netlink.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(lo); err != nil {
		t.Fatal(err)
	}
}

// tproxyUDP diverts UDP datagrams arriving on lo for port dport, unless
// they carry bypass as their mark, to the transparent listener on
// 127.0.0.1:lport.
func tproxyUDP(t *testing.T, dport, lport uint16, bypass uint32) {
	t.Helper()
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tbl := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "relay_test"})
	ch := conn.AddChain(&nftables.Chain{Name: "tproxy", Table: tbl, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle})
	conn.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIF, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, 1)}, // lo
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, dport)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, bypass)},
		&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, lport)},
		&expr.TProxy{Family: byte(nftables.TableFamilyIPv4), TableFamily: byte(nftables.TableFamilyIPv4), RegPort: 1},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	if err := conn.Flush(); err != nil {
		t.Skipf("cannot install a TPROXY rule (kernel without nft_tproxy?): %v", err)
	}
}

// setRecvOrigDst turns IP_RECVORIGDSTADDR on the listener on or off.
func setRecvOrigDst(t *testing.T, ln *net.UDPConn, on bool) {
	t.Helper()
	rc, err := ln.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	v := 0
	if on {
		v = 1
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_RECVORIGDSTADDR, v) }); err != nil {
		t.Fatal(err)
	}
	if serr != nil {
		t.Fatal(serr)
	}
}

// reuseAddrEcho is the app's peer on 127.0.0.2: an echo server whose socket
// allows SO_REUSEADDR, so the flow's transparent socket can bind the same
// address to answer the app from it. Every datagram is also sent to got.
func reuseAddrEcho(t *testing.T) (netip.AddrPort, <-chan udpRecv) {
	t.Helper()
	return reuseAddrEchoAt(t, "127.0.0.2:0")
}

// reuseAddrEchoAt is reuseAddrEcho on a given address.
func reuseAddrEchoAt(t *testing.T, addr string) (netip.AddrPort, <-chan udpRecv) {
	t.Helper()
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEADDR, 1) }); err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := pc.(*net.UDPConn)
	got := make(chan udpRecv, 16)
	done := make(chan struct{})
	t.Cleanup(func() { c.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 2048)
		for {
			n, from, err := c.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			got <- udpRecv{from: from, data: bytes.Clone(buf[:n])}
			_, _ = c.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
	return c.LocalAddr().(*net.UDPAddr).AddrPort(), got
}

// TestTransparentNoOrigDst: an intercepted datagram that reaches the
// transparent listener without its IP_ORIGDSTADDR control message (here:
// the option switched off on the listener; a plain datagram sent straight
// to the listener does carry one, naming the listener) is counted as a
// no_orig_dst drop and logged, goes nowhere, and the route goes on
// relaying the app's next datagram to its original destination and back.
func TestTransparentNoOrigDst(t *testing.T) {
	inOwnNetns(t, func(t *testing.T) {
		loopbackUp(t)
		const bypass = 0x4e4c
		rt := Route{Name: "transparent", Proto: UDP, Listen: "127.0.0.1:0", UDP: udpOpts(), Transparent: true, BypassMark: bypass}
		r := hostileStart(t, rt)
		ln := r.udp[0].ln
		peer, got := reuseAddrEcho(t)
		tproxyUDP(t, peer.Port(), uint16(ln.LocalAddr().(*net.UDPAddr).Port), bypass)
		app := dialUDP(t, net.UDPAddrFromAddrPort(peer))

		setRecvOrigDst(t, ln, false)
		if _, err := app.Write([]byte("no destination")); err != nil {
			t.Fatal(err)
		}
		eventually(t, "a no_orig_dst drop", func() bool { return r.drops(t, rt.Name)["no_orig_dst"] == 1 })
		// The counter moves just before the line is written: wait for both.
		eventually(t, "the drop to be logged", func() bool {
			return len(r.logs.lines("intercepted datagram without its original destination")) == 1
		})

		setRecvOrigDst(t, ln, true)
		if _, err := app.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		if b := readWithin(t, app, testDeadline); string(b) != "hello" {
			t.Fatalf("app got %q, want the echo of \"hello\"", b)
		}
		// Through natkeep, not straight from the app: its own socket sent it.
		var g udpRecv
		select {
		case g = <-got:
		case <-time.After(testDeadline):
			t.Fatal("the peer got nothing, yet the app got an echo")
		}
		if string(g.data) != "hello" || g.from == app.LocalAddr().(*net.UDPAddr).AddrPort() {
			t.Fatalf("the peer got %q from %v first, want only \"hello\" from natkeep (the app is %v)", g.data, g.from, app.LocalAddr())
		}
		if d := r.drops(t, rt.Name); len(d) != 1 {
			t.Fatalf("drops %v, want the one no_orig_dst", d)
		}
		if v := r.routeMetric(t, rt.Name, "natkeep_udp_flows_created_total"); v != 1 {
			t.Fatalf("flows created = %v, want 1", v)
		}
	})
}

// TestTransparentRuleFlowLimits: each intercept rule's flows count against
// that rule's own max_flows, not the route's: a rule with max_flows 1 lets
// one app flow to its destination in and refuses the second (counted as
// refused), while flows to a destination no rule covers run under the
// route's own, larger limit.
func TestTransparentRuleFlowLimits(t *testing.T) {
	inOwnNetns(t, func(t *testing.T) {
		loopbackUp(t)
		const bypass = 0x4e4c
		limited, _ := reuseAddrEchoAt(t, "127.0.0.2:0")
		open, _ := reuseAddrEchoAt(t, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.3"), limited.Port()).String())
		rule := InterceptRule{Proto: UDP, Prefix: netip.MustParsePrefix("127.0.0.2/32"), PortLo: limited.Port(), PortHi: limited.Port(), UDP: udpOpts()}
		rule.UDP.MaxFlows = 1
		rt := Route{Name: "transparent", Proto: UDP, Listen: "127.0.0.1:0", UDP: udpOpts(), Transparent: true, BypassMark: bypass,
			Intercept: []InterceptRule{rule}}
		r := hostileStart(t, rt)
		tproxyUDP(t, limited.Port(), uint16(r.udp[0].ln.LocalAddr().(*net.UDPAddr).Port), bypass)
		echoes := func(to netip.AddrPort, n int) (answered int) {
			for i := range n {
				app := dialUDP(t, net.UDPAddrFromAddrPort(to))
				msg := []byte{'m', byte(i)}
				if _, err := app.Write(msg); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 16)
				_ = app.SetReadDeadline(time.Now().Add(time.Second))
				if m, err := app.Read(buf); err == nil && bytes.Equal(buf[:m], msg) {
					answered++
				}
			}
			return answered
		}
		if got := echoes(limited, 2); got != 1 {
			t.Fatalf("%d of 2 flows to the max_flows=1 rule's destination worked, want 1", got)
		}
		if got := echoes(open, 3); got != 3 {
			t.Fatalf("%d of 3 flows to an uncovered destination worked, want 3 (the route's own limit)", got)
		}
		if v := r.routeMetric(t, rt.Name, "natkeep_udp_flows_refused_total"); v != 1 {
			t.Fatalf("flows refused = %v, want 1", v)
		}
		if n := len(r.logs.lines(rule.String())); n != 1 {
			t.Fatalf("%d refusal lines naming the rule %q:\n%s", n, rule.String(), r.logs)
		}
	})
}

// redirectTCP redirects locally originated TCP connections to port dport,
// unless they carry bypass as their mark, to the listener on port lport
// (nat OUTPUT REDIRECT, as `natkeep intercept install` does for TCP).
func redirectTCP(t *testing.T, dport, lport uint16, bypass uint32) {
	t.Helper()
	conn, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	tbl := conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "relay_test_nat"})
	ch := conn.AddChain(&nftables.Chain{Name: "out", Table: tbl, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
	conn.AddRule(&nftables.Rule{Table: tbl, Chain: ch, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, dport)},
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, bypass)},
		&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, lport)},
		&expr.Redir{RegisterProtoMin: 1},
	}})
	if err := conn.Flush(); err != nil {
		t.Skipf("cannot install a REDIRECT rule (kernel without nft_redir?): %v", err)
	}
}

// TestTransparentRuleConnLimits: each intercept rule's connections count
// against that rule's own max_conns: with max_conns 1 on the rule for one
// destination, a second held-open connection to it is reset and counted,
// while connections to a destination no rule covers run under the route's
// own (unlimited) setting.
func TestTransparentRuleConnLimits(t *testing.T) {
	inOwnNetns(t, func(t *testing.T) {
		loopbackUp(t)
		const bypass = 0x4e4c
		echo := func(c *net.TCPConn) { _, _ = io.Copy(c, c); c.Close() }
		limitedLn, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 2)})
		if err != nil {
			t.Fatal(err)
		}
		port := uint16(limitedLn.Addr().(*net.TCPAddr).Port)
		openLn, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 3), Port: int(port)})
		if err != nil {
			t.Fatal(err)
		}
		for _, ln := range []*net.TCPListener{limitedLn, openLn} {
			t.Cleanup(func() { ln.Close() })
			go func() {
				for {
					c, err := ln.AcceptTCP()
					if err != nil {
						return
					}
					go echo(c)
				}
			}()
		}
		rule := InterceptRule{Proto: TCP, Prefix: netip.MustParsePrefix("127.0.0.2/32"), PortLo: port, PortHi: port, TCP: tcpOpts()}
		rule.TCP.MaxConns = 1
		rt := Route{Name: "transparent-tcp", Proto: TCP, Listen: "127.0.0.1:0", TCP: tcpOpts(), Transparent: true, BypassMark: bypass,
			Intercept: []InterceptRule{rule}}
		r := hostileStart(t, rt)
		redirectTCP(t, port, uint16(r.Addrs()[0].(*net.TCPAddr).Port), bypass)
		works := func(to *net.TCPAddr, n int) (ok int) {
			for i := range n {
				c, err := net.DialTCP("tcp4", nil, to)
				if err != nil {
					continue
				}
				t.Cleanup(func() { c.Close() }) // held open: it counts
				msg := []byte{'m', byte(i)}
				_ = c.SetDeadline(time.Now().Add(testDeadline))
				if _, err := c.Write(msg); err != nil {
					continue
				}
				buf := make([]byte, 2)
				if _, err := io.ReadFull(c, buf); err == nil && bytes.Equal(buf, msg) {
					ok++
				}
			}
			return ok
		}
		if got := works(limitedLn.Addr().(*net.TCPAddr), 2); got != 1 {
			t.Fatalf("%d of 2 connections to the max_conns=1 rule's destination worked, want 1", got)
		}
		if got := works(openLn.Addr().(*net.TCPAddr), 3); got != 3 {
			t.Fatalf("%d of 3 connections to an uncovered destination worked, want 3", got)
		}
		if v := r.routeMetric(t, rt.Name, "natkeep_tcp_connection_ends_total", "reason", "conn_limit"); v != 1 {
			t.Fatalf("conn_limit ends = %v, want 1", v)
		}
	})
}
