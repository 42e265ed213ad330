package deploy

// Checks of the transparent-mode examples: the same strict decoding as the
// other examples, plus the capability rules of transparent interception:
//
//   - the installer (`natkeep intercept install`) runs as uid 0 with every
//     capability dropped except NET_ADMIN (non-root containers cannot hold an
//     added capability: no ambient capabilities in Kubernetes or Docker);
//   - natkeep itself needs NET_ADMIN (as uid 0, for the same reason) only
//     when UDP is intercepted (IP_TRANSPARENT); with TCP alone it runs
//     restricted as the UID the rules exempt;
//   - installer and natkeep read the same interception settings;
//   - the app is unchanged (not pointed at 127.0.0.1) and does not run as
//     the exempt UID.

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	composetypes "github.com/compose-spec/compose-go/v2/types"
	corev1 "k8s.io/api/core/v1"
)

const (
	interceptName      = "natkeep-intercept"
	defaultInterceptID = "65532" // NATKEEP_INTERCEPT_UID's default
)

// interceptEnv is every NATKEEP_INTERCEPT* variable natkeep reads.
var interceptEnv = map[string]bool{
	"NATKEEP_INTERCEPT":             true,
	"NATKEEP_INTERCEPT_TCP_PORT":    true,
	"NATKEEP_INTERCEPT_UDP_PORT":    true,
	"NATKEEP_INTERCEPT_MARK":        true,
	"NATKEEP_INTERCEPT_BYPASS_MARK": true,
	"NATKEEP_INTERCEPT_UID":         true,
	"NATKEEP_INTERCEPT_TABLE":       true,
}

// checkInterceptEntry checks one PROTO:[PREFIX:]PORT[-PORT] entry of
// NATKEEP_INTERCEPT (IPv6 prefixes in brackets) and returns its protocol.
func checkInterceptEntry(e string) (proto string, ok bool) {
	proto, rest, found := strings.Cut(e, ":")
	if !found || (proto != "udp" && proto != "tcp") {
		return "", false
	}
	prefix, ports := "", rest
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]:")
		if end < 0 {
			return "", false
		}
		prefix, ports = rest[1:end], rest[end+2:]
	} else if i := strings.LastIndex(rest, ":"); i >= 0 {
		prefix, ports = rest[:i], rest[i+1:]
	}
	if prefix != "" {
		if _, err := netip.ParsePrefix(prefix); err != nil {
			if _, err := netip.ParseAddr(prefix); err != nil {
				return "", false
			}
		}
		if strings.Contains(prefix, ":") != strings.HasPrefix(rest, "[") {
			return "", false // IPv6 needs brackets, IPv4 has none
		}
	}
	lo, hi, isRange := strings.Cut(ports, "-")
	if !isRange {
		hi = lo
	}
	l, err1 := strconv.Atoi(lo)
	h, err2 := strconv.Atoi(hi)
	if err1 != nil || err2 != nil || l < 1 || h > 65535 || l > h {
		return "", false
	}
	return proto, true
}

// checkInterceptEnv checks the NATKEEP_INTERCEPT* variables of one
// container and reports whether UDP is intercepted.
func checkInterceptEnv(t *testing.T, where string, env map[string]string) (udp bool) {
	t.Helper()
	list := env["NATKEEP_INTERCEPT"]
	if list == "" {
		t.Fatalf("%s: NATKEEP_INTERCEPT is not set", where)
	}
	for e := range strings.SplitSeq(list, ",") {
		proto, ok := checkInterceptEntry(e)
		if !ok {
			t.Errorf("%s: NATKEEP_INTERCEPT entry %q is not PROTO:[PREFIX:]PORT[-PORT]", where, e)
		}
		if proto == "udp" {
			udp = true
		}
	}
	for _, k := range []string{"NATKEEP_INTERCEPT_TCP_PORT", "NATKEEP_INTERCEPT_UDP_PORT"} {
		if v, ok := env[k]; ok {
			if n, err := strconv.Atoi(v); err != nil || n < 1 || n > 65535 || n == adminPort {
				t.Errorf("%s: %s=%q", where, k, v)
			}
		}
	}
	for _, k := range []string{"NATKEEP_INTERCEPT_MARK", "NATKEEP_INTERCEPT_BYPASS_MARK"} {
		if v, ok := env[k]; ok {
			if n, err := strconv.ParseUint(v, 0, 32); err != nil || n == 0 {
				t.Errorf("%s: %s=%q", where, k, v)
			}
		}
	}
	if v, ok := env["NATKEEP_INTERCEPT_UID"]; ok && v != "off" {
		if n, err := strconv.ParseUint(v, 10, 32); err != nil || n == 0 {
			t.Errorf("%s: NATKEEP_INTERCEPT_UID=%q", where, v)
		}
	}
	return udp
}

// interceptOnly returns the NATKEEP_INTERCEPT* part of env.
func interceptOnly(env map[string]string) map[string]string {
	m := map[string]string{}
	for k, v := range env {
		if interceptEnv[k] {
			m[k] = v
		}
	}
	return m
}

// checkTransparentNatkeepEnv checks natkeep's environment in transparent
// mode: known variables only, durations that parse, routes (if any) that
// are well formed. It returns the drain timeout.
func checkTransparentNatkeepEnv(t *testing.T, where string, env map[string]string) time.Duration {
	t.Helper()
	for k, v := range env {
		if strings.HasPrefix(k, "NATKEEP_") && !knownEnv[k] && !interceptEnv[k] {
			t.Errorf("%s: unknown variable %s", where, k)
		}
		if strings.HasSuffix(k, "_INTERVAL") || strings.HasSuffix(k, "_TIMEOUT") {
			if _, err := time.ParseDuration(v); err != nil {
				t.Errorf("%s: %s=%q: %v", where, k, v, err)
			}
		}
	}
	checkRoutes(t, where, env["NATKEEP_ROUTES"])
	drain := defaultDrain
	if d, ok := env["NATKEEP_DRAIN_TIMEOUT"]; ok {
		drain, _ = time.ParseDuration(d)
	}
	return drain
}

// exemptUID is the UID the rules exempt, "" when UID matching is off.
func exemptUID(env map[string]string) string {
	v, ok := env["NATKEEP_INTERCEPT_UID"]
	switch {
	case !ok:
		return defaultInterceptID
	case v == "off":
		return ""
	}
	return v
}

// checkInstallerK8s checks the natkeep-intercept init container.
func checkInstallerK8s(t *testing.T, where string, c *corev1.Container) {
	t.Helper()
	if c.RestartPolicy != nil {
		t.Errorf("%s: the installer is a sidecar (restartPolicy set); it must run once and exit", where)
	}
	if len(c.Command) != 0 {
		t.Errorf("%s: command %v overrides the image's /natkeep entrypoint", where, c.Command)
	}
	if !slices.Equal(c.Args, []string{"intercept", "install"}) {
		t.Errorf("%s: args %q, want [intercept install]", where, c.Args)
	}
	if c.Image == "" {
		t.Errorf("%s: no image", where)
	}
	if c.ReadinessProbe != nil || c.LivenessProbe != nil || c.StartupProbe != nil {
		t.Errorf("%s: probes on a run-once init container", where)
	}
	checkRootNetAdmin(t, where, c.SecurityContext)
	if lim, ok := c.Resources.Limits[corev1.ResourceMemory]; !ok || lim.IsZero() {
		t.Errorf("%s: no memory limit", where)
	}
}

// checkRootNetAdmin checks uid 0 with NET_ADMIN as the only capability.
func checkRootNetAdmin(t *testing.T, where string, sc *corev1.SecurityContext) {
	t.Helper()
	if sc == nil {
		t.Fatalf("%s: no securityContext", where)
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != 0 {
		t.Errorf("%s: runAsUser is not 0 (a non-root container cannot hold NET_ADMIN)", where)
	}
	if sc.RunAsNonRoot == nil || *sc.RunAsNonRoot {
		t.Errorf("%s: runAsNonRoot is not explicitly false (the pod-level true would refuse uid 0)", where)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN"}) {
		t.Errorf("%s: capabilities %+v, want drop [ALL] add [NET_ADMIN]", where, sc.Capabilities)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", where)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: privileged", where)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem is not true", where)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile is not RuntimeDefault", where)
	}
}

func TestKubernetesTransparent(t *testing.T) {
	for _, tt := range []struct {
		path string
		udp  bool
	}{
		{"kubernetes/transparent/natkeep-transparent.yaml", true},
		{"kubernetes/transparent/natkeep-transparent-tcp.yaml", false},
	} {
		t.Run(tt.path, func(t *testing.T) {
			path := tt.path
			objs := decodeK8sFile(t, path)
			d := onlyDeployment(t, path, objs)
			spec := &d.Spec.Template.Spec

			inst := slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == interceptName })
			side := slices.IndexFunc(spec.InitContainers, func(c corev1.Container) bool { return c.Name == sidecarName })
			if inst < 0 || side < 0 {
				t.Fatalf("%s: want init containers %q and %q", path, interceptName, sidecarName)
			}
			if inst > side {
				t.Errorf("%s: the installer runs after natkeep; it must come first", path)
			}
			if findContainer(spec.Containers, sidecarName) != nil {
				t.Errorf("%s: natkeep is a regular container, want a native sidecar", path)
			}
			installer, nk := &spec.InitContainers[inst], &spec.InitContainers[side]
			checkInstallerK8s(t, path+" "+interceptName, installer)

			if nk.RestartPolicy == nil || *nk.RestartPolicy != corev1.ContainerRestartPolicyAlways {
				t.Errorf("%s: natkeep init container restartPolicy is not Always: not a native sidecar", path)
			}
			if len(nk.Command) != 0 || len(nk.Args) != 0 {
				t.Errorf("%s: natkeep runs %v %v, want the image's plain /natkeep", path, nk.Command, nk.Args)
			}
			checkHTTPProbe(t, path, "startup", nk.StartupProbe, "/readyz")
			checkHTTPProbe(t, path, "readiness", nk.ReadinessProbe, "/readyz")
			checkHTTPProbe(t, path, "liveness", nk.LivenessProbe, "/healthz")
			if lim, ok := nk.Resources.Limits[corev1.ResourceMemory]; !ok || lim.IsZero() {
				t.Errorf("%s: natkeep has no memory limit", path)
			}

			instEnv := envOf(t, path+" "+interceptName, installer, objs.configMaps)
			nkEnv := envOf(t, path+" natkeep", nk, objs.configMaps)
			for k := range instEnv {
				if !interceptEnv[k] && strings.HasPrefix(k, "NATKEEP_") {
					t.Errorf("%s: the installer gets %s, which it does not read", path, k)
				}
			}
			if got, want := interceptOnly(nkEnv), interceptOnly(instEnv); !mapsEqual(got, want) {
				t.Errorf("%s: natkeep's interception settings %v differ from the installer's %v", path, got, want)
			}
			// One ConfigMap feeds both, so they cannot drift apart.
			if len(installer.EnvFrom) != 1 || len(nk.EnvFrom) != 1 || installer.EnvFrom[0].ConfigMapRef.Name != nk.EnvFrom[0].ConfigMapRef.Name {
				t.Errorf("%s: installer and natkeep do not share one ConfigMap", path)
			}
			udp := checkInterceptEnv(t, path, nkEnv)
			if udp != tt.udp {
				t.Fatalf("%s: intercepts UDP = %v, want %v", path, udp, tt.udp)
			}
			drain := checkTransparentNatkeepEnv(t, path, nkEnv)
			uid := exemptUID(nkEnv)
			if udp {
				// IP_TRANSPARENT: uid 0 with NET_ADMIN only; natkeep is
				// recognised by its SO_MARK.
				checkRootNetAdmin(t, path+" natkeep", nk.SecurityContext)
			} else {
				// TCP needs no capability: restricted, and the rules know
				// natkeep by its UID.
				checkRestricted(t, path+" natkeep", nk.SecurityContext)
				if nk.SecurityContext != nil && nk.SecurityContext.RunAsUser != nil && strconv.FormatInt(*nk.SecurityContext.RunAsUser, 10) != uid {
					t.Errorf("%s: natkeep runs as %d but NATKEEP_INTERCEPT_UID exempts %q: its own connections would be intercepted", path, *nk.SecurityContext.RunAsUser, uid)
				}
			}

			checkPodSecurity(t, path, spec)
			checkGrace(t, path, spec, drain)
			checkScrapeAnnotations(t, path, d.Spec.Template.Annotations)
			for _, app := range spec.Containers {
				appUID := spec.SecurityContext.RunAsUser
				if app.SecurityContext != nil && app.SecurityContext.RunAsUser != nil {
					appUID = app.SecurityContext.RunAsUser
				}
				if appUID == nil || strconv.FormatInt(*appUID, 10) == uid {
					t.Errorf("%s: container %s runs as the UID the rules exempt (%s): its traffic would not be intercepted", path, app.Name, uid)
				}
				for _, e := range app.Env {
					if strings.HasPrefix(e.Value, "127.0.0.1") {
						t.Errorf("%s: container %s is pointed at 127.0.0.1; in transparent mode the app keeps its real addresses", path, app.Name)
					}
				}
			}
		})
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// checkComposeRootNetAdmin checks a service that runs as uid 0 with
// NET_ADMIN as its only capability.
func checkComposeRootNetAdmin(t *testing.T, where string, svc composetypes.ServiceConfig) {
	t.Helper()
	if !svc.ReadOnly {
		t.Errorf("%s: read_only is not true", where)
	}
	if !slices.Equal(svc.CapDrop, []string{"ALL"}) || !slices.Equal(svc.CapAdd, []string{"NET_ADMIN"}) {
		t.Errorf("%s: cap_drop %v cap_add %v, want drop [ALL] add [NET_ADMIN]", where, svc.CapDrop, svc.CapAdd)
	}
	if !slices.Contains(svc.SecurityOpt, "no-new-privileges:true") {
		t.Errorf("%s: security_opt %v lacks no-new-privileges:true", where, svc.SecurityOpt)
	}
	if svc.Privileged {
		t.Errorf("%s: privileged", where)
	}
	if uid, _, _ := strings.Cut(svc.User, ":"); uid != "0" {
		t.Errorf("%s: user %q, want uid 0 (Docker gives a non-root user no added capability)", where, svc.User)
	}
}

func TestComposeTransparent(t *testing.T) {
	const path = "compose/transparent.compose.yaml"
	p := loadCompose(t, path)
	nk, err := p.GetService(sidecarName)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := p.GetService(interceptName)
	if err != nil {
		t.Fatal(err)
	}
	app, err := p.GetService("app")
	if err != nil {
		t.Fatal(err)
	}

	// natkeep: owns the namespace, serves the admin port, healthchecked.
	nkEnv := composeEnv(nk)
	udp := checkInterceptEnv(t, path+" natkeep", nkEnv)
	drain := checkTransparentNatkeepEnv(t, path+" natkeep", nkEnv)
	if hc := nk.HealthCheck; hc == nil || hc.Disable || len(hc.Test) < 2 || hc.Test[0] != "CMD" || strings.Join(hc.Test[1:], " ") != healthcheckCommand {
		t.Errorf("%s: natkeep healthcheck %+v, want [CMD /natkeep healthcheck]", path, nk.HealthCheck)
	}
	if len(nk.Entrypoint) != 0 || len(nk.Command) != 0 {
		t.Errorf("%s: natkeep runs %v %v, want the image's plain /natkeep", path, nk.Entrypoint, nk.Command)
	}
	if nk.NetworkMode != "" {
		t.Errorf("%s: natkeep network_mode %q; it owns the shared namespace", path, nk.NetworkMode)
	}
	published := false
	for _, pc := range nk.Ports {
		if pc.Target == adminPort && pc.HostIP == "127.0.0.1" {
			published = true
		}
	}
	if !published {
		t.Errorf("%s: admin port %d not published on 127.0.0.1", path, adminPort)
	}
	if u := nk.Ulimits["nofile"]; u == nil || max(u.Soft, u.Single) < 4096 {
		t.Errorf("%s: natkeep nofile ulimit not raised", path)
	}
	if nk.StopGracePeriod == nil || time.Duration(*nk.StopGracePeriod) <= drain {
		t.Errorf("%s: natkeep stop_grace_period %v does not exceed the drain timeout %v", path, nk.StopGracePeriod, drain)
	}
	uid := exemptUID(nkEnv)
	if udp {
		checkComposeRootNetAdmin(t, path+" natkeep", nk)
	} else {
		checkComposeHardening(t, path+" natkeep", nk, drain)
		if u, _, _ := strings.Cut(nk.User, ":"); u != uid {
			t.Errorf("%s: natkeep runs as %q but NATKEEP_INTERCEPT_UID exempts %q", path, u, uid)
		}
	}

	// The installer: once, in natkeep's namespace, root with NET_ADMIN only.
	checkComposeRootNetAdmin(t, path+" "+interceptName, inst)
	if inst.NetworkMode != "service:"+sidecarName {
		t.Errorf("%s: installer network_mode %q, want service:natkeep", path, inst.NetworkMode)
	}
	if !slices.Equal([]string(inst.Command), []string{"intercept", "install"}) || len(inst.Entrypoint) != 0 {
		t.Errorf("%s: installer runs %v %v, want command [intercept install] on the /natkeep entrypoint", path, inst.Entrypoint, inst.Command)
	}
	if inst.Restart != "no" {
		t.Errorf("%s: installer restart %q, want \"no\" (it runs once)", path, inst.Restart)
	}
	if inst.Image != nk.Image {
		t.Errorf("%s: installer image %q is not natkeep's %q", path, inst.Image, nk.Image)
	}
	if _, ok := inst.DependsOn[sidecarName]; !ok {
		t.Errorf("%s: installer does not depend on natkeep, whose namespace it programs", path)
	}
	instEnv := composeEnv(inst)
	for k := range instEnv {
		if strings.HasPrefix(k, "NATKEEP_") && !interceptEnv[k] {
			t.Errorf("%s: the installer gets %s, which it does not read", path, k)
		}
	}
	if got, want := interceptOnly(nkEnv), interceptOnly(instEnv); !mapsEqual(got, want) {
		t.Errorf("%s: natkeep's interception settings %v differ from the installer's %v", path, got, want)
	}

	// The app: unchanged, in natkeep's namespace, started after both.
	if app.NetworkMode != "service:"+sidecarName {
		t.Errorf("%s: app network_mode %q, want service:natkeep", path, app.NetworkMode)
	}
	if dep, ok := app.DependsOn[sidecarName]; !ok || dep.Condition != composetypes.ServiceConditionHealthy || !dep.Restart {
		t.Errorf("%s: app depends_on natkeep %+v, want service_healthy with restart: true", path, dep)
	}
	if dep, ok := app.DependsOn[interceptName]; !ok || dep.Condition != composetypes.ServiceConditionCompletedSuccessfully {
		t.Errorf("%s: app depends_on %s %+v, want service_completed_successfully", path, interceptName, dep)
	}
	if len(app.Ports) != 0 {
		t.Errorf("%s: ports on a service with network_mode service: belong on natkeep", path)
	}
	checkComposeHardening(t, path+" app", app, drain)
	if u, _, _ := strings.Cut(app.User, ":"); u == uid {
		t.Errorf("%s: the app runs as the UID the rules exempt (%s)", path, uid)
	}
	for k, v := range composeEnv(app) {
		if strings.HasPrefix(v, "127.0.0.1") {
			t.Errorf("%s: app %s=%q points at 127.0.0.1; in transparent mode the app keeps its real addresses", path, k, v)
		}
	}
}
