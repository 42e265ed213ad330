//go:build linux

package main

// STUN clients this project did not write (coturn's turnutils_stunclient,
// pion's stun-client) against a natkeep responder route behind a real NAT:
// each gets the router's public address and the very port conntrack
// mapped, although neither sends a FINGERPRINT. An RFC 3489 request (no
// magic cookie) passes through as data, and stun_strict=true restores the
// FINGERPRINT-only rule.

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/natkeep/natkeep/cmd/natkeep/internal/natlab"
	"github.com/natkeep/natkeep/cmd/natkeep/internal/nktest"
	"github.com/natkeep/natkeep/keepalive"
)

// pionBuild holds pion's command-line STUN client, built once from the Go
// module proxy next to the natkeep test binary (it never enters go.mod, and
// TestMain removes that directory).
var pionBuild struct {
	once sync.Once
	path string
	err  error
}

func pionSTUNClient(t *testing.T) (string, error) {
	dir := filepath.Dir(natlab.NatkeepBinary(t))
	pionBuild.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, "go", "install", "github.com/pion/stun/v3/cmd/stun-client@v3.1.7")
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
		if out, err := cmd.CombinedOutput(); err != nil {
			pionBuild.err = fmt.Errorf("go install pion stun-client: %v\n%s", err, out)
			return
		}
		pionBuild.path = filepath.Join(dir, "stun-client")
	})
	return pionBuild.path, pionBuild.err
}

// stunClientLab is a NAT lab with natkeep responder routes in the server
// namespace, in front of a recording server: port 9000 answers standard
// requests, port 9002 only fingerprinted ones (stun_strict).
type stunClientLab struct {
	l      *natlab.Lab
	server *nktest.UDP
	resp   *natlab.Proc
}

func newSTUNClientLab(t *testing.T) *stunClientLab {
	l := natlab.New(t, natlab.Config{UDPTimeout: 10 * time.Second, UDPStreamTimeout: 10 * time.Second})
	server := nktest.NewUDP(t, l.ListenUDP(t, l.Server, "127.0.0.1:9001"))
	routes := fmt.Sprintf("udp://%s/127.0.0.1:9001?role=responder,udp://%s/127.0.0.1:9001?role=responder&stun_strict=true",
		netip.AddrPortFrom(l.ServerAddr, 9000), netip.AddrPortFrom(l.ServerAddr, 9002))
	resp := l.StartProcess(t, l.Server, []string{"NATKEEP_LOG_FORMAT=json", "NATKEEP_ADMIN_ADDR=off", "NATKEEP_DRAIN_TIMEOUT=1s", "NATKEEP_ROUTES=" + routes}, natlab.NatkeepBinary(t))
	if !resp.WaitFor(20*time.Second, `"msg":"natkeep started"`) {
		t.Fatalf("responder did not start:\n%s", resp.Output())
	}
	return &stunClientLab{l: l, server: server, resp: resp}
}

// mappedPorts returns the public ports the router's conntrack table holds
// for UDP flows to the responder's port.
func (s *stunClientLab) mappedPorts(t *testing.T, port int) map[uint16]bool {
	t.Helper()
	out := s.l.Run(t, s.l.Router, "conntrack", "-L", "-p", "udp", "--orig-port-dst", strconv.Itoa(port))
	re := regexp.MustCompile(`src=` + regexp.QuoteMeta(s.l.ServerAddr.String()) + ` dst=` + regexp.QuoteMeta(s.l.RouterOuter.String()) + ` sport=` + strconv.Itoa(port) + ` dport=(\d+)`)
	ports := map[uint16]bool{}
	for _, m := range re.FindAllStringSubmatch(out, -1) {
		p, _ := strconv.ParseUint(m[1], 10, 16)
		ports[uint16(p)] = true
	}
	return ports
}

// checkMapped asserts a client's printed mapped address is the router's
// public address with a port conntrack really mapped.
func (s *stunClientLab) checkMapped(t *testing.T, who string, mapped netip.AddrPort, port int) {
	t.Helper()
	if mapped.Addr() != s.l.RouterOuter {
		t.Fatalf("%s got mapped address %v, want the router's public address %v", who, mapped, s.l.RouterOuter)
	}
	if ports := s.mappedPorts(t, port); !ports[mapped.Port()] {
		t.Fatalf("%s got mapped port %d; the router mapped %v", who, mapped.Port(), ports)
	}
}

var reflexiveRE = regexp.MustCompile(`reflexive addr: (\S+)`)

func TestSTUNClientsGetMappedAddress(t *testing.T) {
	if _, err := exec.LookPath("turnutils_stunclient"); err != nil {
		natlab.Skip(t, "coturn's turnutils_stunclient is not installed (apt-get install coturn); .ci/run installs it")
	}
	pion, err := pionSTUNClient(t)
	if err != nil {
		natlab.Skip(t, "cannot build pion's stun-client from the Go module proxy: %v", err)
	}
	s := newSTUNClientLab(t)
	l := s.l

	t.Run("coturn turnutils_stunclient", func(t *testing.T) {
		out := l.Run(t, l.Client, "turnutils_stunclient", "-p", "9000", l.ServerAddr.String())
		m := reflexiveRE.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("no reflexive address in turnutils_stunclient output:\n%s", out)
		}
		mapped, err := netip.ParseAddrPort(m[1])
		if err != nil {
			t.Fatalf("turnutils_stunclient printed %q: %v", m[1], err)
		}
		s.checkMapped(t, "turnutils_stunclient", mapped, 9000)
		t.Logf("turnutils_stunclient: reflexive address %v", mapped)
	})
	t.Run("pion stun-client", func(t *testing.T) {
		out := l.Run(t, l.Client, pion, "stun:"+netip.AddrPortFrom(l.ServerAddr, 9000).String())
		fields := strings.Fields(strings.TrimSpace(out))
		if len(fields) == 0 {
			t.Fatal("pion stun-client printed nothing")
		}
		mapped, err := netip.ParseAddrPort(fields[len(fields)-1])
		if err != nil {
			t.Fatalf("pion stun-client printed %q: %v", out, err)
		}
		s.checkMapped(t, "pion stun-client", mapped, 9000)
		t.Logf("pion stun-client: mapped address %v", mapped)
	})
	if n := len(s.server.All()); n != 0 {
		t.Fatalf("the server behind the responder got %d datagrams; answered requests must not pass", n)
	}

	t.Run("RFC 3489 request passes as data", func(t *testing.T) {
		c := l.DialUDP(t, l.Client, netip.AddrPortFrom(l.ServerAddr, 9000).String())
		defer c.Close()
		// Type Binding Request, length 0, then a 128-bit transaction ID
		// where RFC 5389 has the magic cookie.
		req := []byte{0, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
		if _, err := c.Write(req); err != nil {
			t.Fatal(err)
		}
		if _, ok := s.server.WaitData(10*time.Second, string(req)); !ok {
			t.Fatal("an RFC 3489 request did not reach the server as data")
		}
	})
	t.Run("stun_strict answers only fingerprinted requests", func(t *testing.T) {
		before := len(s.server.All())
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		out, _ := natlab.Exec(ctx, l.Client, "turnutils_stunclient", "-p", "9002", l.ServerAddr.String())
		if reflexiveRE.MatchString(out) {
			t.Fatalf("stun_strict answered a request without FINGERPRINT:\n%s", out)
		}
		if !nktest.Eventually(5*time.Second, 20*time.Millisecond, func() bool { return len(s.server.All()) != before }) {
			t.Fatal("the unanswered request did not pass to the server as data")
		}
		// A fingerprinted request (natkeep's own heartbeat) is answered.
		c := l.DialUDP(t, l.Client, netip.AddrPortFrom(l.ServerAddr, 9002).String())
		defer c.Close()
		if _, err := c.Write(keepalive.AppendBindingRequest(nil, keepalive.NewTxID())); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 1500)
		_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := c.Read(buf)
		if err != nil || n < 20 || buf[0] != 0x01 || buf[1] != 0x01 {
			t.Fatalf("stun_strict did not answer a fingerprinted request: %d bytes, %v", n, err)
		}
	})
}
