package main

// natkeep intercept install|remove|show: the kernel half of transparent
// interception. Everything lives in natkeep's own nftables table (inet
// natkeep, both IP families in one table) plus, for UDP, one policy routing
// rule and one local default route per family, so removal is "delete the
// table, the rules and the routes" and leaves the namespace as it was.
//
// TCP (locally generated connections): nat OUTPUT, REDIRECT to natkeep's
// listener; natkeep recovers the destination with SO_ORIGINAL_DST.
//
//	chain tcp_redirect { type nat hook output priority dstnat
//	  [ip daddr PREFIX] tcp dport PORTS oif != lo meta skuid != UID meta mark != BYPASS redirect to :TCP_PORT }
//
// UDP (locally generated datagrams): TPROXY only works in PREROUTING, so
// matching packets are marked in OUTPUT (a route chain, so the kernel
// re-routes them after the mark), policy routing sends marked packets to a
// table whose only route is "local default dev lo", they loop through lo
// into PREROUTING, and there tproxy hands them to natkeep's transparent
// listener, which learns the destination from IP_ORIGDSTADDR.
//
//	chain udp_mark { type route hook output priority mangle
//	  [ip daddr PREFIX] udp dport PORTS oif != lo meta skuid != UID meta mark != BYPASS ct direction original meta mark set MARK }
//	chain udp_tproxy { type filter hook prerouting priority mangle
//	  iif lo meta mark MARK meta l4proto udp tproxy to :UDP_PORT meta mark set MARK accept }
//	ip rule add fwmark MARK lookup TABLE;  ip route add local default dev lo table TABLE   (and -6)
//
// Loop prevention: natkeep's own packets are exempt by socket owner UID
// (meta skuid; needs no capability) and by SO_MARK (meta mark; setting it
// needs CAP_NET_ADMIN); both are installed so either suffices. Packets
// routed to lo (loopback and the namespace's own addresses) are never
// intercepted, which also covers natkeep's replies to the app.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/config"
	"github.com/natkeep/natkeep/relay"
)

const (
	nftTableName   = "natkeep"
	chainTCP       = "tcp_redirect"
	chainUDPMark   = "udp_mark"
	chainUDPTProxy = "udp_tproxy"

	// loIfindex is the loopback device's index, 1 in every namespace
	// (LOOPBACK_IFINDEX).
	loIfindex = 1

	// routingComment is the comment of the tproxy rule, recording the
	// policy routing that install added, so that remove (and a later
	// install with other settings) deletes exactly that even when the
	// environment has changed since.
	routingComment = "natkeep policy routing: fwmark %#x table %d"
)

// nftNATKeep is natkeep's table; a fresh value per use, as nftables keeps
// pointers to it in the chains and rules of one batch.
func nftNATKeep() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyINet, Name: nftTableName}
}

// policyRouting is one fwmark -> table pair with its local default routes.
type policyRouting struct{ mark, table uint32 }

func interceptInstall(cfg *config.Intercept, out io.Writer) error {
	conn, _, prev, err := readInstalled()
	if err != nil {
		return err
	}
	udp := cfg.HasProto(relay.UDP)
	want := policyRouting{cfg.Mark, cfg.Table}
	// Routing first: a mark must never be set without its route. Routing
	// that an earlier install left and this one no longer uses goes last,
	// once no rule sets its mark.
	var families []string
	if udp {
		if families, err = ensureRouting(want); err != nil {
			return err
		}
	}

	// One transaction: create the table if missing, delete it, create it
	// anew with the rules. Readers see the old rules or the new, never a
	// namespace without interception, and a second install changes nothing.
	t := nftNATKeep()
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)
	nrules := 0
	if cfg.HasProto(relay.TCP) {
		ch := conn.AddChain(&nftables.Chain{Name: chainTCP, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
		for _, r := range cfg.Rules {
			if r.Proto != relay.TCP {
				continue
			}
			e := append(matchExprs(cfg, r, unix.IPPROTO_TCP),
				&expr.Counter{},
				&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, cfg.TCPPort)},
				&expr.Redir{RegisterProtoMin: 1, RegisterProtoMax: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED})
			conn.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e, UserData: comment(config.InterceptEntry(r))})
			nrules++
		}
	}
	if udp {
		mark := conn.AddChain(&nftables.Chain{Name: chainUDPMark, Table: t, Type: nftables.ChainTypeRoute,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle})
		for _, r := range cfg.Rules {
			if r.Proto != relay.UDP {
				continue
			}
			// Only flows the app started: a datagram the app sends back to a
			// peer that contacted it (a SIP server answering from 5060 to
			// 5060) is in the reply direction and is left alone.
			e := append(matchExprs(cfg, r, unix.IPPROTO_UDP),
				&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}}, // IP_CT_DIR_ORIGINAL
				&expr.Counter{},
				&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, cfg.Mark)},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
			conn.AddRule(&nftables.Rule{Table: t, Chain: mark, Exprs: e, UserData: comment(config.InterceptEntry(r))})
			nrules++
		}
		tp := conn.AddChain(&nftables.Chain{Name: chainUDPTProxy, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle})
		conn.AddRule(&nftables.Rule{Table: t, Chain: tp, UserData: comment(fmt.Sprintf(routingComment, cfg.Mark, cfg.Table)), Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIF, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, loIfindex)},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, cfg.Mark)},
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
			&expr.Counter{},
			&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, cfg.UDPPort)},
			// Family unspecified: one rule serves IPv4 and IPv6.
			&expr.TProxy{Family: byte(nftables.TableFamilyUnspecified), TableFamily: byte(nftables.TableFamilyINet), RegPort: 1},
			&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, cfg.Mark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
			&expr.Verdict{Kind: expr.VerdictAccept},
		}})
		nrules++
	}
	if err := conn.Flush(); err != nil {
		return fmt.Errorf("nftables: installing table inet %s: %w%s", nftTableName, err, permissionHint(err))
	}
	for _, p := range prev {
		if !udp || p != want {
			if err := removeRouting(p); err != nil {
				return err
			}
		}
	}

	fmt.Fprintf(out, "natkeep: intercept installed: nftables table inet %s, %d rules for %d entries of %s\n",
		nftTableName, nrules, len(cfg.Rules), config.VarIntercept)
	if cfg.HasProto(relay.TCP) {
		fmt.Fprintf(out, "natkeep:   tcp: redirected to :%d (natkeep's transparent TCP listener)\n", cfg.TCPPort)
	}
	if udp {
		fmt.Fprintf(out, "natkeep:   udp: marked %#x, ip rule fwmark %#x lookup %d, local default dev lo in table %d (%s), tproxy to :%d\n",
			cfg.Mark, cfg.Mark, cfg.Table, cfg.Table, strings.Join(families, ", "), cfg.UDPPort)
	}
	fmt.Fprintf(out, "natkeep:   never intercepted: %s, packets routed to lo\n", exemptions(cfg))
	return nil
}

func interceptRemove(cfg *config.Intercept, out io.Writer) error {
	conn, installed, prev, err := readInstalled()
	if err != nil {
		return err
	}
	if installed {
		// Add-then-delete in one transaction: no error if it vanished
		// meanwhile.
		t := nftNATKeep()
		conn.AddTable(t)
		conn.DelTable(t)
		if err := conn.Flush(); err != nil {
			return fmt.Errorf("nftables: deleting table inet %s: %w%s", nftTableName, err, permissionHint(err))
		}
	}
	// The routing recorded in the table, and the one the environment names.
	removed := 0
	for _, p := range append(prev, policyRouting{cfg.Mark, cfg.Table}) {
		n, err := removeRoutingCount(p)
		if err != nil {
			return err
		}
		removed += n
	}
	if !installed && removed == 0 {
		fmt.Fprintln(out, "natkeep: intercept: nothing installed")
		return nil
	}
	fmt.Fprintf(out, "natkeep: intercept removed: nftables table inet %s%s, %d policy routing rules and routes\n",
		nftTableName, map[bool]string{true: "", false: " (was not there)"}[installed], removed)
	return nil
}

func interceptShow(cfg *config.Intercept, out io.Writer) error {
	conn, installed, routing, err := readInstalled()
	if err != nil {
		return err
	}
	if !slices.Contains(routing, policyRouting{cfg.Mark, cfg.Table}) {
		routing = append(routing, policyRouting{cfg.Mark, cfg.Table})
	}
	var rl []string
	for _, p := range routing {
		lines, err := listRouting(p)
		if err != nil {
			return err
		}
		rl = append(rl, lines...)
	}
	if !installed {
		fmt.Fprintln(out, "natkeep intercept: not installed")
		if len(rl) > 0 {
			fmt.Fprintln(out, "leftover policy routing (natkeep intercept remove deletes it):")
			for _, l := range rl {
				fmt.Fprintln(out, "  "+l)
			}
		}
		return nil
	}
	t := nftNATKeep()
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("nftables: listing chains: %w", err)
	}
	fmt.Fprintf(out, "natkeep intercept: installed\ntable inet %s {\n", nftTableName)
	for _, ch := range chains {
		if ch.Table.Name != nftTableName {
			continue
		}
		fmt.Fprintf(out, "  chain %s { # %s\n", ch.Name, chainHook(ch))
		rules, err := conn.GetRules(t, ch)
		if err != nil {
			return fmt.Errorf("nftables: listing rules of chain %s: %w", ch.Name, err)
		}
		for _, r := range rules {
			line := renderRule(ch.Name, r.Exprs)
			if c, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok {
				line += " # " + c
			}
			fmt.Fprintf(out, "    %s\n", line)
		}
		fmt.Fprintln(out, "  }")
	}
	fmt.Fprintln(out, "}")
	if len(rl) > 0 {
		fmt.Fprintln(out, "policy routing:")
		for _, l := range rl {
			fmt.Fprintln(out, "  "+l)
		}
	}
	return nil
}

// matchExprs matches the packets rule r intercepts, minus natkeep's own:
// [nfproto + daddr in prefix], l4proto, dport, not routed to lo, not from
// natkeep's UID, not carrying the bypass mark. Register 1 throughout.
func matchExprs(cfg *config.Intercept, r relay.InterceptRule, l4 byte) []expr.Any {
	var e []expr.Any
	if r.Prefix.IsValid() {
		nfproto, off := byte(unix.NFPROTO_IPV4), uint32(16) // iphdr.daddr
		if r.Prefix.Addr().Is6() {
			nfproto, off = unix.NFPROTO_IPV6, 24 // ipv6hdr.daddr
		}
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{nfproto}})
		if r.Prefix.Bits() > 0 {
			first, last := r.Prefix.Addr(), lastAddr(r.Prefix)
			e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: uint32(first.BitLen() / 8)})
			if first == last {
				e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: first.AsSlice()})
			} else {
				e = append(e, &expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: first.AsSlice(), ToData: last.AsSlice()})
			}
		}
	}
	e = append(e,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{l4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2}) // dport
	if r.PortLo == r.PortHi {
		e = append(e, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.BigEndian.AppendUint16(nil, r.PortLo)})
	} else {
		e = append(e, &expr.Range{Op: expr.CmpOpEq, Register: 1,
			FromData: binary.BigEndian.AppendUint16(nil, r.PortLo), ToData: binary.BigEndian.AppendUint16(nil, r.PortHi)})
	}
	e = append(e,
		&expr.Meta{Key: expr.MetaKeyOIF, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, loIfindex)})
	if cfg.MatchUID {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, cfg.UID)})
	}
	e = append(e,
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, cfg.BypassMark)})
	return e
}

// lastAddr is the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, s) }

func exemptions(cfg *config.Intercept) string {
	s := fmt.Sprintf("packets marked %#x", cfg.BypassMark)
	if cfg.MatchUID {
		s = fmt.Sprintf("UID %d, ", cfg.UID) + s
	}
	return s
}

// permissionHint explains EPERM, the usual failure in a container.
func permissionHint(err error) string {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return " (needs CAP_NET_ADMIN in this network namespace: run as root with the NET_ADMIN capability)"
	}
	return ""
}

// tableInstalled reports whether table inet natkeep exists.
func tableInstalled(conn *nftables.Conn) (bool, error) {
	tables, err := conn.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return false, fmt.Errorf("nftables: listing tables: %w%s", err, permissionHint(err))
	}
	for _, t := range tables {
		if t.Name == nftTableName {
			return true, nil
		}
	}
	return false, nil
}

// readInstalled opens nftables and reads what an earlier install left:
// whether the table exists and the policy routing it recorded.
func readInstalled() (conn *nftables.Conn, installed bool, routing []policyRouting, err error) {
	if conn, err = nftables.New(); err != nil {
		return nil, false, nil, fmt.Errorf("nftables: %w", err)
	}
	if installed, err = tableInstalled(conn); err != nil || !installed {
		return conn, installed, nil, err
	}
	routing, err = installedRouting(conn)
	return conn, installed, routing, err
}

// installedRouting reads the policy routing recorded in the installed
// table's tproxy rule (nothing if the rule is absent); the table exists.
func installedRouting(conn *nftables.Conn) ([]policyRouting, error) {
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return nil, fmt.Errorf("nftables: listing chains: %w", err)
	}
	if !slices.ContainsFunc(chains, func(c *nftables.Chain) bool { return c.Table.Name == nftTableName && c.Name == chainUDPTProxy }) {
		return nil, nil // a TCP-only install
	}
	rules, err := conn.GetRules(nftNATKeep(), &nftables.Chain{Name: chainUDPTProxy})
	if err != nil {
		return nil, fmt.Errorf("nftables: listing chain %s: %w", chainUDPTProxy, err)
	}
	var out []policyRouting
	for _, r := range rules {
		c, _ := userdata.GetString(r.UserData, userdata.TypeComment)
		if p, ok := parseRoutingComment(c); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// parseRoutingComment reads back what routingComment wrote.
func parseRoutingComment(c string) (policyRouting, bool) {
	f := strings.Fields(c)
	if len(f) != 7 || fmt.Sprintf(routingComment, 0, 0) != strings.Join(append(slices.Clone(f[:4]), "0x0", f[5], "0"), " ") {
		return policyRouting{}, false
	}
	mark, err1 := strconv.ParseUint(f[4], 0, 32)
	table, err2 := strconv.ParseUint(f[6], 10, 32)
	if err1 != nil || err2 != nil {
		return policyRouting{}, false
	}
	return policyRouting{uint32(mark), uint32(table)}, true
}

// routingFamilies are the families policy routing is set up for.
var routingFamilies = []struct {
	name   string
	family int
	dst    *net.IPNet
}{
	{"IPv4", unix.AF_INET, &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}},
	{"IPv6", unix.AF_INET6, &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}},
}

func fwmarkRule(family int, p policyRouting) *netlink.Rule {
	r := netlink.NewRule()
	r.Family, r.Mark, r.Table = family, p.mark, int(p.table)
	return r
}

func localRoute(family int, dst *net.IPNet, p policyRouting) *netlink.Route {
	return &netlink.Route{Family: family, Dst: dst, Type: unix.RTN_LOCAL, Table: int(p.table),
		LinkIndex: loIfindex, Scope: netlink.SCOPE_HOST}
}

// ensureRouting adds "ip rule fwmark MARK lookup TABLE" (once) and replaces
// "local default dev lo table TABLE", for IPv4 and, where the namespace has
// it, IPv6. It returns the families done.
func ensureRouting(p policyRouting) ([]string, error) {
	var done []string
	for _, f := range routingFamilies {
		rules, err := netlink.RuleListFiltered(f.family, fwmarkRule(f.family, p), netlink.RT_FILTER_MARK|netlink.RT_FILTER_TABLE)
		if f.family == unix.AF_INET6 && errors.Is(err, unix.EAFNOSUPPORT) {
			continue // IPv6 disabled in this kernel
		}
		if err != nil {
			return done, fmt.Errorf("listing %s policy rules: %w%s", f.name, err, permissionHint(err))
		}
		if len(rules) == 0 {
			if err := netlink.RuleAdd(fwmarkRule(f.family, p)); err != nil {
				return done, fmt.Errorf("adding %s rule fwmark %#x lookup %d: %w%s", f.name, p.mark, p.table, err, permissionHint(err))
			}
		}
		if err := netlink.RouteReplace(localRoute(f.family, f.dst, p)); err != nil {
			return done, fmt.Errorf("adding %s route local default dev lo table %d: %w%s", f.name, p.table, err, permissionHint(err))
		}
		done = append(done, f.name)
	}
	return done, nil
}

func removeRouting(p policyRouting) error {
	_, err := removeRoutingCount(p)
	return err
}

// removeRoutingCount deletes every "fwmark MARK lookup TABLE" rule and the
// local default route of TABLE, for both families, and counts them.
func removeRoutingCount(p policyRouting) (int, error) {
	n := 0
	for _, f := range routingFamilies {
		rules, err := netlink.RuleListFiltered(f.family, fwmarkRule(f.family, p), netlink.RT_FILTER_MARK|netlink.RT_FILTER_TABLE)
		if f.family == unix.AF_INET6 && errors.Is(err, unix.EAFNOSUPPORT) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("listing %s policy rules: %w%s", f.name, err, permissionHint(err))
		}
		for _, r := range rules {
			if err := netlink.RuleDel(&r); err != nil && !errors.Is(err, unix.ENOENT) {
				return n, fmt.Errorf("deleting %s rule fwmark %#x lookup %d: %w%s", f.name, p.mark, p.table, err, permissionHint(err))
			}
			n++
		}
		routes, err := ourRoutes(f.family, f.dst, p)
		if err != nil {
			return n, err
		}
		for _, r := range routes {
			if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
				return n, fmt.Errorf("deleting %s route local default table %d: %w%s", f.name, p.table, err, permissionHint(err))
			}
			n++
		}
	}
	return n, nil
}

// ourRoutes lists the local default route via lo in table p.table.
func ourRoutes(family int, dst *net.IPNet, p policyRouting) ([]netlink.Route, error) {
	filter := &netlink.Route{Table: int(p.table), Type: unix.RTN_LOCAL, LinkIndex: loIfindex}
	routes, err := netlink.RouteListFiltered(family, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE|netlink.RT_FILTER_OIF)
	if err != nil {
		return nil, fmt.Errorf("listing routes of table %d: %w%s", p.table, err, permissionHint(err))
	}
	var out []netlink.Route
	for _, r := range routes {
		if r.Dst == nil || r.Dst.String() == dst.String() {
			out = append(out, r)
		}
	}
	return out, nil
}

// listRouting describes the installed rules and routes of p, ip(8) style.
func listRouting(p policyRouting) ([]string, error) {
	var out []string
	for _, f := range routingFamilies {
		rules, err := netlink.RuleListFiltered(f.family, fwmarkRule(f.family, p), netlink.RT_FILTER_MARK|netlink.RT_FILTER_TABLE)
		if f.family == unix.AF_INET6 && errors.Is(err, unix.EAFNOSUPPORT) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("listing %s policy rules: %w%s", f.name, err, permissionHint(err))
		}
		v := ""
		if f.family == unix.AF_INET6 {
			v = " -6"
		}
		for _, r := range rules {
			out = append(out, fmt.Sprintf("ip%s rule: %d: from all fwmark %#x lookup %d", v, r.Priority, r.Mark, r.Table))
		}
		routes, err := ourRoutes(f.family, f.dst, p)
		if err != nil {
			return nil, err
		}
		for range routes {
			out = append(out, fmt.Sprintf("ip%s route: local default dev lo table %d", v, p.table))
		}
	}
	return out, nil
}

// ---------------------------------------------------------------- rendering

// chainHook describes a base chain as nft does.
func chainHook(ch *nftables.Chain) string {
	hook := "?"
	if ch.Hooknum != nil {
		hook = map[nftables.ChainHook]string{
			*nftables.ChainHookPrerouting: "prerouting", *nftables.ChainHookInput: "input", *nftables.ChainHookForward: "forward",
			*nftables.ChainHookOutput: "output", *nftables.ChainHookPostrouting: "postrouting",
		}[*ch.Hooknum]
	}
	prio := "?"
	if ch.Priority != nil {
		prio = strconv.Itoa(int(*ch.Priority))
		switch *ch.Priority {
		case *nftables.ChainPriorityMangle:
			prio = "mangle"
		case *nftables.ChainPriorityNATDest:
			prio = "dstnat"
		}
	}
	return fmt.Sprintf("type %s hook %s priority %s", ch.Type, hook, prio)
}

// renderRule prints the expressions natkeep installs in nft's syntax, so
// `natkeep intercept show` reads like `nft list table inet natkeep`.
//
// google/nftables v0.3.0 does not decode tproxy expressions when it reads
// rules back (they are dropped), so in the tproxy chain a port loaded into
// register 1 that no listed statement uses is shown as the tproxy it feeds.
func renderRule(chain string, exprs []expr.Any) string {
	var parts []string
	var reg string // what register 1 holds: "meta l4proto", "ip daddr", ...
	var imm []byte // the last immediate loaded into register 1
	used := true   // whether a listed statement consumed imm
	unused := func() {
		if !used && chain == chainUDPTProxy && len(imm) == 2 {
			parts = append(parts, "tproxy to :"+renderValue("th dport", imm, ""))
		}
		used = true
	}
	l4 := "th"
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Meta:
			name := map[expr.MetaKey]string{expr.MetaKeyNFPROTO: "nfproto", expr.MetaKeyL4PROTO: "l4proto", expr.MetaKeyOIF: "oif",
				expr.MetaKeyIIF: "iif", expr.MetaKeySKUID: "skuid", expr.MetaKeyMARK: "mark"}[e.Key]
			if name == "" {
				name = fmt.Sprintf("key%d", e.Key)
			}
			if e.SourceRegister {
				parts = append(parts, "meta "+name+" set "+renderValue("meta "+name, imm, l4))
				used = true
			} else {
				reg = "meta " + name
			}
		case *expr.Ct:
			reg = "ct key" + strconv.Itoa(int(e.Key))
			if e.Key == expr.CtKeyDIRECTION {
				reg = "ct direction"
			}
		case *expr.Payload:
			switch {
			case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 16 && e.Len == 4:
				reg = "ip daddr"
			case e.Base == expr.PayloadBaseNetworkHeader && e.Offset == 24 && e.Len == 16:
				reg = "ip6 daddr"
			case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 2 && e.Len == 2:
				reg = l4 + " dport"
			default:
				reg = fmt.Sprintf("@%d,%d,%d", e.Base, e.Offset*8, e.Len*8)
			}
		case *expr.Cmp:
			op := map[expr.CmpOp]string{expr.CmpOpEq: "", expr.CmpOpNeq: "!= ", expr.CmpOpLt: "< ", expr.CmpOpLte: "<= ", expr.CmpOpGt: "> ", expr.CmpOpGte: ">= "}[e.Op]
			if reg == "meta l4proto" && e.Op == expr.CmpOpEq {
				l4 = renderValue(reg, e.Data, l4)
			}
			parts = append(parts, reg+" "+op+renderValue(reg, e.Data, l4))
		case *expr.Range:
			op := ""
			if e.Op != expr.CmpOpEq {
				op = "!= "
			}
			parts = append(parts, reg+" "+op+renderRange(reg, e.FromData, e.ToData, l4))
		case *expr.Immediate:
			unused()
			imm, used = e.Data, false
		case *expr.Counter:
			parts = append(parts, fmt.Sprintf("counter packets %d bytes %d", e.Packets, e.Bytes))
		case *expr.Redir:
			parts = append(parts, "redirect to :"+renderValue("th dport", imm, l4))
			used = true
		case *expr.TProxy:
			fam := map[byte]string{unix.NFPROTO_IPV4: "ip ", unix.NFPROTO_IPV6: "ip6 "}[e.Family]
			parts = append(parts, "tproxy "+fam+"to :"+renderValue("th dport", imm, l4))
			used = true
		case *expr.Verdict:
			unused()
			parts = append(parts, map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictReturn: "return"}[e.Kind])
		default:
			parts = append(parts, fmt.Sprintf("%T", e))
		}
	}
	unused()
	return strings.Join(parts, " ")
}

func renderValue(reg string, b []byte, l4 string) string {
	switch {
	case reg == "meta nfproto" && len(b) == 1:
		return map[byte]string{unix.NFPROTO_IPV4: "ipv4", unix.NFPROTO_IPV6: "ipv6"}[b[0]]
	case reg == "ct direction" && len(b) == 1:
		return map[byte]string{0: "original", 1: "reply"}[b[0]]
	case reg == "meta l4proto" && len(b) == 1:
		return map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp"}[b[0]]
	case strings.HasSuffix(reg, "daddr"):
		if a, ok := netip.AddrFromSlice(b); ok {
			return a.String()
		}
	case strings.HasSuffix(reg, "dport") && len(b) == 2:
		return strconv.Itoa(int(binary.BigEndian.Uint16(b)))
	case (reg == "meta oif" || reg == "meta iif") && len(b) == 4:
		if n := binary.NativeEndian.Uint32(b); n != loIfindex {
			return strconv.Itoa(int(n))
		}
		return `"lo"`
	case reg == "meta skuid" && len(b) == 4:
		return strconv.FormatUint(uint64(binary.NativeEndian.Uint32(b)), 10)
	case reg == "meta mark" && len(b) == 4:
		return fmt.Sprintf("%#08x", binary.NativeEndian.Uint32(b))
	}
	return fmt.Sprintf("0x%x", b)
}

func renderRange(reg string, from, to []byte, l4 string) string {
	if strings.HasSuffix(reg, "daddr") {
		a, ok1 := netip.AddrFromSlice(from)
		z, ok2 := netip.AddrFromSlice(to)
		if ok1 && ok2 {
			for bits := 0; bits <= a.BitLen(); bits++ {
				if p := netip.PrefixFrom(a, bits); p.Masked().Addr() == a && lastAddr(p) == z {
					return p.String()
				}
			}
		}
	}
	return renderValue(reg, from, l4) + "-" + renderValue(reg, to, l4)
}
