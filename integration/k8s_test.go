package integration

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	sigsjson "sigs.k8s.io/json"
	sigsyaml "sigs.k8s.io/yaml"
)

// k8sDir holds the Kubernetes manifests, relative to this package.
var k8sDir = filepath.Join("..", "deploy", "k8s")

// k8sKinds are the kinds the manifests may hold, each decoded into its
// k8s.io/api type.
var k8sKinds = map[string]func() any{
	"apps/v1/StatefulSet":           func() any { return new(appsv1.StatefulSet) },
	"v1/Service":                    func() any { return new(corev1.Service) },
	"v1/Secret":                     func() any { return new(corev1.Secret) },
	"v1/ConfigMap":                  func() any { return new(corev1.ConfigMap) },
	"policy/v1/PodDisruptionBudget": func() any { return new(policyv1.PodDisruptionBudget) },
}

// k8sDecode decodes one YAML document strictly into its API type, as an
// API server with strict field validation does: an unknown, misspelt or
// wrongly capitalised field, a duplicate key, a malformed quantity or an
// unknown kind is an error. (encoding/json with DisallowUnknownFields
// would let a field with the wrong case through: it matches names
// case-insensitively.) An empty document gives nil, nil.
func k8sDecode(doc []byte) (any, error) {
	j, err := sigsyaml.YAMLToJSONStrict(doc)
	if err != nil {
		return nil, err
	}
	if t := bytes.TrimSpace(j); len(t) == 0 || bytes.Equal(t, []byte("null")) {
		return nil, nil
	}
	var tm metav1.TypeMeta
	if err := json.Unmarshal(j, &tm); err != nil {
		return nil, err
	}
	newObj, ok := k8sKinds[tm.APIVersion+"/"+tm.Kind]
	if !ok {
		return nil, fmt.Errorf("unknown kind %q of apiVersion %q", tm.Kind, tm.APIVersion)
	}
	obj := newObj()
	strict, err := sigsjson.UnmarshalStrict(j, obj)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", tm.Kind, err)
	}
	if len(strict) > 0 {
		return nil, fmt.Errorf("%s: %w", tm.Kind, errors.Join(strict...))
	}
	return obj, nil
}

var k8sDocSep = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?$`)

// k8sManifests is everything in deploy/k8s, decoded.
type k8sManifests struct {
	files        []string                   // manifest files (not kustomization.yaml)
	kinds        map[string][]string        // file → kinds of its objects
	statefulSets []*appsv1.StatefulSet      // in file order
	services     map[string]*corev1.Service // by name
	secrets      map[string]*corev1.Secret
	configMaps   map[string]*corev1.ConfigMap
	pdbs         []*policyv1.PodDisruptionBudget
	secretFile   map[string]string // Secret name → file
}

func loadK8sManifests(t *testing.T) *k8sManifests {
	t.Helper()
	m := &k8sManifests{
		kinds:      map[string][]string{},
		services:   map[string]*corev1.Service{},
		secrets:    map[string]*corev1.Secret{},
		configMaps: map[string]*corev1.ConfigMap{},
		secretFile: map[string]string{},
	}
	entries, err := os.ReadDir(k8sDir)
	if err != nil {
		t.Fatalf("read %s: %v", k8sDir, err)
	}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) || name == "kustomization.yaml" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(k8sDir, name))
		if err != nil {
			t.Fatal(err)
		}
		m.files = append(m.files, name)
		for i, doc := range k8sDocSep.Split(string(b), -1) {
			obj, err := k8sDecode([]byte(doc))
			if err != nil {
				t.Errorf("%s, document %d: %v", name, i+1, err)
				continue
			}
			var kind, objName string
			switch o := obj.(type) {
			case nil:
				continue
			case *appsv1.StatefulSet:
				kind, objName = "StatefulSet", o.Name
				m.statefulSets = append(m.statefulSets, o)
			case *corev1.Service:
				kind, objName = "Service", o.Name
				if m.services[o.Name] != nil {
					t.Errorf("%s: Service %s defined twice", name, o.Name)
				}
				m.services[o.Name] = o
			case *corev1.Secret:
				kind, objName = "Secret", o.Name
				if m.secrets[o.Name] != nil {
					t.Errorf("%s: Secret %s defined twice", name, o.Name)
				}
				m.secrets[o.Name], m.secretFile[o.Name] = o, name
			case *corev1.ConfigMap:
				kind, objName = "ConfigMap", o.Name
				if m.configMaps[o.Name] != nil {
					t.Errorf("%s: ConfigMap %s defined twice", name, o.Name)
				}
				m.configMaps[o.Name] = o
			case *policyv1.PodDisruptionBudget:
				kind, objName = "PodDisruptionBudget", o.Name
				m.pdbs = append(m.pdbs, o)
			}
			if objName == "" {
				t.Errorf("%s, document %d: %s without metadata.name", name, i+1, kind)
			}
			m.kinds[name] = append(m.kinds[name], kind)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return m
}

// secretKeys returns the keys of a Secret (data and stringData).
func (m *k8sManifests) secretKeys(name string) map[string]bool {
	s := m.secrets[name]
	if s == nil {
		return nil
	}
	keys := map[string]bool{}
	for k := range s.Data {
		keys[k] = true
	}
	for k := range s.StringData {
		keys[k] = true
	}
	return keys
}

// configMapKeys returns the keys of a ConfigMap (data and binaryData).
func (m *k8sManifests) configMapKeys(name string) map[string]bool {
	c := m.configMaps[name]
	if c == nil {
		return nil
	}
	keys := map[string]bool{}
	for k := range c.Data {
		keys[k] = true
	}
	for k := range c.BinaryData {
		keys[k] = true
	}
	return keys
}

// isPlaceholderSecret reports whether every value of the Secret is a
// placeholder ("REPLACE..."): a template, never to be deployed as it is.
func isPlaceholderSecret(s *corev1.Secret) bool {
	if len(s.Data)+len(s.StringData) == 0 {
		return false
	}
	for _, v := range s.Data {
		if !strings.HasPrefix(string(v), "REPLACE") {
			return false
		}
	}
	for _, v := range s.StringData {
		if !strings.HasPrefix(v, "REPLACE") {
			return false
		}
	}
	return true
}

// k8sExpand expands $(VAR) references as the kubelet does in args and env
// values: a defined variable is replaced, $$ is a literal $, an undefined
// reference stays as it is (and is reported in missing).
func k8sExpand(s string, vars map[string]string) (out string, missing []string) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 == len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
			continue
		case '(':
			if end := strings.IndexByte(s[i+2:], ')'); end >= 0 {
				name := s[i+2 : i+2+end]
				if v, ok := vars[name]; ok {
					b.WriteString(v)
				} else {
					b.WriteString(s[i : i+3+end])
					missing = append(missing, name)
				}
				i += 2 + end
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String(), missing
}

// agentFlags runs `mcpcluster agent -h` and returns its flags, each with
// whether it takes a value (false: a boolean flag).
func agentFlags(t *testing.T) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, binary, "agent", "-h").CombinedOutput()
	if err != nil {
		t.Fatalf("%s agent -h: %v\n%s", binary, err, out)
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z0-9-]+)( value)?$`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = m[2] != ""
	}
	if len(flags) < 10 || !flags["data-dir"] {
		t.Fatalf("agent -h lists %d flags, not the usual ones; output:\n%s", len(flags), out)
	}
	return flags
}

// k8sFlag is one "--name=value" argument of the container.
type k8sFlag struct{ name, value string }

// parseAgentArgs checks the container's args are `agent` and then flags of
// the agent, each one list item: --name=value, or --name for a boolean.
func parseAgentArgs(t *testing.T, args []string, known map[string]bool) []k8sFlag {
	t.Helper()
	if len(args) == 0 || args[0] != "agent" {
		t.Fatalf("container args %q: want the agent subcommand first (the image's entrypoint is /mcpcluster)", args)
	}
	var flags []k8sFlag
	for _, a := range args[1:] {
		name, value, hasValue := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		takesValue, ok := known[name]
		switch {
		case !strings.HasPrefix(a, "--"):
			t.Errorf("arg %q: want --flag=value", a)
		case !ok:
			t.Errorf("arg %q: %q is not a flag of `mcpcluster agent` (see agent -h)", a, name)
		case takesValue && !hasValue:
			t.Errorf("arg %q: write --%s=VALUE as one item", a, name)
		case !takesValue && hasValue && value != "true" && value != "false":
			t.Errorf("arg %q: boolean flag with value %q", a, value)
		default:
			flags = append(flags, k8sFlag{name, value})
		}
	}
	return flags
}

// flagValues returns the values given to one flag.
func flagValues(flags []k8sFlag, name string) []string {
	var vs []string
	for _, f := range flags {
		if f.name == name {
			vs = append(vs, f.value)
		}
	}
	return vs
}

// k8sKustomization is the part of kustomization.yaml these manifests use;
// anything else in the file is an error.
type k8sKustomization struct {
	APIVersion string   `yaml:"apiVersion"`
	Kind       string   `yaml:"kind"`
	Resources  []string `yaml:"resources"`
}

// k8sProvider mirrors the agent's provider settings (ProviderConfig in
// cmd/mcpcluster/config.go), for a strict decoding of the ConfigMap.
type k8sProvider struct {
	Name         string            `yaml:"name"`
	Type         string            `yaml:"type"`
	Command      []string          `yaml:"command"`
	Env          []string          `yaml:"env"`
	URL          string            `yaml:"url"`
	Headers      map[string]string `yaml:"headers"`
	Prefix       string            `yaml:"prefix"`
	Placement    string            `yaml:"placement"`
	Replicas     int               `yaml:"replicas"`
	CacheTTL     string            `yaml:"cache_ttl"`
	ToolCacheTTL map[string]string `yaml:"tool_cache_ttl"`
}

func yamlStrict(b []byte, v any) error {
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	return dec.Decode(v)
}

// TestKubernetesManifests checks deploy/k8s: every manifest decodes
// strictly into its Kubernetes API type, the objects reference each other
// correctly, the container's flags are the agent's own, and the agent
// accepts the pod's args, environment and mounted files (made with
// `mcpcluster secrets init`, as deploy/k8s/README.md says) up to the one
// security piece the test withholds so that it does not start.
func TestKubernetesManifests(t *testing.T) {
	t.Run("TyposFail", func(t *testing.T) {
		const good = `
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: x}
spec:
  serviceName: x
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec:
      containers:
        - name: x
          image: x
          securityContext: {readOnlyRootFilesystem: true}
          resources: {limits: {memory: 1Gi}}
`
		if _, err := k8sDecode([]byte(good)); err != nil {
			t.Fatalf("the untouched StatefulSet does not decode: %v", err)
		}
		for _, c := range []struct{ name, from, to string }{
			{"misspelt field", "serviceName:", "servceName:"},
			{"wrong case", "serviceName:", "ServiceName:"},
			{"nested misspelt field", "readOnlyRootFilesystem", "readOnlyRootFilesytem"},
			{"field at the wrong level", "  serviceName: x", "  serviceName: x\n  containers: []"},
			{"duplicate key", "  serviceName: x", "  serviceName: x\n  serviceName: y"},
			{"bad quantity", "memory: 1Gi", "memory: 1GB-ish"},
			{"unknown kind", "kind: StatefulSet", "kind: StatefulSett"},
			{"unknown apiVersion", "apps/v1", "apps/v1beta9"},
		} {
			bad := strings.Replace(good, c.from, c.to, 1)
			if bad == good {
				t.Fatalf("%s: %q not in the sample", c.name, c.from)
			}
			if _, err := k8sDecode([]byte(bad)); err == nil {
				t.Errorf("%s (%q → %q): decoded without error", c.name, c.from, c.to)
			} else {
				t.Logf("%s: %v", c.name, err)
			}
		}
		if err := yamlStrict([]byte("- name: x\n  typ: builtin\n"), &[]k8sProvider{}); err == nil {
			t.Error("a misspelt provider key decoded without error")
		}
	})

	m := loadK8sManifests(t)
	flagsOfAgent := agentFlags(t)

	if len(m.statefulSets) != 1 {
		t.Fatalf("want one StatefulSet, found %d", len(m.statefulSets))
	}
	sts := m.statefulSets[0]
	spec := &sts.Spec
	pod := &spec.Template.Spec
	podLabels := labels.Set(spec.Template.Labels)
	if spec.Replicas == nil || *spec.Replicas < 1 {
		t.Fatalf("StatefulSet %s: replicas not set", sts.Name)
	}
	replicas := int(*spec.Replicas)
	podNames := make([]string, replicas)
	for i := range podNames {
		podNames[i] = fmt.Sprintf("%s-%d", sts.Name, i)
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("StatefulSet %s: want one container, found %d", sts.Name, len(pod.Containers))
	}
	ctr := &pod.Containers[0]

	// selectsPods reports whether a label selector selects the pod template.
	selectsPods := func(t *testing.T, what string, sel *metav1.LabelSelector) {
		t.Helper()
		s, err := metav1.LabelSelectorAsSelector(sel)
		switch {
		case err != nil:
			t.Errorf("%s: selector: %v", what, err)
		case sel == nil || s.Empty():
			t.Errorf("%s: empty selector (selects everything or nothing)", what)
		case !s.Matches(podLabels):
			t.Errorf("%s: selector %s does not select the pod labels %v", what, s, podLabels)
		}
	}

	// Container ports by name, and the one a probe or Service port targets.
	ports := map[string]corev1.ContainerPort{}
	for _, p := range ctr.Ports {
		if p.Name == "" {
			t.Errorf("container port %d has no name", p.ContainerPort)
			continue
		}
		if _, dup := ports[p.Name]; dup {
			t.Errorf("container port name %q used twice", p.Name)
		}
		ports[p.Name] = p
	}
	targetPort := func(t *testing.T, what string, tp intstr.IntOrString, proto corev1.Protocol) (corev1.ContainerPort, bool) {
		t.Helper()
		if proto == "" {
			proto = corev1.ProtocolTCP
		}
		for _, p := range ctr.Ports {
			pp := cmp.Or(p.Protocol, corev1.ProtocolTCP)
			if (tp.Type == intstr.String && p.Name == tp.StrVal || tp.Type == intstr.Int && p.ContainerPort == tp.IntVal) && pp == proto {
				return p, true
			}
		}
		t.Errorf("%s: port %s/%s names no container port", what, tp.String(), proto)
		return corev1.ContainerPort{}, false
	}

	t.Run("Kustomization", func(t *testing.T) {
		b, err := os.ReadFile(filepath.Join(k8sDir, "kustomization.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		var k k8sKustomization
		if err := yamlStrict(b, &k); err != nil {
			t.Fatalf("kustomization.yaml: %v", err)
		}
		if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
			t.Errorf("kustomization.yaml: apiVersion %q kind %q", k.APIVersion, k.Kind)
		}
		listed := map[string]bool{}
		for _, r := range k.Resources {
			if listed[r] {
				t.Errorf("kustomization.yaml lists %s twice", r)
			}
			listed[r] = true
			if !slices.Contains(m.files, r) {
				t.Errorf("kustomization.yaml lists %s, which is not a manifest in %s", r, k8sDir)
			}
		}
		// Every manifest is deployed, except files of placeholder Secrets,
		// which must not be: they would start nodes with keys that are not keys.
		for _, f := range m.files {
			var placeholders, others int
			for name, file := range m.secretFile {
				if file == f && isPlaceholderSecret(m.secrets[name]) {
					placeholders++
				}
			}
			others = len(m.kinds[f]) - placeholders
			switch {
			case placeholders > 0 && listed[f]:
				t.Errorf("kustomization.yaml deploys %s, which holds placeholder Secrets", f)
			case placeholders > 0 && others > 0:
				t.Errorf("%s mixes placeholder Secrets with other objects: keep templates apart", f)
			case placeholders == 0 && !listed[f]:
				t.Errorf("%s is not in kustomization.yaml's resources", f)
			}
		}
	})

	t.Run("StatefulSet", func(t *testing.T) {
		selectsPods(t, "StatefulSet "+sts.Name, spec.Selector)
		if spec.PodManagementPolicy != appsv1.ParallelPodManagement {
			t.Errorf("podManagementPolicy %q: want Parallel, so the servers start together and bootstrap", spec.PodManagementPolicy)
		}
		headless := m.services[spec.ServiceName]
		switch {
		case headless == nil:
			t.Errorf("serviceName %q: no such Service", spec.ServiceName)
		case headless.Spec.ClusterIP != corev1.ClusterIPNone:
			t.Errorf("serviceName %q: Service is not headless (clusterIP %q)", spec.ServiceName, headless.Spec.ClusterIP)
		case !headless.Spec.PublishNotReadyAddresses:
			t.Errorf("headless Service %q: publishNotReadyAddresses must be true, or peers cannot find each other before they are ready", spec.ServiceName)
		}
		if pod.EnableServiceLinks == nil || *pod.EnableServiceLinks {
			t.Error("enableServiceLinks must be false: Services would put MCPCLUSTER_* variables, the agent's settings, in the environment")
		}
		if len(ctr.Command) > 0 {
			t.Errorf("container command %q: leave it to the image's entrypoint", ctr.Command)
		}
		if ctr.Image == "" {
			t.Error("container has no image")
		}

		// Security context: the image's non-root user, nothing more.
		psc, csc := pod.SecurityContext, ctr.SecurityContext
		if psc == nil || csc == nil {
			t.Fatal("pod and container need a securityContext")
		}
		nonRoot := psc.RunAsNonRoot
		if csc.RunAsNonRoot != nil {
			nonRoot = csc.RunAsNonRoot
		}
		if nonRoot == nil || !*nonRoot {
			t.Error("runAsNonRoot is not true")
		}
		for what, p := range map[string]*int64{"runAsUser": psc.RunAsUser, "runAsGroup": psc.RunAsGroup, "fsGroup": psc.FSGroup} {
			if p == nil || *p != 65532 {
				t.Errorf("pod securityContext %s: want 65532 (the image's user and the owner of /data and /secrets)", what)
			}
		}
		if csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
			t.Error("readOnlyRootFilesystem is not true")
		}
		if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
			t.Error("allowPrivilegeEscalation is not false")
		}
		if csc.Privileged != nil && *csc.Privileged {
			t.Error("privileged container")
		}
		if csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") || len(csc.Capabilities.Add) > 0 {
			t.Error("capabilities: want drop [ALL] and nothing added")
		}
		seccomp := psc.SeccompProfile
		if csc.SeccompProfile != nil {
			seccomp = csc.SeccompProfile
		}
		if seccomp == nil || seccomp.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Error("seccompProfile: want RuntimeDefault")
		}

		// Resources: requests and limits of CPU and memory.
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			req, okReq := ctr.Resources.Requests[r]
			lim, okLim := ctr.Resources.Limits[r]
			switch {
			case !okReq || !okLim || req.IsZero() || lim.IsZero():
				t.Errorf("resources: want a request and a limit of %s", r)
			case req.Cmp(lim) > 0:
				t.Errorf("resources: %s request %s above its limit %s", r, req.String(), lim.String())
			}
		}

		// Anti-affinity by host, selecting these pods.
		var spread bool
		if a := pod.Affinity; a != nil && a.PodAntiAffinity != nil {
			for _, w := range a.PodAntiAffinity.PreferredDuringSchedulingIgnoredDuringExecution {
				if w.PodAffinityTerm.TopologyKey == "kubernetes.io/hostname" {
					selectsPods(t, "podAntiAffinity", w.PodAffinityTerm.LabelSelector)
					spread = true
				}
			}
			for _, term := range a.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution {
				if term.TopologyKey == "kubernetes.io/hostname" {
					selectsPods(t, "podAntiAffinity", term.LabelSelector)
					spread = true
				}
			}
		}
		if !spread {
			t.Error("no pod anti-affinity by kubernetes.io/hostname")
		}

		// Probes on the HTTP port, without a token.
		for _, p := range []struct {
			what  string
			probe *corev1.Probe
			path  string
		}{{"readinessProbe", ctr.ReadinessProbe, "/readyz"}, {"livenessProbe", ctr.LivenessProbe, "/healthz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("%s: want an httpGet probe of %s", p.what, p.path)
				continue
			}
			if p.probe.HTTPGet.Path != p.path {
				t.Errorf("%s: path %q, want %s", p.what, p.probe.HTTPGet.Path, p.path)
			}
			if cp, ok := targetPort(t, p.what, p.probe.HTTPGet.Port, corev1.ProtocolTCP); ok && cp.Name != "http" {
				t.Errorf("%s: port %q is not the http port", p.what, cp.Name)
			}
		}

		// Volumes: every mount names a volume or a claim template, every
		// volume is mounted, Secrets and ConfigMaps read-only.
		volumes := map[string]*corev1.Volume{}
		for i := range pod.Volumes {
			v := &pod.Volumes[i]
			if volumes[v.Name] != nil {
				t.Errorf("volume %q defined twice", v.Name)
			}
			volumes[v.Name] = v
		}
		claims := map[string]*corev1.PersistentVolumeClaim{}
		for i := range spec.VolumeClaimTemplates {
			c := &spec.VolumeClaimTemplates[i]
			claims[c.Name] = c
			if volumes[c.Name] != nil {
				t.Errorf("volume %q is both a volume and a claim template", c.Name)
			}
			if st, ok := c.Spec.Resources.Requests[corev1.ResourceStorage]; !ok || st.IsZero() {
				t.Errorf("volumeClaimTemplate %q: no storage request", c.Name)
			}
			if !slices.Contains(c.Spec.AccessModes, corev1.ReadWriteOnce) {
				t.Errorf("volumeClaimTemplate %q: want ReadWriteOnce", c.Name)
			}
		}
		mounted := map[string]bool{}
		for _, vm := range ctr.VolumeMounts {
			mounted[vm.Name] = true
			v := volumes[vm.Name]
			if v == nil && claims[vm.Name] == nil {
				t.Errorf("volumeMount %q at %s names no volume or claim template", vm.Name, vm.MountPath)
				continue
			}
			if v != nil && (v.Secret != nil || v.ConfigMap != nil) {
				if !vm.ReadOnly {
					t.Errorf("volumeMount %q (a Secret or ConfigMap) is not readOnly", vm.Name)
				}
				if vm.SubPath != "" || vm.SubPathExpr != "" {
					t.Errorf("volumeMount %q uses subPath: updated files (rotated certificates) would never reach the pod", vm.Name)
				}
			}
		}
		for name := range volumes {
			if !mounted[name] {
				t.Errorf("volume %q is not mounted", name)
			}
		}
		for name := range claims {
			if !mounted[name] {
				t.Errorf("volumeClaimTemplate %q is not mounted", name)
			}
		}
		var tmp bool
		for _, vm := range ctr.VolumeMounts {
			if v := volumes[vm.Name]; vm.MountPath == "/tmp" && v != nil && v.EmptyDir != nil {
				tmp = true
			}
		}
		if !tmp {
			t.Error("no emptyDir at /tmp (the root file system is read-only)")
		}
		for _, v := range pod.Volumes {
			switch {
			case v.Secret != nil:
				if v.Secret.Optional == nil || !*v.Secret.Optional {
					if m.secrets[v.Secret.SecretName] == nil {
						t.Errorf("volume %q: Secret %q is not among the manifests", v.Name, v.Secret.SecretName)
					}
				}
				if v.Secret.DefaultMode == nil || *v.Secret.DefaultMode != 0o440 {
					t.Errorf("volume %q: want defaultMode 0440 (readable by the group fsGroup sets, nobody else)", v.Name)
				}
				for _, it := range v.Secret.Items {
					if !m.secretKeys(v.Secret.SecretName)[it.Key] {
						t.Errorf("volume %q: Secret %q has no key %q", v.Name, v.Secret.SecretName, it.Key)
					}
				}
			case v.ConfigMap != nil:
				if m.configMaps[v.ConfigMap.Name] == nil {
					t.Errorf("volume %q: ConfigMap %q is not among the manifests", v.Name, v.ConfigMap.Name)
				}
				for _, it := range v.ConfigMap.Items {
					if !m.configMapKeys(v.ConfigMap.Name)[it.Key] {
						t.Errorf("volume %q: ConfigMap %q has no key %q", v.Name, v.ConfigMap.Name, it.Key)
					}
				}
			}
		}
	})

	t.Run("Services", func(t *testing.T) {
		if len(m.services) < 2 {
			t.Errorf("want the headless and the client Service, found %d Services", len(m.services))
		}
		for _, name := range slices.Sorted(maps.Keys(m.services)) {
			svc := m.services[name]
			if len(svc.Spec.Selector) == 0 {
				t.Errorf("Service %s: no selector", name)
			} else if !labels.SelectorFromSet(svc.Spec.Selector).Matches(podLabels) {
				t.Errorf("Service %s: selector %v does not select the pods %v", name, svc.Spec.Selector, podLabels)
			}
			for _, p := range svc.Spec.Ports {
				tp := p.TargetPort
				if tp.Type == intstr.Int && tp.IntVal == 0 {
					tp = intstr.FromInt32(p.Port)
				}
				targetPort(t, fmt.Sprintf("Service %s port %s", name, p.Name), tp, p.Protocol)
			}
		}
		// The headless Service publishes every container port, TCP and UDP gossip included.
		if headless := m.services[spec.ServiceName]; headless != nil {
			for _, cp := range ctr.Ports {
				var found bool
				for _, p := range headless.Spec.Ports {
					proto := cmp.Or(p.Protocol, corev1.ProtocolTCP)
					if proto == cmp.Or(cp.Protocol, corev1.ProtocolTCP) && (p.TargetPort.StrVal == cp.Name || p.TargetPort.IntVal == cp.ContainerPort) {
						found = true
					}
				}
				if !found {
					t.Errorf("headless Service %s: no port for container port %s", headless.Name, cp.Name)
				}
			}
		}
		// A client Service in front of the HTTP port of ready pods.
		var client bool
		for _, svc := range m.services {
			if svc.Name == spec.ServiceName || svc.Spec.ClusterIP == corev1.ClusterIPNone {
				continue
			}
			if svc.Spec.Type != "" && svc.Spec.Type != corev1.ServiceTypeClusterIP {
				continue
			}
			for _, p := range svc.Spec.Ports {
				if p.TargetPort.StrVal == "http" && p.Port == ports["http"].ContainerPort {
					client = true
				}
			}
			if svc.Spec.PublishNotReadyAddresses {
				t.Errorf("client Service %s publishes pods that are not ready", svc.Name)
			}
		}
		if !client {
			t.Error("no ClusterIP Service with a port targeting http on the same port number")
		}
	})

	t.Run("PodDisruptionBudget", func(t *testing.T) {
		if len(m.pdbs) != 1 {
			t.Fatalf("want one PodDisruptionBudget, found %d", len(m.pdbs))
		}
		pdb := m.pdbs[0]
		selectsPods(t, "PodDisruptionBudget "+pdb.Name, pdb.Spec.Selector)
		if pdb.Spec.MaxUnavailable == nil || *pdb.Spec.MaxUnavailable != intstr.FromInt32(1) || pdb.Spec.MinAvailable != nil {
			t.Errorf("PodDisruptionBudget %s: want maxUnavailable 1 and no minAvailable", pdb.Name)
		}
	})

	t.Run("Secrets", func(t *testing.T) {
		for _, name := range slices.Sorted(maps.Keys(m.secrets)) {
			if !isPlaceholderSecret(m.secrets[name]) {
				t.Errorf("Secret %s holds values that are not placeholders (REPLACE...): real keys do not belong in the repository", name)
			}
			for k := range m.secretKeys(name) {
				if strings.Contains(k, "ca-key") {
					t.Errorf("Secret %s has key %s: the CA's private key does not belong in the cluster", name, k)
				}
			}
		}
	})

	// Environment: the downward API for the pod name, IP and namespace,
	// references to existing Secrets and ConfigMaps.
	env := map[string]*corev1.EnvVar{}
	for i := range ctr.Env {
		e := &ctr.Env[i]
		if env[e.Name] != nil {
			t.Errorf("env %s set twice", e.Name)
		}
		env[e.Name] = e
	}
	t.Run("Env", func(t *testing.T) {
		for name, field := range map[string]string{"POD_NAME": "metadata.name", "POD_IP": "status.podIP", "POD_NAMESPACE": "metadata.namespace"} {
			if e := env[name]; e == nil || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != field {
				t.Errorf("env %s: want valueFrom.fieldRef %s", name, field)
			}
		}
		for _, e := range ctr.Env {
			switch {
			case e.ValueFrom == nil:
			case e.ValueFrom.SecretKeyRef != nil:
				ref := e.ValueFrom.SecretKeyRef
				if !m.secretKeys(ref.Name)[ref.Key] {
					t.Errorf("env %s: Secret %q with key %q is not among the manifests", e.Name, ref.Name, ref.Key)
				}
			case e.ValueFrom.ConfigMapKeyRef != nil:
				ref := e.ValueFrom.ConfigMapKeyRef
				if !m.configMapKeys(ref.Name)[ref.Key] {
					t.Errorf("env %s: ConfigMap %q with key %q is not among the manifests", e.Name, ref.Name, ref.Key)
				}
			}
			if strings.HasPrefix(e.Name, "MCPCLUSTER_") {
				flag := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(e.Name, "MCPCLUSTER_"), "_", "-"))
				if _, ok := flagsOfAgent[flag]; !ok || agentEnvName(flag) != e.Name {
					if e.Name != "MCPCLUSTER_ADMIN_TOKEN" && e.Name != "MCPCLUSTER_AUTH_TOKENS" {
						t.Errorf("env %s names no agent setting", e.Name)
					}
				}
			}
		}
		for _, name := range []string{"MCPCLUSTER_ENCRYPT", "MCPCLUSTER_ADMIN_TOKEN", "MCPCLUSTER_AUTH_TOKENS"} {
			if e := env[name]; e != nil && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
				t.Errorf("env %s: want it from a Secret (secretKeyRef), not written in the manifest", name)
			}
		}
		for _, ef := range ctr.EnvFrom {
			t.Errorf("envFrom %+v: set each variable by name", ef)
		}
	})

	// The args: the agent's own flags, consistent with the pod.
	flags := parseAgentArgs(t, ctr.Args, flagsOfAgent)
	one := func(t *testing.T, name string) string {
		t.Helper()
		vs := flagValues(flags, name)
		if len(vs) != 1 {
			t.Errorf("--%s given %d times, want once", name, len(vs))
			return ""
		}
		return vs[0]
	}
	t.Run("Args", func(t *testing.T) {
		vars := map[string]string{}
		for _, e := range ctr.Env {
			vars[e.Name] = "x"
		}
		for _, a := range ctr.Args {
			if _, missing := k8sExpand(a, vars); len(missing) > 0 {
				t.Errorf("arg %q refers to %v, not in the container's env (Kubernetes would pass it literally)", a, missing)
			}
		}
		if got := one(t, "node-id"); got != "$(POD_NAME)" {
			t.Errorf("--node-id=%s: want $(POD_NAME), the name the node's certificate is made for", got)
		}
		for _, f := range []string{"insecure", "dev", "encrypt"} {
			if len(flagValues(flags, f)) > 0 || f != "encrypt" && env[agentEnvName(f)] != nil {
				t.Errorf("--%s is set (no --insecure or --dev; the gossip key belongs in a Secret, not in the process listing)", f)
			}
		}
		for _, f := range []string{"tls-ca-file", "tls-cert-file", "tls-key-file", "admin-token-file", "data-dir", "config"} {
			one(t, f)
		}
		if len(flagValues(flags, "encrypt-file")) == 0 && env["MCPCLUSTER_ENCRYPT"] == nil && env["MCPCLUSTER_ENCRYPT_FILE"] == nil {
			t.Error("no gossip key: want MCPCLUSTER_ENCRYPT from a Secret, or --encrypt-file")
		}

		// Bind and advertise addresses against the container ports.
		for _, a := range []struct{ flag, port string }{{"http", "http"}, {"rpc", "rpc"}, {"gossip", "gossip"}} {
			bind := one(t, a.flag+"-addr")
			host, port, err := net.SplitHostPort(bind)
			if err != nil {
				t.Errorf("--%s-addr=%s: %v", a.flag, bind, err)
				continue
			}
			cp, ok := ports[a.port]
			if !ok {
				t.Errorf("no container port named %s", a.port)
			} else if port != strconv.Itoa(int(cp.ContainerPort)) {
				t.Errorf("--%s-addr=%s: port is not container port %s (%d)", a.flag, bind, a.port, cp.ContainerPort)
			}
			adv := flagValues(flags, a.flag+"-advertise")
			if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
				// memberlist and raft need a concrete IP to give peers.
				if want := "$(POD_IP):" + port; len(adv) != 1 || adv[0] != want {
					t.Errorf("--%s-addr=%s binds every interface: want --%s-advertise=%s", a.flag, bind, a.flag, want)
				}
			}
		}
		if g, ok := ports["gossip"]; ok {
			if u, ok := ports["gossip-udp"]; !ok || u.ContainerPort != g.ContainerPort || u.Protocol != corev1.ProtocolUDP {
				t.Errorf("want a container port gossip-udp, UDP %d (memberlist uses TCP and UDP)", g.ContainerPort)
			}
		}

		// Bootstrap and joins: every pod of the headless Service, on the gossip port.
		if got := one(t, "bootstrap-expect"); got != strconv.Itoa(replicas) {
			t.Errorf("--bootstrap-expect=%s, want the replicas (%d)", got, replicas)
		}
		joins := flagValues(flags, "join")
		var joined []string
		for _, j := range joins {
			host, port, err := net.SplitHostPort(j)
			if err != nil {
				t.Errorf("--join=%s: %v", j, err)
				continue
			}
			if port != strconv.Itoa(int(ports["gossip"].ContainerPort)) {
				t.Errorf("--join=%s: port is not the gossip port %d", j, ports["gossip"].ContainerPort)
			}
			podName, rest, _ := strings.Cut(host, ".")
			if rest != spec.ServiceName+".$(POD_NAMESPACE).svc.cluster.local" && rest != spec.ServiceName+".$(POD_NAMESPACE).svc" {
				t.Errorf("--join=%s: want <pod>.%s.$(POD_NAMESPACE).svc.cluster.local", j, spec.ServiceName)
			}
			joined = append(joined, podName)
		}
		sort.Strings(joined)
		if !slices.Equal(joined, podNames) {
			t.Errorf("--join names pods %v, want %v", joined, podNames)
		}

		// Drain within the termination grace period.
		drain, err := time.ParseDuration(one(t, "drain-grace"))
		if err != nil {
			t.Errorf("--drain-grace: %v", err)
		}
		if pod.TerminationGracePeriodSeconds == nil || time.Duration(*pod.TerminationGracePeriodSeconds)*time.Second <= drain {
			t.Errorf("terminationGracePeriodSeconds must exceed --drain-grace (%s), or the kubelet kills a draining node", drain)
		}

		// Every file an arg names is on a mount; a Secret's or ConfigMap's
		// key exists for every pod; the data dir is the persistent volume.
		for _, f := range flags {
			if !strings.HasPrefix(f.value, "/") {
				continue
			}
			for _, podName := range podNames {
				p, _ := k8sExpand(f.value, map[string]string{"POD_NAME": podName})
				vm, rel := mountOf(ctr, p)
				if vm == nil {
					t.Errorf("--%s=%s: not on a mounted volume (the root file system is the image's)", f.name, f.value)
					break
				}
				if f.name == "data-dir" {
					if !slices.ContainsFunc(spec.VolumeClaimTemplates, func(c corev1.PersistentVolumeClaim) bool { return c.Name == vm.Name }) || rel != "" {
						t.Errorf("--data-dir=%s is not the root of a volumeClaimTemplate's mount: raft data would not survive the pod", f.value)
					}
					break
				}
				if err := m.checkVolumeFile(pod, vm, rel); err != nil {
					t.Errorf("--%s=%s for pod %s: %v", f.name, f.value, podName, err)
				}
			}
		}
	})

	t.Run("ConfigFile", func(t *testing.T) {
		vm, rel := mountOf(ctr, one(t, "config"))
		if vm == nil {
			t.Fatal("--config is not on a mount")
		}
		var cm *corev1.ConfigMap
		for _, v := range pod.Volumes {
			if v.Name == vm.Name && v.ConfigMap != nil {
				cm = m.configMaps[v.ConfigMap.Name]
			}
		}
		if cm == nil || cm.Data[rel] == "" {
			t.Fatalf("--config: no ConfigMap key %q behind mount %s", rel, vm.Name)
		}
		var top map[string]yaml.Node
		if err := yaml.Unmarshal([]byte(cm.Data[rel]), &top); err != nil {
			t.Fatalf("ConfigMap %s %s: %v", cm.Name, rel, err)
		}
		node, ok := top["providers"]
		if !ok {
			t.Fatalf("ConfigMap %s %s: no providers", cm.Name, rel)
		}
		var providers []k8sProvider
		if b, err := yaml.Marshal(&node); err != nil {
			t.Fatal(err)
		} else if err := yamlStrict(b, &providers); err != nil {
			t.Fatalf("ConfigMap %s %s: providers: %v", cm.Name, rel, err)
		}
		if len(providers) == 0 {
			t.Errorf("ConfigMap %s %s: the providers list is empty", cm.Name, rel)
		}
		for _, p := range providers {
			if p.Name == "" || p.Type == "" {
				t.Errorf("provider %+v: want a name and a type", p)
			}
		}
	})

	// The agent itself: the pod's args, env and files, staged in a temp
	// dir, pass the agent's validation (the config file, addresses, TLS
	// files, admin tokens, the gossip key) and stop at the security check
	// for the one piece withheld, so nothing starts.
	t.Run("AgentAcceptsPod", func(t *testing.T) {
		for _, f := range []string{"insecure", "dev"} {
			if len(flagValues(flags, f)) > 0 || env[agentEnvName(f)] != nil {
				t.Skipf("--%s is set: the agent would start", f)
			}
		}
		gen := t.TempDir()
		initArgs := []string{"secrets", "init", "--dir", gen}
		for _, p := range podNames {
			initArgs = append(initArgs, "--node", p)
		}
		if out, err := exec.Command(binary, initArgs...).CombinedOutput(); err != nil {
			t.Fatalf("mcpcluster secrets init: %v\n%s", err, out)
		}
		stage := func(t *testing.T, ordinal int) (args, podEnv []string) {
			t.Helper()
			return m.stagePod(t, sts, ordinal, gen)
		}
		refusal := regexp.MustCompile(`refusing to start without (.*); --insecure overrides`)
		runAgent := func(t *testing.T, args, podEnv []string) (string, int) {
			t.Helper()
			// The agent refuses within milliseconds; the timeout only stops
			// one that starts after all.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, binary, args...)
			cmd.Env = podEnv
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if err != nil && !errors.As(err, &ee) {
				t.Fatalf("run agent: %v", err)
			}
			return strings.TrimSpace(string(out)), cmd.ProcessState.ExitCode()
		}
		for i, podName := range podNames {
			// Without the gossip key: everything else must be accepted.
			args, podEnv := stage(t, i)
			podEnv = slices.DeleteFunc(podEnv, func(kv string) bool { return strings.HasPrefix(kv, "MCPCLUSTER_ENCRYPT=") })
			out, code := runAgent(t, args, podEnv)
			mm := refusal.FindStringSubmatch(out)
			if code != 2 || mm == nil || !strings.HasPrefix(mm[1], "a gossip key") || strings.Contains(mm[1], " and ") {
				t.Errorf("pod %s without its gossip key: want only the gossip key refused (exit 2), got exit %d:\n%s", podName, code, out)
			}
		}
		// With the gossip key from the Secret but no admin token file: the
		// key (as the Secret holds it) is accepted.
		args, podEnv := stage(t, 0)
		args = slices.DeleteFunc(args, func(a string) bool { return strings.HasPrefix(a, "--admin-token-file=") })
		out, code := runAgent(t, args, podEnv)
		if mm := refusal.FindStringSubmatch(out); code != 2 || mm == nil || !strings.HasPrefix(mm[1], "an admin token") || strings.Contains(mm[1], " and ") {
			t.Errorf("pod %s without its admin token: want only the admin token refused (exit 2), got exit %d:\n%s", podNames[0], code, out)
		}
		// Control: the refusal comes after the config file is checked, so a
		// bad provider is reported instead.
		args, podEnv = stage(t, 0)
		podEnv = slices.DeleteFunc(podEnv, func(kv string) bool { return strings.HasPrefix(kv, "MCPCLUSTER_ENCRYPT=") })
		for _, a := range args {
			if cfg, ok := strings.CutPrefix(a, "--config="); ok {
				if err := os.WriteFile(cfg, []byte("providers:\n  - name: demo\n    type: bultin\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
		}
		out, code = runAgent(t, args, podEnv)
		if code != 2 || !strings.Contains(out, `"bultin"`) {
			t.Errorf("a bad provider in the config file: want it reported (exit 2), got exit %d:\n%s", code, out)
		}
	})
}

// mountOf returns the volume mount a path in the container is on (the
// longest mount path that holds it) and the path relative to it.
func mountOf(ctr *corev1.Container, p string) (*corev1.VolumeMount, string) {
	p = path.Clean(p)
	var best *corev1.VolumeMount
	var rel string
	for i := range ctr.VolumeMounts {
		vm := &ctr.VolumeMounts[i]
		mp := path.Clean(vm.MountPath)
		switch {
		case p == mp:
		case strings.HasPrefix(p, strings.TrimSuffix(mp, "/")+"/"):
		default:
			continue
		}
		if best == nil || len(mp) > len(path.Clean(best.MountPath)) {
			best, rel = vm, strings.TrimPrefix(strings.TrimPrefix(p, mp), "/")
		}
	}
	return best, rel
}

// volumeFiles returns the files a Secret or ConfigMap volume shows, each
// with the key it holds; nil for other volumes.
func (m *k8sManifests) volumeFiles(pod *corev1.PodSpec, name string) (files map[string]string, source string) {
	for _, v := range pod.Volumes {
		if v.Name != name {
			continue
		}
		var keys map[string]bool
		var items []corev1.KeyToPath
		switch {
		case v.Secret != nil:
			keys, items, source = m.secretKeys(v.Secret.SecretName), v.Secret.Items, "Secret "+v.Secret.SecretName
		case v.ConfigMap != nil:
			keys, items, source = m.configMapKeys(v.ConfigMap.Name), v.ConfigMap.Items, "ConfigMap "+v.ConfigMap.Name
		default:
			return nil, ""
		}
		files = map[string]string{}
		if len(items) > 0 {
			for _, it := range items {
				files[it.Path] = it.Key
			}
			return files, source
		}
		for k := range keys {
			files[k] = k
		}
		return files, source
	}
	return nil, ""
}

// checkVolumeFile checks that a file on a Secret or ConfigMap volume
// exists among the manifests.
func (m *k8sManifests) checkVolumeFile(pod *corev1.PodSpec, vm *corev1.VolumeMount, rel string) error {
	files, source := m.volumeFiles(pod, vm.Name)
	if files == nil {
		return nil
	}
	if _, ok := files[rel]; !ok {
		return fmt.Errorf("%s (volume %s) has no key %q", source, vm.Name, rel)
	}
	return nil
}

// stagePod lays out what pod `ordinal` of the StatefulSet would see: every
// mount as a temp dir (Secret keys filled from what `mcpcluster secrets
// init` made in gen, as deploy/k8s/README.md tells to create them;
// ConfigMaps from the manifests; other volumes empty), its environment
// (downward API with a made-up pod IP) and its args with $(VAR)s expanded
// and mount paths pointing at the temp dirs.
func (m *k8sManifests) stagePod(t *testing.T, sts *appsv1.StatefulSet, ordinal int, gen string) (args, env []string) {
	t.Helper()
	pod := &sts.Spec.Template.Spec
	ctr := &pod.Containers[0]
	root := t.TempDir()
	// secretValue is the content `kubectl create secret generic
	// --from-file` gives a key: the file of that name that secrets init made.
	secretValue := func(secret, key string) []byte {
		t.Helper()
		for _, p := range []string{filepath.Join(gen, key), filepath.Join(gen, "tls", key)} {
			if b, err := os.ReadFile(p); err == nil {
				return b
			}
		}
		t.Fatalf("Secret %s key %s: `mcpcluster secrets init` makes no file of that name", secret, key)
		return nil
	}
	hostDir := map[string]string{}
	for i, vm := range ctr.VolumeMounts {
		dir := filepath.Join(root, fmt.Sprintf("mount%d", i))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		hostDir[path.Clean(vm.MountPath)] = dir
		files, _ := m.volumeFiles(pod, vm.Name)
		for file, key := range files {
			var content []byte
			for _, v := range pod.Volumes {
				switch {
				case v.Name != vm.Name:
				case v.Secret != nil:
					content = secretValue(v.Secret.SecretName, key)
				case v.ConfigMap != nil:
					cm := m.configMaps[v.ConfigMap.Name]
					content = append([]byte(cm.Data[key]), cm.BinaryData[key]...)
				}
			}
			p := filepath.Join(dir, filepath.FromSlash(file))
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, content, 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	podName := fmt.Sprintf("%s-%d", sts.Name, ordinal)
	vars := map[string]string{}
	for _, e := range ctr.Env {
		var v string
		switch {
		case e.ValueFrom == nil:
			v, _ = k8sExpand(e.Value, vars)
		case e.ValueFrom.FieldRef != nil:
			switch e.ValueFrom.FieldRef.FieldPath {
			case "metadata.name":
				v = podName
			case "metadata.namespace":
				v = "mcpcluster-test"
			case "status.podIP":
				v = fmt.Sprintf("10.244.0.%d", 10+ordinal)
			default:
				t.Fatalf("env %s: fieldRef %s not staged by this test", e.Name, e.ValueFrom.FieldRef.FieldPath)
			}
		case e.ValueFrom.SecretKeyRef != nil:
			v = string(secretValue(e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key))
		case e.ValueFrom.ConfigMapKeyRef != nil:
			v = m.configMaps[e.ValueFrom.ConfigMapKeyRef.Name].Data[e.ValueFrom.ConfigMapKeyRef.Key]
		default:
			t.Fatalf("env %s: valueFrom not staged by this test", e.Name)
		}
		vars[e.Name] = v
		env = append(env, e.Name+"="+v)
	}
	for _, a := range ctr.Args {
		a, _ = k8sExpand(a, vars)
		if name, value, ok := strings.Cut(a, "="); ok && strings.HasPrefix(value, "/") {
			if vm, rel := mountOf(ctr, value); vm != nil {
				a = name + "=" + filepath.Join(hostDir[path.Clean(vm.MountPath)], filepath.FromSlash(rel))
			}
		}
		args = append(args, a)
	}
	return args, env
}

// agentEnvName is the environment variable of an agent flag (as
// cmd/mcpcluster's envName): data-dir → MCPCLUSTER_DATA_DIR.
func agentEnvName(flag string) string {
	return "MCPCLUSTER_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}
