package config

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/natkeep/natkeep/relay"
)

// parseRoutes parses the NATKEEP_ROUTES list.
func parseRoutes(list string, defs routeSettings) ([]relay.Route, error) {
	var routes []relay.Route
	var seen []string // "proto listen" of each earlier entry, in order
	for i, entry := range strings.Split(list, ",") {
		entry = strings.TrimSpace(entry)
		r, err := parseRouteEntry(i+1, entry, defs)
		if err != nil {
			return nil, err
		}
		key := string(r.Proto) + " " + r.Listen
		for m, other := range seen {
			if conflicts(key, other) {
				return nil, routeEntryError(i+1, entry, fmt.Sprintf("listen address %s://%s already used by entry %d", r.Proto, r.Listen, m+1))
			}
		}
		seen = append(seen, key)
		routes = append(routes, r)
	}
	return routes, nil
}

// routeEntryError is an error in entry n of NATKEEP_ROUTES.
func routeEntryError(n int, entry, msg string) error {
	return errorf("%s entry %d %q: %s", envKey("Routes"), n, entry, msg)
}

// parseRouteEntry parses entry n of NATKEEP_ROUTES, naming it in errors.
func parseRouteEntry(n int, entry string, defs routeSettings) (relay.Route, error) {
	if entry == "" {
		return relay.Route{}, routeEntryError(n, entry, "empty route (stray comma?)")
	}
	r, err := parseRoute(entry, defs)
	if err != nil {
		return r, routeEntryError(n, entry, err.Error())
	}
	return r, nil
}

// routeQuery returns the key=value overrides written in a route entry
// (the entry parsed before, so the query is known to be good).
func routeQuery(entry string) map[string]string {
	out := map[string]string{}
	_, rawQuery, _ := strings.Cut(entry, "?")
	for _, kv := range strings.Split(rawQuery, "&") {
		rawKey, rawVal, _ := strings.Cut(kv, "=")
		key, err1 := url.PathUnescape(rawKey)
		val, err2 := url.PathUnescape(rawVal)
		if kv != "" && err1 == nil && err2 == nil {
			out[key] = val
		}
	}
	return out
}

// conflicts reports whether two "proto host:port" listen keys would collide
// when bound: the same protocol and port, with equal hosts or a wildcard.
func conflicts(a, b string) bool {
	pa, ha, _ := strings.Cut(a, " ")
	pb, hb, _ := strings.Cut(b, " ")
	if pa != pb {
		return false
	}
	apa, _ := parseListen(ha)
	apb, _ := parseListen(hb)
	if apa.Port() != apb.Port() {
		return false
	}
	return apa.Addr().Unmap() == apb.Addr().Unmap() || !apa.Addr().IsValid() || !apb.Addr().IsValid() ||
		apa.Addr().IsUnspecified() || apb.Addr().IsUnspecified()
}

// parseListen accepts Go's host:port with an IP literal or empty host; the
// returned Addr is invalid for "all addresses".
func parseListen(hostport string) (netip.AddrPort, error) {
	host, port, err := splitHostPort(hostport)
	if err != nil {
		return netip.AddrPort{}, err
	}
	var addr netip.Addr
	if host != "" {
		a, err := netip.ParseAddr(host)
		if err != nil {
			return netip.AddrPort{}, fmt.Errorf("host %q is not an IP address (use :%d for all addresses)", host, port)
		}
		if a.Zone() != "" {
			return netip.AddrPort{}, fmt.Errorf("host %q: zones are not supported", host)
		}
		addr = a
	}
	return netip.AddrPortFrom(addr, port), nil
}

// splitHostPort splits and range-checks host:port.
func splitHostPort(hostport string) (string, uint16, error) {
	if !strings.Contains(hostport, ":") {
		return "", 0, fmt.Errorf("%q has no port (want host:port)", hostport)
	}
	i := strings.LastIndex(hostport, ":")
	host, p := hostport[:i], hostport[i+1:]
	if strings.HasPrefix(host, "[") {
		if !strings.HasSuffix(host, "]") {
			return "", 0, fmt.Errorf("%q: missing ] in IPv6 address", hostport)
		}
		host = host[1 : len(host)-1]
	} else if strings.Contains(host, ":") {
		return "", 0, fmt.Errorf("%q: IPv6 addresses need brackets, e.g. [::1]:5000", hostport)
	}
	n, err := strconv.Atoi(p)
	if err != nil || p == "" {
		return "", 0, fmt.Errorf("port %q is not a number", p)
	}
	if n < 1 || n > 65535 {
		return "", 0, fmt.Errorf("port %d out of range 1..65535", n)
	}
	return host, uint16(n), nil
}

// parseRoute parses one PROTO://LISTEN/UPSTREAM[?query] entry.
func parseRoute(entry string, defs routeSettings) (relay.Route, error) {
	r := relay.Route{Name: entry}
	scheme, rest, ok := strings.Cut(entry, "://")
	if !ok {
		return r, errors.New("want PROTO://LISTEN/UPSTREAM, e.g. udp://:5060/sip.example.net:5060")
	}
	switch relay.Proto(strings.ToLower(scheme)) {
	case relay.UDP:
		r.Proto = relay.UDP
	case relay.TCP:
		r.Proto = relay.TCP
	default:
		return r, fmt.Errorf("protocol %q: want udp or tcp", scheme)
	}
	rest, rawQuery, _ := strings.Cut(rest, "?")
	listen, upstream, ok := strings.Cut(rest, "/")
	if !ok || upstream == "" {
		return r, errors.New("missing /UPSTREAM (want PROTO://LISTEN/UPSTREAM)")
	}
	if _, err := parseListen(listen); err != nil {
		return r, fmt.Errorf("listen %w", err)
	}
	host, _, err := splitHostPort(upstream)
	if err != nil {
		return r, fmt.Errorf("upstream %w", err)
	}
	if host == "" {
		return r, fmt.Errorf("upstream %q has no host", upstream)
	}
	if strings.ContainsAny(host, "/ ") {
		return r, fmt.Errorf("upstream host %q is not a name or IP address", host)
	}
	r.Listen, r.Upstream = listen, upstream

	s := defs
	if err := applyQuery(&s, r.Proto, rawQuery, routeEntries); err != nil {
		return r, err
	}
	switch r.Proto {
	case relay.UDP:
		r.UDP, err = s.udp()
	case relay.TCP:
		r.TCP, err = s.tcp()
	}
	return r, err
}

func knownKeys() string {
	keys := make([]string, 0, len(queryKeys))
	for k := range queryKeys {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return strings.Join(keys, ", ")
}

// queryOwner says whose query applyQuery reads, for its messages and rules.
type queryOwner int

const (
	routeEntries     queryOwner = iota // NATKEEP_ROUTES
	interceptEntries                   // NATKEEP_INTERCEPT: no role key, natkeep is always the client side
)

// applyQuery applies key=value&... overrides to s: known keys of proto,
// each once. Keys are taken in the order written, so the first bad one is
// the one reported; values are percent-decoded but '+' stays a plus.
func applyQuery(s *routeSettings, proto relay.Proto, rawQuery string, owner queryOwner) error {
	noun := "routes"
	if owner == interceptEntries {
		noun = "entries"
	}
	given := map[string]bool{}
	for _, kv := range strings.Split(rawQuery, "&") {
		if kv == "" {
			continue
		}
		rawKey, rawVal, hasEq := strings.Cut(kv, "=")
		key, err1 := url.PathUnescape(rawKey)
		val, err2 := url.PathUnescape(rawVal)
		if err := errors.Join(err1, err2); err != nil {
			return fmt.Errorf("query %q: %v", kv, err)
		}
		qk, ok := queryKeys[key]
		if !ok {
			return fmt.Errorf("unknown key %q (known: %s)", key, knownKeys())
		}
		if key == "role" && owner == interceptEntries {
			return errors.New(`key "role" does not apply to intercepted traffic (natkeep is always the client side here)`)
		}
		if qk.proto != proto {
			return fmt.Errorf("key %q applies to %s %s, not %s", key, qk.proto, noun, proto)
		}
		if !hasEq {
			return fmt.Errorf("key %q has no value (want %s=VALUE)", key, key)
		}
		if given[key] {
			return fmt.Errorf("key %q given more than once", key)
		}
		given[key] = true
		if err := qk.set(s, val); err != nil {
			return fmt.Errorf("%s=%s: %v", key, val, err)
		}
	}
	return nil
}
