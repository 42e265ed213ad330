package config

import (
	"fmt"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"github.com/agnivade/levenshtein"
	"github.com/caarlos0/env/v11"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/machine"
	"github.com/natkeep/natkeep/relay"
)

// knownVars returns every NATKEEP_* variable natkeep reads.
func knownVars() []string {
	var names []string
	for _, t := range []reflect.Type{reflect.TypeFor[envConfig](), reflect.TypeFor[interceptEnv]()} {
		for i := range t.NumField() {
			key, _, _ := strings.Cut(t.Field(i).Tag.Get("env"), ",")
			names = append(names, envPrefix+key)
		}
	}
	sort.Strings(names)
	return names
}

// unknownVars reports every NATKEEP_* variable natkeep does not read,
// sorted, each with the closest known name when one is near: a typo must
// not start natkeep silently on defaults.
func unknownVars(environ map[string]string) []error {
	known := knownVars()
	isKnown := make(map[string]bool, len(known))
	for _, k := range known {
		isKnown[k] = true
	}
	var names []string
	for k := range environ {
		if strings.HasPrefix(k, envPrefix) && !isKnown[k] {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	var errs []error
	for _, k := range names {
		if near := closest(k, known); near != "" {
			errs = append(errs, errorf("%s: unknown variable; did you mean %s?", k, near))
		} else {
			errs = append(errs, errorf("%s: unknown variable (natkeep help lists them all)", k))
		}
	}
	return errs
}

// closest returns the known name nearest to name by edit distance, if it
// is near enough to be a typo (a quarter of the name, at least 2 edits).
func closest(name string, known []string) string {
	best, bestD := "", 0
	for _, k := range known {
		if d := levenshtein.ComputeDistance(name, k); best == "" || d < bestD {
			best, bestD = k, d
		}
	}
	if bestD <= max(2, len(strings.TrimPrefix(name, envPrefix))/4) {
		return best
	}
	return ""
}

// Check validates the environment exactly as Load does, but goes on after
// an error: it returns every error it finds, in order (unknown variables,
// values, then each route entry), and the configuration when there are
// none. `natkeep check` prints them; start-up (Load) stops at the first.
func Check(environ map[string]string, host machine.Facts) (*Config, []error) {
	errs := unknownVars(environ)
	var ec envConfig
	if err := env.ParseWithOptions(&ec, env.Options{Prefix: envPrefix, Environment: environ}); err != nil {
		return nil, append(errs, describeEnvErrors(err, environ, envKey)...)
	}
	c, err := loadProcess(ec, environ)
	if err != nil {
		errs = append(errs, err)
	}
	workers, err := loadWorkers(ec.Workers, host)
	if err != nil {
		errs = append(errs, err)
	}
	defs, err := loadDefaults(ec, host)
	if err != nil {
		return nil, append(errs, err) // route entries would only repeat it
	}
	ic, err := LoadIntercept(environ)
	if err != nil {
		return nil, append(errs, err)
	}
	routes, rerrs := checkRoutes(ec.Routes, ic, defs)
	errs = append(errs, rerrs...)
	if len(errs) > 0 {
		return nil, errs
	}
	c.Intercept, c.Relay.Routes = ic, routes
	c.Relay.Budget, c.Host, c.Relay.Workers = host.Budget(), host, workers
	return c, nil
}

// checkRoutes is loadRoutes reporting every bad entry, not only the first.
func checkRoutes(list string, ic *Intercept, defs routeSettings) ([]relay.Route, []error) {
	routes, err := loadRoutes(list, ic, defs)
	if err == nil {
		return routes, nil
	}
	// Entry by entry: each one's own error, in order (a listen conflict
	// between entries shows once the entries themselves are good).
	if strings.TrimSpace(list) == "" {
		return nil, []error{err} // "required": there are no entries to go through
	}
	var errs []error
	entries := strings.Split(list, ",")
	for i, entry := range entries {
		if _, err := parseRouteEntry(i+1, strings.TrimSpace(entry), defs); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 {
		errs = append(errs, err)
	}
	return nil, errs
}

// describeEnvErrors is describeEnvError for every error the env library
// found.
func describeEnvErrors(err error, environ map[string]string, keyOf func(string) string) []error {
	agg, ok := err.(env.AggregateError)
	if !ok || len(agg.Errors) < 2 {
		return []error{describeEnvError(err, environ, keyOf)}
	}
	var errs []error
	for _, e := range agg.Errors {
		errs = append(errs, describeEnvError(e, environ, keyOf))
	}
	return errs
}

// Setting is one option of a route in the effective configuration.
type Setting struct {
	Key      string `json:"key"`      // route query key
	Variable string `json:"variable"` // the NATKEEP_ variable it defaults from ("" for route-only keys)
	Value    string `json:"value"`
	Source   string `json:"source"` // "route key", "variable" or "default"
}

// RouteView is a route of the effective configuration with every option
// and where each came from.
type RouteView struct {
	Name     string    `json:"route"`
	Proto    string    `json:"proto"`
	Listen   string    `json:"listen"`
	Upstream string    `json:"upstream"`
	Settings []Setting `json:"settings"`
}

// Effective lists the configured routes (NATKEEP_ROUTES) with every option
// of their protocol and its source; environ is what c was loaded from.
func (c *Config) Effective(environ map[string]string) []RouteView {
	var views []RouteView
	t := reflect.TypeFor[envConfig]()
	for _, rt := range c.Relay.Routes {
		if rt.Transparent {
			continue
		}
		v := RouteView{Name: rt.Name, Proto: string(rt.Proto), Listen: rt.Listen, Upstream: rt.Upstream}
		query := routeQuery(rt.Name)
		keys := make([]string, 0, len(queryKeys))
		for k, q := range queryKeys {
			if q.proto == rt.Proto {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			q := queryKeys[k]
			s := Setting{Key: k}
			if q.field != "" {
				s.Variable = envKey(q.field)
			}
			switch val, ok := query[k]; {
			case ok:
				s.Value, s.Source = val, "route key"
			case s.Variable != "" && environ[s.Variable] != "":
				s.Value, s.Source = environ[s.Variable], "variable"
			default:
				s.Source = "default"
				if f, ok := t.FieldByName(q.field); ok {
					s.Value = f.Tag.Get("envDefault")
				}
				if k == "role" {
					s.Value = string(rt.UDP.Role)
				}
			}
			switch k { // what auto and by-payload defaults came to
			case "max_flows":
				s.Value = fmt.Sprintf("%s (%d)", s.Value, rt.UDP.MaxFlows)
			case "max_conns":
				s.Value = fmt.Sprintf("%s (%d)", s.Value, rt.TCP.MaxConns)
			case "reply":
				s.Value = rt.UDP.Heartbeat.Pong.String()
			case "user_timeout":
				s.Value = rt.TCP.UserTimeout.String()
			}
			v.Settings = append(v.Settings, s)
		}
		views = append(views, v)
	}
	return views
}

// maxWorkers bounds NATKEEP_WORKERS: more listeners than this gain nothing
// and each costs a goroutine, an epoll instance and buffers per route.
const maxWorkers = 256

// loadWorkers is NATKEEP_WORKERS: auto (the host's CPUs) or 1..256.
func loadWorkers(v string, host machine.Facts) (int, error) {
	if v == "auto" {
		return max(host.CPUs, 1), nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > maxWorkers {
		return 0, errorf("%s=%q: want auto or 1..%d", envKey("Workers"), v, maxWorkers)
	}
	return n, nil
}
