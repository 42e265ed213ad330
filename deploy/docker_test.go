package deploy

// The image, built and run for real: natkeep's runtime-local target (no
// pull: the binary comes from the build context) beside two test peers
// (internal/testpeers), with plain `docker run` and with docker-compose on
// deploy/compose/compose.yaml.
//
// Everything the test creates is named after one uniqueName() and removed by
// that name at the end: containers, networks, the compose project, images.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The Docker client. Always this one: another docker earlier on some PATHs
// cannot build with BuildKit.
const (
	dockerBin  = "/usr/bin/docker"
	composeBin = "/usr/bin/docker-compose"
)

// docker runs the Docker client with a timeout and returns its stdout; a
// failure carries stderr.
func docker(ctx context.Context, timeout time.Duration, env []string, args ...string) (string, error) {
	return runTool(ctx, timeout, env, dockerBin, args...)
}

// mustDocker is docker that fails the test.
func mustDocker(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	out, err := docker(t.Context(), timeout, nil, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// cleanupDocker registers `docker <args>` (a removal) to run when the test
// ends, with a context of its own: t.Context is already done by then. What
// is already gone is not an error.
func cleanupDocker(t *testing.T, args ...string) {
	t.Helper()
	t.Cleanup(func() {
		if _, err := docker(context.Background(), 60*time.Second, nil, args...); err != nil && !strings.Contains(err.Error(), "No such") {
			t.Errorf("cleanup: %v", err)
		}
	})
}

// needDocker skips (or, in CI, fails) unless a Docker engine answers.
func needDocker(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(dockerBin); err != nil {
		missing(t, "no Docker client at %s (Debian package docker.io): %v", dockerBin, err)
	}
	out, err := docker(t.Context(), 20*time.Second, nil, "version", "--format", "{{.Server.Version}}")
	if err != nil {
		missing(t, "no Docker engine answers; start one as root as .ci/run does (`dockerd --iptables=false --ip6tables=false --ip-forward=false >/tmp/dockerd.log 2>&1 &`): %v", err)
	}
	t.Logf("Docker engine %s", strings.TrimSpace(out))
}

// buildImage builds an image and removes it when the test ends.
func buildImage(t *testing.T, tag, contextDir string, args ...string) {
	t.Helper()
	start := time.Now()
	args = append(append([]string{"build", "--label", "natkeep-test=" + tag, "-t", tag}, args...), contextDir)
	if _, err := docker(t.Context(), 3*time.Minute, []string{"DOCKER_BUILDKIT=1"}, args...); err != nil {
		t.Fatal(err)
	}
	cleanupDocker(t, "image", "rm", "--force", tag)
	t.Logf("built image %s in %v", tag, time.Since(start).Round(time.Millisecond))
}

// buildPeerImage compiles one of internal/testpeers statically and puts it
// alone in an image FROM scratch.
func buildPeerImage(t *testing.T, name, tag string) {
	t.Helper()
	dir := t.TempDir()
	if err := goBuild(".", filepath.Join(dir, name), "./internal/testpeers/"+name); err != nil {
		t.Fatal(err)
	}
	dockerfile := fmt.Sprintf("FROM scratch\nCOPY %[1]s /%[1]s\nUSER 65532:65532\nENTRYPOINT [\"/%[1]s\"]\n", name)
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	buildImage(t, tag, dir)
}

// containerInfo is the part of `docker inspect` the checks read.
type containerInfo struct {
	ID    string `json:"Id"`
	Name  string
	State struct {
		Status   string
		Running  bool
		ExitCode int
		Pid      int
		Health   *struct {
			Status string
			Log    []struct {
				ExitCode int
				Output   string
			}
		}
	}
	Config struct {
		User        string
		Healthcheck *struct {
			Test []string
		}
	}
	HostConfig struct {
		ReadonlyRootfs bool
		Privileged     bool
		CapAdd         []string
		CapDrop        []string
		SecurityOpt    []string
	}
	NetworkSettings struct {
		Networks map[string]struct {
			IPAddress string
		}
	}
}

func inspect(t *testing.T, container string) containerInfo {
	t.Helper()
	out := mustDocker(t, 30*time.Second, "container", "inspect", container)
	var infos []containerInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil || len(infos) != 1 {
		t.Fatalf("docker inspect %s: %v\n%s", container, err, out)
	}
	return infos[0]
}

// logsOf returns a container's output, stdout and stderr interleaved.
func logsOf(container string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, dockerBin, "logs", container)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Sprintf("docker logs %s: %v\n%s", container, err, out)
	}
	return string(out)
}

// waitHealthy waits until the container's HEALTHCHECK reports healthy.
func waitHealthy(t *testing.T, container string) containerInfo {
	t.Helper()
	var info containerInfo
	start := time.Now()
	waitFor(t, 90*time.Second, 250*time.Millisecond, container+" healthy", func() (bool, string, error) {
		info = inspect(t, container)
		if !info.State.Running {
			return false, "", fmt.Errorf("%s is %s (exit %d):\n%s", container, info.State.Status, info.State.ExitCode, logsOf(container))
		}
		h := info.State.Health
		if h == nil {
			return false, "", fmt.Errorf("%s has no health state: the image lost its HEALTHCHECK", container)
		}
		if h.Status == "unhealthy" {
			return false, "", fmt.Errorf("%s is unhealthy: %+v\n%s", container, h.Log, logsOf(container))
		}
		return h.Status == "healthy", h.Status, nil
	})
	t.Logf("%s healthy after %v", container, time.Since(start).Round(time.Millisecond))
	return info
}

// checkHardened checks how natkeep's container runs: as Docker reports it,
// and as the kernel does (/proc of the container's process, when the engine
// runs on this machine).
func checkHardened(t *testing.T, info containerInfo) {
	t.Helper()
	want := fmt.Sprintf("%d:%d", nonrootUID, nonrootUID)
	if info.Config.User != want {
		t.Errorf("%s: user %q, want %q", info.Name, info.Config.User, want)
	}
	if !info.HostConfig.ReadonlyRootfs {
		t.Errorf("%s: root filesystem is writable", info.Name)
	}
	if info.HostConfig.Privileged || len(info.HostConfig.CapAdd) != 0 || !slices.Contains(info.HostConfig.CapDrop, "ALL") {
		t.Errorf("%s: privileged=%v cap_add=%v cap_drop=%v, want no capabilities", info.Name, info.HostConfig.Privileged, info.HostConfig.CapAdd, info.HostConfig.CapDrop)
	}
	if !slices.ContainsFunc(info.HostConfig.SecurityOpt, func(s string) bool { return strings.HasPrefix(s, "no-new-privileges") }) {
		t.Errorf("%s: security options %v lack no-new-privileges", info.Name, info.HostConfig.SecurityOpt)
	}
	if hc := info.Config.Healthcheck; hc == nil || !slices.Equal(hc.Test, []string{"CMD", "/natkeep", "healthcheck"}) {
		t.Errorf("%s: healthcheck %+v, want the image's [CMD /natkeep healthcheck]", info.Name, hc)
	}

	proc := fmt.Sprintf("/proc/%d/", info.State.Pid)
	status, err := os.ReadFile(proc + "status")
	if errors.Is(err, os.ErrNotExist) {
		t.Logf("%s: pid %d not visible here (remote engine?): kernel-side checks skipped", info.Name, info.State.Pid)
		return
	} else if err != nil {
		t.Fatal(err)
	}
	fields := map[string]string{}
	for _, l := range lines(string(status)) {
		k, v, _ := strings.Cut(l, ":")
		fields[k] = strings.Join(strings.Fields(v), " ")
	}
	ids := strings.Repeat(strconv.Itoa(nonrootUID)+" ", 4)
	for _, k := range []string{"Uid", "Gid"} {
		if fields[k] != strings.TrimSpace(ids) {
			t.Errorf("%s: kernel says %s %q, want %d everywhere", info.Name, k, fields[k], nonrootUID)
		}
	}
	for _, k := range []string{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"} {
		if fields[k] != "0000000000000000" {
			t.Errorf("%s: kernel says %s %s, want none", info.Name, k, fields[k])
		}
	}
	if fields["NoNewPrivs"] != "1" {
		t.Errorf("%s: kernel says NoNewPrivs %q", info.Name, fields["NoNewPrivs"])
	}
	mounts, err := os.ReadFile(proc + "mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	rootRO := false
	for _, l := range lines(string(mounts)) {
		// id parent major:minor root mountpoint options ...
		f := strings.Fields(l)
		if len(f) > 5 && f[4] == "/" {
			rootRO = slices.Contains(strings.Split(f[5], ","), "ro")
		}
	}
	if !rootRO {
		t.Errorf("%s: the kernel mounts its / read-write", info.Name)
	}
}

// peerEvent is one JSON log line of a test peer.
type peerEvent struct {
	Msg        string `json:"msg"`
	Level      string `json:"level"`
	From       string `json:"from"`
	To         string `json:"to"`
	Count      int    `json:"count"`
	Heartbeats int    `json:"heartbeats"`
	Bytes      int    `json:"bytes"`
	Err        string `json:"err"`
}

func peerEvents(t *testing.T, logs string) []peerEvent {
	t.Helper()
	var evs []peerEvent
	sc := bufio.NewScanner(strings.NewReader(logs))
	for sc.Scan() {
		var e peerEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Errorf("peer log line %q: %v", sc.Text(), err)
			continue
		}
		evs = append(evs, e)
	}
	return evs
}

// checkUpstreamSaw checks, from the upstream's own log, that natkeep (at
// natkeepIP) relayed data and a TCP stream, and that heartbeats came from
// the flow's upstream socket while the client was silent and pushed the
// reply.
func checkUpstreamSaw(t *testing.T, upstream, natkeepIP string) {
	t.Helper()
	logs := logsOf(upstream)
	var data, tcp int
	heartbeats := map[string]int{}
	armed, pushed := "", ""
	for _, e := range peerEvents(t, logs) {
		host, _, _ := net.SplitHostPort(e.From + e.To)
		if (e.From != "" || e.To != "") && host != natkeepIP {
			t.Errorf("upstream: %q came from %s, not from natkeep (%s)", e.Msg, e.From+e.To, natkeepIP)
		}
		switch e.Msg {
		case "datagram":
			data++
		case "heartbeat":
			heartbeats[e.From] = e.Count
		case "push armed":
			armed = e.From
		case "pushed":
			pushed = e.To
		case "tcp echoed":
			if e.Err != "" || e.Bytes != 1<<20 {
				t.Errorf("upstream: TCP echo of %d bytes, error %q", e.Bytes, e.Err)
			}
			tcp++
		}
	}
	if data < 3 || tcp != 1 {
		t.Errorf("upstream saw %d datagrams and %d TCP streams, want 3 and 1", data, tcp)
	}
	if armed == "" || pushed != armed || heartbeats[armed] < 3 {
		t.Errorf("upstream: push armed by %q, pushed to %q, heartbeats by source %v: want 3 or more heartbeats from the flow's own socket", armed, pushed, heartbeats)
	}
	if t.Failed() {
		t.Logf("upstream log:\n%s", logs)
	}
	t.Logf("upstream: %d datagrams, %d TCP streams, heartbeats %v", data, tcp, heartbeats)
}

// waitExit waits for a container to exit and returns its exit code.
func waitExit(t *testing.T, container string, timeout time.Duration) int {
	t.Helper()
	out, err := docker(t.Context(), timeout, nil, "wait", container)
	if err != nil {
		t.Fatalf("%v\n%s logs:\n%s", err, container, logsOf(container))
	}
	code, err := strconv.Atoi(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("docker wait %s: %q", container, out)
	}
	return code
}

// imageConfig is the part of `docker image inspect` the checks read.
type imageConfig struct {
	Size   int64
	Config struct {
		User         string
		Entrypoint   []string
		ExposedPorts map[string]struct{}
		Env          []string
		Healthcheck  *struct {
			Test []string
		}
	}
	RootFS struct {
		Layers []string
	}
}

// TestContainerImage builds the image with `--target runtime-local` (what CI
// and machines without registry access can build) and runs it hardened,
// first with `docker run` and then with compose.yaml.
func TestContainerImage(t *testing.T) {
	needDocker(t)
	begin := time.Now()
	name := uniqueName()
	natkeepBinary(t)

	image := name + "-natkeep:test"
	buildImage(t, image, repoRoot, "--target", "runtime-local", "--build-arg", "VERSION=test")
	upstreamImage, clientImage := name+"-upstream:test", name+"-client:test"
	buildPeerImage(t, "upstream", upstreamImage)
	buildPeerImage(t, "client", clientImage)

	var imgs []imageConfig
	if err := json.Unmarshal([]byte(mustDocker(t, 30*time.Second, "image", "inspect", image)), &imgs); err != nil || len(imgs) != 1 {
		t.Fatalf("docker image inspect %s: %v", image, err)
	}
	img := imgs[0]
	t.Logf("image %s: %d bytes (%.1f MB), %d layer(s)", image, img.Size, float64(img.Size)/1e6, len(img.RootFS.Layers))
	if img.Config.User != fmt.Sprintf("%d:%d", nonrootUID, nonrootUID) ||
		!slices.Equal(img.Config.Entrypoint, []string{"/natkeep"}) ||
		img.Config.Healthcheck == nil || !slices.Equal(img.Config.Healthcheck.Test, []string{"CMD", "/natkeep", "healthcheck"}) {
		t.Errorf("image config %+v: want user 65532:65532, entrypoint /natkeep, HEALTHCHECK /natkeep healthcheck", img.Config)
	}
	if _, ok := img.Config.ExposedPorts[strconv.Itoa(adminPort)+"/tcp"]; !ok {
		t.Errorf("image exposes %v, not %d/tcp", img.Config.ExposedPorts, adminPort)
	}
	// The binary and nothing else: scratch plus one COPY.
	if len(img.RootFS.Layers) != 1 || img.Size > 32<<20 {
		t.Errorf("image has %d layers, %d bytes: want one layer with the binary", len(img.RootFS.Layers), img.Size)
	}

	t.Run("run", func(t *testing.T) {
		testDockerRun(t, name, image, upstreamImage, clientImage)
	})
	t.Run("compose", func(t *testing.T) {
		testCompose(t, name, image, upstreamImage, clientImage)
	})
	t.Logf("container tests took %v", time.Since(begin).Round(time.Millisecond))
}

// hardening is how every test container runs; no DNS query leaves the
// network: names unknown to Docker's embedded DNS go to the container's own
// loopback, where nothing answers.
var hardening = []string{"--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--dns", "127.0.0.1"}

func testDockerRun(t *testing.T, name, image, upstreamImage, clientImage string) {
	network := name + "-net"
	mustDocker(t, 30*time.Second, "network", "create", "--label", "natkeep-test="+name, network)
	cleanupDocker(t, "network", "rm", network)

	run := func(container string, args ...string) {
		t.Helper()
		args = slices.Concat([]string{"run", "--detach", "--name", container, "--label", "natkeep-test=" + name, "--network", network}, hardening, args)
		// Before the run: a container that failed to start still exists.
		cleanupDocker(t, "container", "rm", "--force", "--volumes", container)
		mustDocker(t, 60*time.Second, args...)
	}
	upstream := name + "-upstream"
	run(upstream, "--network-alias", "upstream", "--user", "65532:65532", upstreamImage, "-udp", ":7000", "-tcp", ":7001")

	nk := name + "-natkeep"
	run(nk, "--network-alias", "natkeep", "--user", "65532:65532",
		// The image's HEALTHCHECK command, probed faster than its 15s.
		"--health-interval", "1s", "--health-start-period", "5s", "--health-timeout", "3s",
		"--env", "NATKEEP_ROUTES=udp://:5060/upstream:7000,tcp://:5432/upstream:7001",
		"--env", "NATKEEP_UDP_HEARTBEAT_INTERVAL=500ms",
		image)
	info := waitHealthy(t, nk)
	checkHardened(t, info)
	natkeepIP := info.NetworkSettings.Networks[network].IPAddress
	if natkeepIP == "" {
		t.Fatalf("%s has no address on %s: %+v", nk, network, info.NetworkSettings)
	}

	client := name + "-client"
	start := time.Now()
	run(client, "--user", "65532:65532", clientImage, "-udp", "natkeep:5060", "-tcp", "natkeep:5432", "-heartbeats", "3")
	code := waitExit(t, client, 2*time.Minute)
	clientLogs := logsOf(client)
	if code != 0 {
		t.Fatalf("client exited %d:\n%s\nnatkeep:\n%s\nupstream:\n%s", code, clientLogs, logsOf(nk), logsOf(upstream))
	}
	t.Logf("client passed in %v:\n%s", time.Since(start).Round(time.Millisecond), clientLogs)
	checkUpstreamSaw(t, upstream, natkeepIP)
	if info := inspect(t, nk); !info.State.Running || info.State.Health == nil || info.State.Health.Status != "healthy" {
		t.Errorf("natkeep after the run: %s, health %+v\n%s", info.State.Status, info.State.Health, logsOf(nk))
	}
}

// testCompose runs deploy/compose/compose.yaml with docker-compose, its
// natkeep service on the image built above, the app replaced by the client
// and the example upstream names served by the upstream peer
// (testdata/compose-e2e.yaml). Nothing is built or pulled.
func testCompose(t *testing.T, name, image, upstreamImage, clientImage string) {
	compose := needTool(t, composeBin, "docker-compose")
	adminHostPort := freePort(t, "tcp")
	env := []string{
		"NATKEEP_IMAGE=" + image,
		"NATKEEP_TEST_UPSTREAM_IMAGE=" + upstreamImage,
		"NATKEEP_TEST_CLIENT_IMAGE=" + clientImage,
		"NATKEEP_ADMIN_HOST_PORT=" + strconv.Itoa(adminHostPort),
		"COMPOSE_PROJECT_NAME=",
	}
	if nofile := engineNofile(t, name, upstreamImage); nofile != "" {
		env = append(env, "NATKEEP_TEST_NOFILE="+nofile)
	}
	base := []string{"--project-name", name, "--file", "compose/compose.yaml", "--file", "testdata/compose-e2e.yaml"}
	composeRun := func(ctx context.Context, timeout time.Duration, args ...string) (string, error) {
		return runTool(ctx, timeout, env, compose, append(slices.Clone(base), args...)...)
	}
	if out, err := composeRun(t.Context(), 30*time.Second, "config", "--quiet"); err != nil {
		t.Fatalf("docker-compose rejects compose.yaml with the test override: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if _, err := composeRun(context.Background(), 2*time.Minute, "down", "--volumes", "--remove-orphans", "--timeout", "20"); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	start := time.Now()
	// natkeep's healthcheck gates the app (depends_on: service_healthy).
	if _, err := composeRun(t.Context(), 3*time.Minute, "up", "--detach", "--no-build"); err != nil {
		t.Fatal(err)
	}
	t.Logf("docker-compose up took %v", time.Since(start).Round(time.Millisecond))

	container := func(service string) string {
		t.Helper()
		out := mustDocker(t, 30*time.Second, "container", "ls", "--all", "--quiet",
			"--filter", "label=com.docker.compose.project="+name,
			"--filter", "label=com.docker.compose.service="+service)
		ids := lines(out)
		if len(ids) != 1 {
			t.Fatalf("service %s: containers %q, want one", service, ids)
		}
		return ids[0]
	}
	nk, app, upstream := container("natkeep"), container("app"), container("upstream")
	info := waitHealthy(t, nk)
	checkHardened(t, info)
	natkeepIP := ""
	for _, n := range info.NetworkSettings.Networks {
		natkeepIP = n.IPAddress
	}

	code := waitExit(t, app, 2*time.Minute)
	appLogs := logsOf(app)
	if code != 0 {
		t.Fatalf("app (the client) exited %d:\n%s\nnatkeep:\n%s\nupstream:\n%s", code, appLogs, logsOf(nk), logsOf(upstream))
	}
	t.Logf("app passed:\n%s", appLogs)
	checkUpstreamSaw(t, upstream, natkeepIP)

	// The admin port, published on the host's loopback by compose.yaml.
	metrics := httpGet(t, fmt.Sprintf("http://127.0.0.1:%d/metrics", adminHostPort))
	up := 0
	for _, l := range lines(metrics) {
		if strings.HasPrefix(l, "natkeep_listener_up{") && strings.HasSuffix(l, " 1") {
			up++
		}
	}
	if up != 2 {
		t.Errorf("published /metrics shows %d listeners up, want 2 (udp and tcp)", up)
	}
}

// engineNofile returns "" when the engine can give a container
// compose.yaml's nofile limit, else a lower limit to run with. Raising a
// hard limit needs CAP_SYS_RESOURCE, which some sandboxes do not give even
// to root; then compose.yaml's ulimits cannot be exercised here.
func engineNofile(t *testing.T, name, image string) string {
	t.Helper()
	p := loadCompose(t, "compose/compose.yaml")
	nk, err := p.GetService(sidecarName)
	if err != nil {
		t.Fatal(err)
	}
	u := nk.Ulimits["nofile"]
	if u == nil {
		t.Fatal("compose.yaml: natkeep has no nofile ulimit")
	}
	limit := fmt.Sprintf("nofile=%d:%d", u.Soft, u.Hard)
	probe := name + "-nofile-probe"
	cleanupDocker(t, "container", "rm", "--force", probe) // normally gone already (--rm)
	// The upstream peer exits at once on a bad address: only whether the
	// container could start matters.
	_, err = docker(t.Context(), 60*time.Second, nil, "run", "--rm", "--name", probe, "--label", "natkeep-test="+name,
		"--network", "none", "--ulimit", limit, image, "-udp", "no-such-address")
	if err == nil || !strings.Contains(err.Error(), "rlimit") {
		return ""
	}
	t.Logf("this engine cannot start a container with --ulimit %s (no CAP_SYS_RESOURCE?): running compose.yaml with nofile 4096 instead\n%v", limit, err)
	return "4096"
}
