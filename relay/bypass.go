package relay

import (
	"context"
	"log/slog"
	"net"
	"syscall"

	"github.com/natkeep/natkeep/sockopt"
)

// The bypass mark: natkeep's own sockets carry SO_MARK in transparent mode
// so the interception rules never catch its upstream traffic (TCP and UDP)
// or its DNS lookups.

// bypassControl returns a socket Control function that sets SO_MARK mark on
// natkeep's own upstream sockets, so the interception rules never catch
// natkeep's traffic (nil when mark is 0). Setting a mark needs CAP_NET_ADMIN;
// without it the socket is used unmarked and the rules' UID match keeps it
// out of interception instead, so a failure is logged, not fatal.
func bypassControl(mark uint32, limit *logLimiter, log *slog.Logger) func(network, address string, c syscall.RawConn) error {
	if mark == 0 {
		return nil
	}
	set := sockopt.MarkControl(mark)
	return func(network, address string, c syscall.RawConn) error {
		if err := set(network, address, c); err != nil {
			if ok, _ := limit.allow(); ok {
				log.Warn("cannot mark upstream socket; relying on the UID match to bypass interception", "mark", mark, "err", err)
			}
		}
		return nil
	}
}

// markedResolver returns a resolver whose DNS queries go out on sockets
// set up by control (the bypass mark), so that in transparent mode natkeep's
// own lookups are never intercepted; nil control = the default resolver.
func markedResolver(control func(network, address string, c syscall.RawConn) error) *net.Resolver {
	if control == nil {
		return net.DefaultResolver
	}
	return &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		d := net.Dialer{Control: control}
		return d.DialContext(ctx, network, address)
	}}
}
