// Command natkeep is a sidecar proxy that keeps NAT and firewall mappings
// alive for applications that cannot do it themselves: a UDP relay that
// sends heartbeats on idle flows and a TCP proxy with per-socket keepalive
// and TCP_USER_TIMEOUT. It is configured only by environment variables; run
// `natkeep help` for the list.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/lmittmann/tint"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/config"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/demo"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/intercept"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/machine"
	"github.com/natkeep/natkeep/relay"
)

// Stamped at build time with -ldflags "-X main.version=... -X main.commit=...".
var (
	version = ""
	commit  = ""
)

func main() {
	os.Exit(run(os.Args[1:], environ(), os.Stdout, os.Stderr))
}

// environ returns the process environment as a map.
func environ() map[string]string {
	m := make(map[string]string)
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		m[k] = v
	}
	return m
}

// run is main without the process exit, so tests can call it.
func run(args []string, env map[string]string, stdout, stderr io.Writer) int {
	cmd := ""
	if len(args) > 0 {
		cmd = args[0]
	}
	switch cmd {
	case "help", "-h", "-help", "--help":
		config.Help(stdout)
		return 0
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, versionString())
		return 0
	case "healthcheck":
		return healthcheck(env, stderr)
	case "intercept":
		return interceptCommand(args[1:], env, stdout, stderr)
	case "demo":
		return demo.Run(args[1:], stdout, stderr)
	case "check":
		return check(args[1:], env, stdout, stderr)
	case "probe":
		return probe(args[1:], stdout, stderr)
	case "":
	default:
		fmt.Fprintf(stderr, "natkeep: unknown command %q (want help, version, check, probe, demo, healthcheck or intercept; natkeep runs with no arguments)\n", cmd)
		return 2
	}

	cfg, err := config.Load(env, machine.Read())
	if err != nil {
		fmt.Fprintf(stderr, "natkeep: %v\n", err)
		return 2
	}
	log := newLogger(cfg, env, stderr)
	return serve(cfg, log, stderr)
}

// versionString reports version, commit and Go version; without stamping it
// falls back to the module build info.
func versionString() string {
	v, c := buildVersion()
	return fmt.Sprintf("natkeep %s (commit %s, %s %s/%s)", v, c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// buildInfo is natkeep_build_info: 1, labelled with what is running.
func buildInfo() prometheus.Collector {
	v, c := buildVersion()
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "natkeep", Name: "build_info",
		Help:        "Always 1; the labels say which natkeep build is running.",
		ConstLabels: prometheus.Labels{"version": v, "commit": c, "goversion": runtime.Version()}})
	g.Set(1)
	return g
}

// buildVersion returns the version and commit stamped at build time, or
// what the Go build info knows.
func buildVersion() (v, c string) {
	v, c = version, commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && c == "" {
				c = s.Value
			}
		}
	}
	if v == "" {
		v = "dev"
	}
	if c == "" {
		c = "unknown"
	}
	return v, c
}

// newLogger builds the slog logger: tint for humans on a terminal, JSON for
// log collectors otherwise.
func newLogger(cfg *config.Config, env map[string]string, w io.Writer) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(cfg.LogLevel)) // validated by config.Load
	format := cfg.LogFormat
	tty := false
	if f, ok := w.(*os.File); ok {
		// A character device is a terminal (or /dev/null, which nobody reads).
		if st, err := f.Stat(); err == nil {
			tty = st.Mode()&os.ModeCharDevice != 0
		}
	}
	if format == "auto" {
		format = "json"
		if tty {
			format = "text"
		}
	}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: stableJSON}))
	}
	_, noColor := env["NO_COLOR"]
	return slog.New(tint.NewTextHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly + ".000", NoColor: noColor || !tty}))
}

// serve runs the relay and the admin server until a signal, then drains.
func serve(cfg *config.Config, log *slog.Logger, stderr io.Writer) int {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), buildInfo())
	metrics := relay.NewMetrics(reg)

	if err := intercept.CheckBypass(cfg.Intercept); err != nil {
		return startFailed(stderr, log, err)
	}
	r, err := relay.New(cfg.Relay, log, metrics)
	if err != nil {
		return startFailed(stderr, log, err)
	}
	// Signals are caught before binding so a SIGTERM during start-up drains too.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	ignoreHangup(log)

	admin, err := startAdmin(cfg.AdminAddr, adminHandler(reg, r), log)
	if err != nil {
		r.Close()
		return startFailed(stderr, log, cfg.AdminListenError(err))
	}
	if err := r.Start(); err != nil {
		if admin != nil {
			admin.Close()
		}
		return startFailed(stderr, log, cfg.ListenError(err))
	}
	logStart(log, cfg, r)

	sig := <-sigs
	log.Info("draining", "signal", sig.String(), "drain_timeout", cfg.DrainTimeout)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DrainTimeout)
	done := make(chan error, 1)
	go func() { done <- r.Shutdown(ctx) }()
	select {
	case err = <-done:
	case sig = <-sigs:
		log.Warn("second signal: exiting now", "signal", sig.String())
		cancel()
		r.Close()
		return 1
	}
	cancel()
	if admin != nil {
		actx, acancel := context.WithTimeout(context.Background(), time.Second)
		_ = admin.Shutdown(actx)
		acancel()
	}
	if err != nil {
		log.Warn("drain incomplete", "err", err)
	}
	log.Info("stopped")
	return 0
}

// ignoreHangup logs and otherwise ignores SIGHUP, which by default would end
// natkeep at once: a terminal, a supervisor or an operator used to daemons
// may send it to ask for a reload, but the configuration is the
// environment, fixed at start, so there is nothing to reload.
func ignoreHangup(log *slog.Logger) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		for range hup {
			log.Info("SIGHUP ignored: configuration is environment-only, nothing to reload")
		}
	}()
}

// startFailed reports why natkeep could not start and returns the exit
// status: a configuration error (an address that cannot be bound is one)
// is one line on stderr and status 2, as for a bad variable; anything else
// is logged and status 1.
func startFailed(stderr io.Writer, log *slog.Logger, err error) int {
	var ce *config.Error
	if errors.As(err, &ce) {
		fmt.Fprintf(stderr, "natkeep: %v\n", err)
		return 2
	}
	log.Error("cannot start", "err", err)
	return 1
}

// stableJSON gives every key one JSON type, whatever the value's Go type,
// so log pipelines can map fields: durations are Go duration strings
// ("15s", not nanoseconds), addresses "ip:port" strings (not objects).
func stableJSON(_ []string, a slog.Attr) slog.Attr {
	v := a.Value.Resolve()
	switch v.Kind() {
	case slog.KindDuration:
		return slog.String(a.Key, v.Duration().String())
	case slog.KindAny:
		switch x := v.Any().(type) {
		case net.Addr:
			return slog.String(a.Key, x.String())
		case netip.AddrPort:
			return slog.String(a.Key, x.String())
		case netip.Addr:
			return slog.String(a.Key, x.String())
		}
	}
	return a
}

// logStart writes the start-up line (version, admin address, the budget
// and where it comes from), then one line per route with its options.
func logStart(log *slog.Logger, cfg *config.Config, r *relay.Relay) {
	b := cfg.Relay.Budget
	log.Info("natkeep started", "version", versionString(), "admin", cfg.AdminAddr, "routes", len(cfg.Relay.Routes),
		"resolve_interval", cfg.Relay.ResolveInterval, "drain_timeout", cfg.DrainTimeout, "udp_workers", cfg.Relay.Workers,
		"budget_descriptors", b.Descriptors, "budget_ports", b.Ports, "budget_from", cfg.Host.Describe())
	addrs := r.Addrs()
	for i, rt := range cfg.Relay.Routes {
		attrs := []any{slog.Int("route_index", i+1), slog.String("proto", string(rt.Proto)), slog.String("listen", rt.Listen), slog.String("upstream", rt.Upstream)}
		if i < len(addrs) {
			attrs = append(attrs, slog.String("bound", addrs[i].String()))
		}
		switch rt.Proto {
		case relay.UDP:
			o := rt.UDP
			attrs = append(attrs, slog.String("role", string(o.Role)), slog.Duration("heartbeat_interval", o.Heartbeat.Interval),
				slog.String("payload", o.Payload.String()), slog.String("reply", o.Heartbeat.Pong.String()), slog.Int("ttl", o.TTL),
				slog.Int("dead_after", o.Heartbeat.DeadAfter), slog.Duration("flow_idle_timeout", o.FlowIdleTimeout), slog.Int("max_flows", o.MaxFlows))
			if rt.Transparent {
				attrs = append(attrs, slog.Int("intercept_rules", len(rt.Intercept)))
			}
		case relay.TCP:
			o := rt.TCP
			attrs = append(attrs, slog.Duration("keepalive_idle", o.Keepalive.Idle), slog.Duration("keepalive_interval", o.Keepalive.Interval),
				slog.Int("keepalive_count", o.Keepalive.Count), slog.Duration("user_timeout", o.UserTimeout),
				slog.Duration("connect_timeout", o.ConnectTimeout), slog.Int("max_conns", o.MaxConns))
		}
		log.Info("route", attrs...)
	}
}
