package natlab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// natkeepPackage is what NatkeepBinary builds.
const natkeepPackage = "github.com/natkeep/natkeep/cmd/natkeep"

var build struct {
	once sync.Once
	mu   sync.Mutex
	dir  string
	path string
	err  error
}

// NatkeepBinary builds cmd/natkeep once per test binary run and returns the
// binary's path; its directory is removed by Main. The build uses -race
// only when NATKEEP_E2E_RACE=1.
func NatkeepBinary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		dir, err := os.MkdirTemp("", "natkeep-e2e-")
		if err != nil {
			build.err = err
			return
		}
		build.mu.Lock()
		build.dir = dir
		build.mu.Unlock()
		build.path, build.err = goBuild(filepath.Join(dir, "natkeep"))
	})
	if build.err != nil {
		t.Fatalf("building natkeep: %v", build.err)
	}
	return build.path
}

// NatkeepBinaryCopy is a copy of the natkeep binary that any user may run
// (the build directory is private to root); cleanup removes it.
func NatkeepBinaryCopy(t testing.TB) string {
	t.Helper()
	data, err := os.ReadFile(NatkeepBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "natkeep-copy-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "natkeep")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	return bin
}

// goBuild builds natkeepPackage to path within 5 minutes.
func goBuild(path string) (string, error) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		root := os.Getenv("GOROOT")
		if root == "" {
			return "", fmt.Errorf("go tool not found: %w", err)
		}
		goTool = filepath.Join(root, "bin", "go")
	}
	args := []string{"build"}
	if os.Getenv("NATKEEP_E2E_RACE") == "1" {
		args = append(args, "-race")
	}
	args = append(args, "-o", path, natkeepPackage)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, goTool, args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return path, nil
}

// Main is the TestMain of a package whose tests use the lab: it runs the
// tests, removes the natkeep build directory, verifies that no lab
// namespace leaked (deleting any that did, and failing the run) and exits.
func Main(m *testing.M) {
	code := m.Run()

	if procs, lines, err := checkRunLogs(); err != nil {
		fmt.Fprintf(os.Stderr, "NAT lab: %d JSON log lines from %d processes: %v\n", lines, procs, err)
		if code == 0 {
			code = 1
		}
	} else if procs > 0 {
		fmt.Fprintf(os.Stderr, "NAT lab: %d JSON log lines from %d processes: every key has one JSON type\n", lines, procs)
	}

	build.mu.Lock()
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
	build.mu.Unlock()

	if leaked := leakedNamespaces(); len(leaked) > 0 {
		fmt.Fprintf(os.Stderr, "NAT lab: namespaces leaked by this test run: %v (deleting them now)\n", leaked)
		for _, ns := range leaked {
			_, _ = Exec(context.Background(), "", "ip", "netns", "del", ns)
		}
		if code == 0 {
			code = 1
		}
	}
	os.Exit(code)
}

// leakedNamespaces lists namespaces with this process's prefix.
func leakedNamespaces() []string {
	if os.Geteuid() != 0 {
		return nil
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil
	}
	out, err := Exec(context.Background(), "", "ip", "netns", "list")
	if err != nil {
		return nil
	}
	var leaked []string
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) > 0 && strings.HasPrefix(f[0], nsPrefix) {
			leaked = append(leaked, f[0])
		}
	}
	return leaked
}
