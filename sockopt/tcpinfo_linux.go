package sockopt

import (
	"fmt"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// GetTCPInfo reads TCP_INFO so a log line can say why a connection ended (state, retransmits, keepalive probes, silence since last data).
func GetTCPInfo(c syscall.Conn) (TCPInfo, error) {
	var ti *unix.TCPInfo
	err := control(c, "TCP_INFO", func(fd int) error {
		var err error
		if ti, err = unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO); err != nil {
			return fmt.Errorf("sockopt: get TCP_INFO: %w", err)
		}
		return nil
	})
	if err != nil {
		return TCPInfo{}, err
	}
	return TCPInfo{
		State:         ti.State,
		Retransmits:   ti.Retransmits,
		Probes:        ti.Probes,
		Backoff:       ti.Backoff,
		Unacked:       ti.Unacked,
		LastDataRecv:  time.Duration(ti.Last_data_recv) * time.Millisecond,
		LastAckRecv:   time.Duration(ti.Last_ack_recv) * time.Millisecond,
		RTT:           time.Duration(ti.Rtt) * time.Microsecond,
		BytesAcked:    ti.Bytes_acked,
		BytesReceived: ti.Bytes_received,
	}, nil
}
