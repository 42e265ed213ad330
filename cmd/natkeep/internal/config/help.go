package config

import (
	"fmt"
	"io"
	"reflect"
	"strings"
	"text/tabwriter"
)

// Help writes `natkeep help`: usage, route syntax, and every variable with its default and meaning.
func Help(w io.Writer) {
	// Straight from the env struct tags, so help and parser cannot disagree.
	fmt.Fprint(w, `natkeep keeps NAT and firewall mappings alive for the applications it relays.

Usage:
  natkeep               run (configured by the environment below)
  natkeep help          print this help
  natkeep version       print version, commit and Go version
  natkeep healthcheck   exit 0 if /readyz on NATKEEP_ADMIN_ADDR answers 200, else 1
  natkeep check [--json] validate the environment as start-up does, print every error or the
                        effective configuration (each option and where it came from); exit 0 or 2
  natkeep probe [--json] [--max-lifetime D] [--no-hops] HOST:PORT
                        measure the path to a STUN server or natkeep responder once: mapped
                        address, mapping behaviour, NAT binding lifetime and distance, and the
                        settings they call for; exit 0, 1 if it never answered STUN, 2 on bad usage
  natkeep demo          show what natkeep does, in process, in about ten seconds

Routes (NATKEEP_ROUTES, comma-separated):
  PROTO://LISTEN/UPSTREAM[?key=value&...]
  udp://127.0.0.1:5060/sip.example.net:5060?payload=crlf
  tcp://:5432/db.internal:5432?keepalive_idle=30s
  LISTEN is host:port with an IP or empty host (:5000 = all addresses, [::1]:5000 for IPv6);
  UPSTREAM may be a DNS name, re-resolved every NATKEEP_RESOLVE_INTERVAL.
  Per-route keys override the variables below:
    udp: interval interval_fallback relearn payload ttl ttl_heal reply dead_after on_dead idle_timeout unanswered_timeout max_flows max_flows_per_source role (client|responder) stun_strict answer_rate
    tcp: keepalive_idle keepalive_interval keepalive_count user_timeout connect_timeout max_conns conn_idle_timeout
  Percent-encode commas and ampersands inside values (text:a%2Cb).

Variables:
`)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	printVars(tw, reflect.TypeFor[envConfig]())
	tw.Flush()
	fmt.Fprint(w, `
Transparent mode (natkeep intercept install|remove|show programs the rules;
the intercepted traffic's original destination is each flow's upstream):
`)
	printVars(tw, reflect.TypeFor[interceptEnv]())
	tw.Flush()
}

// printVars writes one line per variable of an env struct.
func printVars(tw *tabwriter.Writer, t reflect.Type) {
	for i := range t.NumField() {
		f := t.Field(i)
		key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
		def := f.Tag.Get("envDefault")
		switch key {
		case "ROUTES":
			def = "(required)"
		case "INTERCEPT":
			def = "(off)"
		case "ADMIN_ADDR":
			def = DefaultAdminAddr
		case "TCP_USER_TIMEOUT":
			def = "idle+interval*count"
		case "UDP_HEARTBEAT_REPLY":
			def = "(by payload)"
		}
		fmt.Fprintf(tw, "  %s%s\t%s\t%s\n", envPrefix, key, def, f.Tag.Get("help"))
	}
}
