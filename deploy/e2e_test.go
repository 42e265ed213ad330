package deploy

// Helpers of the end-to-end tests, which run the real natkeep binary (and
// image) against real Docker and Prometheus: building natkeep, finding the
// external tools, free loopback ports, bounded waits.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// requireE2E, set by .ci/run, turns a missing external tool (Docker engine,
// docker-compose, promtool, prometheus) from a skip into a failure, so that
// CI cannot pass without running these tests.
const requireE2E = "DEPLOY_REQUIRE_E2E"

// repoRoot is natkeep's module, the build context of its image.
const repoRoot = ".."

// natkeepOut is where the image's runtime-local target expects the binary.
var natkeepOut = filepath.Join(repoRoot, "out", "natkeep")

func TestMain(m *testing.M) {
	_, err := os.Stat(natkeepOut)
	preexisting := err == nil
	code := m.Run()
	// Remove what the tests built, not a binary someone put there.
	if built.path != "" && !preexisting {
		if err := os.Remove(built.path); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
		_ = os.Remove(filepath.Dir(built.path)) // only if empty
	}
	os.Exit(code)
}

// missing skips the test, or fails it when requireE2E is set.
func missing(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(requireE2E) != "" {
		t.Fatalf("%s (%s is set: this test must run)", msg, requireE2E)
	}
	t.Skip(msg)
}

// needTool returns the absolute path of an executable, or skips.
func needTool(t *testing.T, path, pkg string) string {
	t.Helper()
	if _, err := exec.LookPath(path); err != nil {
		missing(t, "%s not found (Debian package %s): %v", path, pkg, err)
	}
	return path
}

var built struct {
	once sync.Once
	path string
	err  error
}

// natkeepBinary builds natkeep once per test run, statically and stripped as
// for the image, into ../out/natkeep (the runtime-local target's input).
func natkeepBinary(t *testing.T) string {
	t.Helper()
	built.once.Do(func() {
		start := time.Now()
		built.err = goBuild(repoRoot, natkeepOut, "./cmd/natkeep")
		if built.err == nil {
			built.path = natkeepOut
			t.Logf("built %s in %v", natkeepOut, time.Since(start).Round(time.Millisecond))
		}
	})
	if built.err != nil {
		t.Fatal(built.err)
	}
	abs, err := filepath.Abs(built.path)
	if err != nil {
		t.Fatal(err)
	}
	return abs
}

// goBuild builds a static, stripped binary of pkg in the module at dir;
// out is relative to the test's directory, not to dir.
func goBuild(dir, out, pkg string) error {
	out, err := filepath.Abs(out)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-buildvcs=false", "-trimpath", "-ldflags", "-s -w", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build -o %s %s (in %s): %v\n%s", out, pkg, dir, err, b)
	}
	return nil
}

// uniqueName names what one test run creates (images, containers,
// networks, compose projects), so that it removes exactly that.
func uniqueName() string {
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return "natkeep-test-" + hex.EncodeToString(b)
}

// freePort returns a loopback port that was free a moment ago.
func freePort(t *testing.T, network string) int {
	t.Helper()
	switch network {
	case "udp":
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	default:
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
}

// waitFor polls cond every interval until it reports done, for at most
// timeout; cond's last message explains a timeout.
func waitFor(t *testing.T, timeout, interval time.Duration, what string, cond func() (done bool, status string, err error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		done, status, err := cond()
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v (last: %s)", what, timeout, status)
		}
		time.Sleep(interval)
	}
}

// proc is a program a test started; its cleanup ends it by its PID.
type proc struct {
	name string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan struct{} // closed once the program has exited
	err  error         // cmd.Wait's result, set before done is closed
}

// syncBuffer is a bytes.Buffer that os/exec writes while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// start runs a program with the test's environment, less any NATKEEP_
// variable, plus env, and its output captured. The test's cleanup sends it
// SIGTERM, waits up to 10 s, then kills it.
func start(t *testing.T, env []string, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: filepath.Base(name), out: new(syncBuffer), done: make(chan struct{})}
	p.cmd = exec.Command(name, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NATKEEP_") {
			p.cmd.Env = append(p.cmd.Env, kv)
		}
	}
	p.cmd.Env = append(p.cmd.Env, env...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			t.Logf("%s output:\n%s", p.name, p.out.String())
		}
	})
	return p
}

// exited reports whether the program has ended, and how.
func (p *proc) exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

func (p *proc) stop(t *testing.T) {
	t.Helper()
	if done, _ := p.exited(); done {
		return
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		t.Errorf("%s: %v", p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Errorf("%s (pid %d) still runs 10s after SIGTERM; killing it", p.name, p.cmd.Process.Pid)
		if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			t.Error(err)
		}
		<-p.done
	}
}

// lines splits output into non-empty lines.
func lines(s string) []string {
	var out []string
	for l := range strings.SplitSeq(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			out = append(out, l)
		}
	}
	return out
}

// runTool runs an external program with a timeout and returns its stdout;
// a failure carries stderr.
func runTool(ctx context.Context, timeout time.Duration, env []string, bin string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (after %v)", ctx.Err(), timeout)
		}
		return stdout.String(), fmt.Errorf("%s %s: %v\n%s%s", filepath.Base(bin), strings.Join(args, " "), err, stdout.String(), stderr.String())
	}
	return stdout.String(), nil
}

// runToolIn runs an external program in dir, bounded, and returns its
// combined output.
func runToolIn(t *testing.T, dir, bin string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s (in %s): %v\n%s", bin, strings.Join(args, " "), dir, err, out)
	}
	return string(out), nil
}

// httpStatus GETs url and returns the status code.
func httpStatus(url string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, err = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, err
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, b)
	}
	return string(b)
}
