package intercept

import (
	"fmt"
	"net"
	"os"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/config"
	"github.com/natkeep/natkeep/sockopt"
)

// CheckBypass makes sure natkeep's own traffic will escape interception, before it relays anything.
func CheckBypass(ic *config.Intercept) error {
	// Either natkeep runs as NATKEEP_INTERCEPT_UID (the rules exempt that
	// UID), or it can put the bypass mark on its sockets. Otherwise every
	// upstream connection would be intercepted again and loop.
	if !ic.Enabled() {
		return nil
	}
	if ic.MatchUID && uint32(os.Geteuid()) == ic.UID {
		return nil
	}
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("transparent mode: probing SO_MARK: %w", err)
	}
	defer c.Close()
	if err := sockopt.SetMark(c.(*net.UDPConn), ic.BypassMark); err != nil {
		uid := "off"
		if ic.MatchUID {
			uid = fmt.Sprint(ic.UID)
		}
		return fmt.Errorf("transparent mode: natkeep runs as uid %d, not %s=%s, and cannot mark its sockets (%v): its own traffic would be intercepted and loop; run it as that UID or grant CAP_NET_ADMIN",
			os.Geteuid(), config.VarInterceptUID, uid, err)
	}
	return nil
}
