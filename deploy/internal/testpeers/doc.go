// Package testpeers holds the two programs the container tests run beside
// natkeep, each compiled statically into an image of its own FROM scratch:
//
//   - upstream: the server natkeep relays to. UDP: echoes every datagram
//     with an "echo:" prefix, except heartbeats: empty datagrams (natkeep's
//     default heartbeat) or the payload given by -heartbeat, which it counts
//     per source. On request it pushes a datagram to a source once that
//     source has sent a given number of heartbeats. TCP: echoes until the
//     client half-closes, then half-closes too. Every event is one JSON line
//     on stdout, for the test to read with `docker logs`.
//   - client: the application. It relays UDP datagrams of several sizes and
//     one TCP stream through natkeep, then stays silent until the upstream
//     pushes (which it does only after seeing heartbeats), and exits 0 when
//     every check passed.
//
// The protocol between them is plain text, defined here.
package testpeers

// Messages of the UDP protocol between client and upstream.
const (
	// EchoPrefix starts the upstream's reply to every non-empty datagram
	// that is not a request below; the rest is the datagram, byte for byte.
	EchoPrefix = "echo:"
	// PushRequest, followed by "<count> <token>", asks the upstream to send
	// "<token> heartbeats=<count>" to the sender once <count> empty datagrams
	// have come from the sender's address after the request. The upstream
	// acknowledges at once with PushArmed followed by the token.
	PushRequest = "push-after-heartbeats "
	PushArmed   = "armed "
)
