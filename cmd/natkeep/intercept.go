package main

import (
	"fmt"
	"io"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/config"
)

// interceptUsage is printed for `natkeep intercept help` and on misuse.
const interceptUsage = `usage: natkeep intercept install|remove|show

  install  program transparent interception for NATKEEP_INTERCEPT into this
           network namespace: nftables table "inet natkeep" (TCP: nat OUTPUT
           redirect to NATKEEP_INTERCEPT_TCP_PORT; UDP: route OUTPUT mark +
           PREROUTING tproxy to NATKEEP_INTERCEPT_UDP_PORT) and, for UDP,
           "ip rule fwmark NATKEEP_INTERCEPT_MARK lookup NATKEEP_INTERCEPT_TABLE"
           with local default routes to lo in that table (IPv4 and IPv6).
           Idempotent: running it again replaces natkeep's rules atomically.
  remove   delete all of that; the namespace is as before install. Removing
           what is not installed is not an error.
  show     print what is installed (or "not installed").

Needs CAP_NET_ADMIN in the namespace (an init container running as root
with only NET_ADMIN). Packets from NATKEEP_INTERCEPT_UID or carrying
NATKEEP_INTERCEPT_BYPASS_MARK, and packets routed to lo, are never
intercepted.
`

// interceptCommand runs `natkeep intercept ...`; it reads only the
// NATKEEP_INTERCEPT* variables.
func interceptCommand(args []string, env map[string]string, stdout, stderr io.Writer) int {
	if len(args) == 1 {
		switch args[0] {
		case "help", "-h", "-help", "--help":
			fmt.Fprint(stdout, interceptUsage)
			return 0
		}
	}
	if len(args) != 1 || (args[0] != "install" && args[0] != "remove" && args[0] != "show") {
		fmt.Fprintf(stderr, "natkeep: intercept: want one of install, remove or show, got %q\n\n%s", args, interceptUsage)
		return 2
	}
	cfg, err := config.LoadIntercept(env)
	if err != nil {
		fmt.Fprintf(stderr, "natkeep: %v\n", err)
		return 2
	}
	switch args[0] {
	case "install":
		if !cfg.Enabled() {
			fmt.Fprintf(stderr, "natkeep: %s is empty: nothing to intercept (set it to a list such as udp:5060,tcp:10.0.0.0/8:5432)\n", config.VarIntercept)
			return 2
		}
		err = interceptInstall(cfg, stdout)
	case "remove":
		err = interceptRemove(cfg, stdout)
	case "show":
		err = interceptShow(cfg, stdout)
	}
	if err != nil {
		fmt.Fprintf(stderr, "natkeep: intercept %s: %v\n", args[0], err)
		return 1
	}
	return 0
}
