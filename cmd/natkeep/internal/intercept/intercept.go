// Package intercept is the kernel half of natkeep's transparent mode:
// `natkeep intercept install|remove|show` programs, removes and lists the
// nftables table and policy routing that hand an unmodified app's traffic
// to natkeep's transparent listeners, and CheckBypass makes sure natkeep's
// own traffic escapes them. It takes the setup as config.Intercept and
// needs CAP_NET_ADMIN in the network namespace; outside Linux every
// subcommand fails plainly.
package intercept

// Usage is printed for `natkeep intercept help` and on misuse.
const Usage = `usage: natkeep intercept install|remove|show

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
