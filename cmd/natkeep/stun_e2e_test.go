//go:build linux

package main

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
)

// TestSTUNInteropCoturn: natkeep's STUN heartbeats against coturn, a STUN
// server this project did not write: they are answered, RTT is measured,
// and the responses are consumed (the app never sees one).
func TestSTUNInteropCoturn(t *testing.T) {
	turn, err := exec.LookPath("turnserver")
	if err != nil {
		natlab.Skip(t, "coturn's turnserver is not installed (apt-get install coturn); .ci/run installs it")
	}
	stunPort, appPort, adminPort := nktest.FreePort(t, "udp"), nktest.FreePort(t, "udp"), nktest.FreePort(t, "tcp")
	dir := t.TempDir()
	ts := natlab.Start(t, nil, turn, "-n", "-S", "-L", "127.0.0.1", "-p", fmt.Sprint(stunPort),
		"--no-cli", "--no-tcp", "--no-tls", "--no-dtls", "--pidfile", dir+"/turn.pid", "--log-file", "stdout", "--simple-log",
		"--userdb", dir+"/turndb")
	admin := fmt.Sprintf("127.0.0.1:%d", adminPort)
	route := fmt.Sprintf("udp://127.0.0.1:%d/127.0.0.1:%d?payload=stun&interval=200ms", appPort, stunPort)
	nk := startHost(t, "NATKEEP_ROUTES="+route, "NATKEEP_ADMIN_ADDR="+admin)
	nktest.WaitStatus(t, "http://"+admin+"/readyz", 200)

	app, err := net.Dial("udp4", fmt.Sprintf("127.0.0.1:%d", appPort))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	// A non-STUN datagram opens the flow; coturn ignores it.
	if _, err := app.Write([]byte("not stun, opens the flow")); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"route": route}
	deadline := time.Now().Add(30 * time.Second)
	var replies, beats, rtts float64
	for {
		f := nktest.Scrape(t, nil, admin)
		replies = nktest.Value(f, "natkeep_udp_heartbeat_replies_total", labels)
		beats = nktest.Value(f, "natkeep_udp_heartbeats_sent_total", labels)
		rtts = nktest.Value(f, "natkeep_udp_heartbeat_rtt_seconds", labels)
		if replies >= 5 && rtts >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("coturn answered %v of %v heartbeats (rtt samples %v)\ncoturn:\n%s", replies, beats, rtts, ts.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Every response was consumed: nothing reaches the app.
	buf := make([]byte, 1500)
	_ = app.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
	if n, err := app.Read(buf); err == nil {
		t.Fatalf("app received %d bytes; STUN responses must be consumed", n)
	}
	if strings.Contains(nk.Output(), "peer dead") {
		t.Fatalf("peer declared dead while coturn answered:\n%s", nk.Output())
	}
	t.Logf("coturn answered %v/%v heartbeats, %v RTT samples", replies, beats, rtts)
}

// stunLab is natkeep with STUN heartbeats in the client namespace, a natkeep
// responder in front of a plain UDP echo server in the server namespace.
type stunLab struct {
	l      *natlab.Lab
	client *natlab.Proc
	resp   *natlab.Proc
	app    *nktest.UDP
	route  string
	admin  *http.Client
}

func newSTUNLab(t *testing.T) *stunLab {
	l := natlab.New(t, natlab.Config{UDPTimeout: 3 * time.Second, UDPStreamTimeout: 3 * time.Second})
	nktest.EchoUDP(t, l.ListenUDP(t, l.Server, "127.0.0.1:9001"))
	respRoute := fmt.Sprintf("udp://%s/127.0.0.1:9001?role=responder", netip.AddrPortFrom(l.ServerAddr, 9000))
	resp := l.StartProcess(t, l.Server, []string{"NATKEEP_LOG_LEVEL=debug", "NATKEEP_LOG_FORMAT=json", "NATKEEP_ADMIN_ADDR=off", "NATKEEP_DRAIN_TIMEOUT=1s", "NATKEEP_ROUTES=" + respRoute}, natlab.NatkeepBinary(t))
	if !resp.WaitFor(20*time.Second, `"msg":"natkeep started"`) {
		t.Fatalf("responder did not start:\n%s", resp.Output())
	}
	// on_dead=rebind: these tests follow a dead peer through fresh local
	// ports (TestNATDeadPeerKeepsMapping covers the default, keep).
	route := fmt.Sprintf("udp://127.0.0.1:5000/%s?payload=stun&interval=1s&dead_after=3&on_dead=rebind", netip.AddrPortFrom(l.ServerAddr, 9000))
	client := startNatkeep(t, l, "NATKEEP_ROUTES="+route)
	s := &stunLab{l: l, client: client, resp: resp, route: route, admin: l.HTTPClient(l.Client)}
	s.app = nktest.NewUDP(t, l.DialUDP(t, l.Client, "127.0.0.1:5000"))
	return s
}

func (s *stunLab) metric(t *testing.T, name string) float64 {
	return nktest.Value(nktest.Scrape(t, s.admin, "127.0.0.1:9299"), name, map[string]string{"route": s.route})
}

// echo sends msg from the app and waits for the echo server's copy.
func (s *stunLab) echo(t *testing.T, msg string, within time.Duration) bool {
	t.Helper()
	if _, err := s.app.Conn.Write([]byte(msg)); err != nil {
		t.Fatal(err)
	}
	_, ok := s.app.WaitData(within, msg)
	return ok
}

func (s *stunLab) waitMetric(t *testing.T, name string, atLeast float64, within time.Duration) {
	t.Helper()
	if !nktest.Eventually(within, 100*time.Millisecond, func() bool { return s.metric(t, name) >= atLeast }) {
		t.Fatalf("%s stayed below %v for %v", name, atLeast, within)
	}
}

// TestNATSTUNDeadPeerRecovery blackholes the server in the router for
// longer than interval*dead_after: the peer is declared dead in the expected
// time, the flow is rebound, and after the blackhole ends replies resume and
// app traffic flows again with no restart.
func TestNATSTUNDeadPeerRecovery(t *testing.T) {
	s := newSTUNLab(t)
	if !s.echo(t, "before", 10*time.Second) {
		t.Fatal("no echo through the responder before the blackhole")
	}
	s.waitMetric(t, "natkeep_udp_heartbeat_replies_total", 2, 20*time.Second)

	unblock := s.l.BlockServer(t)
	blocked := time.Now()
	if !s.client.WaitFor(30*time.Second, "UDP peer dead") {
		t.Fatalf("peer never declared dead:\n%s", s.client.Output())
	}
	detect := time.Since(blocked)
	// Up to one interval until the first unanswered beat, then 3 more
	// intervals (jittered 80-100%) to count 3 misses.
	if detect < 2*time.Second || detect > 10*time.Second {
		t.Fatalf("dead after %v; expected about 3-4 s (interval 1s, dead_after 3)", detect)
	}
	if !s.client.WaitFor(10*time.Second, "UDP flow rebound") {
		t.Fatalf("flow not rebound:\n%s", s.client.Output())
	}
	time.Sleep(time.Until(blocked.Add(8 * time.Second))) // blackhole well past interval*dead_after
	unblock()
	unblocked := time.Now()
	if !s.client.WaitFor(20*time.Second, "UDP peer alive again") {
		t.Fatalf("peer never came back after the blackhole:\n%s", s.client.Output())
	}
	recover := time.Since(unblocked)
	if !s.echo(t, "after", 10*time.Second) {
		t.Fatal("app traffic did not flow again after recovery")
	}
	if v := s.metric(t, "natkeep_udp_dead_peers_total"); v != 1 {
		t.Fatalf("dead peers = %v", v)
	}
	if v := s.metric(t, "natkeep_udp_rebinds_total"); v < 1 {
		t.Fatalf("rebinds = %v", v)
	}
	if v := s.metric(t, "natkeep_udp_flows_created_total"); v != 1 {
		t.Fatalf("flows created = %v: the app's flow must survive", v)
	}
	t.Logf("blackhole: dead declared %v after block; replies resumed %v after unblock", detect.Round(10*time.Millisecond), recover.Round(10*time.Millisecond))
}

// TestNATSTUNRebindingDetected flushes the router's conntrack table and
// forces a new external port with an SNAT port range: the next STUN reply
// shows a new XOR-MAPPED-ADDRESS, which natkeep reports as a NAT rebinding.
func TestNATSTUNRebindingDetected(t *testing.T) {
	s := newSTUNLab(t)
	if !s.echo(t, "before", 10*time.Second) {
		t.Fatal("no echo before the rebinding")
	}
	s.waitMetric(t, "natkeep_udp_heartbeat_replies_total", 2, 20*time.Second)
	l := s.l
	l.Run(t, l.Router, "iptables", "-t", "nat", "-I", "POSTROUTING", "1", "-o", l.RouterOuterIf, "-p", "udp", "-j", "MASQUERADE", "--to-ports", "30000-30010")
	l.Run(t, l.Router, "conntrack", "-F")
	changed := time.Now()
	if !s.client.WaitFor(20*time.Second, "NAT mapping changed") {
		t.Fatalf("rebinding not detected:\n%s", s.client.Output())
	}
	line := s.client.Grep("NAT mapping changed")[0]
	if !strings.Contains(line, `"new_public":"`+l.RouterOuter.String()+":300") {
		t.Fatalf("new public address not in the forced range: %s", line)
	}
	if v := s.metric(t, "natkeep_udp_nat_mapping_changes_total"); v != 1 {
		t.Fatalf("mapping changes = %v", v)
	}
	if !s.echo(t, "after", 10*time.Second) {
		t.Fatal("app traffic did not flow after the rebinding")
	}
	t.Logf("rebinding detected %v after the flush: %s", time.Since(changed).Round(10*time.Millisecond), line)
}
