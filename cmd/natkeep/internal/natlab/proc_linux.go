package natlab

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// buffer is a bytes.Buffer safe for concurrent Write and String.
type buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ErrWaitTimeout is what Proc.Wait returns when the process is still
// running at the deadline.
var ErrWaitTimeout = errors.New("process still running after timeout")

// Proc is a process started by StartProcess or Start, with its output
// captured.
type Proc struct {
	Name string // the program's base name, for messages
	cmd  *exec.Cmd
	out  *buffer
	done chan struct{} // closed when the process has been reaped
	err  error         // Wait result; valid after done is closed
}

// StartProcess starts name args inside ns (ip netns exec NS name args...)
// in its own process group, with env appended to the test's environment
// and stdout+stderr captured. On t.Cleanup the process group gets SIGTERM,
// then SIGKILL if it has not exited within 10s.
func (l *Lab) StartProcess(t testing.TB, ns string, env []string, name string, args ...string) *Proc {
	t.Helper()
	p := start(t, env, filepath.Base(name), "ip", append([]string{"netns", "exec", ns, name}, args...)...)
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("NAT lab: output of %s (pid %d) in %s:\n%s", p.Name, p.Pid(), ns, p.Output())
		}
	})
	return p
}

// Start starts bin args in the test's own namespace, in its own process
// group, with env appended to the test's environment; cleanup ends that
// group only, as for StartProcess.
func Start(t testing.TB, env []string, bin string, args ...string) *Proc {
	t.Helper()
	p := start(t, env, filepath.Base(bin), bin, args...)
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s output:\n%s", p.Name, p.Output())
		}
	})
	return p
}

// start runs bin args in a process group of its own and reaps it in the
// background.
func start(t testing.TB, env []string, name, bin string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(inherited(), env...)
	out := &buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 2 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatalf("NAT lab: start %s: %v", strings.Join(cmd.Args, " "), err)
	}
	p := &Proc{Name: name, cmd: cmd, out: out, done: make(chan struct{})}
	remember(p)
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p
}

// stop terminates the process group: SIGTERM, up to 10s grace, SIGKILL.
func (p *Proc) stop(t testing.TB) {
	pgid := p.cmd.Process.Pid
	select {
	case <-p.done:
		// The leader is gone, but members of its group may remain.
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return
	default:
	}
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		return
	case <-time.After(10 * time.Second):
	}
	t.Logf("NAT lab: %s (pid %d) ignored SIGTERM for 10s; sending SIGKILL", p.Name, pgid)
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("NAT lab: %s (pid %d) not reaped 10s after SIGKILL", p.Name, pgid)
	}
}

// Pid returns the process id (also its process group id).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Wait waits up to timeout for the process to exit and returns its exit
// error (nil on exit status 0), or ErrWaitTimeout.
func (p *Proc) Wait(timeout time.Duration) error {
	if p.Exited() {
		return p.err
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return p.err
	case <-timer.C:
		return ErrWaitTimeout
	}
}

// Exited reports whether the process has exited and been reaped.
func (p *Proc) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// ExitCode returns the exit code, or -1 if still running or killed by a
// signal.
func (p *Proc) ExitCode() int {
	if !p.Exited() {
		return -1
	}
	return p.cmd.ProcessState.ExitCode()
}

// Signal sends sig to the process (not its group).
func (p *Proc) Signal(sig os.Signal) error {
	if p.Exited() {
		return os.ErrProcessDone
	}
	return p.cmd.Process.Signal(sig)
}

// Output returns everything written to stdout and stderr so far.
func (p *Proc) Output() string { return p.out.String() }

// String is Output.
func (p *Proc) String() string { return p.out.String() }

// lines returns the complete output lines so far.
func (p *Proc) lines() []string {
	s := p.Output()
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	} else {
		return nil
	}
	return strings.Split(s, "\n")
}

// Count returns how many complete output lines contain every one of subs.
func (p *Proc) Count(subs ...string) int {
	n := 0
	for _, line := range p.lines() {
		if containsAll(line, subs) {
			n++
		}
	}
	return n
}

// Grep returns the complete output lines containing every one of subs.
func (p *Proc) Grep(subs ...string) []string {
	var r []string
	for _, line := range p.lines() {
		if containsAll(line, subs) {
			r = append(r, line)
		}
	}
	return r
}

// WaitFor polls until some output line contains every one of subs, or
// timeout, or the process exits; it reports whether one did.
func (p *Proc) WaitFor(timeout time.Duration, subs ...string) bool {
	return p.WaitCount(1, timeout, subs...)
}

// WaitCount polls until at least n output lines contain every one of subs,
// or timeout, or the process exits; it reports whether they did.
func (p *Proc) WaitCount(n int, timeout time.Duration, subs ...string) bool {
	deadline := time.Now().Add(timeout)
	for {
		if p.Count(subs...) >= n {
			return true
		}
		if time.Now().After(deadline) || p.Exited() {
			return p.Count(subs...) >= n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// CPUTime returns the process's user+system CPU time from /proc/PID/stat.
func (p *Proc) CPUTime(t testing.TB) time.Duration {
	t.Helper()
	pid := p.Pid()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("read /proc/%d/stat: %v", pid, err)
	}
	s := string(b)
	// Fields after "(comm)": state is field 3, utime 14, stime 15.
	i := strings.LastIndexByte(s, ')')
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("/proc/%d/stat: %q", pid, s)
	}
	const clkTck = 100 // USER_HZ on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}

// Memory returns VmRSS and VmHWM (peak RSS) in bytes from /proc/PID/status.
func (p *Proc) Memory(t testing.TB) (rss, peak int64) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.Pid()))
	if err != nil {
		t.Fatalf("read /proc/%d/status: %v", p.Pid(), err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "VmRSS:":
			rss = v << 10
		case "VmHWM:":
			peak = v << 10
		}
	}
	return rss, peak
}

// FDs counts the process's open file descriptors.
func (p *Proc) FDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", p.Pid()))
	if err != nil {
		t.Fatalf("read /proc/%d/fd: %v", p.Pid(), err)
	}
	return len(ents)
}

// UDPDrops sums the kernel's receive-drop counter of the process's UDP
// sockets bound to port (the drops column of /proc/PID/net/udp).
func (p *Proc) UDPDrops(t testing.TB, port int) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/udp", p.Pid()))
	if err != nil {
		t.Fatalf("read /proc/%d/net/udp: %v", p.Pid(), err)
	}
	want := fmt.Sprintf(":%04X", port)
	var drops int64
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) < 13 || !strings.HasSuffix(f[1], want) {
			continue
		}
		d, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
		drops += d
	}
	return drops
}

// inherited is the test's environment without natkeep's own variables:
// a process gets exactly the NATKEEP_ settings its test gives it (natkeep
// refuses variables it does not know, such as the tests' own knobs).
func inherited() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NATKEEP_") {
			env = append(env, kv)
		}
	}
	return env
}
