package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/loader"
	composetypes "github.com/compose-spec/compose-go/v2/types"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	kusttypes "sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/yaml"
)

// Facts about natkeep that the deployment files must agree with.
const (
	nonrootUID         = 65532
	adminPort          = 9299
	adminPortName      = "admin"
	defaultDrain       = 15 * time.Second
	sidecarName        = "natkeep"
	healthcheckCommand = "/natkeep healthcheck"
)

// knownEnv is every environment variable natkeep reads. A NATKEEP_ variable
// in a deployment file that is not here is a typo natkeep would ignore.
var knownEnv = map[string]bool{
	"NATKEEP_ROUTES":                 true,
	"NATKEEP_UDP_HEARTBEAT_INTERVAL": true,
	"NATKEEP_UDP_HEARTBEAT_PAYLOAD":  true,
	"NATKEEP_UDP_HEARTBEAT_TTL":      true,
	"NATKEEP_UDP_HEARTBEAT_REPLY":    true,
	"NATKEEP_UDP_DEAD_AFTER":         true,
	"NATKEEP_UDP_FLOW_IDLE_TIMEOUT":  true,
	"NATKEEP_UDP_MAX_FLOWS":          true,
	"NATKEEP_TCP_KEEPALIVE_IDLE":     true,
	"NATKEEP_TCP_KEEPALIVE_INTERVAL": true,
	"NATKEEP_TCP_KEEPALIVE_COUNT":    true,
	"NATKEEP_TCP_USER_TIMEOUT":       true,
	"NATKEEP_TCP_CONNECT_TIMEOUT":    true,
	"NATKEEP_RESOLVE_INTERVAL":       true,
	"NATKEEP_ADMIN_ADDR":             true,
	"NATKEEP_DRAIN_TIMEOUT":          true,
	"NATKEEP_LOG_LEVEL":              true,
	"NATKEEP_LOG_FORMAT":             true,
}

// checkEnv checks natkeep's environment as a deployment file sets it: only
// known variables, a well-formed NATKEEP_ROUTES, parseable durations, and an
// admin address on the admin port. It returns the drain timeout in force.
func checkEnv(t *testing.T, where string, env map[string]string) time.Duration {
	t.Helper()
	for k, v := range env {
		if strings.HasPrefix(k, "NATKEEP_") && !knownEnv[k] {
			t.Errorf("%s: unknown variable %s", where, k)
		}
		if strings.HasSuffix(k, "_INTERVAL") || strings.HasSuffix(k, "_TIMEOUT") {
			if _, err := time.ParseDuration(v); err != nil {
				t.Errorf("%s: %s=%q: %v", where, k, v, err)
			}
		}
	}
	routes, ok := env["NATKEEP_ROUTES"]
	if !ok || routes == "" {
		t.Errorf("%s: NATKEEP_ROUTES is not set", where)
	}
	checkRoutes(t, where, routes)
	if a, ok := env["NATKEEP_ADMIN_ADDR"]; ok {
		_, port, err := net.SplitHostPort(a)
		if err != nil || port != strconv.Itoa(adminPort) {
			t.Errorf("%s: NATKEEP_ADMIN_ADDR=%q, want port %d (%v)", where, a, adminPort, err)
		}
	}
	if f, ok := env["NATKEEP_LOG_FORMAT"]; ok && !slices.Contains([]string{"auto", "text", "json"}, f) {
		t.Errorf("%s: NATKEEP_LOG_FORMAT=%q", where, f)
	}
	drain := defaultDrain
	if d, ok := env["NATKEEP_DRAIN_TIMEOUT"]; ok {
		drain, _ = time.ParseDuration(d)
	}
	return drain
}

// checkRoutes checks the PROTO://LISTEN/UPSTREAM[?key=value&...] syntax.
func checkRoutes(t *testing.T, where, routes string) {
	t.Helper()
	if routes == "" {
		return
	}
	for r := range strings.SplitSeq(routes, ",") {
		u, err := url.Parse(r)
		if err != nil {
			t.Errorf("%s: route %q: %v", where, r, err)
			continue
		}
		if u.Scheme != "udp" && u.Scheme != "tcp" {
			t.Errorf("%s: route %q: protocol %q, want udp or tcp", where, r, u.Scheme)
		}
		if _, _, err := net.SplitHostPort(u.Host); err != nil {
			t.Errorf("%s: route %q: listen address: %v", where, r, err)
		}
		if _, _, err := net.SplitHostPort(strings.TrimPrefix(u.Path, "/")); err != nil {
			t.Errorf("%s: route %q: upstream: %v", where, r, err)
		}
		q := u.Query()
		if role := q.Get("role"); role != "" && role != "client" && role != "responder" {
			t.Errorf("%s: route %q: role %q", where, r, role)
		}
		if q.Get("role") == "responder" && u.Scheme != "udp" {
			t.Errorf("%s: route %q: only UDP routes can be responders", where, r)
		}
		if p := q.Get("payload"); p != "" && !validPayload(p) {
			t.Errorf("%s: route %q: payload %q", where, r, p)
		}
	}
}

func validPayload(p string) bool {
	switch p {
	case "empty", "nat-t", "crlf", "stun":
		return true
	}
	return strings.HasPrefix(p, "hex:") && len(p) > len("hex:") ||
		strings.HasPrefix(p, "text:") && len(p) > len("text:")
}

// ---------------------------------------------------------------- Kubernetes

// k8sObjects is what the YAML files hold, decoded into the real API types.
type k8sObjects struct {
	deployments     []*appsv1.Deployment
	serviceAccounts []*corev1.ServiceAccount
	configMaps      []*corev1.ConfigMap
}

// splitYAML splits a multi-document YAML stream, dropping empty documents.
func splitYAML(t *testing.T, data []byte) [][]byte {
	t.Helper()
	r := k8syaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("splitting YAML: %v", err)
		}
		var probe any
		if err := yaml.Unmarshal(doc, &probe); err != nil {
			t.Fatalf("YAML document: %v\n%s", err, doc)
		}
		if probe != nil {
			docs = append(docs, doc)
		}
	}
}

// decodeK8s decodes every document strictly (unknown or duplicate fields
// fail) into the API type its apiVersion and kind name.
func decodeK8s(t *testing.T, name string, data []byte) k8sObjects {
	t.Helper()
	var objs k8sObjects
	docs := splitYAML(t, data)
	if len(docs) == 0 {
		t.Fatalf("%s: no YAML documents", name)
	}
	for i, doc := range docs {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("%s doc %d: %v", name, i, err)
		}
		var obj any
		switch tm.APIVersion + "/" + tm.Kind {
		case "apps/v1/Deployment":
			d := new(appsv1.Deployment)
			objs.deployments = append(objs.deployments, d)
			obj = d
		case "v1/ServiceAccount":
			sa := new(corev1.ServiceAccount)
			objs.serviceAccounts = append(objs.serviceAccounts, sa)
			obj = sa
		case "v1/ConfigMap":
			cm := new(corev1.ConfigMap)
			objs.configMaps = append(objs.configMaps, cm)
			obj = cm
		default:
			t.Fatalf("%s doc %d: no decoder for %s %s", name, i, tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, obj); err != nil {
			t.Fatalf("%s doc %d (%s): strict decoding: %v", name, i, tm.Kind, err)
		}
	}
	return objs
}

func decodeK8sFile(t *testing.T, path string) k8sObjects {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return decodeK8s(t, path, data)
}

func findContainer(cs []corev1.Container, name string) *corev1.Container {
	for i := range cs {
		if cs[i].Name == name {
			return &cs[i]
		}
	}
	return nil
}

// envOf resolves a container's environment: envFrom ConfigMaps (looked up in
// cms) first, then env, as the kubelet does.
func envOf(t *testing.T, where string, c *corev1.Container, cms []*corev1.ConfigMap) map[string]string {
	t.Helper()
	env := map[string]string{}
	for _, ef := range c.EnvFrom {
		if ef.ConfigMapRef == nil {
			t.Errorf("%s: envFrom without configMapRef", where)
			continue
		}
		found := false
		for _, cm := range cms {
			if cm.Name == ef.ConfigMapRef.Name {
				found = true
				for k, v := range cm.Data {
					env[ef.Prefix+k] = v
				}
			}
		}
		if !found {
			t.Errorf("%s: envFrom ConfigMap %q not found", where, ef.ConfigMapRef.Name)
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			t.Errorf("%s: env %s: valueFrom not expected", where, e.Name)
		}
		env[e.Name] = e.Value
	}
	return env
}

func checkHTTPProbe(t *testing.T, where, kind string, p *corev1.Probe, path string) {
	t.Helper()
	if p == nil {
		t.Errorf("%s: no %s probe", where, kind)
		return
	}
	if p.HTTPGet == nil {
		t.Errorf("%s: %s probe is not httpGet", where, kind)
		return
	}
	if p.HTTPGet.Path != path {
		t.Errorf("%s: %s probe path %q, want %q", where, kind, p.HTTPGet.Path, path)
	}
	if p.HTTPGet.Port != intstr.FromString(adminPortName) {
		t.Errorf("%s: %s probe port %v, want the named port %q", where, kind, p.HTTPGet.Port, adminPortName)
	}
}

// checkRestricted checks the "restricted" Pod Security Standard settings on
// natkeep's container.
func checkRestricted(t *testing.T, where string, sc *corev1.SecurityContext) {
	t.Helper()
	if sc == nil {
		t.Errorf("%s: no securityContext", where)
		return
	}
	if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("%s: runAsNonRoot is not true", where)
	}
	if sc.RunAsUser == nil || *sc.RunAsUser != nonrootUID {
		t.Errorf("%s: runAsUser is not %d", where, nonrootUID)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s: readOnlyRootFilesystem is not true", where)
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s: allowPrivilegeEscalation is not false", where)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s: privileged", where)
	}
	if sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) != 0 {
		t.Errorf("%s: capabilities %+v, want drop [ALL] and no add (natkeep needs none)", where, sc.Capabilities)
	}
	if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: seccompProfile is not RuntimeDefault", where)
	}
}

func checkPodSecurity(t *testing.T, where string, spec *corev1.PodSpec) {
	t.Helper()
	psc := spec.SecurityContext
	if psc == nil {
		t.Errorf("%s: no pod securityContext", where)
		return
	}
	if psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot {
		t.Errorf("%s: pod runAsNonRoot is not true", where)
	}
	if psc.RunAsUser == nil || *psc.RunAsUser == 0 {
		t.Errorf("%s: pod runAsUser unset or root", where)
	}
	if psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("%s: pod seccompProfile is not RuntimeDefault", where)
	}
	// Every container, not only natkeep, must satisfy "restricted".
	for _, c := range slices.Concat(spec.InitContainers, spec.Containers) {
		sc := c.SecurityContext
		if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
			sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") {
			t.Errorf("%s: container %s does not set allowPrivilegeEscalation false and drop ALL", where, c.Name)
		}
	}
}

// checkNatkeepContainer checks natkeep's container wherever it sits and
// returns its environment.
func checkNatkeepContainer(t *testing.T, where string, c *corev1.Container, cms []*corev1.ConfigMap) map[string]string {
	t.Helper()
	if c.Image == "" {
		t.Errorf("%s: no image", where)
	}
	if len(c.Command) != 0 {
		t.Errorf("%s: command %v overrides the image's /natkeep entrypoint", where, c.Command)
	}
	var admin *corev1.ContainerPort
	for i := range c.Ports {
		if c.Ports[i].Name == adminPortName {
			admin = &c.Ports[i]
		}
	}
	if admin == nil || admin.ContainerPort != adminPort || (admin.Protocol != "" && admin.Protocol != corev1.ProtocolTCP) {
		t.Errorf("%s: no TCP port named %q on %d: %+v", where, adminPortName, adminPort, c.Ports)
	}
	checkHTTPProbe(t, where, "readiness", c.ReadinessProbe, "/readyz")
	checkHTTPProbe(t, where, "liveness", c.LivenessProbe, "/healthz")
	if c.StartupProbe != nil {
		checkHTTPProbe(t, where, "startup", c.StartupProbe, "/readyz")
	}

	res := c.Resources
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		if q, ok := res.Requests[r]; !ok || q.IsZero() {
			t.Errorf("%s: no %s request", where, r)
		}
	}
	lim, ok := res.Limits[corev1.ResourceMemory]
	if !ok || lim.IsZero() {
		t.Errorf("%s: no memory limit", where)
	} else if req := res.Requests[corev1.ResourceMemory]; lim.Cmp(req) < 0 {
		t.Errorf("%s: memory limit %s below request %s", where, lim.String(), req.String())
	} else if lim.Cmp(resource.MustParse("1Gi")) > 0 {
		t.Errorf("%s: memory limit %s is not small", where, lim.String())
	}

	checkRestricted(t, where, c.SecurityContext)
	return envOf(t, where, c, cms)
}

func checkGrace(t *testing.T, where string, spec *corev1.PodSpec, drain time.Duration) {
	t.Helper()
	if spec.TerminationGracePeriodSeconds == nil {
		t.Errorf("%s: terminationGracePeriodSeconds unset (default 30s)", where)
		return
	}
	grace := time.Duration(*spec.TerminationGracePeriodSeconds) * time.Second
	if grace <= drain || grace <= defaultDrain {
		t.Errorf("%s: terminationGracePeriodSeconds %v does not exceed the drain timeout %v", where, grace, drain)
	}
}

func checkScrapeAnnotations(t *testing.T, where string, ann map[string]string) {
	t.Helper()
	want := map[string]string{
		"prometheus.io/scrape": "true",
		"prometheus.io/port":   strconv.Itoa(adminPort),
		"prometheus.io/path":   "/metrics",
	}
	for k, v := range want {
		if ann[k] != v {
			t.Errorf("%s: pod annotation %s=%q, want %q", where, k, ann[k], v)
		}
	}
}

// onlyDeployment returns the single Deployment among objs.
func onlyDeployment(t *testing.T, where string, objs k8sObjects) *appsv1.Deployment {
	t.Helper()
	if len(objs.deployments) != 1 {
		t.Fatalf("%s: %d Deployments, want 1", where, len(objs.deployments))
	}
	d := objs.deployments[0]
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		t.Fatalf("%s: selector: %v", where, err)
	}
	if sel.Empty() || !sel.Matches(labels.Set(d.Spec.Template.Labels)) {
		t.Errorf("%s: selector %v does not match the pod template labels %v", where, sel, d.Spec.Template.Labels)
	}
	return d
}

// checkNativeSidecarDeployment checks a Deployment that runs natkeep as a
// native sidecar next to the app.
func checkNativeSidecarDeployment(t *testing.T, where string, d *appsv1.Deployment, cms []*corev1.ConfigMap) {
	t.Helper()
	spec := &d.Spec.Template.Spec
	if findContainer(spec.Containers, sidecarName) != nil {
		t.Errorf("%s: natkeep is a regular container, want a native sidecar", where)
	}
	c := findContainer(spec.InitContainers, sidecarName)
	if c == nil {
		t.Fatalf("%s: no init container %q", where, sidecarName)
	}
	if c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("%s: natkeep init container restartPolicy is not Always: not a native sidecar", where)
	}
	if c.StartupProbe == nil {
		t.Errorf("%s: no startup probe: the app could start before natkeep listens", where)
	}
	if len(spec.Containers) == 0 {
		t.Errorf("%s: no app container", where)
	}
	env := checkNatkeepContainer(t, where, c, cms)
	drain := checkEnv(t, where, env)
	checkGrace(t, where, spec, drain)
	checkScrapeAnnotations(t, where, d.Spec.Template.Annotations)
}

func TestKubernetesNativeSidecar(t *testing.T) {
	const path = "kubernetes/natkeep-native-sidecar.yaml"
	objs := decodeK8sFile(t, path)
	d := onlyDeployment(t, path, objs)
	checkNativeSidecarDeployment(t, path, d, objs.configMaps)
	checkPodSecurity(t, path, &d.Spec.Template.Spec)
	checkAppUsesLoopback(t, path, &d.Spec.Template.Spec)
}

func TestKubernetesLegacySidecar(t *testing.T) {
	const path = "kubernetes/natkeep-sidecar-legacy.yaml"
	objs := decodeK8sFile(t, path)
	d := onlyDeployment(t, path, objs)
	spec := &d.Spec.Template.Spec
	if findContainer(spec.InitContainers, sidecarName) != nil {
		t.Errorf("%s: natkeep is an init container; this variant is for clusters without native sidecars", path)
	}
	for _, c := range spec.InitContainers {
		if c.RestartPolicy != nil {
			t.Errorf("%s: init container %s sets restartPolicy (needs Kubernetes >= 1.29)", path, c.Name)
		}
	}
	if len(spec.Containers) < 2 {
		t.Fatalf("%s: want natkeep and the app in containers, got %d containers", path, len(spec.Containers))
	}
	// Listed first: the kubelet starts containers in order.
	if spec.Containers[0].Name != sidecarName {
		t.Errorf("%s: natkeep is not the first container", path)
	}
	c := findContainer(spec.Containers, sidecarName)
	if c == nil {
		t.Fatalf("%s: no container %q", path, sidecarName)
	}
	if c.RestartPolicy != nil {
		t.Errorf("%s: a regular container cannot set restartPolicy", path)
	}
	env := checkNatkeepContainer(t, path, c, objs.configMaps)
	drain := checkEnv(t, path, env)
	checkGrace(t, path, spec, drain)
	checkPodSecurity(t, path, spec)
	checkScrapeAnnotations(t, path, d.Spec.Template.Annotations)
	checkAppUsesLoopback(t, path, spec)
}

// checkAppUsesLoopback checks that natkeep's route listeners are on loopback
// (private to the pod) and that the app is pointed at 127.0.0.1.
func checkAppUsesLoopback(t *testing.T, where string, spec *corev1.PodSpec) {
	t.Helper()
	c := findContainer(slices.Concat(spec.InitContainers, spec.Containers), sidecarName)
	for _, e := range c.Env {
		if e.Name != "NATKEEP_ROUTES" {
			continue
		}
		for r := range strings.SplitSeq(e.Value, ",") {
			u, err := url.Parse(r)
			if err == nil && u.Hostname() != "127.0.0.1" && u.Hostname() != "::1" {
				t.Errorf("%s: route %q listens beyond loopback", where, r)
			}
		}
	}
	usesLoopback := false
	for _, app := range spec.Containers {
		if app.Name == sidecarName {
			continue
		}
		for _, e := range app.Env {
			if strings.HasPrefix(e.Value, "127.0.0.1") {
				usesLoopback = true
			}
		}
	}
	if !usesLoopback {
		t.Errorf("%s: the app is not pointed at natkeep on 127.0.0.1", where)
	}
}

// decodeKustomization strictly decodes a kustomization.yaml.
func decodeKustomization(t *testing.T, path string) *kusttypes.Kustomization {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	k := new(kusttypes.Kustomization)
	if err := yaml.UnmarshalStrict(data, k); err != nil {
		t.Fatalf("%s: strict decoding: %v", path, err)
	}
	return k
}

func TestKustomizeComponentFiles(t *testing.T) {
	comp := decodeKustomization(t, "kubernetes/component/kustomization.yaml")
	if comp.Kind != kusttypes.ComponentKind || comp.APIVersion != kusttypes.ComponentVersion {
		t.Errorf("component: %s %s, want %s %s", comp.APIVersion, comp.Kind, kusttypes.ComponentVersion, kusttypes.ComponentKind)
	}
	if len(comp.Patches) != 1 || comp.Patches[0].Target == nil || comp.Patches[0].Target.Kind != "Deployment" {
		t.Fatalf("component: want one patch targeting Deployments, got %+v", comp.Patches)
	}
	// The patch itself must be a valid, strictly decoded Deployment fragment.
	patch := decodeK8sFile(t, filepath.Join("kubernetes/component", comp.Patches[0].Path))
	if len(patch.deployments) != 1 {
		t.Fatalf("component patch: want one Deployment")
	}
	c := findContainer(patch.deployments[0].Spec.Template.Spec.InitContainers, sidecarName)
	if c == nil || c.RestartPolicy == nil || *c.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("component patch: natkeep is not a native sidecar init container")
	}

	ex := decodeKustomization(t, "kubernetes/example/kustomization.yaml")
	if ex.Kind != kusttypes.KustomizationKind {
		t.Errorf("example: kind %q", ex.Kind)
	}
	if !slices.Contains(ex.Components, "../component") {
		t.Errorf("example: does not use ../component: %v", ex.Components)
	}
}

// TestKustomizeExample builds deploy/kubernetes/example with kustomize's own
// library, as `kubectl kustomize` would, and checks the result.
func TestKustomizeExample(t *testing.T) {
	const dir = "kubernetes/example"
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	m, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		t.Fatalf("kustomize build %s: %v", dir, err)
	}
	out, err := m.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	objs := decodeK8s(t, dir+" (built)", out)
	d := onlyDeployment(t, dir, objs)
	if len(objs.configMaps) != 1 {
		t.Fatalf("%s: %d ConfigMaps, want natkeep's one", dir, len(objs.configMaps))
	}
	cm := objs.configMaps[0]
	if !strings.HasPrefix(cm.Name, "natkeep-") {
		t.Errorf("%s: ConfigMap %q has no content-hash suffix", dir, cm.Name)
	}
	checkNativeSidecarDeployment(t, dir, d, objs.configMaps)
	checkPodSecurity(t, dir, &d.Spec.Template.Spec)
	checkAppUsesLoopback(t, dir, &d.Spec.Template.Spec)
	c := findContainer(d.Spec.Template.Spec.InitContainers, sidecarName)
	if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef.Name != cm.Name {
		t.Errorf("%s: natkeep's envFrom does not name the generated ConfigMap %q", dir, cm.Name)
	}
	// The app container survived the patch.
	if findContainer(d.Spec.Template.Spec.Containers, "app") == nil {
		t.Errorf("%s: the app container is gone", dir)
	}
	if testing.Verbose() {
		t.Logf("kustomize build output:\n%s", out)
	}
}

// ---------------------------------------------------------------- Compose

func loadCompose(t *testing.T, path string) *composetypes.Project {
	t.Helper()
	abs, err := filepath.Abs(path)
	if err != nil {
		t.Fatal(err)
	}
	details := composetypes.ConfigDetails{
		WorkingDir:  filepath.Dir(abs),
		ConfigFiles: []composetypes.ConfigFile{{Filename: abs}},
		Environment: composetypes.Mapping{},
	}
	name := "natkeep-test-" + strings.TrimSuffix(strings.TrimSuffix(filepath.Base(path), ".yaml"), ".compose")
	p, err := loader.LoadWithContext(context.Background(), details, func(o *loader.Options) {
		o.SetProjectName(name, true)
		o.SkipValidation = false // the Compose Specification's JSON schema
		o.SkipConsistencyCheck = false
	})
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return p
}

func composeEnv(svc composetypes.ServiceConfig) map[string]string {
	env := map[string]string{}
	for k, v := range svc.Environment {
		if v != nil {
			env[k] = *v
		}
	}
	return env
}

func checkComposeHardening(t *testing.T, where string, svc composetypes.ServiceConfig, drain time.Duration) {
	t.Helper()
	if !svc.ReadOnly {
		t.Errorf("%s: read_only is not true", where)
	}
	if !slices.Contains(svc.CapDrop, "ALL") || len(svc.CapAdd) != 0 {
		t.Errorf("%s: cap_drop %v cap_add %v, want drop ALL and no add", where, svc.CapDrop, svc.CapAdd)
	}
	if !slices.Contains(svc.SecurityOpt, "no-new-privileges:true") {
		t.Errorf("%s: security_opt %v lacks no-new-privileges:true", where, svc.SecurityOpt)
	}
	if svc.Privileged {
		t.Errorf("%s: privileged", where)
	}
	uid, _, _ := strings.Cut(svc.User, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("%s: user %q is not a numeric non-root uid", where, svc.User)
	}
	if svc.StopGracePeriod == nil || time.Duration(*svc.StopGracePeriod) <= drain || time.Duration(*svc.StopGracePeriod) <= defaultDrain {
		t.Errorf("%s: stop_grace_period %v does not exceed the drain timeout %v", where, svc.StopGracePeriod, drain)
	}
}

// checkComposeNatkeep checks the natkeep service and returns its environment
// and drain timeout.
func checkComposeNatkeep(t *testing.T, where string, svc composetypes.ServiceConfig) (map[string]string, time.Duration) {
	t.Helper()
	hc := svc.HealthCheck
	if hc == nil || hc.Disable {
		t.Fatalf("%s: no healthcheck", where)
	}
	if len(hc.Test) < 2 || hc.Test[0] != "CMD" || strings.Join(hc.Test[1:], " ") != healthcheckCommand {
		t.Errorf("%s: healthcheck test %q, want [CMD /natkeep healthcheck] (the image has no shell)", where, hc.Test)
	}
	if hc.Interval == nil || hc.Timeout == nil || time.Duration(*hc.Timeout) >= time.Duration(*hc.Interval) {
		t.Errorf("%s: healthcheck interval/timeout unset or timeout >= interval", where)
	}
	if len(svc.Entrypoint) != 0 {
		t.Errorf("%s: entrypoint %v overrides /natkeep", where, svc.Entrypoint)
	}
	env := composeEnv(svc)
	drain := checkEnv(t, where, env)
	checkComposeHardening(t, where, svc, drain)
	if u := svc.Ulimits["nofile"]; u == nil || max(u.Soft, u.Single) < 4096 {
		t.Errorf("%s: nofile ulimit not raised", where)
	}
	published := false
	for _, p := range svc.Ports {
		if p.Target == adminPort {
			published = true
			if p.HostIP != "127.0.0.1" {
				t.Errorf("%s: admin port published on %q, want 127.0.0.1 only", where, p.HostIP)
			}
		}
	}
	if !published {
		t.Errorf("%s: admin port %d not published", where, adminPort)
	}
	return env, drain
}

func TestComposeClient(t *testing.T) {
	const path = "compose/compose.yaml"
	p := loadCompose(t, path)
	nk, err := p.GetService(sidecarName)
	if err != nil {
		t.Fatal(err)
	}
	env, drain := checkComposeNatkeep(t, path+" natkeep", nk)

	app, err := p.GetService("app")
	if err != nil {
		t.Fatal(err)
	}
	dep, ok := app.DependsOn[sidecarName]
	if !ok || dep.Condition != composetypes.ServiceConditionHealthy {
		t.Errorf("%s: app depends_on natkeep %+v, want condition service_healthy", path, dep)
	}
	if app.NetworkMode != "service:"+sidecarName {
		t.Errorf("%s: app network_mode %q, want service:natkeep", path, app.NetworkMode)
	}
	// compose.yaml also runs with docker-compose 1.29 (Debian 12's; see
	// TestComposeV1Schema and TestContainerImage), which rejects
	// depends_on.restart and a top-level name. Its comment tells how the app
	// follows a recreated natkeep into its new namespace instead.
	if dep.Restart {
		t.Errorf("%s: app depends_on natkeep with restart: true, which docker-compose 1.29 rejects", path)
	}
	if raw := readYAMLMap(t, path); raw["name"] != nil {
		t.Errorf("%s: top-level name, which docker-compose 1.29 rejects (use -p)", path)
	}
	if len(app.Ports) != 0 {
		t.Errorf("%s: ports on a service with network_mode service: belong on natkeep", path)
	}
	checkComposeHardening(t, path+" app", app, drain)
	for r := range strings.SplitSeq(env["NATKEEP_ROUTES"], ",") {
		if u, err := url.Parse(r); err == nil && u.Hostname() != "127.0.0.1" {
			t.Errorf("%s: route %q listens beyond loopback although the app shares natkeep's namespace", path, r)
		}
	}
	appPointed := false
	for _, v := range composeEnv(app) {
		if strings.HasPrefix(v, "127.0.0.1") {
			appPointed = true
		}
	}
	if !appPointed {
		t.Errorf("%s: the app is not pointed at natkeep on 127.0.0.1", path)
	}
}

// readYAMLMap decodes a YAML file's top level.
func readYAMLMap(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(data, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// TestComposeV1Schema validates compose.yaml, alone and with the container
// test's override, with docker-compose 1.29's own schema (no engine needed).
func TestComposeV1Schema(t *testing.T) {
	compose := needTool(t, composeBin, "docker-compose")
	env := []string{"NATKEEP_TEST_UPSTREAM_IMAGE=u", "NATKEEP_TEST_CLIENT_IMAGE=c", "COMPOSE_PROJECT_NAME="}
	for _, files := range [][]string{
		{"compose/compose.yaml"},
		{"compose/compose.yaml", "testdata/compose-e2e.yaml"},
	} {
		args := []string{"--project-name", "natkeep-schema"}
		for _, f := range files {
			args = append(args, "--file", f)
		}
		if _, err := runTool(t.Context(), 30*time.Second, env, compose, append(args, "config", "--quiet")...); err != nil {
			t.Errorf("docker-compose 1.29 rejects %v: %v", files, err)
		}
	}
}

func TestComposeResponder(t *testing.T) {
	const path = "compose/responder.compose.yaml"
	p := loadCompose(t, path)
	nk, err := p.GetService(sidecarName)
	if err != nil {
		t.Fatal(err)
	}
	env, drain := checkComposeNatkeep(t, path+" natkeep", nk)
	routes := env["NATKEEP_ROUTES"]
	if !strings.Contains(routes, "role=responder") {
		t.Fatalf("%s: no responder route in %q", path, routes)
	}
	u, err := url.Parse(routes)
	if err != nil {
		t.Fatal(err)
	}
	upHost, upPort, _ := net.SplitHostPort(strings.TrimPrefix(u.Path, "/"))
	server, err := p.GetService(upHost)
	if err != nil {
		t.Fatalf("%s: the responder's upstream %q is not a service: %v", path, upHost, err)
	}
	checkComposeHardening(t, path+" "+upHost, server, drain)
	if len(server.Ports) != 0 {
		t.Errorf("%s: %s publishes ports; clients must come through natkeep", path, upHost)
	}
	_, listenPort, _ := net.SplitHostPort(u.Host)
	published := false
	for _, pc := range nk.Ports {
		if strconv.Itoa(int(pc.Target)) == listenPort && pc.Protocol == "udp" {
			published = true
		}
	}
	if !published {
		t.Errorf("%s: natkeep's responder port %s/udp is not published", path, listenPort)
	}
	if upPort == "" {
		t.Errorf("%s: responder upstream has no port", path)
	}
}

// ---------------------------------------------------------------- Dockerfile

func TestDockerfile(t *testing.T) {
	const path = "../Dockerfile"
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("parsing %s: %v", path, err)
	}
	for _, w := range res.Warnings {
		t.Errorf("%s: parser warning: %s", path, w.Short)
	}
	// BuildKit's build checks (as `docker build --check` runs them) must be
	// clean too.
	var lint []string
	l := linter.New(&linter.Config{Warn: func(rule, desc, url, msg string, loc []parser.Range) {
		lint = append(lint, fmt.Sprintf("%s: %s", rule, msg))
	}})
	stages, _, err := instructions.Parse(res.AST, l)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, w := range lint {
		t.Errorf("%s: build check: %s", path, w)
	}
	if len(stages) < 2 {
		t.Fatalf("%s: %d stages, want a multi-stage build", path, len(stages))
	}

	builder := stages[0]
	if !strings.HasPrefix(builder.BaseName, "golang:1.26") {
		t.Errorf("%s: builder FROM %q, want golang:1.26*", path, builder.BaseName)
	}
	var runs []string
	for _, c := range builder.Commands {
		if r, ok := c.(*instructions.RunCommand); ok {
			runs = append(runs, strings.Join(r.CmdLine, " "))
		}
	}
	download := slices.IndexFunc(runs, func(s string) bool { return strings.Contains(s, "go mod download") })
	build := slices.IndexFunc(runs, func(s string) bool { return strings.Contains(s, "go build") })
	if download < 0 || build < 0 || download > build {
		t.Fatalf("%s: want a `go mod download` RUN before the `go build` RUN: %q", path, runs)
	}
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-s -w", "-X main.version=${VERSION}", "-X main.commit=${COMMIT}", "-o /out/natkeep", "./cmd/natkeep"} {
		if !strings.Contains(runs[build], want) {
			t.Errorf("%s: the go build RUN lacks %q: %s", path, want, runs[build])
		}
	}
	// Dependencies are cached in their own layer: only go.mod and go.sum are
	// copied before `go mod download`.
	for _, c := range builder.Commands {
		if r, ok := c.(*instructions.RunCommand); ok && strings.Contains(strings.Join(r.CmdLine, " "), "go mod download") {
			break
		}
		if cp, ok := c.(*instructions.CopyCommand); ok && !slices.Equal(cp.SourcePaths, []string{"go.mod", "go.sum"}) {
			t.Errorf("%s: COPY %v before go mod download busts its layer cache", path, cp.SourcePaths)
		}
	}
	argNames := map[string]bool{}
	for _, c := range builder.Commands {
		if a, ok := c.(*instructions.ArgCommand); ok {
			for _, kv := range a.Args {
				argNames[kv.Key] = true
			}
		}
	}
	if !argNames["VERSION"] || !argNames["COMMIT"] {
		t.Errorf("%s: builder stage does not declare ARG VERSION and COMMIT", path)
	}

	lex := shell.NewLex(res.EscapeToken)
	args := shell.EnvsFromSlice([]string{"VERSION=1.2.3", "COMMIT=0123abc"})
	buildArgs := func(word string) (string, error) {
		w, _, err := lex.ProcessWord(word, args)
		return w, err
	}

	// The default target (the last stage) builds from source on distroless.
	final := stages[len(stages)-1]
	base := final.BaseName
	switch {
	case strings.HasPrefix(base, "gcr.io/distroless/static") && strings.HasSuffix(base, ":nonroot"):
	case base == "scratch":
	default:
		t.Errorf("%s: final FROM %q, want distroless static :nonroot or scratch", path, base)
	}
	finalMeta := checkRuntimeStage(t, path, final, buildArgs)
	if !slices.Contains(finalMeta.copies, builder.Name+":/out/natkeep") {
		t.Errorf("%s: final stage does not COPY --from=%s /out/natkeep /natkeep", path, builder.Name)
	}

	// runtime-local takes a binary built outside from the context and needs
	// no other stage, so BuildKit pulls nothing for `--target runtime-local`.
	i := slices.IndexFunc(stages, func(s instructions.Stage) bool { return s.Name == localTarget })
	if i < 0 {
		t.Fatalf("%s: no stage %q", path, localTarget)
	}
	local := stages[i]
	if i == len(stages)-1 {
		t.Errorf("%s: %s is the last stage, so the default target: it needs a binary built beforehand", path, localTarget)
	}
	if local.BaseName != "scratch" {
		t.Errorf("%s: %s FROM %q, want scratch (nothing to pull)", path, localTarget, local.BaseName)
	}
	localMeta := checkRuntimeStage(t, path, local, buildArgs)
	if !slices.Equal(localMeta.copies, []string{":out/natkeep"}) {
		t.Errorf("%s: %s copies %q, want only out/natkeep from the context", path, localTarget, localMeta.copies)
	}
	// Both images behave alike: only where the binary comes from differs.
	localMeta.copies, finalMeta.copies = nil, nil
	if !reflect.DeepEqual(localMeta, finalMeta) {
		t.Errorf("%s: %s and the final stage differ:\n%s: %+v\nfinal: %+v", path, localTarget, localTarget, localMeta, finalMeta)
	}
}

// localTarget is the Dockerfile stage built without registry access.
const localTarget = "runtime-local"

// runtimeMeta is what a runtime stage sets.
type runtimeMeta struct {
	user       string
	entrypoint []string
	healthTest []string
	health     string // the whole HEALTHCHECK, to compare stages
	exposed    []string
	labels     map[string]string
	env        map[string]string
	copies     []string // "from:source" of COPYs to /natkeep
}

// checkRuntimeStage checks one stage that produces natkeep's image.
func checkRuntimeStage(t *testing.T, path string, stage instructions.Stage, buildArgs func(string) (string, error)) runtimeMeta {
	t.Helper()
	where := fmt.Sprintf("%s stage %q", path, stage.Name)
	m := runtimeMeta{labels: map[string]string{}, env: map[string]string{}}
	for _, c := range stage.Commands {
		switch c := c.(type) {
		case *instructions.UserCommand:
			m.user = c.User
		case *instructions.EntrypointCommand:
			if c.PrependShell {
				t.Errorf("%s: ENTRYPOINT in shell form; the image has no shell", where)
			}
			m.entrypoint = c.CmdLine
		case *instructions.HealthCheckCommand:
			m.healthTest, m.health = c.Health.Test, fmt.Sprintf("%+v", *c.Health)
			if c.Health.Interval <= 0 || c.Health.Timeout <= 0 || c.Health.StartPeriod <= 0 || c.Health.Timeout >= c.Health.Interval {
				t.Errorf("%s: HEALTHCHECK interval/timeout/start-period unset or timeout >= interval: %+v", where, c.Health)
			}
		case *instructions.ExposeCommand:
			m.exposed = append(m.exposed, c.Ports...)
		case *instructions.CopyCommand:
			if c.DestPath == "/natkeep" {
				for _, src := range c.SourcePaths {
					m.copies = append(m.copies, c.From+":"+src)
				}
			} else {
				t.Errorf("%s: COPY %v %s: only the binary belongs in the image", where, c.SourcePaths, c.DestPath)
			}
		case *instructions.LabelCommand:
			// Expand as BuildKit does, with the build args set.
			if err := c.Expand(buildArgs); err != nil {
				t.Fatalf("%s: LABEL: %v", where, err)
			}
			for _, kv := range c.Labels {
				m.labels[kv.Key] = kv.Value
			}
		case *instructions.EnvCommand:
			for _, kv := range c.Env {
				if strings.HasPrefix(kv.Key, "NATKEEP_") && !knownEnv[kv.Key] {
					t.Errorf("%s: ENV %s: unknown natkeep variable", where, kv.Key)
				}
				m.env[kv.Key] = kv.Value
			}
		case *instructions.RunCommand:
			t.Errorf("%s: RUN in a runtime stage: the base has no shell", where)
		}
	}
	uid, _, _ := strings.Cut(m.user, ":")
	if n, err := strconv.Atoi(uid); m.user == "" || (err == nil && n == 0) || uid == "root" {
		t.Errorf("%s: USER %q is not non-root", where, m.user)
	} else if err != nil {
		t.Errorf("%s: USER %q is not numeric; Kubernetes runAsNonRoot cannot verify a name", where, m.user)
	}
	if !slices.Equal(m.entrypoint, []string{"/natkeep"}) {
		t.Errorf("%s: ENTRYPOINT %q, want [\"/natkeep\"]", where, m.entrypoint)
	}
	if !slices.Equal(m.healthTest, []string{"CMD", "/natkeep", "healthcheck"}) {
		t.Errorf("%s: HEALTHCHECK %q, want CMD [\"/natkeep\", \"healthcheck\"]", where, m.health)
	}
	if !slices.Contains(m.exposed, strconv.Itoa(adminPort)+"/tcp") && !slices.Contains(m.exposed, strconv.Itoa(adminPort)) {
		t.Errorf("%s: EXPOSE %v lacks %d", where, m.exposed, adminPort)
	}
	for _, l := range []string{"title", "description", "source", "licenses", "version", "revision"} {
		if m.labels["org.opencontainers.image."+l] == "" {
			t.Errorf("%s: no org.opencontainers.image.%s label", where, l)
		}
	}
	if m.labels["org.opencontainers.image.version"] != "1.2.3" || m.labels["org.opencontainers.image.revision"] != "0123abc" {
		t.Errorf("%s: version/revision labels are not the VERSION/COMMIT build args: %q", where, m.labels)
	}
	return m
}

func TestDockerignore(t *testing.T) {
	f, err := os.Open("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	patterns, err := ignorefile.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	for path, wantExcluded := range map[string]bool{
		"go.mod":                false,
		"go.sum":                false,
		"cmd/natkeep/main.go":   false,
		"relay/route.go":        false,
		".git/HEAD":             true,
		"natkeep":               true,
		"deploy/deploy_test.go": true,
		"relay/relay_test.go":   true,
		"deploy/compose/x.yaml": true,
		"LICENSE":               true,
		// The one build output the runtime-local target copies.
		"out/natkeep":     false,
		"out/other":       true,
		"out/sub/natkeep": true,
	} {
		excluded, err := pm.MatchesOrParentMatches(path)
		if err != nil {
			t.Fatal(err)
		}
		if excluded != wantExcluded {
			t.Errorf(".dockerignore: %s excluded=%v, want %v", path, excluded, wantExcluded)
		}
	}
}
