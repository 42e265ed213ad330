// Package demo is `natkeep demo`: natkeep at work on one machine, without
// root and without a network.
package demo

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/natkeep/natkeep/keepalive"
	"github.com/natkeep/natkeep/relay"
)

// demoServer is the demo's upstream on loopback: it records what arrives
// and answers the app's first datagram.
type demoServer struct {
	conn *net.UDPConn
	mu   sync.Mutex
	app  netip.AddrPort // where the app's flow comes from (natkeep's socket)
	hb   int            // heartbeats seen (empty datagrams)
	data int            // app datagrams seen
}

func (s *demoServer) serve() {
	buf := make([]byte, 2048)
	for {
		n, from, err := s.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		s.mu.Lock()
		if n == 0 {
			s.hb++
		} else {
			s.data++
			if !s.app.IsValid() {
				s.app = from
				_, _ = s.conn.WriteToUDPAddrPort([]byte("welcome"), from)
			}
		}
		s.mu.Unlock()
	}
}

func (s *demoServer) counts() (hb, data int, app netip.AddrPort) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hb, s.data, s.app
}

// Run shows on one machine, without root and without a network, what
// natkeep does: an in-process upstream, a relay route with 1 s heartbeats
// and an app that talks once, stays silent, and still gets the server's
// late push. It returns the exit status.
func Run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("natkeep demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	idle := fs.Duration("idle", 8*time.Second, "how long the app stays silent before the server pushes")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *idle < 2*time.Second || *idle > 5*time.Minute {
		fmt.Fprintln(stderr, "natkeep demo: -idle must be between 2s and 5m")
		return 2
	}
	if err := runDemo(stdout, *idle); err != nil {
		fmt.Fprintf(stderr, "natkeep demo: %v\n", err)
		return 1
	}
	return 0
}

func runDemo(w io.Writer, idle time.Duration) error {
	up, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return err
	}
	defer up.Close()
	srv := &demoServer{conn: up}
	go srv.serve()

	payload, _ := keepalive.ParsePayload("empty")
	reply, _ := keepalive.ParseReply("", payload)
	route := relay.Route{Name: "udp://127.0.0.1:0/" + up.LocalAddr().String() + "?interval=1s", Proto: relay.UDP,
		Listen: "127.0.0.1:0", Upstream: up.LocalAddr().String(),
		UDP: relay.UDPOptions{Role: relay.RoleClient, Payload: payload, FlowIdleTimeout: 10 * time.Minute, MaxFlows: 16,
			Heartbeat: keepalive.Schedule{Interval: time.Second, DeadAfter: 3, Pong: reply}}}
	reg := prometheus.NewRegistry()
	r, err := relay.New(relay.Config{Routes: []relay.Route{route}, ResolveInterval: time.Minute}, slog.New(slog.DiscardHandler), relay.NewMetrics(reg))
	if err != nil {
		return err
	}
	if err := r.Start(); err != nil {
		return err
	}
	defer r.Close()
	listen := r.Addrs()[0].String()
	fmt.Fprintf(w, "natkeep demo: an app talks to a UDP server through natkeep on %s, then stays silent for %v.\n", listen, idle)
	fmt.Fprintf(w, "  route  %s (heartbeats after 1 s of app silence, an empty datagram each)\n", route.Name)
	fmt.Fprintln(w, "  (no NAT here: this shows what natkeep sends; the test suite shows mappings kept by it behind a real Linux NAT)")

	app, err := net.DialUDP("udp4", nil, r.Addrs()[0].(*net.UDPAddr))
	if err != nil {
		return err
	}
	defer app.Close()
	if _, err := app.Write([]byte("hello")); err != nil {
		return err
	}
	buf := make([]byte, 2048)
	_ = app.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := app.Read(buf)
	if err != nil {
		return fmt.Errorf("no answer from the server through natkeep: %w", err)
	}
	fmt.Fprintf(w, "0s    app -> server: \"hello\"; server -> app: %q\n", buf[:n])

	start := time.Now()
	for elapsed := time.Second; elapsed <= idle; elapsed += time.Second {
		time.Sleep(time.Until(start.Add(elapsed)))
		hb, _, _ := srv.counts()
		fmt.Fprintf(w, "%-5s app silent; heartbeats seen by the server: %d\n", elapsed.String(), hb)
	}
	hb, _, from := srv.counts()
	push := fmt.Sprintf("late push after %v of app silence", idle)
	if _, err := up.WriteToUDPAddrPort([]byte(push), from); err != nil {
		return err
	}
	_ = app.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err = app.Read(buf); err != nil {
		return fmt.Errorf("the late push did not reach the app: %w", err)
	}
	fmt.Fprintf(w, "%-5s server -> app: %q (the server sent it to %v, natkeep's socket for this flow)\n", idle.String(), buf[:n], from)
	fmt.Fprintf(w, "Behind a NAT that forgets idle UDP after 30 s, those %d heartbeats are what keep the mapping open for that push.\n", hb)
	return demoMetrics(w, reg)
}

// demoMetrics prints the natkeep series that moved, as /metrics has them.
func demoMetrics(w io.Writer, reg *prometheus.Registry) error {
	fams, err := reg.Gather()
	if err != nil {
		return err
	}
	var lines []string
	for _, f := range fams {
		for _, m := range f.GetMetric() {
			var v float64
			switch {
			case m.Counter != nil:
				v = m.GetCounter().GetValue()
			case m.Gauge != nil:
				v = m.GetGauge().GetValue()
			default:
				continue
			}
			if v == 0 {
				continue
			}
			var labels []string
			for _, lp := range m.GetLabel() {
				if lp.GetName() != "route" {
					labels = append(labels, lp.GetName()+"="+lp.GetValue())
				}
			}
			name := f.GetName()
			if len(labels) > 0 {
				name += "{" + strings.Join(labels, ",") + "}"
			}
			lines = append(lines, fmt.Sprintf("  %-52s %v", name, v))
		}
	}
	sort.Strings(lines)
	fmt.Fprintln(w, "Metrics that moved (natkeep serves them on /metrics, NATKEEP_ADMIN_ADDR):")
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
	return nil
}
