package intercept

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
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
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

// Install programs cfg's interception into this network namespace, idempotently, and reports it on out.
func Install(cfg *config.Intercept, out io.Writer) error {
	// Running it again replaces natkeep's rules atomically; policy routing
	// that an earlier install with other settings left is removed.
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
	nrules := replaceTable(conn, cfg)
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
	reportInstall(out, cfg, nrules, families)
	return nil
}

// replaceTable queues one transaction that creates the table if missing,
// deletes it and creates it anew with the rules, so readers see the old
// rules or the new, never a namespace without interception, and a second
// install changes nothing. It returns the number of rules.
func replaceTable(conn *nftables.Conn, cfg *config.Intercept) int {
	t := nftNATKeep()
	conn.AddTable(t)
	conn.DelTable(t)
	conn.AddTable(t)
	n := 0
	if cfg.HasProto(relay.TCP) {
		n += addTCPRedirect(conn, t, cfg)
	}
	if cfg.HasProto(relay.UDP) {
		n += addUDPMark(conn, t, cfg)
		n += addUDPTProxy(conn, t, cfg)
	}
	return n
}

// addTCPRedirect adds the nat OUTPUT chain that redirects every tcp rule's
// traffic to natkeep's transparent TCP listener.
func addTCPRedirect(conn *nftables.Conn, t *nftables.Table, cfg *config.Intercept) int {
	ch := conn.AddChain(&nftables.Chain{Name: chainTCP, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
	return addRules(conn, t, ch, cfg, relay.TCP, func() []expr.Any {
		return []expr.Any{
			&expr.Counter{},
			&expr.Immediate{Register: 1, Data: binary.BigEndian.AppendUint16(nil, cfg.TCPPort)},
			&expr.Redir{RegisterProtoMin: 1, RegisterProtoMax: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
		}
	})
}

// addUDPMark adds the route OUTPUT chain that marks every udp rule's
// traffic, so policy routing sends it through lo into the tproxy chain.
func addUDPMark(conn *nftables.Conn, t *nftables.Table, cfg *config.Intercept) int {
	ch := conn.AddChain(&nftables.Chain{Name: chainUDPMark, Table: t, Type: nftables.ChainTypeRoute,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle})
	return addRules(conn, t, ch, cfg, relay.UDP, func() []expr.Any {
		// Only flows the app started: a datagram the app sends back to a
		// peer that contacted it (a SIP server answering from 5060 to
		// 5060) is in the reply direction and is left alone.
		return []expr.Any{
			&expr.Ct{Key: expr.CtKeyDIRECTION, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}}, // IP_CT_DIR_ORIGINAL
			&expr.Counter{},
			&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, cfg.Mark)},
			&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
		}
	})
}

// addRules adds to ch, for every rule of cfg of proto, a rule that matches
// its traffic (matchExprs) and then does action; each is commented with its
// NATKEEP_INTERCEPT entry. It returns how many it added.
func addRules(conn *nftables.Conn, t *nftables.Table, ch *nftables.Chain, cfg *config.Intercept, proto relay.Proto, action func() []expr.Any) int {
	l4 := byte(unix.IPPROTO_UDP)
	if proto == relay.TCP {
		l4 = unix.IPPROTO_TCP
	}
	n := 0
	for _, r := range cfg.Rules {
		if r.Proto != proto {
			continue
		}
		e := append(matchExprs(cfg, r, l4), action()...)
		conn.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: e, UserData: comment(config.InterceptEntry(r))})
		n++
	}
	return n
}

// addUDPTProxy adds the prerouting chain whose one rule hands the marked
// datagrams looping through lo to natkeep's TPROXY listener; its comment
// records the policy routing, for remove.
func addUDPTProxy(conn *nftables.Conn, t *nftables.Table, cfg *config.Intercept) int {
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
	return 1
}

// reportInstall says what Install programmed.
func reportInstall(out io.Writer, cfg *config.Intercept, nrules int, families []string) {
	fmt.Fprintf(out, "natkeep: intercept installed: nftables table inet %s, %d rules for %d entries of %s\n",
		nftTableName, nrules, len(cfg.Rules), config.VarIntercept)
	if cfg.HasProto(relay.TCP) {
		fmt.Fprintf(out, "natkeep:   tcp: redirected to :%d (natkeep's transparent TCP listener)\n", cfg.TCPPort)
	}
	if cfg.HasProto(relay.UDP) {
		fmt.Fprintf(out, "natkeep:   udp: marked %#x, ip rule fwmark %#x lookup %d, local default dev lo in table %d (%s), tproxy to :%d\n",
			cfg.Mark, cfg.Mark, cfg.Table, cfg.Table, strings.Join(families, ", "), cfg.UDPPort)
	}
	fmt.Fprintf(out, "natkeep:   never intercepted: %s, packets routed to lo\n", exemptions(cfg))
}

// Remove deletes what Install programmed, leaving the namespace as before; nothing installed is no error.
func Remove(cfg *config.Intercept, out io.Writer) error {
	// That is natkeep's table, the policy routing recorded in it and the
	// routing cfg names.
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

// Show prints natkeep's table in nft's syntax and its policy routing, or "not installed" and any leftovers.
func Show(cfg *config.Intercept, out io.Writer) error {
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
		printLines(out, "leftover policy routing (natkeep intercept remove deletes it):", rl)
		return nil
	}
	fmt.Fprintln(out, "natkeep intercept: installed")
	if err := printTable(conn, out); err != nil {
		return err
	}
	printLines(out, "policy routing:", rl)
	return nil
}

// printTable prints natkeep's table as `nft list table` would, with each
// rule's comment.
func printTable(conn *nftables.Conn, out io.Writer) error {
	t := nftNATKeep()
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return fmt.Errorf("nftables: listing chains: %w", err)
	}
	fmt.Fprintf(out, "table inet %s {\n", nftTableName)
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
	return nil
}

// printLines prints a heading and the lines indented, nothing if there are
// no lines.
func printLines(out io.Writer, heading string, lines []string) {
	if len(lines) == 0 {
		return
	}
	fmt.Fprintln(out, heading)
	for _, l := range lines {
		fmt.Fprintln(out, "  "+l)
	}
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
