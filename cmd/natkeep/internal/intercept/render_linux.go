package intercept

// The nft-syntax printer of `natkeep intercept show`.

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

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
