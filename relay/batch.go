package relay

import (
	"net/netip"
)

// Batched UDP I/O. Per datagram, the relay's cost is its system calls, so
// on Linux the listener is read with recvmmsg (up to listenBatch datagrams
// per call), each upstream socket's wake-up with recvmmsg too, and the
// replies to clients that one epoll wake-up collects leave the listener in
// one sendmmsg. Elsewhere the same code runs with batches of one.
//
// Every slot of a receive batch holds a whole datagram (maxDatagram bytes):
// recvmmsg cannot stop early for a large datagram, so smaller slots would
// truncate one whenever several large datagrams arrive together. The slots
// are one lazily committed mapping: only the pages datagrams are written to
// become resident, one page per slot for small datagrams.

// listenBatch is the most datagrams one listener read returns. Past 16,
// the system call's share of a datagram's cost is too small to measure,
// while every slot is 64 KiB of address space (1 MiB here).
const listenBatch = 16

// replyBatch is the epoll loop's slots: the datagrams it reads in one
// wake-up, whose replies to clients are flushed together (and with GSO,
// the most replies to one client that leave in one send).
const replyBatch = 16

// sendKind says what a datagram queued for a client is, so that it is
// counted as what it is once its batch has been sent.
type sendKind uint8

const (
	sendReply  sendKind = iota // an upstream datagram relayed to its client
	sendAnswer                 // a responder's Binding Response
	sendReject                 // a responder's 420 (already counted when built)
)

// sent counts a datagram to a client once its batch is out.
func (u *udpRoute) sent(kind sendKind, to netip.AddrPort, size int, err error) {
	if err != nil {
		u.st.dropClientErr.Inc()
		if kind == sendReply {
			u.logError("send to client failed", err, "client", to)
		} else {
			u.logError("STUN answer failed", err, "to", to)
		}
		return
	}
	switch kind {
	case sendReply:
		u.st.dgDown.Inc()
		u.st.bytesDown.Add(float64(size))
	case sendAnswer:
		u.st.stunOK.Inc()
	}
}
