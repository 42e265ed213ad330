package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/config"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/machine"
)

// check is `natkeep check [--json]`: it validates the environment exactly
// as start-up does, without binding anything, reports every error (one per
// line, in order, exit 2), or prints the effective configuration: every
// route with every option and where it came from (exit 0).
func check(args []string, env map[string]string, stdout, stderr io.Writer) int {
	asJSON := false
	for _, a := range args {
		switch a {
		case "--json", "-json":
			asJSON = true
		default:
			fmt.Fprintf(stderr, "natkeep check: unknown argument %q (want --json or nothing)\n", a)
			return 2
		}
	}
	host := machine.Read()
	cfg, errs := config.Check(env, host)
	if len(errs) > 0 {
		for _, err := range errs {
			fmt.Fprintf(stderr, "natkeep: %v\n", err)
		}
		return 2
	}
	views := cfg.Effective(env)
	if asJSON {
		out := struct {
			OK     bool               `json:"ok"`
			Budget any                `json:"budget"`
			From   string             `json:"budget_from"`
			Routes []config.RouteView `json:"routes"`
		}{true, map[string]int{"descriptors": cfg.Relay.Budget.Descriptors, "ports": cfg.Relay.Budget.Ports}, host.Describe(), views}
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(out); err != nil {
			fmt.Fprintf(stderr, "natkeep check: %v\n", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stdout, "configuration OK: %d route(s); budget %d descriptors, %d ports (%s)\n",
		len(views), cfg.Relay.Budget.Descriptors, cfg.Relay.Budget.Ports, host.Describe())
	for _, v := range views {
		fmt.Fprintf(stdout, "\n%s  (%s %s -> %s)\n", v.Name, v.Proto, v.Listen, v.Upstream)
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		for _, s := range v.Settings {
			from := s.Source
			if s.Source == "variable" {
				from += " " + s.Variable
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", s.Key, s.Value, from)
		}
		tw.Flush()
	}
	return 0
}
