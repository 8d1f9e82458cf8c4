package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// dockerCluster is a cluster of containers, each on two networks: an
// internal "cluster" network for raft, RPC and gossip, and a "client"
// network carrying its HTTP port, published on 127.0.0.1. Cutting a
// container off the cluster network partitions it from its peers while the
// test can still send it requests.
type dockerCluster struct {
	t        *testing.T
	tag      string
	image    string
	subnet   string // three octets of the cluster network
	names    []string
	ips      []string
	nodes    []*node
	cluster  string
	clientNw string
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

func newDockerCluster(t *testing.T, n int) *dockerCluster {
	var b [3]byte
	_, _ = rand.Read(b[:])
	d := &dockerCluster{t: t, tag: hex.EncodeToString(b[:])}
	d.image = "mcpcluster-test:" + d.tag
	d.subnet = fmt.Sprintf("10.213.%d", 100+int(b[0])%150)
	d.cluster, d.clientNw = "mcpc-cluster-"+d.tag, "mcpc-client-"+d.tag

	// The image, as make image builds it: the static binary, a CA bundle,
	// a non-root user.
	_, file, _, _ := runtime.Caller(0)
	build := exec.Command("make", "image", "IMAGE="+d.image)
	build.Dir = filepath.Dir(filepath.Dir(file))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("docker", "rmi", "-f", d.image).Run() })
	// The node user of the image reads the test's security files from a
	// copy it may read.
	secDir := t.TempDir()
	if err := os.Chmod(secDir, 0o755); err != nil {
		t.Fatal(err)
	}
	docker(t, "network", "create", "--internal", "--subnet", d.subnet+".0/24", d.cluster)
	docker(t, "network", "create", d.clientNw)
	t.Cleanup(func() {
		for _, name := range d.names {
			_ = exec.Command("docker", "rm", "-f", "-v", name).Run()
		}
		_ = exec.Command("docker", "network", "rm", d.cluster, d.clientNw).Run()
	})

	var joins []string
	for i := range n {
		d.ips = append(d.ips, fmt.Sprintf("%s.%d", d.subnet, 11+i))
		joins = append(joins, "--join", d.ips[i]+":8702")
	}
	for i := range n {
		id := fmt.Sprintf("node%d", i+1)
		name := fmt.Sprintf("mcpc-%s-%s", d.tag, id)
		d.names = append(d.names, name)
		ip := d.ips[i]
		// Off loopback a node needs TLS, a gossip key and an admin token:
		// the test's security files, mounted read-only.
		certFile, keyFile := sec.cert(t, id)
		for _, f := range []string{sec.caFile(), certFile, keyFile, sec.tokenFile} {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(secDir, filepath.Base(f)), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		args := []string{"create", "--name", name, "--network", d.clientNw, "-p", "127.0.0.1::8700",
			"-v", secDir + ":/tls:ro", d.image, "agent",
			"--tls-ca-file", "/tls/" + filepath.Base(sec.caFile()), "--tls-cert-file", "/tls/" + filepath.Base(certFile),
			"--tls-key-file", "/tls/" + filepath.Base(keyFile), "--encrypt", sec.gossipKey,
			"--admin-token-file", "/tls/" + filepath.Base(sec.tokenFile),
			"--node-id", id, "--data-dir", "/data", "--http-addr", "0.0.0.0:8700", "--http-advertise", ip + ":8700",
			"--rpc-addr", ip + ":8701", "--gossip-addr", ip + ":8702", "--bootstrap-expect", fmt.Sprint(n),
			"--gossip-profile", "local", "--raft-heartbeat-timeout", "500ms", "--raft-election-timeout", "500ms",
			"--dead-server-timeout", "10m", "--reconcile-interval", "500ms"}
		docker(t, append(args, joins...)...)
		docker(t, "network", "connect", "--ip", ip, d.cluster, name)
	}
	for _, name := range d.names {
		docker(t, "start", name)
	}
	for i, name := range d.names {
		hostPort := docker(t, "port", name, "8700")
		hostPort = strings.Split(hostPort, "\n")[0]
		d.nodes = append(d.nodes, &node{t: t, id: fmt.Sprintf("node%d", i+1), http: hostPort})
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, name := range d.names {
				out, _ := exec.Command("docker", "logs", "--tail", "30", name).CombinedOutput()
				t.Logf("--- %s ---\n%s", name, out)
			}
		}
	})
	return d
}

func (d *dockerCluster) index(n *node) int {
	for i, nd := range d.nodes {
		if nd == n {
			return i
		}
	}
	return -1
}

// cut takes nodes off the cluster network; heal puts them back.
func (d *dockerCluster) cut(nodes ...*node) {
	for _, n := range nodes {
		docker(d.t, "network", "disconnect", d.cluster, d.names[d.index(n)])
	}
}

func (d *dockerCluster) heal(nodes ...*node) {
	for _, n := range nodes {
		i := d.index(n)
		docker(d.t, "network", "connect", "--ip", d.ips[i], d.cluster, d.names[i])
	}
}

// tryPut writes through n with a short deadline and reports whether the
// write was acknowledged.
func tryPut(n *node, key, value string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	code, _, err := n.put(ctx, key, value)
	return err == nil && code == http.StatusOK
}

// Acceptance 6.4: partitions across real separate hosts (containers): a
// minority cannot acknowledge writes, the majority keeps working, and after
// healing the minority catches up with nothing acknowledged lost.
func TestPartitions(t *testing.T) {
	if *chaosMode != "full" {
		t.Skip("the partition run is part of make chaos (-chaos full)")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("Docker is not available, skipping the partition run: %v %s", err, strings.TrimSpace(string(out)))
	}
	d := newDockerCluster(t, 5)
	c := &testCluster{t: t, nodes: d.nodes}
	ids := c.ids()
	leader := c.waitStable(90*time.Second, d.nodes, ids...)
	acked := map[string]string{}
	write := func(n *node, key string) bool {
		v := "v-" + key
		if tryPut(n, key, v) {
			acked[key] = v
			return true
		}
		return false
	}
	for i := range 20 {
		if !write(d.nodes[i%5], fmt.Sprintf("before-%d", i)) {
			t.Fatalf("write %d before any partition failed", i)
		}
	}

	// A minority (two followers) cut off.
	minority := c.except(leader)[:2]
	majority := c.except(minority[0].id, minority[1].id)
	d.cut(minority...)
	start := time.Now()
	for i := range 10 {
		if !write(majority[i%3], fmt.Sprintf("majority-%d", i)) {
			t.Fatalf("majority write %d failed during the partition", i)
		}
	}
	for i, n := range minority {
		if write(n, fmt.Sprintf("minority-%d", i)) {
			t.Fatalf("%s acknowledged a write while cut off from the majority", n.id)
		}
	}
	t.Logf("minority %s,%s cut off: majority kept writing, minority refused (%s)", minority[0].id, minority[1].id, time.Since(start).Round(time.Millisecond))
	d.heal(minority...)
	start = time.Now()
	c.waitStable(90*time.Second, d.nodes, ids...)
	c.waitSameState(60*time.Second, d.nodes)
	t.Logf("healed: all five agree again after %s", time.Since(start).Round(time.Millisecond))

	// The leader isolated: the others elect a new one and carry on.
	leader = c.waitStable(60*time.Second, d.nodes, ids...)
	old := c.node(leader)
	rest := c.except(leader)
	d.cut(old)
	start = time.Now()
	var took time.Duration
	waitFor(t, 30*time.Second, func() error {
		if !write(rest[0], fmt.Sprintf("after-isolation-%d", time.Now().UnixNano())) {
			return fmt.Errorf("majority not writing yet")
		}
		took = time.Since(start)
		return nil
	})
	if write(old, "isolated-leader") {
		t.Fatal("the isolated old leader acknowledged a write")
	}
	t.Logf("leader %s isolated: the majority wrote again after %s", old.id, took.Round(time.Millisecond))
	d.heal(old)
	start = time.Now()
	c.waitStable(90*time.Second, d.nodes, ids...)
	c.waitSameState(60*time.Second, d.nodes)
	t.Logf("healed: all five agree again after %s", time.Since(start).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for key, v := range acked {
		for _, n := range d.nodes {
			if code, body, err := n.get(ctx, key, "linearizable"); err != nil || code != 200 || body != v {
				t.Fatalf("acknowledged %s on %s after healing: %d %q %v", key, n.id, code, body, err)
			}
		}
	}
	t.Logf("%d acknowledged writes present on all five nodes", len(acked))
}
