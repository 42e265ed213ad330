package intercept

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

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
