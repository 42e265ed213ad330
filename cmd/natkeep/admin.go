package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/natkeep/natkeep/relay"
)

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
	addr, set := env[envKey("AdminAddr")]
	if !set {
		addr = defaultAdminAddr
	}
	if addr == "" || addr == "off" {
		fmt.Fprintf(stderr, "natkeep healthcheck: %s is disabled; nothing to probe\n", envKey("AdminAddr"))
		return 1
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		fmt.Fprintf(stderr, "natkeep healthcheck: %s=%q: %v\n", envKey("AdminAddr"), addr, err)
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
