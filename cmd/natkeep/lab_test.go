//go:build linux

package main

// NAT lab: reusable end-to-end test fixture that runs real sockets and the
// real natkeep binary inside Linux network namespaces behind a real
// MASQUERADE router.
//
//	client ns (app + natkeep)  --veth--  router ns (MASQUERADE)  --veth--  server ns
//	ClientAddr   RouterInner                RouterOuter   ServerAddr
//
// The server has no route back to the client subnet (only its own link), so
// a reply can only reach the client through the router's conntrack/NAT
// mapping. The router's conntrack timeouts are configurable per lab.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// labNSPrefix is the prefix of every namespace this test binary creates;
// TestMain checks that none survive.
var labNSPrefix = fmt.Sprintf("nk-%d-", os.Getpid())

var labCounter atomic.Int64

// labCmdTimeout bounds every helper command run by (*natLab).run / tryRun.
const labCmdTimeout = 30 * time.Second

// TestMain runs the tests, removes the natkeep build directory and verifies
// that no lab namespace leaked.
func TestMain(m *testing.M) {
	code := m.Run()

	labBuild.mu.Lock()
	if labBuild.dir != "" {
		os.RemoveAll(labBuild.dir)
	}
	labBuild.mu.Unlock()

	if leaked := labLeakedNamespaces(); len(leaked) > 0 {
		fmt.Fprintf(os.Stderr, "NAT lab: namespaces leaked by this test run: %v (deleting them now)\n", leaked)
		for _, ns := range leaked {
			labExec(context.Background(), "", "ip", "netns", "del", ns)
		}
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// labLeakedNamespaces lists namespaces with this process's prefix.
func labLeakedNamespaces() []string {
	if os.Geteuid() != 0 {
		return nil
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil
	}
	out, err := labExec(context.Background(), "", "ip", "netns", "list")
	if err != nil {
		return nil
	}
	var leaked []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], labNSPrefix) {
			leaked = append(leaked, f[0])
		}
	}
	return leaked
}

// ---------------------------------------------------------------------------
// natkeep binary

var labBuild struct {
	once sync.Once
	mu   sync.Mutex
	dir  string
	path string
	err  error
}

// natkeepBinary builds the package under test (cmd/natkeep, the test's
// working directory) once per test binary run and returns the binary's path.
// The build uses -race only when NATKEEP_E2E_RACE=1.
func natkeepBinary(t *testing.T) string {
	t.Helper()
	labBuild.once.Do(func() {
		dir, err := os.MkdirTemp("", "natkeep-e2e-")
		if err != nil {
			labBuild.err = err
			return
		}
		labBuild.mu.Lock()
		labBuild.dir = dir
		labBuild.mu.Unlock()

		goTool, err := exec.LookPath("go")
		if err != nil {
			if root := os.Getenv("GOROOT"); root != "" {
				goTool = filepath.Join(root, "bin", "go")
			} else {
				labBuild.err = fmt.Errorf("go tool not found: %w", err)
				return
			}
		}
		path := filepath.Join(dir, "natkeep")
		args := []string{"build"}
		if os.Getenv("NATKEEP_E2E_RACE") == "1" {
			args = append(args, "-race")
		}
		args = append(args, "-o", path, ".")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, goTool, args...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			labBuild.err = fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
		labBuild.path = path
	})
	if labBuild.err != nil {
		t.Fatalf("building natkeep: %v", labBuild.err)
	}
	return labBuild.path
}

// ---------------------------------------------------------------------------
// lab

// labConfig chooses the router's conntrack timeouts.
type labConfig struct {
	// UDPTimeout and UDPStreamTimeout are nf_conntrack_udp_timeout and
	// nf_conntrack_udp_timeout_stream, set in the router namespace; whole
	// seconds; each defaults to 3s. Note that the kernel switches a UDP flow
	// that has seen a reply to the *stream* timeout once the flow is older
	// than 2s, so tests that want a short idle timeout must set both.
	UDPTimeout, UDPStreamTimeout time.Duration
	// TCPEstablishedTimeout is nf_conntrack_tcp_timeout_established
	// (default 5s).
	TCPEstablishedTimeout time.Duration
	// TCPLoose is nf_conntrack_tcp_loose (default false → 0: a mid-stream
	// packet of an unknown connection does not create a new conntrack entry,
	// so it is not de-NATed).
	TCPLoose bool
	// IPv6 also configures IPv6 addresses (fd00::/8) and ip6tables
	// MASQUERADE.
	IPv6 bool
}

// natLab is three namespaces: client (app + natkeep) -- router (MASQUERADE
// out its server-side interface) -- server. The server has NO route back to
// the client subnet (only to the router's outer address on its link), so a
// reply only arrives through the NAT mapping.
type natLab struct {
	Client, Router, Server string // namespace names

	// IPv4: client subnet 10.A.B.0/24, server subnet 10.A.B+1.0/24.
	ClientAddr, RouterInner, RouterOuter, ServerAddr netip.Addr
	// IPv6 equivalents (valid only when cfg.IPv6): fd00:A:B:1::/64 (client
	// side) and fd00:A:B:2::/64 (server side).
	ClientAddr6, RouterInner6, RouterOuter6, ServerAddr6 netip.Addr

	// Interface names (each lives inside its namespace).
	ClientIf, RouterInnerIf, RouterOuterIf, ServerIf string

	cfg labConfig
}

// labUsedSubnets avoids handing the same address pair to two labs of this
// process (they would not clash, being in separate namespaces, but distinct
// addresses make logs unambiguous).
var labUsedSubnets sync.Map

func labSkipUnlessCapable(t *testing.T, ipv6 bool) {
	t.Helper()
	if runtime.GOOS != "linux" {
		t.Skip("NAT lab needs root and ip/iptables/conntrack: not Linux")
	}
	if os.Geteuid() != 0 {
		t.Skip("NAT lab needs root and ip/iptables/conntrack: not running as root")
	}
	tools := []string{"ip", "iptables", "conntrack", "sysctl"}
	if ipv6 {
		tools = append(tools, "ip6tables")
	}
	var missing []string
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		t.Skipf("NAT lab needs root and ip/iptables/conntrack: missing %s (apt-get install -y iproute2 iptables conntrack)", strings.Join(missing, ", "))
	}
}

// newNATLab builds a fresh client/router/server topology. Everything it
// creates is removed by t.Cleanup, also on failure.
func newNATLab(t *testing.T, cfg labConfig) *natLab {
	t.Helper()
	labSkipUnlessCapable(t, cfg.IPv6)

	if cfg.UDPTimeout == 0 {
		cfg.UDPTimeout = 3 * time.Second
	}
	if cfg.UDPStreamTimeout == 0 {
		cfg.UDPStreamTimeout = 3 * time.Second
	}
	if cfg.TCPEstablishedTimeout == 0 {
		cfg.TCPEstablishedTimeout = 5 * time.Second
	}
	for _, d := range []time.Duration{cfg.UDPTimeout, cfg.UDPStreamTimeout, cfg.TCPEstablishedTimeout} {
		if d < time.Second || d%time.Second != 0 {
			t.Fatalf("labConfig: conntrack timeouts must be whole seconds ≥1s, got %v", d)
		}
	}

	id := labCounter.Add(1)
	l := &natLab{
		Client:        fmt.Sprintf("%s%d-client", labNSPrefix, id),
		Router:        fmt.Sprintf("%s%d-router", labNSPrefix, id),
		Server:        fmt.Sprintf("%s%d-server", labNSPrefix, id),
		ClientIf:      "eth0",
		RouterInnerIf: "in0",
		RouterOuterIf: "out0",
		ServerIf:      "eth0",
		cfg:           cfg,
	}

	// Random /24 pair 10.A.B.0/24 + 10.A.B+1.0/24, unique within this process.
	var a, b int
	for {
		a, b = 64+rand.IntN(190), 2*rand.IntN(127)
		if _, dup := labUsedSubnets.LoadOrStore([2]int{a, b}, true); !dup {
			break
		}
	}
	t.Cleanup(func() { labUsedSubnets.Delete([2]int{a, b}) })
	v4 := func(c, d int) netip.Addr { return netip.AddrFrom4([4]byte{10, byte(a), byte(c), byte(d)}) }
	l.ClientAddr, l.RouterInner = v4(b, 2), v4(b, 1)
	l.RouterOuter, l.ServerAddr = v4(b+1, 1), v4(b+1, 2)
	v6 := func(sub, host int) netip.Addr {
		return netip.MustParseAddr(fmt.Sprintf("fd00:%x:%x:%x::%x", a, b, sub, host))
	}
	l.ClientAddr6, l.RouterInner6 = v6(1, 2), v6(1, 1)
	l.RouterOuter6, l.ServerAddr6 = v6(2, 1), v6(2, 2)

	for _, ns := range []string{l.Client, l.Router, l.Server} {
		l.run(t, "", "ip", "netns", "add", ns)
		t.Cleanup(func() {
			if out, err := l.tryRun("", "ip", "netns", "del", ns); err != nil {
				t.Errorf("NAT lab cleanup: ip netns del %s: %v\n%s", ns, err, out)
			}
		})
		l.run(t, ns, "ip", "link", "set", "lo", "up")
	}

	// Links, created directly inside the namespaces (no names in the host ns).
	l.run(t, "", "ip", "-n", l.Client, "link", "add", l.ClientIf, "type", "veth", "peer", "name", l.RouterInnerIf, "netns", l.Router)
	l.run(t, "", "ip", "-n", l.Server, "link", "add", l.ServerIf, "type", "veth", "peer", "name", l.RouterOuterIf, "netns", l.Router)

	addr := func(ns, ifname string, a netip.Addr, bits int) {
		if a.Is4() {
			l.run(t, ns, "ip", "addr", "add", netip.PrefixFrom(a, bits).String(), "dev", ifname)
		} else {
			l.run(t, ns, "ip", "-6", "addr", "add", netip.PrefixFrom(a, bits).String(), "dev", ifname, "nodad")
		}
	}
	addr(l.Client, l.ClientIf, l.ClientAddr, 24)
	addr(l.Router, l.RouterInnerIf, l.RouterInner, 24)
	addr(l.Router, l.RouterOuterIf, l.RouterOuter, 24)
	addr(l.Server, l.ServerIf, l.ServerAddr, 24)
	if cfg.IPv6 {
		addr(l.Client, l.ClientIf, l.ClientAddr6, 64)
		addr(l.Router, l.RouterInnerIf, l.RouterInner6, 64)
		addr(l.Router, l.RouterOuterIf, l.RouterOuter6, 64)
		addr(l.Server, l.ServerIf, l.ServerAddr6, 64)
	}
	l.run(t, l.Client, "ip", "link", "set", l.ClientIf, "up")
	l.run(t, l.Router, "ip", "link", "set", l.RouterInnerIf, "up")
	l.run(t, l.Router, "ip", "link", "set", l.RouterOuterIf, "up")
	l.run(t, l.Server, "ip", "link", "set", l.ServerIf, "up")

	// Routing: client default via the router; the server only knows its own
	// link (connected route), no default route.
	l.run(t, l.Client, "ip", "route", "add", "default", "via", l.RouterInner.String())
	if cfg.IPv6 {
		l.run(t, l.Client, "ip", "-6", "route", "add", "default", "via", l.RouterInner6.String())
	}

	// Router: forwarding, MASQUERADE first (so conntrack is active in this
	// netns), then the conntrack sysctls.
	l.run(t, l.Router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	l.run(t, l.Router, "iptables", "-w", "5", "-t", "nat", "-A", "POSTROUTING", "-o", l.RouterOuterIf, "-j", "MASQUERADE")
	if cfg.IPv6 {
		l.run(t, l.Router, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
		l.run(t, l.Router, "ip6tables", "-w", "5", "-t", "nat", "-A", "POSTROUTING", "-o", l.RouterOuterIf, "-j", "MASQUERADE")
	}
	loose := "0"
	if cfg.TCPLoose {
		loose = "1"
	}
	sysctls := [][2]string{
		{"net.netfilter.nf_conntrack_udp_timeout", secs(cfg.UDPTimeout)},
		{"net.netfilter.nf_conntrack_udp_timeout_stream", secs(cfg.UDPStreamTimeout)},
		{"net.netfilter.nf_conntrack_tcp_timeout_established", secs(cfg.TCPEstablishedTimeout)},
		{"net.netfilter.nf_conntrack_tcp_loose", loose},
	}
	for _, kv := range sysctls {
		l.run(t, l.Router, "sysctl", "-q", "-w", kv[0]+"="+kv[1])
	}
	for _, kv := range sysctls {
		got := strings.TrimSpace(l.run(t, l.Router, "sysctl", "-n", kv[0]))
		if got != kv[1] {
			t.Fatalf("NAT lab: %s in router ns reads back %q, want %q", kv[0], got, kv[1])
		}
	}
	// Sanity: the server cannot reach the client subnet at all (no route).
	if out, err := l.tryRun(l.Server, "ip", "route", "get", l.ClientAddr.String()); err == nil {
		t.Fatalf("NAT lab: server unexpectedly has a route to the client subnet:\n%s", out)
	}
	return l
}

func secs(d time.Duration) string { return strconv.Itoa(int(d / time.Second)) }

// labExec runs name args inside ns ("" = the test's own namespace), bounded
// by ctx, and returns the combined output.
func labExec(ctx context.Context, ns string, args ...string) (string, error) {
	if len(args) == 0 {
		return "", errors.New("labExec: no command")
	}
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		err = fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return string(out), err
}

// run runs a command inside namespace ns (ip netns exec; ns "" = the test's
// own namespace), bounded by 30s, and returns the combined output. It calls
// t.Fatal on error; use tryRun to handle errors yourself.
func (l *natLab) run(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out, err := l.tryRun(ns, args...)
	if err != nil {
		where := ns
		if where == "" {
			where = "host"
		}
		t.Fatalf("NAT lab [%s] %s: %v\n%s", where, strings.Join(args, " "), err, out)
	}
	return out
}

// tryRun is run without t.Fatal.
func (l *natLab) tryRun(ns string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), labCmdTimeout)
	defer cancel()
	return labExec(ctx, ns, args...)
}

// ---------------------------------------------------------------------------
// sockets created inside a namespace

// inNetns runs fn on a locked OS thread switched into namespace ns. Sockets
// created by fn keep that namespace for their whole life, so they work from
// any goroutine afterwards.
func inNetns(ns string, fn func() error) error {
	runtime.LockOSThread()
	orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open current netns: %w", err)
	}
	defer unix.Close(orig)
	target, err := unix.Open(filepath.Join("/run/netns", ns), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", ns, err)
	}
	defer unix.Close(target)
	if err := unix.Setns(target, unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("setns %s: %w", ns, err)
	}
	restored := false
	defer func() {
		if restored {
			runtime.UnlockOSThread()
		}
		// Otherwise leave the thread locked: the runtime terminates it when
		// this goroutine exits, so no other goroutine inherits the wrong netns.
	}()
	ferr := fn()
	if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("setns back from %s: %w", ns, err))
	}
	restored = true
	return ferr
}

// listenUDP opens a UDP socket bound to addr inside namespace ns.
func (l *natLab) listenUDP(t *testing.T, ns string, addr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := inNetns(ns, func() error {
		ua, err := net.ResolveUDPAddr("udp", addr)
		if err != nil {
			return err
		}
		c, err = net.ListenUDP("udp", ua)
		return err
	})
	if err != nil {
		t.Fatalf("NAT lab: listenUDP %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// dialUDP opens a connected UDP socket to raddr inside namespace ns.
func (l *natLab) dialUDP(t *testing.T, ns string, raddr string) *net.UDPConn {
	t.Helper()
	var c *net.UDPConn
	err := inNetns(ns, func() error {
		ua, err := net.ResolveUDPAddr("udp", raddr)
		if err != nil {
			return err
		}
		c, err = net.DialUDP("udp", nil, ua)
		return err
	})
	if err != nil {
		t.Fatalf("NAT lab: dialUDP %s in %s: %v", raddr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// listenTCP opens a TCP listener on addr inside namespace ns. Go's default
// TCP keepalive is disabled on accepted connections so that the lab's own
// sockets never keep a mapping alive by themselves; call SetKeepAlive(true)
// on a connection if a test wants it.
func (l *natLab) listenTCP(t *testing.T, ns string, addr string) *net.TCPListener {
	t.Helper()
	var ln *net.TCPListener
	err := inNetns(ns, func() error {
		lc := net.ListenConfig{KeepAlive: -1}
		x, err := lc.Listen(context.Background(), "tcp", addr)
		if err != nil {
			return err
		}
		ln = x.(*net.TCPListener)
		return nil
	})
	if err != nil {
		t.Fatalf("NAT lab: listenTCP %s in %s: %v", addr, ns, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// dialTCP connects to raddr from inside namespace ns (5s connect timeout).
// Go's default TCP keepalive is disabled (see listenTCP).
func (l *natLab) dialTCP(t *testing.T, ns string, raddr string) *net.TCPConn {
	t.Helper()
	var c *net.TCPConn
	err := inNetns(ns, func() error {
		d := net.Dialer{Timeout: 5 * time.Second, KeepAlive: -1}
		x, err := d.Dial("tcp", raddr)
		if err != nil {
			return err
		}
		c = x.(*net.TCPConn)
		return nil
	})
	if err != nil {
		t.Fatalf("NAT lab: dialTCP %s in %s: %v", raddr, ns, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ---------------------------------------------------------------------------
// processes

// labBuffer is a bytes.Buffer safe for concurrent Write and String.
type labBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *labBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *labBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// errLabWaitTimeout is returned by (*labProc).Wait when the process is still
// running at the deadline.
var errLabWaitTimeout = errors.New("process still running after timeout")

// labProc is a process started by (*natLab).startProcess.
type labProc struct {
	Name string
	cmd  *exec.Cmd
	out  *labBuffer
	done chan struct{} // closed when the process has been reaped
	err  error         // Wait result; valid after done is closed
}

// startProcess starts name args inside ns (ip netns exec NS name args...) in
// its own process group, with env appended to the test's environment and
// stdout+stderr captured. On t.Cleanup the process group gets SIGTERM, then
// SIGKILL if it has not exited within 10s.
func (l *natLab) startProcess(t *testing.T, ns string, env []string, name string, args ...string) *labProc {
	t.Helper()
	argv := append([]string{"netns", "exec", ns, name}, args...)
	cmd := exec.Command("ip", argv...)
	cmd.Env = append(os.Environ(), env...)
	out := &labBuffer{}
	cmd.Stdout = out
	cmd.Stderr = out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("NAT lab: start %s in %s: %v", name, ns, err)
	}
	p := &labProc{Name: filepath.Base(name), cmd: cmd, out: out, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("NAT lab: output of %s (pid %d) in %s:\n%s", p.Name, p.Pid(), ns, p.Output())
		}
	})
	return p
}

// stop terminates the process group: SIGTERM, up to 10s grace, SIGKILL.
func (p *labProc) stop(t *testing.T) {
	pgid := p.cmd.Process.Pid
	select {
	case <-p.done:
		// The leader is gone, but members of its group may remain.
		syscall.Kill(-pgid, syscall.SIGKILL)
		return
	default:
	}
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
		syscall.Kill(-pgid, syscall.SIGKILL)
		return
	case <-time.After(10 * time.Second):
	}
	t.Logf("NAT lab: %s (pid %d) ignored SIGTERM for 10s; sending SIGKILL", p.Name, pgid)
	syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("NAT lab: %s (pid %d) not reaped 10s after SIGKILL", p.Name, pgid)
	}
}

// Pid returns the process id (also its process group id).
func (p *labProc) Pid() int { return p.cmd.Process.Pid }

// Wait waits up to timeout for the process to exit and returns its exit
// error (nil on exit status 0), or errLabWaitTimeout.
func (p *labProc) Wait(timeout time.Duration) error {
	if p.Exited() {
		return p.err
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.err
	case <-timer.C:
		return errLabWaitTimeout
	}
}

// Exited reports whether the process has exited and been reaped.
func (p *labProc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode returns the exit code, or -1 if still running or killed by a
// signal.
func (p *labProc) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Signal sends sig to the process (not its group).
func (p *labProc) Signal(sig os.Signal) error {
	if p.Exited() {
		return os.ErrProcessDone
	}
	return p.cmd.Process.Signal(sig)
}

// Output returns everything written to stdout and stderr so far.
func (p *labProc) Output() string { return p.out.String() }

// String is Output.
func (p *labProc) String() string { return p.out.String() }

// lines returns the complete output lines so far.
func (p *labProc) lines() []string {
	s := p.Output()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		return nil
	}
	return strings.Split(s, "\n")
}

// count returns how many complete output lines contain every one of subs.
func (p *labProc) count(subs ...string) int {
	n := 0
	for _, line := range p.lines() {
		if labContainsAll(line, subs) {
			n++
		}
	}
	return n
}

// grep returns the complete output lines containing every one of subs.
func (p *labProc) grep(subs ...string) []string {
	var r []string
	for _, line := range p.lines() {
		if labContainsAll(line, subs) {
			r = append(r, line)
		}
	}
	return r
}

// waitFor polls until some output line contains every one of subs, or
// timeout; it reports whether one did.
func (p *labProc) waitFor(timeout time.Duration, subs ...string) bool {
	deadline := time.Now().Add(timeout)
	for {
		if p.count(subs...) > 0 {
			return true
		}
		if time.Now().After(deadline) || p.Exited() {
			return p.count(subs...) > 0
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func labContainsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// ---------------------------------------------------------------------------
// conntrack

// conntrackEvents starts `conntrack -E -p PROTO -o timestamp` in the router
// namespace and returns once it demonstrably receives events (a loopback
// probe flow inside the router ns shows up). Use count / grep / waitFor with
// labTuple and "[DESTROY]" / "[NEW]" / "[UPDATE]".
//
// Event lines look like:
//
//	[1795522839.684204]	    [NEW] udp      17 30 src=10.1.1.2 dst=10.1.2.2 sport=5 dport=6 [UNREPLIED] src=10.1.2.2 dst=10.1.2.1 sport=6 dport=5
func (l *natLab) conntrackEvents(t *testing.T, proto string) *labProc {
	t.Helper()
	if proto != "udp" && proto != "tcp" {
		t.Fatalf("conntrackEvents: unsupported proto %q", proto)
	}
	args := []string{"-E", "-p", proto, "-o", "timestamp"}
	p := l.startProcess(t, l.Router, nil, "conntrack", args...)

	// Readiness handshake: create loopback flows in the router ns until one
	// is reported. Conntrack with nf_conntrack_events=2 only attaches event
	// state to connections created while a listener exists, so flows that
	// start before the listener is ready would be silently missing.
	deadline := time.Now().Add(10 * time.Second)
	for i := 0; ; i++ {
		var sport, dport int
		switch proto {
		case "udp":
			c := l.dialUDP(t, l.Router, "127.0.0.1:9")
			sport = c.LocalAddr().(*net.UDPAddr).Port
			dport = 9
			c.Write([]byte("natlab-probe"))
			c.Close()
		case "tcp":
			// A connect to a closed port: SYN (NEW) then RST (DESTROY).
			ln := l.listenTCP(t, l.Router, "127.0.0.1:0")
			dport = ln.Addr().(*net.TCPAddr).Port
			ln.Close()
			var c net.Conn
			inNetns(l.Router, func() error {
				var err error
				c, err = net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", dport), time.Second)
				return err
			})
			if c != nil {
				c.Close()
			}
			sport = -1
		}
		want := []string{"dport=" + strconv.Itoa(dport)}
		if sport >= 0 {
			want = append(want, "sport="+strconv.Itoa(sport))
		}
		if p.waitFor(300*time.Millisecond, want...) {
			// Drop the probe entries so they do not clutter conntrackList.
			l.tryRun(l.Router, "conntrack", "-D", "-p", proto, "--orig-src", "127.0.0.1", "--orig-dst", "127.0.0.1")
			return p
		}
		if p.Exited() {
			t.Fatalf("NAT lab: conntrack -E exited early: %v\n%s", p.err, p.Output())
		}
		if time.Now().After(deadline) {
			t.Fatalf("NAT lab: conntrack -E reported no probe event within 10s:\n%s", p.Output())
		}
	}
}

// labTuple formats the original-direction tuple as conntrack prints it,
// e.g. "src=10.1.1.2 dst=10.1.2.2 sport=40000 dport=5000".
func labTuple(src, dst netip.AddrPort) string {
	return fmt.Sprintf("src=%s dst=%s sport=%d dport=%d", src.Addr(), dst.Addr(), src.Port(), dst.Port())
}

// conntrackList returns `conntrack -L -p PROTO` output from the router ns
// (IPv4, plus IPv6 when the lab has IPv6).
func (l *natLab) conntrackList(t *testing.T, proto string) string {
	t.Helper()
	out := l.run(t, l.Router, "conntrack", "-L", "-p", proto)
	if l.cfg.IPv6 {
		out += l.run(t, l.Router, "conntrack", "-L", "-f", "ipv6", "-p", proto)
	}
	return out
}

// blockServer inserts `iptables -I FORWARD -s <server> -j DROP` (and the
// ip6tables equivalent for IPv6 labs) in the router, simulating a
// blackholed server. The returned func removes the rule(s); it is
// idempotent.
func (l *natLab) blockServer(t *testing.T) (unblock func()) {
	t.Helper()
	l.run(t, l.Router, "iptables", "-w", "5", "-I", "FORWARD", "-s", l.ServerAddr.String(), "-j", "DROP")
	if l.cfg.IPv6 {
		l.run(t, l.Router, "ip6tables", "-w", "5", "-I", "FORWARD", "-s", l.ServerAddr6.String(), "-j", "DROP")
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			if out, err := l.tryRun(l.Router, "iptables", "-w", "5", "-D", "FORWARD", "-s", l.ServerAddr.String(), "-j", "DROP"); err != nil {
				t.Errorf("NAT lab: unblock server: %v\n%s", err, out)
			}
			if l.cfg.IPv6 {
				if out, err := l.tryRun(l.Router, "ip6tables", "-w", "5", "-D", "FORWARD", "-s", l.ServerAddr6.String(), "-j", "DROP"); err != nil {
					t.Errorf("NAT lab: unblock server (v6): %v\n%s", err, out)
				}
			}
		})
	}
}
