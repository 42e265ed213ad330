//go:build linux

package main

// Path learning behind a real Linux NAT: a natkeep responder in the server
// namespace in front of a plain UDP server, natkeep with interval=auto (and
// ttl=auto) in the client namespace. The router's conntrack timeouts are
// the binding lifetimes natkeep must find.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

// pathLab is a NAT lab with the responder and the plain server running.
type pathLab struct {
	l      *natlab.Lab
	server *nktest.UDP // the plain server behind the responder
	resp   *natlab.Proc
	nk     *natlab.Proc // natkeep in the client namespace, once started
	route  string
	app    *nktest.UDP
}

// respAddr is the responder's address, the client route's upstream.
func (p *pathLab) respAddr() netip.AddrPort { return netip.AddrPortFrom(p.l.ServerAddr, 9000) }

func newPathLab(t *testing.T, cfg natlab.Config) *pathLab {
	t.Helper()
	l := natlab.New(t, cfg)
	p := &pathLab{l: l}
	p.server = nktest.NewUDP(t, l.ListenUDP(t, l.Server, "127.0.0.1:9001"))
	route := fmt.Sprintf("udp://%s/127.0.0.1:9001?role=responder", p.respAddr())
	p.resp = l.StartProcess(t, l.Server, []string{"NATKEEP_LOG_LEVEL=debug", "NATKEEP_LOG_FORMAT=json", "NATKEEP_ADMIN_ADDR=off", "NATKEEP_DRAIN_TIMEOUT=1s", "NATKEEP_ROUTES=" + route}, natlab.NatkeepBinary(t))
	if !p.resp.WaitFor(20*time.Second, `"msg":"natkeep started"`) {
		t.Fatalf("responder did not start:\n%s", p.resp.Output())
	}
	return p
}

// start runs natkeep in the client namespace with the route's query.
func (p *pathLab) start(t *testing.T, query string, env ...string) {
	t.Helper()
	p.route = fmt.Sprintf("udp://127.0.0.1:5000/%s?%s", p.respAddr(), query)
	p.nk = startNatkeep(t, p.l, append([]string{"NATKEEP_ROUTES=" + p.route}, env...)...)
}

func (p *pathLab) metric(t *testing.T, name string, labels ...string) float64 {
	t.Helper()
	want := map[string]string{"route": p.route}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	return nktest.Value(nktest.Scrape(t, p.l.HTTPClient(p.l.Client), "127.0.0.1:9299"), name, want)
}

// waitLearned waits (up to limit) until the route has learned a lifetime
// and returns it and how long that took.
func (p *pathLab) waitLearned(t *testing.T, limit time.Duration) (time.Duration, time.Duration) {
	t.Helper()
	start := time.Now()
	if !nktest.Eventually(limit, 500*time.Millisecond, func() bool {
		return p.metric(t, "natkeep_udp_path_state", "state", "learned") == 1
	}) {
		t.Fatalf("no lifetime learned within %v:\n%s", limit, p.nk.Output())
	}
	s := p.metric(t, "natkeep_udp_path_binding_lifetime_seconds")
	return time.Duration(s * float64(time.Second)), time.Since(start)
}

// hello opens the app's flow and returns the address the plain server
// sees it from (the responder's flow), after one exchange.
func (p *pathLab) hello(t *testing.T) netip.AddrPort {
	t.Helper()
	p.app = nktest.NewUDP(t, p.l.DialUDP(t, p.l.Client, "127.0.0.1:5000"))
	if _, err := p.app.Conn.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	h, ok := p.server.WaitData(10*time.Second, "hello")
	if !ok {
		t.Fatal("server never got the app's hello")
	}
	if _, err := p.server.Conn.WriteToUDPAddrPort([]byte("welcome"), h.From); err != nil {
		t.Fatal(err)
	}
	if _, ok := p.app.WaitData(10*time.Second, "welcome"); !ok {
		t.Fatal("app never got the server's reply")
	}
	return h.From
}

// pushAfter stays silent for idle, then has the server push to the flow
// and reports whether the push reached the app.
func (p *pathLab) pushAfter(t *testing.T, via netip.AddrPort, idle time.Duration, tag string) bool {
	t.Helper()
	time.Sleep(idle) // the experiment: app silence
	if _, err := p.server.Conn.WriteToUDPAddrPort([]byte(tag), via); err != nil {
		t.Fatal(err)
	}
	_, ok := p.app.WaitData(5*time.Second, tag)
	return ok
}

func within(got, want time.Duration, frac float64) bool {
	return math.Abs(float64(got-want)) <= frac*float64(want)
}

// TestNATPathLearnsLifetime: conntrack UDP timeouts 5 s (both): natkeep
// learns 5 s within 15 %, then an app flow idle for 30 s still gets the
// server's push, with at most 12 heartbeats sent in those 30 s (a fixed 1 s
// interval sends about 30).
func TestNATPathLearnsLifetime(t *testing.T) {
	t.Parallel() // minutes of sleeping NATs each: side by side
	p := newPathLab(t, natlab.Config{UDPTimeout: 5 * time.Second, UDPStreamTimeout: 5 * time.Second})
	p.start(t, "interval=auto&payload=stun")
	if iv := p.metric(t, "natkeep_udp_heartbeat_interval_seconds"); iv != 15 {
		t.Fatalf("interval before learning %vs, want the 15s fallback", iv)
	}
	lifetime, took := p.waitLearned(t, 3*time.Minute)
	learnSent := p.metric(t, "natkeep_udp_path_probe_datagrams_total", "direction", "sent")
	learnRecv := p.metric(t, "natkeep_udp_path_probe_datagrams_total", "direction", "received")
	if !within(lifetime, 5*time.Second, 0.15) {
		t.Fatalf("learned %v, want 5s within 15%%\n%s", lifetime, p.nk.Output())
	}
	iv := p.metric(t, "natkeep_udp_heartbeat_interval_seconds")
	if !p.nk.WaitFor(5*time.Second, `"msg":"path learned`) {
		t.Fatalf("no INFO line for the learned lifetime:\n%s", p.nk.Output())
	}
	via := p.hello(t)
	before := p.metric(t, "natkeep_udp_heartbeats_sent_total")
	sentBefore := p.metric(t, "natkeep_udp_path_probe_datagrams_total", "direction", "sent")
	if !p.pushAfter(t, via, 30*time.Second, "push") {
		t.Fatalf("push after 30 s idle lost with the learned interval %vs\n%s", iv, p.nk.Output())
	}
	beats := p.metric(t, "natkeep_udp_heartbeats_sent_total") - before
	probeSent := p.metric(t, "natkeep_udp_path_probe_datagrams_total", "direction", "sent") - sentBefore
	t.Logf("learned lifetime %v (conntrack 5s) in %v with %v probe datagrams sent, %v received; interval %.2fs; %v heartbeats in 30 s idle (fixed 1s: ~30); verification probe datagrams sent in those 30 s: %v",
		lifetime, took.Round(time.Second), learnSent, learnRecv, iv, beats, probeSent)
	if beats > 12 || beats < 1 {
		t.Fatalf("%v heartbeats in 30 s, want 1..12", beats)
	}
}

// TestNATPathLearnsStreamTimeout: _udp_timeout 3 s, _udp_timeout_stream
// 8 s: app flows have seen replies and live past 2 s, so their mappings
// follow the stream timeout, and that is what natkeep must learn.
func TestNATPathLearnsStreamTimeout(t *testing.T) {
	t.Parallel() // minutes of sleeping NATs each: side by side
	p := newPathLab(t, natlab.Config{UDPTimeout: 3 * time.Second, UDPStreamTimeout: 8 * time.Second})
	p.start(t, "interval=auto&payload=stun")
	lifetime, took := p.waitLearned(t, 3*time.Minute)
	t.Logf("learned %v (conntrack 3s unreplied, 8s stream) in %v", lifetime, took.Round(time.Second))
	if !within(lifetime, 8*time.Second, 0.15) {
		t.Fatalf("learned %v, want the 8s stream timeout within 15%%\n%s", lifetime, p.nk.Output())
	}
}

// TestNATPathRelearnsShorterTimeout: the router's timeouts drop from 8 s to
// 4 s mid-run; natkeep notices (its verification probes fail) and learns
// 4 s within 2 minutes, and after that an idle flow's pushes arrive.
func TestNATPathRelearnsShorterTimeout(t *testing.T) {
	t.Parallel() // minutes of sleeping NATs each: side by side
	p := newPathLab(t, natlab.Config{UDPTimeout: 8 * time.Second, UDPStreamTimeout: 8 * time.Second})
	p.start(t, "interval=auto&payload=stun")
	first, _ := p.waitLearned(t, 3*time.Minute)
	if !within(first, 8*time.Second, 0.15) {
		t.Fatalf("first learned %v, want 8s within 15%%", first)
	}
	p.hello(t)
	for _, kv := range []string{"net.netfilter.nf_conntrack_udp_timeout=4", "net.netfilter.nf_conntrack_udp_timeout_stream=4"} {
		p.l.Run(t, p.l.Router, "sysctl", "-q", "-w", kv)
	}
	changed := time.Now()
	var second time.Duration
	if !nktest.Eventually(2*time.Minute, 500*time.Millisecond, func() bool {
		if p.metric(t, "natkeep_udp_path_state", "state", "learned") != 1 {
			return false
		}
		second = time.Duration(p.metric(t, "natkeep_udp_path_binding_lifetime_seconds") * float64(time.Second))
		return second < 5*time.Second
	}) {
		t.Fatalf("no re-learning within 2 minutes of the change (lifetime still %v)\n%s", second, p.nk.Output())
	}
	took := time.Since(changed)
	if !within(second, 4*time.Second, 0.15) {
		t.Fatalf("re-learned %v, want 4s within 15%%", second)
	}
	reasons := map[string]float64{}
	for _, r := range []string{"verify_failed", "mapping_changed", "periodic"} {
		reasons[r] = p.metric(t, "natkeep_udp_path_learnings_total", "reason", r)
	}
	// The flow's app talks again (its mapping may have lapsed while the
	// interval was too long), then stays idle: nothing may be lost now.
	if _, err := p.app.Conn.Write([]byte("again")); err != nil {
		t.Fatal(err)
	}
	h, ok := p.server.WaitData(10*time.Second, "again")
	if !ok {
		t.Fatal("server never got the app's second datagram")
	}
	via := h.From
	for i := range 3 {
		tag := "push " + strconv.Itoa(i)
		if !p.pushAfter(t, via, 10*time.Second, tag) {
			t.Fatalf("%s after 10 s idle lost after the re-learning (interval %vs)\n%s", tag, p.metric(t, "natkeep_udp_heartbeat_interval_seconds"), p.nk.Output())
		}
	}
	t.Logf("learned %v at 8s, re-learned %v %v after the change to 4s (learnings by reason %v); 3 pushes after 10 s idle each arrived",
		first, second, took.Round(time.Second), reasons)
}

// TestNATPathTTLAuto: two routers, NAT on the second: ttl=auto learns 2,
// an idle flow's push after 15 s arrives, and the responder's port never
// sees one of the flow's heartbeats (heal period long). Heartbeats are the
// only 28-byte STUN datagrams: path probes carry SOFTWARE.
func TestNATPathTTLAuto(t *testing.T) {
	t.Parallel() // minutes of sleeping NATs each: side by side
	p := newPathLab(t, natlab.Config{UDPTimeout: 5 * time.Second, UDPStreamTimeout: 5 * time.Second, ExtraHop: true})
	// Count 28-byte UDP payloads (IP length 56) arriving at the responder.
	p.l.Run(t, p.l.Server, "iptables", "-w", "5", "-I", "INPUT", "-p", "udp", "--dport", "9000", "-m", "length", "--length", "56", "-j", "ACCEPT")
	beatsAtServer := func() int {
		out := p.l.Run(t, p.l.Server, "iptables", "-w", "5", "-L", "INPUT", "-v", "-n", "-x")
		for _, line := range strings.Split(out, "\n") {
			if strings.Contains(line, "length 56") {
				n, _ := strconv.Atoi(strings.Fields(line)[0])
				return n
			}
		}
		t.Fatalf("no counting rule in:\n%s", out)
		return 0
	}
	p.start(t, "interval=auto&payload=stun&ttl=auto&ttl_heal=10m")
	lifetime, _ := p.waitLearned(t, 3*time.Minute)
	start := time.Now()
	if !nktest.Eventually(3*time.Minute, 500*time.Millisecond, func() bool {
		return p.metric(t, "natkeep_udp_path_nat_hops") != 0
	}) {
		t.Fatalf("no NAT distance learned:\n%s", p.nk.Output())
	}
	hops := p.metric(t, "natkeep_udp_path_nat_hops")
	if hops != 2 {
		t.Fatalf("learned NAT distance %v, want 2\n%s", hops, p.nk.Output())
	}
	via := p.hello(t)
	atServer := beatsAtServer()
	before := p.metric(t, "natkeep_udp_heartbeats_sent_total")
	if !p.pushAfter(t, via, 15*time.Second, "push") {
		t.Fatalf("push after 15 s idle lost with TTL-2 heartbeats\n%s", p.nk.Output())
	}
	beats := p.metric(t, "natkeep_udp_heartbeats_sent_total") - before
	if beats < 2 {
		t.Fatalf("%v heartbeats in 15 s idle: the push proves nothing", beats)
	}
	if n := beatsAtServer() - atServer; n != 0 {
		t.Fatalf("the responder's port received %d heartbeat-sized datagrams while the flow sent %v TTL-2 heartbeats", n, beats)
	}
	if got := p.server.Count("hello") + p.server.Count("welcome"); len(p.server.All()) != got {
		t.Fatalf("the plain server saw %d datagrams, want only the app's", len(p.server.All()))
	}
	if len(p.nk.Grep(`"msg":"NAT distance learned`, `"ttl":2`)) != 1 {
		t.Fatalf("no INFO line for the learned distance:\n%s", p.nk.Output())
	}
	t.Logf("lifetime %v, NAT distance %v learned %v after the lifetime; %v TTL-2 heartbeats in 15 s idle, none at the server; push arrived",
		lifetime, hops, time.Since(start).Round(time.Second), beats)
}

// runProbe runs `natkeep probe args...` in the client namespace and returns
// its stdout, stderr and exit status.
func runProbe(t *testing.T, l *natlab.Lab, args ...string) (string, string, int) {
	t.Helper()
	stdout, stderr, code, err := probeIn(t, l, 5*time.Minute, args...)
	if err != nil {
		t.Fatalf("natkeep probe %v: %v\n%s", args, err, stderr)
	}
	return stdout, stderr, code
}

// probeIn runs `natkeep probe args...` in the client namespace, bounded by
// limit; err is set when it did not run to an exit status.
func probeIn(t *testing.T, l *natlab.Lab, limit time.Duration, args ...string) (string, string, int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", l.Client, natlab.NatkeepBinary(t), "probe"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return stdout.String(), stderr.String(), ee.ExitCode(), nil
	}
	return stdout.String(), stderr.String(), 0, err
}

// TestNATProbeCommand: `natkeep probe` through two routers (NAT on the
// second, 5 s timeouts) to a natkeep responder prints the lifetime and the
// distance, as text and as JSON; against a UDP server that ignores STUN it
// exits 1 and says so.
func TestNATProbeCommand(t *testing.T) {
	t.Parallel() // minutes of sleeping NATs each: side by side
	p := newPathLab(t, natlab.Config{UDPTimeout: 5 * time.Second, UDPStreamTimeout: 5 * time.Second, ExtraHop: true})
	silent := nktest.NewUDP(t, p.l.ListenUDP(t, p.l.Server, netip.AddrPortFrom(p.l.ServerAddr, 9100).String()))
	type result struct {
		stdout, stderr string
		code           int
	}
	var text, js result
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); text.stdout, text.stderr, text.code = runProbe(t, p.l, p.respAddr().String()) }()
	go func() {
		defer wg.Done()
		js.stdout, js.stderr, js.code = runProbe(t, p.l, "--json", p.respAddr().String())
	}()
	wg.Wait()

	if text.code != 0 {
		t.Fatalf("text probe exited %d\nstdout:\n%s\nstderr:\n%s", text.code, text.stdout, text.stderr)
	}
	m := regexp.MustCompile(`binding lifetime\s+([0-9.]+m?s) `).FindStringSubmatch(text.stdout)
	if m == nil {
		t.Fatalf("no binding lifetime in:\n%s", text.stdout)
	}
	lt, err := time.ParseDuration(m[1])
	if err != nil || !within(lt, 5*time.Second, 0.15) {
		t.Fatalf("text lifetime %q (%v), want 5s within 15%%:\n%s", m[1], err, text.stdout)
	}
	if !strings.Contains(text.stdout, "NAT distance      2 hop(s)") || !strings.Contains(text.stdout, "NATKEEP_UDP_HEARTBEAT_TTL=2") {
		t.Fatalf("text output lacks the 2-hop distance:\n%s", text.stdout)
	}
	if !strings.Contains(text.stderr, "natkeep probe: [") {
		t.Fatalf("no progress lines on stderr:\n%s", text.stderr)
	}

	if js.code != 0 {
		t.Fatalf("JSON probe exited %d\n%s\n%s", js.code, js.stdout, js.stderr)
	}
	var rep struct {
		Mapped      string   `json:"mapped"`
		NAT         bool     `json:"nat"`
		Lifetime    *float64 `json:"binding_lifetime_seconds"`
		Hops        int      `json:"nat_hops"`
		Recommended struct {
			Interval, TTL, Payload string
		} `json:"recommended"`
		Sent    int     `json:"datagrams_sent"`
		RTT     float64 `json:"rtt_seconds"`
		Elapsed float64 `json:"elapsed_seconds"`
	}
	if err := json.Unmarshal([]byte(js.stdout), &rep); err != nil {
		t.Fatalf("probe --json output does not parse: %v\n%s", err, js.stdout)
	}
	if rep.Lifetime == nil || !within(time.Duration(*rep.Lifetime*float64(time.Second)), 5*time.Second, 0.15) || rep.Hops != 2 || !rep.NAT || rep.Recommended.TTL != "2" || rep.Recommended.Payload != "stun" {
		t.Fatalf("JSON report %+v, want a lifetime of 5s within 15%%, 2 hops, nat, ttl 2, payload stun\n%s", rep, js.stdout)
	}
	if ap, err := netip.ParseAddrPort(rep.Mapped); err != nil || ap.Addr() != p.l.RouterOuter {
		t.Fatalf("mapped %q, want the NAT's outer address %v", rep.Mapped, p.l.RouterOuter)
	}
	if rep.Sent < 20 || rep.RTT <= 0 || rep.Elapsed < 10 {
		t.Fatalf("JSON report claims %d datagrams sent, RTT %vs, %vs elapsed", rep.Sent, rep.RTT, rep.Elapsed)
	}
	iv, err := time.ParseDuration(rep.Recommended.Interval)
	if err != nil || iv < 3*time.Second || iv > 4200*time.Millisecond {
		t.Fatalf("recommended interval %q, want about 0.8 x 5s", rep.Recommended.Interval)
	}
	t.Logf("probe: lifetime %.2fs, %d hops, interval %s, %d datagrams sent\n%s", *rep.Lifetime, rep.Hops, rep.Recommended.Interval, rep.Sent, text.stdout)

	out, errOut, code := runProbe(t, p.l, netip.AddrPortFrom(p.l.ServerAddr, 9100).String())
	if code != 1 || !strings.Contains(errOut, "never answered a STUN Binding Request") {
		t.Fatalf("probe of a non-STUN server exited %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	if len(silent.All()) == 0 {
		t.Fatal("the non-STUN server saw no request")
	}
}

// TestNATProbeAgainstCoturn: `natkeep probe` against coturn, an RFC 5780
// STUN server this project did not write, listening on two addresses (so
// it names an alternate address and honours RESPONSE-PORT): the mapping
// behaviour is tested (Linux MASQUERADE keeps the port for a new
// destination: endpoint-independent) and the 5 s lifetime is learned
// through coturn's answers.
func TestNATProbeAgainstCoturn(t *testing.T) {
	t.Parallel()
	turn, err := exec.LookPath("turnserver")
	if err != nil {
		natlab.Skip(t, "coturn's turnserver is not installed (apt-get install coturn); .ci/run installs it")
	}
	l := natlab.New(t, natlab.Config{UDPTimeout: 5 * time.Second, UDPStreamTimeout: 5 * time.Second})
	alt := l.ServerAddr.Next()
	l.Run(t, l.Server, "ip", "addr", "add", netip.PrefixFrom(alt, 24).String(), "dev", l.ServerIf)
	dir := t.TempDir()
	ts := l.StartProcess(t, l.Server, nil, turn, "-n", "-S", "-L", l.ServerAddr.String(), "-L", alt.String(), "-p", "3478", "--alt-listening-port", "3479",
		"--no-cli", "--no-tcp", "--no-tls", "--no-dtls", "--pidfile", dir+"/turn.pid", "--log-file", "stdout", "--simple-log", "--userdb", dir+"/turndb")
	server := netip.AddrPortFrom(l.ServerAddr, 3478)
	// coturn is up when it answers a Binding Request from the client side.
	if !nktest.Eventually(20*time.Second, 200*time.Millisecond, func() bool {
		_, errOut, code := runProbeQuick(t, l, server)
		return code == 0 || !strings.Contains(errOut, "never answered")
	}) {
		t.Fatalf("coturn never answered:\n%s", ts.Output())
	}
	out, errOut, code := runProbe(t, l, "--json", "--no-hops", server.String())
	if code != 0 {
		t.Fatalf("probe of coturn exited %d\n%s\n%s\ncoturn:\n%s", code, out, errOut, ts.Output())
	}
	var rep struct {
		Mapping  string   `json:"mapping"`
		Lifetime *float64 `json:"binding_lifetime_seconds"`
		HopsNote string   `json:"nat_hops_note"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("JSON does not parse: %v\n%s", err, out)
	}
	if rep.Mapping != "endpoint-independent" {
		t.Fatalf("mapping %q, want endpoint-independent (coturn's OTHER-ADDRESS %v)\n%s", rep.Mapping, alt, out)
	}
	if rep.Lifetime == nil || !within(time.Duration(*rep.Lifetime*float64(time.Second)), 5*time.Second, 0.15) {
		t.Fatalf("lifetime through coturn %v, want 5s within 15%%\n%s\n%s", rep.Lifetime, out, errOut)
	}
	t.Logf("coturn: mapping %s, lifetime %.2fs (%s)", rep.Mapping, *rep.Lifetime, rep.HopsNote)
}

// runProbeQuick is a probe with a short --max-lifetime: it only asks
// "does the server answer?".
func runProbeQuick(t *testing.T, l *natlab.Lab, server netip.AddrPort) (string, string, int) {
	t.Helper()
	stdout, stderr, code, err := probeIn(t, l, 15*time.Second, "--no-hops", "--max-lifetime", "4s", server.String())
	if err != nil {
		return stdout, stderr, -1
	}
	return stdout, stderr, code
}
