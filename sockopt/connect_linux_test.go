package sockopt

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestReconnectKeepsLocalPort: after Reconnect a connected UDP socket sends
// to the new peer from the same local address and port, accepts datagrams
// from the new peer and no longer from the old one.
func TestReconnectKeepsLocalPort(t *testing.T) {
	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	a, b := listen(), listen()
	c, err := net.DialUDP("udp4", nil, a.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	local := c.LocalAddr().(*net.UDPAddr).AddrPort()
	if err := Reconnect(c, b.LocalAddr().(*net.UDPAddr).AddrPort()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("to b")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = b.SetReadDeadline(time.Now().Add(wait))
	n, from, err := b.ReadFromUDPAddrPort(buf)
	if err != nil || string(buf[:n]) != "to b" {
		t.Fatalf("new peer read %q, %v", buf[:n], err)
	}
	if from != local {
		t.Fatalf("datagram came from %v, want the unchanged local address %v", from, local)
	}
	// The old peer is no longer accepted; the new one is.
	if _, err := a.WriteToUDPAddrPort([]byte("from a"), local); err != nil {
		t.Fatal(err)
	}
	if _, err := b.WriteToUDPAddrPort([]byte("from b"), local); err != nil {
		t.Fatal(err)
	}
	_ = c.SetReadDeadline(time.Now().Add(wait))
	n, err = c.Read(buf)
	if err != nil || string(buf[:n]) != "from b" {
		t.Fatalf("read %q, %v; want only the new peer's datagram", buf[:n], err)
	}
}

// TestReconnectErrors: a wrong family and a closed socket are errors that
// name the call.
func TestReconnectErrors(t *testing.T) {
	c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
	if err != nil {
		t.Fatal(err)
	}
	if err := Reconnect(c, netip.MustParseAddrPort("[::1]:9")); err == nil {
		t.Error("IPv6 peer on an IPv4 socket accepted")
	}
	c.Close()
	if err := Reconnect(c, netip.MustParseAddrPort("127.0.0.1:9")); err == nil {
		t.Error("closed socket accepted")
	}
}
