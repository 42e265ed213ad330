package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/config"
	"github.com/natkeep/natkeep/relay"
)

// Admin server limits, so that a client that stalls, trickles or never
// closes cannot hold a connection and its goroutine for long. WriteTimeout
// runs from the end of the request headers to the end of the response: a
// /metrics scrape (some tens of KiB gathered in milliseconds) fits with
// plenty to spare. IdleTimeout still lets a scraper on a 15-30 s interval
// keep its connection.
const (
	adminReadHeaderTimeout = 5 * time.Second
	adminReadTimeout       = 10 * time.Second
	adminWriteTimeout      = 10 * time.Second
	adminIdleTimeout       = 60 * time.Second
	adminMaxHeaderBytes    = 8 << 10
)

// newAdminServer is the admin HTTP server for h, with the limits above.
func newAdminServer(h http.Handler) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: adminReadHeaderTimeout,
		ReadTimeout:       adminReadTimeout,
		WriteTimeout:      adminWriteTimeout,
		IdleTimeout:       adminIdleTimeout,
		MaxHeaderBytes:    adminMaxHeaderBytes,
	}
}

// startAdmin binds addr and serves h on it in the background; nil, nil when
// addr is empty (admin server off).
func startAdmin(addr string, h http.Handler, log *slog.Logger) (*http.Server, error) {
	if addr == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	srv := newAdminServer(h)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("admin server failed", "err", err)
		}
	}()
	return srv, nil
}

// adminHandler serves /metrics, /healthz (alive) and /readyz (every
// listener bound and not draining).
func adminHandler(reg *prometheus.Registry, r *relay.Relay) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !r.Ready() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// healthcheck probes /readyz on the admin address and returns the exit
// status: 0 ready, 1 not. It exists so an image without a shell or curl can
// run a Docker HEALTHCHECK or a Kubernetes exec probe.
func healthcheck(env map[string]string, stderr io.Writer) int {
	addr, set := env[config.VarAdminAddr]
	if !set {
		addr = config.DefaultAdminAddr
	}
	if addr == "" || addr == "off" {
		fmt.Fprintf(stderr, "natkeep healthcheck: %s is disabled; nothing to probe\n", config.VarAdminAddr)
		return 1
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		fmt.Fprintf(stderr, "natkeep healthcheck: %s=%q: %v\n", config.VarAdminAddr, addr, err)
		return 1
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	client := http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://" + net.JoinHostPort(host, port) + "/readyz")
	if err != nil {
		fmt.Fprintf(stderr, "natkeep healthcheck: %v\n", err)
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "natkeep healthcheck: /readyz answered %s\n", resp.Status)
		return 1
	}
	return 0
}
