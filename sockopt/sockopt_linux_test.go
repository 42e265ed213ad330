package sockopt

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// wait bounds every blocking step of these tests.
const wait = 5 * time.Second

// tcpPair returns both ends of an established loopback TCP connection.
func tcpPair(t *testing.T) (dialed, accepted *net.TCPConn) {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if err := ln.SetDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	type result struct {
		c   *net.TCPConn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := ln.AcceptTCP()
		ch <- result{c, err}
	}()
	d := net.Dialer{Timeout: wait}
	c, err := d.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	dialed = c.(*net.TCPConn)
	t.Cleanup(func() { dialed.Close() })
	r := <-ch // bounded by ln's deadline
	if r.err != nil {
		t.Fatal(r.err)
	}
	accepted = r.c
	t.Cleanup(func() { accepted.Close() })
	return dialed, accepted
}

// bothEnds runs f on the dialed and on the accepted socket of a fresh pair.
func bothEnds(t *testing.T, f func(t *testing.T, c *net.TCPConn)) {
	dialed, accepted := tcpPair(t)
	t.Run("dialed", func(t *testing.T) { f(t, dialed) })
	t.Run("accepted", func(t *testing.T) { f(t, accepted) })
}

// withFD runs f on c's descriptor, independently of the package's helpers.
func withFD(t *testing.T, c syscall.Conn, f func(fd int) error) error {
	t.Helper()
	raw, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var ferr error
	if err := raw.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		t.Fatal(err)
	}
	return ferr
}

// rawInt reads an int option with a plain getsockopt.
func rawInt(t *testing.T, c syscall.Conn, level, opt int) int {
	t.Helper()
	var v int
	if err := withFD(t, c, func(fd int) (err error) {
		v, err = unix.GetsockoptInt(fd, level, opt)
		return err
	}); err != nil {
		t.Fatalf("getsockopt(%d, %d): %v", level, opt, err)
	}
	return v
}

func TestKeepaliveRoundTrip(t *testing.T) {
	bothEnds(t, func(t *testing.T, c *net.TCPConn) {
		for _, k := range []Keepalive{
			{Idle: 17 * time.Second, Interval: 3 * time.Second, Count: 5},
			{Idle: time.Second, Interval: time.Second, Count: 1},                   // Validate's minimum
			{Idle: 32767 * time.Second, Interval: 32767 * time.Second, Count: 127}, // Validate's maximum
		} {
			if err := SetKeepalive(c, k); err != nil {
				t.Fatalf("SetKeepalive(%+v): %v", k, err)
			}
			on, got, err := GetKeepalive(c)
			if err != nil {
				t.Fatal(err)
			}
			if !on || got != k {
				t.Fatalf("GetKeepalive = %v, %+v; want true, %+v", on, got, k)
			}
			if v := rawInt(t, c, unix.SOL_SOCKET, unix.SO_KEEPALIVE); v != 1 {
				t.Errorf("raw SO_KEEPALIVE = %d, want 1", v)
			}
			if v := rawInt(t, c, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE); v != int(k.Idle/time.Second) {
				t.Errorf("raw TCP_KEEPIDLE = %d, want %v", v, k.Idle)
			}
			if v := rawInt(t, c, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL); v != int(k.Interval/time.Second) {
				t.Errorf("raw TCP_KEEPINTVL = %d, want %v", v, k.Interval)
			}
			if v := rawInt(t, c, unix.IPPROTO_TCP, unix.TCP_KEEPCNT); v != k.Count {
				t.Errorf("raw TCP_KEEPCNT = %d, want %d", v, k.Count)
			}
		}

		if err := disableKeepalive(c); err != nil {
			t.Fatal(err)
		}
		on, _, err := GetKeepalive(c)
		if err != nil {
			t.Fatal(err)
		}
		if on {
			t.Error("GetKeepalive after DisableKeepalive: enabled = true")
		}
		if v := rawInt(t, c, unix.SOL_SOCKET, unix.SO_KEEPALIVE); v != 0 {
			t.Errorf("raw SO_KEEPALIVE after DisableKeepalive = %d, want 0", v)
		}
	})
}

// TestKernelLimits checks that Validate's bounds are the kernel's: one past
// them is rejected by setsockopt itself.
func TestKernelLimits(t *testing.T) {
	c, _ := tcpPair(t)
	for _, tt := range []struct {
		name     string
		level    int
		opt, bad int
	}{
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 32768},
		{"TCP_KEEPINTVL", unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, 32768},
		{"TCP_KEEPCNT", unix.IPPROTO_TCP, unix.TCP_KEEPCNT, 128},
		{"TCP_KEEPIDLE", unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, 0},
		{"TCP_USER_TIMEOUT", unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, -1},
	} {
		err := withFD(t, c, func(fd int) error { return unix.SetsockoptInt(fd, tt.level, tt.opt, tt.bad) })
		if !errors.Is(err, unix.EINVAL) {
			t.Errorf("kernel accepted %s=%d (err %v); Validate's limit is wrong", tt.name, tt.bad, err)
		}
	}
}

func TestSetKeepaliveRejectsInvalid(t *testing.T) {
	c, _ := tcpPair(t)
	before := rawInt(t, c, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
	err := SetKeepalive(c, Keepalive{Idle: 40000 * time.Second, Interval: 5 * time.Second, Count: 3})
	if err == nil || err.Error() != "sockopt: keepalive idle 40000s out of range 1s..32767s" {
		t.Fatalf("SetKeepalive(idle 40000s) = %v", err)
	}
	if after := rawInt(t, c, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE); after != before {
		t.Errorf("TCP_KEEPIDLE changed from %d to %d by a rejected SetKeepalive", before, after)
	}
}

func TestUserTimeoutRoundTrip(t *testing.T) {
	bothEnds(t, func(t *testing.T, c *net.TCPConn) {
		for _, d := range []time.Duration{1500 * time.Millisecond, time.Millisecond, MaxUserTimeout, 0} {
			if err := SetUserTimeout(c, d); err != nil {
				t.Fatalf("SetUserTimeout(%v): %v", d, err)
			}
			got, err := GetUserTimeout(c)
			if err != nil {
				t.Fatal(err)
			}
			if got != d {
				t.Errorf("GetUserTimeout = %v, want %v", got, d)
			}
			if v := rawInt(t, c, unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT); v != int(d/time.Millisecond) {
				t.Errorf("raw TCP_USER_TIMEOUT = %d, want %d", v, d/time.Millisecond)
			}
		}
		if err := SetUserTimeout(c, 1500*time.Microsecond); err == nil || !strings.Contains(err.Error(), "not a whole number of milliseconds") {
			t.Errorf("SetUserTimeout(1.5ms) = %v, want a validation error", err)
		}
	})
}

// TestErrorsNameOptionAndKeepErrno guards against the pitfall of letting
// RawConn.Control's nil return overwrite the setsockopt error.
func TestErrorsNameOptionAndKeepErrno(t *testing.T) {
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()

	err = SetUserTimeout(u, time.Second) // TCP option on a UDP socket
	if !errors.Is(err, unix.ENOPROTOOPT) || !strings.Contains(err.Error(), "sockopt: set TCP_USER_TIMEOUT=1000: ") {
		t.Errorf("SetUserTimeout(udp) = %v, want ENOPROTOOPT naming TCP_USER_TIMEOUT=1000", err)
	}
	err = SetKeepalive(u, Keepalive{Idle: 17 * time.Second, Interval: 3 * time.Second, Count: 5})
	if !errors.Is(err, unix.ENOPROTOOPT) || !strings.Contains(err.Error(), "sockopt: set TCP_KEEPIDLE=17: ") {
		t.Errorf("SetKeepalive(udp) = %v, want ENOPROTOOPT naming TCP_KEEPIDLE=17", err)
	}
	if _, err := GetTCPInfo(u); err == nil || !strings.Contains(err.Error(), "TCP_INFO") {
		t.Errorf("GetTCPInfo(udp) = %v, want an error naming TCP_INFO", err)
	}

	c, _ := tcpPair(t)
	c.Close()
	err = SetUserTimeout(c, time.Second)
	if !errors.Is(err, net.ErrClosed) || !strings.Contains(err.Error(), "TCP_USER_TIMEOUT") {
		t.Errorf("SetUserTimeout(closed) = %v, want net.ErrClosed naming TCP_USER_TIMEOUT", err)
	}
	if _, _, err := getLinger(c); !errors.Is(err, net.ErrClosed) || !strings.Contains(err.Error(), "SO_LINGER") {
		t.Errorf("getLinger(closed) = %v, want net.ErrClosed naming SO_LINGER", err)
	}
}

func TestLingerZero(t *testing.T) {
	bothEnds(t, func(t *testing.T, c *net.TCPConn) {
		if err := SetLingerZero(c); err != nil {
			t.Fatal(err)
		}
		on, sec, err := getLinger(c)
		if err != nil {
			t.Fatal(err)
		}
		if !on || sec != 0 {
			t.Errorf("GetLinger = %v, %d; want true, 0", on, sec)
		}
		var l *unix.Linger
		if err := withFD(t, c, func(fd int) (err error) {
			l, err = unix.GetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if l.Onoff != 1 || l.Linger != 0 {
			t.Errorf("raw SO_LINGER = %+v, want {Onoff:1 Linger:0}", *l)
		}
	})
}

func TestLingerZeroCloseResetsPeer(t *testing.T) {
	for _, closer := range []string{"dialed", "accepted"} {
		t.Run(closer+" closes", func(t *testing.T) {
			dialed, accepted := tcpPair(t)
			closing, peer := dialed, accepted
			if closer == "accepted" {
				closing, peer = accepted, dialed
			}
			if err := SetLingerZero(closing); err != nil {
				t.Fatal(err)
			}
			if err := closing.Close(); err != nil {
				t.Fatal(err)
			}
			if err := peer.SetReadDeadline(time.Now().Add(wait)); err != nil {
				t.Fatal(err)
			}
			n, err := peer.Read(make([]byte, 16))
			if !errors.Is(err, syscall.ECONNRESET) {
				t.Fatalf("peer Read = %d, %v; want ECONNRESET", n, err)
			}
		})
	}
}

// TestSocketErrorAfterReset shows the intended diagnosis path: after an RST
// the kernel reports the connection CLOSE in TCP_INFO and ECONNRESET in
// SO_ERROR, and reading SO_ERROR clears it.
func TestSocketErrorAfterReset(t *testing.T) {
	dialed, accepted := tcpPair(t)
	if err := SetLingerZero(accepted); err != nil {
		t.Fatal(err)
	}
	accepted.Close()

	deadline := time.Now().Add(wait)
	for {
		ti, err := GetTCPInfo(dialed)
		if err != nil {
			t.Fatal(err)
		}
		if ti.State == 7 { // TCP_CLOSE
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("TCP state still %d %v after RST", ti.State, wait)
		}
		time.Sleep(5 * time.Millisecond)
	}
	soErr, err := socketError(dialed)
	if err != nil {
		t.Fatal(err)
	}
	if !errors.Is(soErr, syscall.ECONNRESET) {
		t.Fatalf("SocketError = %v, want ECONNRESET", soErr)
	}
	if _, ok := soErr.(syscall.Errno); !ok {
		t.Errorf("SocketError returned %T, want syscall.Errno", soErr)
	}
	if soErr, err := socketError(dialed); soErr != nil || err != nil {
		t.Errorf("second SocketError = %v, %v; want nil, nil (SO_ERROR is cleared on read)", soErr, err)
	}
}

func TestSocketErrorHealthy(t *testing.T) {
	bothEnds(t, func(t *testing.T, c *net.TCPConn) {
		soErr, err := socketError(c)
		if soErr != nil || err != nil {
			t.Errorf("SocketError = %v, %v; want nil, nil", soErr, err)
		}
	})
}

func TestTCPInfoEstablished(t *testing.T) {
	dialed, accepted := tcpPair(t)
	// Exchange data so the RTT and last-data fields have something to show.
	deadline := time.Now().Add(wait)
	for _, c := range []*net.TCPConn{dialed, accepted} {
		if err := c.SetDeadline(deadline); err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range [][2]*net.TCPConn{{dialed, accepted}, {accepted, dialed}} {
		if _, err := dir[0].Write([]byte("ping")); err != nil {
			t.Fatal(err)
		}
		if _, err := dir[1].Read(make([]byte, 4)); err != nil {
			t.Fatal(err)
		}
	}
	for name, c := range map[string]*net.TCPConn{"dialed": dialed, "accepted": accepted} {
		ti, err := GetTCPInfo(c)
		if err != nil {
			t.Fatal(err)
		}
		if ti.State != 1 {
			t.Errorf("%s: State = %d, want 1 (TCP_ESTABLISHED)", name, ti.State)
		}
		var raw *unix.TCPInfo
		if err := withFD(t, c, func(fd int) (err error) {
			raw, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		if raw.State != unix.BPF_TCP_ESTABLISHED {
			t.Errorf("%s: raw tcpi_state = %d, want %d", name, raw.State, unix.BPF_TCP_ESTABLISHED)
		}
		if ti.LastDataRecv < 0 || ti.LastDataRecv > wait {
			t.Errorf("%s: LastDataRecv = %v, want within the test's lifetime", name, ti.LastDataRecv)
		}
		t.Logf("%s: %+v", name, ti)
	}
}

func TestTTLControlBytes(t *testing.T) {
	for _, ipv6 := range []bool{false, true} {
		level, typ := unix.IPPROTO_IP, unix.IP_TTL
		if ipv6 {
			level, typ = unix.IPPROTO_IPV6, unix.IPV6_HOPLIMIT
		}
		for _, ttl := range []int{1, 7, 64, 255} {
			b, err := TTLControl(ipv6, ttl)
			if err != nil {
				t.Fatalf("TTLControl(%v, %d): %v", ipv6, ttl, err)
			}
			if len(b) != unix.CmsgSpace(4) {
				t.Errorf("len = %d, want CmsgSpace(4) = %d", len(b), unix.CmsgSpace(4))
			}
			msgs, err := unix.ParseSocketControlMessage(b)
			if err != nil {
				t.Fatal(err)
			}
			if len(msgs) != 1 {
				t.Fatalf("parsed %d messages, want 1", len(msgs))
			}
			m := msgs[0]
			if int(m.Header.Level) != level || int(m.Header.Type) != typ {
				t.Errorf("level/type = %d/%d, want %d/%d", m.Header.Level, m.Header.Type, level, typ)
			}
			if int(m.Header.Len) != unix.CmsgLen(4) {
				t.Errorf("cmsg_len = %d, want CmsgLen(4) = %d", m.Header.Len, unix.CmsgLen(4))
			}
			if len(m.Data) != 4 || int(binary.NativeEndian.Uint32(m.Data)) != ttl {
				t.Errorf("data = %x, want native-endian %d", m.Data, ttl)
			}
		}
		for _, bad := range []int{0, -1, 256} {
			if _, err := TTLControl(ipv6, bad); err == nil || !strings.Contains(err.Error(), "out of range 1..255") {
				t.Errorf("TTLControl(%v, %d) = %v, want range error", ipv6, bad, err)
			}
		}
	}
}

func TestTTLControlSendIPv4(t *testing.T) {
	testTTLSend(t, "udp4", net.IPv4(127, 0, 0, 1), false)
}

func TestTTLControlSendIPv6(t *testing.T) {
	testTTLSend(t, "udp6", net.IPv6loopback, true)
}

// testTTLSend sends one datagram with the TTLControl oob and one without on
// a connected socket and checks the TTL / hop limit the receiver sees.
func testTTLSend(t *testing.T, network string, ip net.IP, ipv6 bool) {
	level, recvOpt, cmsgType, hopsOpt := unix.IPPROTO_IP, unix.IP_RECVTTL, unix.IP_TTL, unix.IP_TTL
	if ipv6 {
		level, recvOpt, cmsgType, hopsOpt = unix.IPPROTO_IPV6, unix.IPV6_RECVHOPLIMIT, unix.IPV6_HOPLIMIT, unix.IPV6_UNICAST_HOPS
	}
	ln, err := net.ListenUDP(network, &net.UDPAddr{IP: ip})
	if err != nil {
		if ipv6 {
			t.Skipf("IPv6 loopback [::1] unavailable: %v", err)
		}
		t.Fatal(err)
	}
	defer ln.Close()
	if err := withFD(t, ln, func(fd int) error { return unix.SetsockoptInt(fd, level, recvOpt, 1) }); err != nil {
		t.Fatalf("enable receive TTL: %v", err)
	}
	cl, err := net.DialUDP(network, nil, ln.LocalAddr().(*net.UDPAddr))
	if err != nil {
		if ipv6 {
			t.Skipf("IPv6 loopback [::1] unavailable: %v", err)
		}
		t.Fatal(err)
	}
	defer cl.Close()

	// What an unmodified datagram carries (64 unless the sysctl was changed).
	def := rawInt(t, cl, level, hopsOpt)
	t.Logf("default TTL/hop limit on %s: %d", network, def)
	const ttl = 7
	if def == ttl {
		t.Fatalf("default TTL is %d; pick another test value", def)
	}

	oob, err := TTLControl(ipv6, ttl)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.SetWriteDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	// The same oob is reused for two datagrams: it is built once per flow.
	for _, p := range []string{"ttl-a", "ttl-b"} {
		n, oobn, err := cl.WriteMsgUDP([]byte(p), oob, nil)
		if err != nil {
			t.Fatalf("WriteMsgUDP: %v", err)
		}
		if n != len(p) || oobn != len(oob) {
			t.Fatalf("WriteMsgUDP wrote %d/%d bytes, want %d/%d", n, oobn, len(p), len(oob))
		}
	}
	if _, err := cl.Write([]byte("plain")); err != nil {
		t.Fatal(err)
	}

	want := map[string]int{"ttl-a": ttl, "ttl-b": ttl, "plain": def}
	if err := ln.SetReadDeadline(time.Now().Add(wait)); err != nil {
		t.Fatal(err)
	}
	for range len(want) {
		buf, ob := make([]byte, 64), make([]byte, 4*unix.CmsgSpace(4))
		n, oobn, flags, _, err := ln.ReadMsgUDP(buf, ob)
		if err != nil {
			t.Fatalf("ReadMsgUDP: %v", err)
		}
		if flags&unix.MSG_CTRUNC != 0 {
			t.Fatal("control data truncated")
		}
		payload := string(buf[:n])
		got := -1
		msgs, err := unix.ParseSocketControlMessage(ob[:oobn])
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			if int(m.Header.Level) == level && int(m.Header.Type) == cmsgType && len(m.Data) >= 4 {
				got = int(int32(binary.NativeEndian.Uint32(m.Data)))
			}
		}
		w, ok := want[payload]
		if !ok {
			t.Fatalf("unexpected datagram %q", payload)
		}
		delete(want, payload)
		if got != w {
			t.Errorf("%q arrived with TTL/hop limit %d, want %d", payload, got, w)
		}
	}
}

func TestBuffers(t *testing.T) {
	for _, tt := range []struct {
		name   string
		set    func(syscall.Conn, int) (int, error)
		opt    int
		sysctl string
	}{
		{"SO_RCVBUF", SetRecvBuffer, unix.SO_RCVBUF, "/proc/sys/net/core/rmem_max"},
		{"SO_SNDBUF", SetSendBuffer, unix.SO_SNDBUF, "/proc/sys/net/core/wmem_max"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			defer u.Close()

			b, err := os.ReadFile(tt.sysctl)
			if err != nil {
				t.Skipf("cannot read %s: %v", tt.sysctl, err)
			}
			max, err := strconv.Atoi(string(bytes.TrimSpace(b)))
			if err != nil || max > 16<<20 {
				t.Skipf("%s = %q: too large for this test", tt.sysctl, b)
			}
			// Ask for more than the sysctl allows: with CAP_NET_ADMIN the
			// FORCE option gets it (doubled), otherwise the fallback is capped.
			req := 2*max + 4096
			got, err := tt.set(u, req)
			if err != nil {
				t.Fatal(err)
			}
			if raw := rawInt(t, u, unix.SOL_SOCKET, tt.opt); got != raw {
				t.Errorf("returned %d, raw getsockopt %d", got, raw)
			}
			switch got {
			case 2 * req:
				t.Logf("%s forced to %d (above %s=%d)", tt.name, got, tt.sysctl, max)
			case 2 * max:
				t.Logf("%s capped at %d: no CAP_NET_ADMIN, fell back to the plain option", tt.name, got)
			default:
				t.Errorf("%s(%d) = %d, want %d (forced) or %d (capped)", tt.name, req, got, 2*req, 2*max)
			}
			for _, bad := range []int{0, -1} {
				if _, err := tt.set(u, bad); err == nil || !strings.Contains(err.Error(), tt.name) {
					t.Errorf("%s(%d) = %v, want an error naming %s", tt.name, bad, err, tt.name)
				}
			}
		})
	}
}
