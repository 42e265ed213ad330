//go:build !linux

package relay

import (
	"context"
	"net"
	"net/netip"
	"syscall"
)

// upSock is a flow's upstream socket; outside Linux a plain *net.UDPConn
// that a goroutine of its own reads.
type upSock struct {
	c  *net.UDPConn
	v6 bool
}

// dialUpSock opens a UDP socket connected to addr; control (the bypass
// mark), when not nil, runs before connect.
func dialUpSock(addr netip.AddrPort, control func(network, address string, c syscall.RawConn) error) (*upSock, error) {
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	d := net.Dialer{Control: control}
	c, err := d.DialContext(context.Background(), "udp", addr.String())
	if err != nil {
		return nil, err
	}
	return &upSock{c: c.(*net.UDPConn), v6: !addr.Addr().Is4()}, nil
}

// Close closes the socket.
func (s *upSock) Close() error { return s.c.Close() }

// write sends one datagram to the connected peer.
func (s *upSock) write(b []byte) error {
	_, err := s.c.Write(b)
	return err
}

// writeMsg sends one datagram with the control message oob.
func (s *upSock) writeMsg(b, oob []byte) error {
	_, _, err := s.c.WriteMsgUDP(b, oob, nil)
	return err
}

// localAddr returns the socket's local address.
func (s *upSock) localAddr() netip.AddrPort {
	if a, ok := s.c.LocalAddr().(*net.UDPAddr); ok {
		return a.AddrPort()
	}
	return netip.AddrPort{}
}

// SyscallConn gives socket-option helpers the descriptor.
func (s *upSock) SyscallConn() (syscall.RawConn, error) { return s.c.SyscallConn() }
