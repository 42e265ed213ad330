//go:build linux

package natlab

// Control experiments proving that the NAT lab behaves like a real NAT: mappings are created by MASQUERADE, expire after the configured
// conntrack timeouts, are kept by traffic, and — the kernel behaviour
// natkeep's UDP heartbeats rely on — are refreshed by TTL-1 packets that the
// router drops.

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
	"golang.org/x/sys/unix"
)

// readUDP reads one datagram on c within d.
func readUDP(c *net.UDPConn, d time.Duration) (string, error) {
	c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	buf := make([]byte, 2048)
	for {
		n, err := c.Read(buf)
		if err == nil {
			return string(buf[:n]), nil
		}
		var ne net.Error
		if (errors.As(err, &ne) && ne.Timeout()) || errors.Is(err, net.ErrClosed) {
			return "", err
		}
		// A connected UDP socket may report an ICMP error (e.g.
		// ECONNREFUSED) once; it is not data, keep waiting until the
		// deadline set above.
	}
}

// labWriteTTL1 sends payload on the connected socket c with IP TTL 1 for
// this packet only (IP_TTL ancillary message), so the first router drops it.
func labWriteTTL1(c *net.UDPConn, payload []byte) error {
	oob := make([]byte, unix.CmsgSpace(4))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level = unix.IPPROTO_IP
	h.Type = unix.IP_TTL
	h.SetLen(unix.CmsgLen(4))
	binary.NativeEndian.PutUint32(oob[unix.CmsgLen(0):], 1)
	n, oobn, err := c.WriteMsgUDP(payload, oob, nil)
	if err != nil {
		return err
	}
	if n != len(payload) || oobn != len(oob) {
		return fmt.Errorf("short WriteMsgUDP: n=%d/%d oobn=%d/%d", n, len(payload), oobn, len(oob))
	}
	return nil
}

// labSNMP reads counters from /proc/net/snmp inside ns, keyed "Ip:InHdrErrors".
func labSNMP(t *testing.T, l *Lab, ns string) map[string]int64 {
	t.Helper()
	out := l.Run(t, ns, "cat", "/proc/net/snmp")
	m := map[string]int64{}
	sc := bufio.NewScanner(strings.NewReader(out))
	var hdr []string
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		if hdr == nil || hdr[0] != f[0] {
			hdr = f
			continue
		}
		for i := 1; i < len(f) && i < len(hdr); i++ {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			m[strings.TrimSuffix(f[0], ":")+":"+hdr[i]] = v
		}
		hdr = nil
	}
	return m
}

type labUDPMode int

const (
	labUDPIdle        labUDPMode = iota // nothing during the wait
	labUDPKeepTraffic                   // normal packets every 1s
	labUDPTTL1Refresh                   // TTL-1 packets every 1s
)

// labUDPMappingExperiment: establish a UDP flow through the NAT, wait
// 2×UDPTimeout+2s doing mode, then have the server push to the mapped
// address and report whether the client got it.
func labUDPMappingExperiment(t *testing.T, mode labUDPMode) {
	const timeout = 2 * time.Second
	l := New(t, Config{UDPTimeout: timeout, UDPStreamTimeout: timeout})
	ev := l.ConntrackEvents(t, "udp")

	srv := l.ListenUDP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 0).String())
	srvAddr := srv.LocalAddr().(*net.UDPAddr).AddrPort()
	srvPeer := nktest.NewUDP(t, srv)
	cli := l.DialUDP(t, l.Client, srvAddr.String())
	cliAddr := netip.AddrPortFrom(l.ClientAddr, uint16(cli.LocalAddr().(*net.UDPAddr).Port))
	tuple := Tuple(cliAddr, srvAddr)

	// 1. Mapping works: client → server, server sees the router's outer
	// address (MASQUERADE), reply reaches the client.
	start := time.Now()
	if _, err := cli.Write([]byte("hello")); err != nil {
		t.Fatalf("client write: %v", err)
	}
	p, ok := srvPeer.WaitData(3*time.Second, "hello")
	if !ok {
		t.Fatalf("server did not receive hello (got %q)", srvPeer.All())
	}
	mapped := p.From
	if mapped.Addr() != l.RouterOuter {
		t.Fatalf("server saw source %v, want the router's outer address %v (MASQUERADE)", mapped, l.RouterOuter)
	}
	t.Logf("client %v → server %v seen as %v", cliAddr, srvAddr, mapped)
	if _, err := srv.WriteToUDPAddrPort([]byte("welcome"), mapped); err != nil {
		t.Fatalf("server reply: %v", err)
	}
	if got, err := readUDP(cli, 3*time.Second); err != nil || got != "welcome" {
		t.Fatalf("client did not receive the reply through the mapping: %q, %v", got, err)
	}
	t.Logf("conntrack after handshake:\n%s", l.ConntrackList(t, "udp"))

	// 2. Wait 2×timeout+2s.
	wait := 2*timeout + 2*time.Second
	snmpBefore := labSNMP(t, l, l.Router)
	deadline := time.Now().Add(wait)
	sent := 0
	tick := time.NewTicker(time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-tick.C:
		case <-time.After(time.Until(deadline)):
		}
		if !time.Now().Before(deadline) {
			break
		}
		sent++
		switch mode {
		case labUDPKeepTraffic:
			if _, err := cli.Write([]byte(fmt.Sprintf("keep-%d", sent))); err != nil {
				t.Fatalf("client keep write: %v", err)
			}
		case labUDPTTL1Refresh:
			if err := labWriteTTL1(cli, []byte(fmt.Sprintf("ttl1-%d", sent))); err != nil {
				t.Fatalf("client TTL-1 write: %v", err)
			}
		default:
			sent--
		}
	}
	tick.Stop()
	snmpAfter := labSNMP(t, l, l.Router)
	if mode != labUDPIdle {
		t.Logf("sent %d packets during %v idle wait", sent, wait)
	}
	t.Logf("conntrack before push (t=%.1fs):\n%s", time.Since(start).Seconds(), l.ConntrackList(t, "udp"))
	destroyedBeforePush := ev.Grep("[DESTROY]", tuple)

	// 3. Server pushes to the recorded mapping.
	if _, err := srv.WriteToUDPAddrPort([]byte("push"), mapped); err != nil {
		t.Fatalf("server push: %v", err)
	}
	got, err := readUDP(cli, 3*time.Second)
	pushArrived := err == nil && got == "push"
	if err == nil && got != "push" {
		t.Fatalf("client received unexpected %q", got)
	}

	// What the server received during the wait, after the hello.
	time.Sleep(200 * time.Millisecond)
	var serverGot []string
	for _, g := range srvPeer.All()[1:] {
		serverGot = append(serverGot, g.Data)
	}

	switch mode {
	case labUDPIdle:
		if pushArrived {
			t.Fatalf("push arrived after %v idle with udp timeout %v: the mapping did not expire", wait, timeout)
		}
		if !ev.WaitFor(5*time.Second, "[DESTROY]", tuple) {
			t.Fatalf("no conntrack DESTROY event for %s; events:\n%s", tuple, ev.Output())
		}
		t.Logf("push did not arrive (%v); DESTROY events before push: %d", err, len(destroyedBeforePush))
	case labUDPKeepTraffic:
		if !pushArrived {
			t.Fatalf("push did not arrive although the client sent %d packets during the wait: %v\nevents:\n%s", sent, err, ev.Output())
		}
		if n := len(serverGot); n < sent-1 {
			t.Errorf("server received only %d of %d keep packets: %q", n, sent, serverGot)
		}
	case labUDPTTL1Refresh:
		for _, s := range serverGot {
			if strings.HasPrefix(s, "ttl1-") {
				t.Errorf("server received a TTL-1 packet %q: the TTL was not applied", s)
			}
		}
		hdrErr := snmpAfter["Ip:InHdrErrors"] - snmpBefore["Ip:InHdrErrors"]
		timeExc := snmpAfter["Icmp:OutTimeExcds"] - snmpBefore["Icmp:OutTimeExcds"]
		t.Logf("router: Ip:InHdrErrors +%d, Icmp:OutTimeExcds +%d for %d TTL-1 packets", hdrErr, timeExc, sent)
		if hdrErr < 1 {
			t.Errorf("router counted no TTL-expired packets (Ip:InHdrErrors +%d)", hdrErr)
		}
		if !pushArrived {
			t.Fatalf("push did NOT arrive: TTL-1 packets did not refresh the router's conntrack entry (%v)\nevents:\n%s", err, ev.Output())
		}
	}
	if mode != labUDPIdle {
		if d := ev.Grep("[DESTROY]", tuple); len(d) > 0 {
			t.Errorf("conntrack destroyed the flow although it was refreshed:\n%s", strings.Join(d, "\n"))
		}
	}
	t.Logf("conntrack events for %s:\n%s", tuple, strings.Join(ev.Grep(tuple), "\n"))
	if len(serverGot) > 0 {
		t.Logf("server received during wait: %q", serverGot)
	}
}

func TestLabUDPMappingExpires(t *testing.T) {
	t.Parallel()
	labUDPMappingExperiment(t, labUDPIdle)
}

func TestLabUDPMappingKeptByTraffic(t *testing.T) {
	t.Parallel()
	labUDPMappingExperiment(t, labUDPKeepTraffic)
}

// TestLabUDPTTL1RefreshesMapping documents the kernel behaviour natkeep's
// UDP heartbeats rely on: a packet with IP TTL 1 never reaches the server
// (the router drops it and answers ICMP time-exceeded), yet conntrack has
// already seen it in PREROUTING and refreshed the flow's timeout, so the NAT
// mapping stays open.
func TestLabUDPTTL1RefreshesMapping(t *testing.T) {
	t.Parallel()
	labUDPMappingExperiment(t, labUDPTTL1Refresh)
}

func TestLabTCPIdleDies(t *testing.T) {
	t.Parallel()
	const timeout = 3 * time.Second
	l := New(t, Config{TCPEstablishedTimeout: timeout, TCPLoose: false})
	ev := l.ConntrackEvents(t, "tcp")

	ln := l.ListenTCP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 0).String())
	srvAddr := ln.Addr().(*net.TCPAddr).AddrPort()
	cli := l.DialTCP(t, l.Client, srvAddr.String())
	srv, err := nktest.AcceptWithin(ln, 10*time.Second)
	if err != nil {
		t.Fatalf("server did not accept the connection: %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	cliAddr := netip.AddrPortFrom(l.ClientAddr, uint16(cli.LocalAddr().(*net.TCPAddr).Port))
	tuple := Tuple(cliAddr, srvAddr)
	if from := srv.RemoteAddr().(*net.TCPAddr).AddrPort(); from.Addr().Unmap() != l.RouterOuter {
		t.Fatalf("server saw peer %v, want router outer address %v", from, l.RouterOuter)
	}

	exchange := func(w, r net.Conn, msg string) error {
		if _, err := w.Write([]byte(msg)); err != nil {
			return fmt.Errorf("write: %w", err)
		}
		r.SetReadDeadline(time.Now().Add(3 * time.Second))
		defer r.SetReadDeadline(time.Time{})
		buf := make([]byte, len(msg))
		if _, err := io.ReadFull(r, buf); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		if string(buf) != msg {
			return fmt.Errorf("got %q, want %q", buf, msg)
		}
		return nil
	}
	if err := exchange(cli, srv, "ping"); err != nil {
		t.Fatalf("client→server: %v", err)
	}
	if err := exchange(srv, cli, "pong"); err != nil {
		t.Fatalf("server→client: %v", err)
	}
	start := time.Now()
	ct := l.ConntrackList(t, "tcp")
	if !strings.Contains(ct, "ESTABLISHED") || !strings.Contains(ct, tuple) {
		t.Fatalf("conntrack has no ESTABLISHED entry for %s:\n%s", tuple, ct)
	}
	t.Logf("conntrack after exchange:\n%s", ct)

	wait := 2*timeout + 2*time.Second
	time.Sleep(wait)
	t.Logf("after %v idle, conntrack:\n%s", time.Since(start).Round(time.Millisecond), l.ConntrackList(t, "tcp"))

	_, werr := srv.Write([]byte("push"))
	cli.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 16)
	n, rerr := cli.Read(buf)
	if n > 0 {
		t.Fatalf("client received %q after %v idle with established timeout %v: the mapping did not expire", buf[:n], wait, timeout)
	}
	var ne net.Error
	if !(errors.As(rerr, &ne) && ne.Timeout()) {
		t.Logf("client read ended with non-timeout error: %v", rerr)
	}
	// The server's data hits the router without a conntrack entry; with
	// tcp_loose=0 it is not de-NATed and the router's own stack answers RST.
	srv.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, srvErr := srv.Read(buf)
	t.Logf("server write after idle: %v; client read: %v; server read afterwards: %v", werr, rerr, srvErr)
	if !ev.WaitFor(5*time.Second, "[DESTROY]", tuple) {
		t.Fatalf("no conntrack DESTROY event for %s; events:\n%s", tuple, ev.Output())
	}
	t.Logf("conntrack events for %s:\n%s", tuple, strings.Join(ev.Grep(tuple), "\n"))
}

// TestLabIPv6Masquerade checks the IPv6 half of the lab: the server sees the
// router's outer v6 address and the reply returns through the mapping.
func TestLabIPv6Masquerade(t *testing.T) {
	t.Parallel()
	l := New(t, Config{IPv6: true})
	ev := l.ConntrackEvents(t, "udp")
	srv := l.ListenUDP(t, l.Server, netip.AddrPortFrom(l.ServerAddr6, 0).String())
	srvAddr := srv.LocalAddr().(*net.UDPAddr).AddrPort()
	srvPeer := nktest.NewUDP(t, srv)
	cli := l.DialUDP(t, l.Client, srvAddr.String())
	cliAddr := cli.LocalAddr().(*net.UDPAddr).AddrPort()

	var p nktest.Datagram
	var ok bool
	// Neighbour discovery may drop the very first packet; retry a few times.
	for i := 0; i < 5 && !ok; i++ {
		cli.Write([]byte("hello6"))
		p, ok = srvPeer.WaitData(time.Second, "hello6")
	}
	if !ok {
		t.Fatal("server did not receive the IPv6 datagram")
	}
	if p.From.Addr() != l.RouterOuter6 {
		t.Fatalf("server saw %v, want router outer %v", p.From, l.RouterOuter6)
	}
	srv.WriteToUDPAddrPort([]byte("welcome6"), p.From)
	if got, err := readUDP(cli, 3*time.Second); err != nil || got != "welcome6" {
		t.Fatalf("client did not get the v6 reply: %q, %v", got, err)
	}
	tuple := Tuple(cliAddr, srvAddr)
	if ct := l.ConntrackList(t, "udp"); !strings.Contains(ct, tuple) {
		t.Errorf("conntrack -L has no entry for %s:\n%s", tuple, ct)
	}
	if !ev.WaitFor(2*time.Second, "[NEW]", tuple) {
		t.Errorf("conntrack -E showed no IPv6 NEW event for %s:\n%s", tuple, ev.Output())
	}
	t.Logf("v6: %v → %v seen as %v; events:\n%s", cliAddr, srvAddr, p.From, strings.Join(ev.Grep(tuple), "\n"))
}

// TestLabBlockServer checks BlockServer: while blocked, the server's reply
// does not reach the client; after unblock it does again.
func TestLabBlockServer(t *testing.T) {
	t.Parallel()
	l := New(t, Config{UDPTimeout: 30 * time.Second, UDPStreamTimeout: 30 * time.Second})
	srv := l.ListenUDP(t, l.Server, netip.AddrPortFrom(l.ServerAddr, 0).String())
	srvPeer := nktest.NewUDP(t, srv)
	cli := l.DialUDP(t, l.Client, srv.LocalAddr().String())

	roundTrip := func(msg string) bool {
		cli.Write([]byte(msg))
		p, ok := srvPeer.WaitData(2*time.Second, msg)
		if !ok {
			t.Fatalf("server did not receive %q", msg)
		}
		srv.WriteToUDPAddrPort([]byte("re-"+msg), p.From)
		got, err := readUDP(cli, time.Second)
		return err == nil && got == "re-"+msg
	}
	if !roundTrip("one") {
		t.Fatal("round trip failed before blocking")
	}
	unblock := l.BlockServer(t)
	if roundTrip("two") {
		t.Fatal("reply reached the client although the server is blocked")
	}
	unblock()
	unblock() // idempotent
	if !roundTrip("three") {
		t.Fatal("round trip failed after unblocking")
	}
}

// TestLabCleanup checks that a lab's namespaces and processes are gone after
// its test finishes, and that the host's conntrack sysctls were not changed.
func TestLabCleanup(t *testing.T) {
	t.Parallel()
	SkipUnlessCapable(t, true)
	hostBefore, _ := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_udp_timeout")
	var names []string
	var proc *Proc
	t.Run("lab", func(t *testing.T) {
		l := New(t, Config{UDPTimeout: 7 * time.Second, IPv6: true})
		names = []string{l.Client, l.Router, l.Server}
		proc = l.StartProcess(t, l.Client, []string{"NATLAB_X=1"}, "sh", "-c", "echo started $NATLAB_X; exec sleep 300")
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(proc.Output(), "started 1") && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if !strings.Contains(proc.Output(), "started 1") {
			t.Fatalf("process output %q", proc.Output())
		}
		if err := proc.Wait(100 * time.Millisecond); !errors.Is(err, ErrWaitTimeout) {
			t.Fatalf("Wait on a running process: %v", err)
		}
		if got := strings.TrimSpace(l.Run(t, l.Router, "sysctl", "-n", "net.netfilter.nf_conntrack_udp_timeout")); got != "7" {
			t.Fatalf("router udp timeout %q", got)
		}
	})
	ctx, cancel := context.WithTimeout(t.Context(), cmdTimeout)
	defer cancel()
	out, err := Exec(ctx, "", "ip", "netns", "list")
	if err != nil {
		t.Fatalf("ip netns list: %v\n%s", err, out)
	}
	for _, ns := range names {
		if strings.Contains(out, ns) {
			t.Errorf("namespace %s still exists after lab cleanup", ns)
		}
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			t.Errorf("/run/netns/%s still exists", ns)
		}
	}
	if proc == nil || !proc.Exited() {
		t.Errorf("lab process not reaped after cleanup")
	} else {
		t.Logf("lab process after cleanup: exited, wait result %v", proc.Wait(0))
	}
	hostAfter, _ := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_udp_timeout")
	if string(hostBefore) != string(hostAfter) {
		t.Errorf("host nf_conntrack_udp_timeout changed from %q to %q: lab sysctls leaked out of the router namespace", hostBefore, hostAfter)
	}
}

// TestLabNatkeepBinaryBuilds checks NatkeepBinary (not parallel: the build
// competes for CPU with the timing-sensitive lab tests).
func TestLabNatkeepBinaryBuilds(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	p := NatkeepBinary(t)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&0o111 == 0 {
		t.Fatalf("%s is not executable (%v)", p, fi.Mode())
	}
	if p2 := NatkeepBinary(t); p2 != p {
		t.Fatalf("second call returned %s, want cached %s", p2, p)
	}
}

// TestMain removes the natkeep build and checks that no lab namespace
// leaked.
func TestMain(m *testing.M) { Main(m) }
