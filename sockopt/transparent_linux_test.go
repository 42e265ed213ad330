package sockopt

// Tests of the transparent-interception options against the real kernel:
// each test that needs netfilter builds its own network namespace (root
// only), programs REDIRECT / TPROXY with iptables inside it and removes it
// afterwards. All traffic stays inside that namespace: the "remote" 10.99.0.2
// and fd00:99::2 are behind a veth pair whose both ends live in it.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

var (
	tpNSCounter atomic.Int64
	tpRemote4   = netip.MustParseAddr("10.99.0.2")
	tpRemote6   = netip.MustParseAddr("fd00:99::2")
)

// tpNetns creates a network namespace with lo up and a veth pair v0/v1
// (v0 = 10.99.0.1/24 and fd00:99::1/64), so 10.99.0.2 and fd00:99::2 are
// routable but nobody answers there. It is deleted on cleanup.
func tpNetns(t *testing.T, tools ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates a network namespace and netfilter rules")
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (apt-get install -y iproute2 iptables): %v", tool, err)
		}
	}
	ns := fmt.Sprintf("nks-%d-%d", os.Getpid(), tpNSCounter.Add(1))
	tpRun(t, "", "ip", "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := tpTryRun("", "ip", "netns", "del", ns); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
		}
	})
	for _, args := range [][]string{
		{"ip", "link", "set", "lo", "up"},
		{"ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1"},
		{"ip", "addr", "add", "10.99.0.1/24", "dev", "v0"},
		{"ip", "-6", "addr", "add", "fd00:99::1/64", "dev", "v0", "nodad"},
		{"ip", "link", "set", "v0", "up"},
		{"ip", "link", "set", "v1", "up"},
	} {
		tpRun(t, ns, args...)
	}
	return ns
}

func tpTryRun(ns string, args ...string) (string, error) {
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).CombinedOutput()
	return string(out), err
}

func tpRun(t *testing.T, ns string, args ...string) {
	t.Helper()
	if out, err := tpTryRun(ns, args...); err != nil {
		t.Fatalf("[%s] %s: %v\n%s", ns, strings.Join(args, " "), err, out)
	}
}

// tpIn runs fn on a locked thread switched into ns; sockets fn creates stay
// in ns for life. On failure to switch back the thread is left locked, so
// the runtime discards it when the goroutine ends.
func tpIn(t *testing.T, ns string, fn func()) {
	t.Helper()
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- err
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(filepath.Join("/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- err
			return
		}
		defer unix.Close(target)
		if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			done <- err
			return
		}
		runtime.UnlockOSThread()
		done <- nil
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("in netns %s: %v", ns, err)
		}
	case <-time.After(wait):
		t.Fatalf("in netns %s: timed out", ns)
	}
}

// tpListen listens in ns with an optional Control hook.
func tpListen(t *testing.T, ns, network, addr string, ctrl func(string, string, syscall.RawConn) error) (ln net.Listener, pc net.PacketConn) {
	t.Helper()
	var err error
	tpIn(t, ns, func() {
		lc := net.ListenConfig{Control: ctrl}
		if strings.HasPrefix(network, "tcp") {
			ln, err = lc.Listen(context.Background(), network, addr)
		} else {
			pc, err = lc.ListenPacket(context.Background(), network, addr)
		}
	})
	if err != nil {
		t.Fatalf("listen %s %s in %s: %v", network, addr, ns, err)
	}
	if ln != nil {
		t.Cleanup(func() { ln.Close() })
	} else {
		t.Cleanup(func() { pc.Close() })
	}
	return ln, pc
}

// tpDial dials from inside ns.
func tpDial(t *testing.T, ns, network, addr string, ctrl func(string, string, syscall.RawConn) error) net.Conn {
	t.Helper()
	var c net.Conn
	var err error
	tpIn(t, ns, func() {
		d := net.Dialer{Timeout: wait, Control: ctrl}
		c, err = d.Dial(network, addr)
	})
	if err != nil {
		t.Fatalf("dial %s %s in %s: %v", network, addr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// tpAccept accepts one connection within the test's bound.
func tpAccept(t *testing.T, ln net.Listener) net.Conn {
	t.Helper()
	ln.(*net.TCPListener).SetDeadline(time.Now().Add(wait))
	c, err := ln.Accept()
	if err != nil {
		t.Fatalf("accept: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestOrigDstRedirect(t *testing.T) {
	for _, tt := range []struct {
		name          string
		ipt           string
		remote        netip.Addr
		lnNet, lnAddr string
	}{
		{"IPv4", "iptables", tpRemote4, "tcp4", "127.0.0.1:15001"},
		// An IPv4 connection accepted on a dual-stack listener: the socket is
		// AF_INET6 with IPv4-mapped addresses; SO_ORIGINAL_DST still applies.
		{"IPv4DualStackListener", "iptables", tpRemote4, "tcp", ":15001"},
		{"IPv6", "ip6tables", tpRemote6, "tcp6", "[::1]:15001"},
		{"IPv6DualStackListener", "ip6tables", tpRemote6, "tcp", ":15001"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ns := tpNetns(t, tt.ipt)
			tpRun(t, ns, tt.ipt, "-w", "5", "-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-d", tt.remote.String(),
				"--dport", "5432", "-j", "REDIRECT", "--to-ports", "15001")
			ln, _ := tpListen(t, ns, tt.lnNet, tt.lnAddr, nil)
			orig := netip.AddrPortFrom(tt.remote, 5432)
			app := tpDial(t, ns, "tcp", orig.String(), nil)
			c := tpAccept(t, ln)
			if got := app.RemoteAddr().(*net.TCPAddr).AddrPort(); got != orig {
				t.Errorf("the app sees its peer as %v, want %v", got, orig)
			}
			got, err := OriginalDst(c.(*net.TCPConn))
			if err != nil {
				t.Fatalf("OriginalDst: %v", err)
			}
			if got != orig {
				t.Errorf("OriginalDst = %v, want %v (accepted %v -> %v)", got, orig, c.RemoteAddr(), c.LocalAddr())
			}
			// The connection works end to end through the redirect.
			if _, err := app.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			c.SetReadDeadline(time.Now().Add(wait))
			if _, err := c.Read(buf); err != nil || string(buf) != "ping" {
				t.Fatalf("read %q, %v", buf, err)
			}

			// A connection straight to the listener is tracked but was not
			// rewritten: conntrack names the listener itself as its original
			// destination, which must come back as an error, or a proxy
			// would dial itself over and over.
			loop := netip.MustParseAddr("127.0.0.1")
			if tt.remote.Is6() {
				loop = netip.IPv6Loopback()
			}
			tpDial(t, ns, "tcp", netip.AddrPortFrom(loop, 15001).String(), nil)
			dc := tpAccept(t, ln)
			got, err = OriginalDst(dc.(*net.TCPConn))
			want := fmt.Sprintf("sockopt: SO_ORIGINAL_DST: %s is the connection's own local address: the connection was not redirected", netip.AddrPortFrom(loop, 15001))
			if !errors.Is(err, ErrNotRedirected) || err.Error() != want || got.IsValid() {
				t.Errorf("OriginalDst(direct) = %v, %v; want %q wrapping ErrNotRedirected", got, err, want)
			}
		})
	}
}

// TestOrigDstNotTracked: without any netfilter rule in a fresh namespace
// conntrack tracks nothing and the error says so, keeping ENOENT.
func TestOrigDstNotTracked(t *testing.T) {
	ns := tpNetns(t)
	for _, network := range []string{"tcp4", "tcp6"} {
		addr := "127.0.0.1:0"
		if network == "tcp6" {
			addr = "[::1]:0"
		}
		ln, _ := tpListen(t, ns, network, addr, nil)
		tpDial(t, ns, network, ln.Addr().String(), nil)
		c := tpAccept(t, ln)
		_, err := OriginalDst(c.(*net.TCPConn))
		want := "sockopt: get SO_ORIGINAL_DST: no such file or directory (conntrack has no entry: the connection was not redirected)"
		if network == "tcp6" {
			want = strings.Replace(want, "SO_ORIGINAL_DST", "IP6T_SO_ORIGINAL_DST", 1)
		}
		if !errors.Is(err, unix.ENOENT) || !errors.Is(err, ErrNotRedirected) || err.Error() != want {
			t.Errorf("%s: OriginalDst = %v, want %q wrapping ENOENT and ErrNotRedirected", network, err, want)
		}
	}
}

func TestOrigDstClosedConn(t *testing.T) {
	c, _ := tcpPair(t)
	c.Close()
	_, err := OriginalDst(c)
	if err == nil || !strings.HasPrefix(err.Error(), "sockopt: SO_ORIGINAL_DST: ") {
		t.Errorf("OriginalDst(closed) = %v, want a Control error naming SO_ORIGINAL_DST", err)
	}
}

// tpTPROXY programs the UDP interception of locally generated traffic as
// natkeep's installer does, with iptables: mark in mangle OUTPUT, route
// marked packets to lo, TPROXY them in PREROUTING on lo.
func tpTPROXY(t *testing.T, ns, ipt string, remote netip.Addr, port int) {
	t.Helper()
	ip, local := "ip", "0.0.0.0/0"
	if remote.Is6() {
		ip, local = "ip", "::/0"
		tpRun(t, ns, ip, "-6", "rule", "add", "fwmark", "0x4e4b", "lookup", "100")
		tpRun(t, ns, ip, "-6", "route", "add", "local", local, "dev", "lo", "table", "100")
	} else {
		tpRun(t, ns, ip, "rule", "add", "fwmark", "0x4e4b", "lookup", "100")
		tpRun(t, ns, ip, "route", "add", "local", local, "dev", "lo", "table", "100")
	}
	tpRun(t, ns, ipt, "-w", "5", "-t", "mangle", "-A", "OUTPUT", "-p", "udp", "-d", remote.String(), "--dport", "5060",
		"-j", "MARK", "--set-mark", "0x4e4b")
	tpRun(t, ns, ipt, "-w", "5", "-t", "mangle", "-A", "PREROUTING", "-i", "lo", "-p", "udp", "-m", "mark", "--mark", "0x4e4b",
		"-j", "TPROXY", "--on-port", fmt.Sprint(port), "--tproxy-mark", "0x4e4b")
}

func TestTransparentTPROXYUDP(t *testing.T) {
	for _, tt := range []struct {
		name          string
		ipt           string
		remote        netip.Addr
		lnNet, lnAddr string
	}{
		{"IPv4", "iptables", tpRemote4, "udp4", "0.0.0.0:15002"},
		{"IPv4DualStackListener", "iptables", tpRemote4, "udp", ":15002"},
		{"IPv6", "ip6tables", tpRemote6, "udp6", "[::]:15002"},
		{"IPv6DualStackListener", "ip6tables", tpRemote6, "udp", ":15002"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ns := tpNetns(t, tt.ipt)
			tpTPROXY(t, ns, tt.ipt, tt.remote, 15002)
			_, pc := tpListen(t, ns, tt.lnNet, tt.lnAddr, RecvOrigDstControl)
			ln := pc.(*net.UDPConn)
			orig := netip.AddrPortFrom(tt.remote, 5060)
			app := tpDial(t, ns, "udp", orig.String(), nil).(*net.UDPConn)
			appAddr := app.LocalAddr().(*net.UDPAddr).AddrPort()

			// read returns one intercepted datagram, its source and its
			// original destination.
			read := func(want string) netip.AddrPort {
				t.Helper()
				buf := make([]byte, 64)
				oob := make([]byte, OrigDstOOBSize)
				ln.SetReadDeadline(time.Now().Add(wait))
				n, oobn, flags, src, err := ln.ReadMsgUDPAddrPort(buf, oob)
				if err != nil {
					t.Fatalf("listener read: %v", err)
				}
				if flags&unix.MSG_CTRUNC != 0 {
					t.Fatalf("control message truncated in %d bytes", len(oob))
				}
				if string(buf[:n]) != want {
					t.Fatalf("listener read %q, want %q", buf[:n], want)
				}
				if src.Addr().Unmap() != appAddr.Addr() || src.Port() != appAddr.Port() {
					t.Errorf("datagram from %v, want the app's %v", src, appAddr)
				}
				got, ok := ParseOrigDst(oob[:oobn])
				if !ok {
					t.Fatalf("no original destination in oob %x", oob[:oobn])
				}
				return got
			}
			if _, err := app.Write([]byte("one")); err != nil {
				t.Fatal(err)
			}
			if got := read("one"); got != orig {
				t.Errorf("ParseOrigDst = %v, want %v", got, orig)
			}

			// Reply from a transparent socket bound to the original
			// destination: the app's connected socket accepts only that
			// source, so receiving it proves the source address.
			_, rpc := tpListen(t, ns, "udp", orig.String(), TransparentControl)
			reply := rpc.(*net.UDPConn)
			if _, err := reply.WriteToUDPAddrPort([]byte("pong"), appAddr); err != nil {
				t.Fatalf("reply: %v", err)
			}
			buf := make([]byte, 64)
			app.SetReadDeadline(time.Now().Add(wait))
			n, from, err := app.ReadFromUDPAddrPort(buf)
			if err != nil {
				t.Fatalf("app read: %v", err)
			}
			if string(buf[:n]) != "pong" || from.Addr().Unmap() != orig.Addr() || from.Port() != orig.Port() {
				t.Errorf("app got %q from %v, want \"pong\" from %v", buf[:n], from, orig)
			}

			// A second reply socket on the same original destination (another
			// app flow) binds too: SO_REUSEADDR.
			tpListen(t, ns, "udp", orig.String(), TransparentControl)

			// The unconnected reply sockets do not capture the flow: later
			// datagrams still reach the listener.
			if _, err := app.Write([]byte("two")); err != nil {
				t.Fatal(err)
			}
			if got := read("two"); got != orig {
				t.Errorf("second datagram: ParseOrigDst = %v, want %v", got, orig)
			}
		})
	}
}

// TestTransparentOptionsSet reads the options back from the kernel.
func TestTransparentOptionsSet(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN) for IP_TRANSPARENT")
	}
	for _, tt := range []struct {
		network, addr string
		ctrl          func(string, string, syscall.RawConn) error
		want          map[[2]int]int // {level, opt} -> value
	}{
		{"udp4", "127.0.0.1:0", TransparentControl, map[[2]int]int{
			{unix.IPPROTO_IP, unix.IP_TRANSPARENT}: 1, {unix.SOL_SOCKET, unix.SO_REUSEADDR}: 1, {unix.IPPROTO_IP, unix.IP_RECVORIGDSTADDR}: 0}},
		{"udp6", "[::1]:0", TransparentControl, map[[2]int]int{
			{unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT}: 1, {unix.SOL_SOCKET, unix.SO_REUSEADDR}: 1}},
		{"udp4", "127.0.0.1:0", RecvOrigDstControl, map[[2]int]int{
			{unix.IPPROTO_IP, unix.IP_TRANSPARENT}: 1, {unix.IPPROTO_IP, unix.IP_RECVORIGDSTADDR}: 1, {unix.SOL_SOCKET, unix.SO_REUSEADDR}: 0}},
		{"udp6", "[::1]:0", RecvOrigDstControl, map[[2]int]int{
			{unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT}: 1, {unix.IPPROTO_IPV6, unix.IPV6_RECVORIGDSTADDR}: 1, {unix.IPPROTO_IP, unix.IP_RECVORIGDSTADDR}: 0}},
		{"udp", ":0", RecvOrigDstControl, map[[2]int]int{ // dual-stack
			{unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT}: 1, {unix.IPPROTO_IPV6, unix.IPV6_RECVORIGDSTADDR}: 1, {unix.IPPROTO_IP, unix.IP_RECVORIGDSTADDR}: 1}},
		{"tcp4", "127.0.0.1:0", TransparentControl, map[[2]int]int{{unix.IPPROTO_IP, unix.IP_TRANSPARENT}: 1}},
		{"tcp6", "[::1]:0", TransparentControl, map[[2]int]int{{unix.IPPROTO_IPV6, unix.IPV6_TRANSPARENT}: 1}},
	} {
		lc := net.ListenConfig{Control: tt.ctrl}
		var c syscall.Conn
		if strings.HasPrefix(tt.network, "tcp") {
			ln, err := lc.Listen(context.Background(), tt.network, tt.addr)
			if err != nil {
				t.Fatalf("%s %s: %v", tt.network, tt.addr, err)
			}
			defer ln.Close()
			c = ln.(*net.TCPListener)
		} else {
			pc, err := lc.ListenPacket(context.Background(), tt.network, tt.addr)
			if err != nil {
				t.Fatalf("%s %s: %v", tt.network, tt.addr, err)
			}
			defer pc.Close()
			c = pc.(*net.UDPConn)
		}
		for k, want := range tt.want {
			if got := rawInt(t, c, k[0], k[1]); (got != 0) != (want != 0) {
				t.Errorf("%s %s: option %d/%d = %d, want %d", tt.network, tt.addr, k[0], k[1], got, want)
			}
		}
	}
}

// TestTransparentNeedsCapability drops every effective capability on one
// locked thread (which is then discarded) and checks that the failure names
// the option and keeps EPERM.
func TestTransparentNeedsCapability(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to have a capability to drop")
	}
	type result struct{ tr4, tr6, orig, mark error }
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			done <- result{tr4: err}
			return
		}
		data[0].Effective, data[1].Effective = 0, 0
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			done <- result{tr4: err}
			return
		}
		var r result
		listen := func(network, addr string, ctrl func(string, string, syscall.RawConn) error) error {
			pc, err := (&net.ListenConfig{Control: ctrl}).ListenPacket(context.Background(), network, addr)
			if err == nil {
				pc.Close()
			}
			return err
		}
		r.tr4 = listen("udp4", "127.0.0.1:0", TransparentControl)
		r.tr6 = listen("udp6", "[::1]:0", TransparentControl)
		r.orig = listen("udp4", "127.0.0.1:0", RecvOrigDstControl)
		r.mark = listen("udp4", "127.0.0.1:0", MarkControl(0x4e4c))
		done <- r
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(wait):
		t.Fatal("timed out")
	}
	for _, tt := range []struct {
		err  error
		want string
	}{
		{r.tr4, "sockopt: set IP_TRANSPARENT=1: operation not permitted"},
		{r.tr6, "sockopt: set IPV6_TRANSPARENT=1: operation not permitted"},
		{r.orig, "sockopt: set IP_TRANSPARENT=1: operation not permitted"},
		{r.mark, "sockopt: set SO_MARK=0x4e4c: operation not permitted"},
	} {
		if !errors.Is(tt.err, unix.EPERM) || !strings.HasSuffix(tt.err.Error(), tt.want) {
			t.Errorf("without capabilities: %v, want ...%q wrapping EPERM", tt.err, tt.want)
		}
	}
}

func TestMarkRoundTrip(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (CAP_NET_ADMIN) for SO_MARK")
	}
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	for _, m := range []uint32{0x4e4c, 1, 0x80000001, 0xffffffff, 0} {
		if err := SetMark(u, m); err != nil {
			t.Fatalf("SetMark(%#x): %v", m, err)
		}
		got, err := getMark(u)
		if err != nil {
			t.Fatal(err)
		}
		if got != m {
			t.Errorf("GetMark = %#x, want %#x", got, m)
		}
		if raw := uint32(rawInt(t, u, unix.SOL_SOCKET, unix.SO_MARK)); raw != m {
			t.Errorf("raw SO_MARK = %#x, want %#x", raw, m)
		}
	}

	// MarkControl marks a dialed TCP socket before connect (so the SYN
	// carries it) and works as a ListenConfig hook too.
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	d := net.Dialer{Timeout: wait, Control: MarkControl(0x4e4c)}
	c, err := d.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if raw := rawInt(t, c.(*net.TCPConn), unix.SOL_SOCKET, unix.SO_MARK); raw != 0x4e4c {
		t.Errorf("dialed SO_MARK = %#x, want 0x4e4c", raw)
	}
	lc := net.ListenConfig{Control: MarkControl(7)}
	pc, err := lc.ListenPacket(context.Background(), "udp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if raw := rawInt(t, pc.(*net.UDPConn), unix.SOL_SOCKET, unix.SO_MARK); raw != 7 {
		t.Errorf("listened SO_MARK = %#x, want 7", raw)
	}

	u.Close()
	if err := SetMark(u, 1); err == nil || !strings.HasPrefix(err.Error(), "sockopt: SO_MARK: ") {
		t.Errorf("SetMark(closed) = %v, want a Control error naming SO_MARK", err)
	}
	if _, err := getMark(u); err == nil || !strings.HasPrefix(err.Error(), "sockopt: SO_MARK: ") {
		t.Errorf("getMark(closed) = %v, want a Control error naming SO_MARK", err)
	}
}

// ---------------------------------------------------------------- ParseOrigDst

// cmsg builds one control message as the kernel lays it out.
func cmsg(level, typ int, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

func sockaddr4(ap netip.AddrPort) []byte {
	b := make([]byte, unix.SizeofSockaddrInet4)
	binary.NativeEndian.PutUint16(b, unix.AF_INET)
	binary.BigEndian.PutUint16(b[2:], ap.Port())
	a := ap.Addr().As4()
	copy(b[4:], a[:])
	return b
}

func sockaddr6(ap netip.AddrPort) []byte {
	b := make([]byte, unix.SizeofSockaddrInet6)
	binary.NativeEndian.PutUint16(b, unix.AF_INET6)
	binary.BigEndian.PutUint16(b[2:], ap.Port())
	a := ap.Addr().As16()
	copy(b[8:], a[:])
	return b
}

func TestOrigDstParse(t *testing.T) {
	v4 := netip.MustParseAddrPort("10.1.2.3:5060")
	v6 := netip.MustParseAddrPort("[fd00::1:2]:3478")
	ttl := make([]byte, 4)
	binary.NativeEndian.PutUint32(ttl, 64)
	for _, tt := range []struct {
		name string
		oob  []byte
		want netip.AddrPort
		ok   bool
	}{
		{"v4", cmsg(unix.IPPROTO_IP, unix.IP_ORIGDSTADDR, sockaddr4(v4)), v4, true},
		{"v6", cmsg(unix.IPPROTO_IPV6, unix.IPV6_ORIGDSTADDR, sockaddr6(v6)), v6, true},
		{"after another cmsg", append(cmsg(unix.IPPROTO_IP, unix.IP_TTL, ttl), cmsg(unix.IPPROTO_IP, unix.IP_ORIGDSTADDR, sockaddr4(v4))...), v4, true},
		{"v6 after another cmsg", append(cmsg(unix.IPPROTO_IPV6, unix.IPV6_HOPLIMIT, ttl), cmsg(unix.IPPROTO_IPV6, unix.IPV6_ORIGDSTADDR, sockaddr6(v6))...), v6, true},
		{"empty", nil, netip.AddrPort{}, false},
		{"other cmsg only", cmsg(unix.IPPROTO_IP, unix.IP_TTL, ttl), netip.AddrPort{}, false},
		{"v4 payload under v6 type", cmsg(unix.IPPROTO_IPV6, unix.IPV6_ORIGDSTADDR, sockaddr4(v4)), netip.AddrPort{}, false},
		{"wrong family", cmsg(unix.IPPROTO_IP, unix.IP_ORIGDSTADDR, sockaddr6(v6)[:16]), netip.AddrPort{}, false},
		{"truncated", cmsg(unix.IPPROTO_IPV6, unix.IPV6_ORIGDSTADDR, sockaddr6(v6))[:unix.CmsgLen(0)+8], netip.AddrPort{}, false},
		{"short header", make([]byte, unix.SizeofCmsghdr-1), netip.AddrPort{}, false},
		{"zero length", make([]byte, 64), netip.AddrPort{}, false},
	} {
		got, ok := ParseOrigDst(tt.oob)
		if got != tt.want || ok != tt.ok {
			t.Errorf("%s: ParseOrigDst = %v, %v; want %v, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
	if need := unix.CmsgSpace(unix.SizeofSockaddrInet6); OrigDstOOBSize < need {
		t.Errorf("OrigDstOOBSize = %d, want at least %d", OrigDstOOBSize, need)
	}
	oob := append(cmsg(unix.IPPROTO_IP, unix.IP_TTL, ttl), cmsg(unix.IPPROTO_IPV6, unix.IPV6_ORIGDSTADDR, sockaddr6(v6))...)
	if n := testing.AllocsPerRun(100, func() { ParseOrigDst(oob) }); n != 0 {
		t.Errorf("ParseOrigDst allocates %v times per call, want 0", n)
	}
}
