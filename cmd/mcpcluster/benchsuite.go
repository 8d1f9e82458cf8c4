package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// runBenchSuite is `mcpcluster bench suite` (make bench): it starts a local
// 3-node cluster, runs the standard set and writes the report and plot.
func runBenchSuite(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench suite", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	out := fs.String("out", "docs/benchmarks.md", "report file; the plot goes beside it as .png, the results as .json")
	duration := fs.Duration("duration", 5*time.Second, "length of each closed-loop run")
	basePort := fs.Int("base-port", 18700, "ports of the local cluster (node i: base+10*i, +1, +2)")
	image := fs.String("image", "", "also measure horizontal scaling with nodes in containers of this image (make image), each held to --cpus "+scalingCPUs+"; skipped when empty or without docker")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *duration <= 0 || *basePort < 1024 || *basePort > 65000 {
		return usagef("-duration must be positive and -base-port 1024 to 65000")
	}
	dir, err := os.MkdirTemp("", "mcpcluster-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lc, err := newBenchCluster(dir, *basePort)
	if err != nil {
		return err
	}
	ctx, stop := signalContext()
	defer stop()

	// Measured as deployed: mutual TLS, encrypted gossip, admin tokens.
	if lc.security, _, err = setupLocalSecurity(dir, lc.ids()); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "starting a local secured 3-node cluster on ports %d-%d\n", *basePort, *basePort+22)
	if err := lc.start(); err != nil {
		return err
	}
	defer lc.stop(15 * time.Second)
	if err := lc.waitReady(ctx, 60*time.Second); err != nil {
		return err
	}
	var results []BenchResult
	run := func(cfg benchConfig) error {
		res, err := benchWithBaseline(ctx, cfg)
		if err != nil {
			return fmt.Errorf("%s: %w", cfg.name, err)
		}
		printResult(stdout, res)
		results = append(results, res)
		return nil
	}
	url := func(i int) string { return "http://" + lc.addr(i, 0) }
	all := []string{url(0), url(1), url(2)}
	base := benchConfig{protocol: legacyProtocol, concurrency: 16, duration: *duration, timeout: 10 * time.Second,
		consistency: "linearizable", valueSize: 100, args: map[string]any{"text": "hello"},
		token: lc.token()}

	holder, leader, err := lc.roles(ctx, "pinned_echo")
	if err != nil {
		return err
	}
	via := other(3, holder, leader)
	var steps []benchConfig
	// One client shows what the hop adds to a call's latency (hopName);
	// 32 what it costs in throughput.
	for _, n := range []int{1, 32} {
		steps = append(steps, with(base, func(c *benchConfig) {
			c.name, c.scenario, c.tool, c.targets, c.baseline = fmt.Sprintf("local call (echo), %d clients", n), "call", "echo", []string{url(via)}, true
			c.concurrency = n
		}), with(base, func(c *benchConfig) {
			c.name, c.scenario, c.tool, c.targets, c.baseline = fmt.Sprintf("forwarded call (pinned_echo), %d clients", n), "call", "pinned_echo", []string{url(via)}, true
			c.concurrency = n
		}))
	}
	for _, w := range []int{1, 16, 64} {
		steps = append(steps, with(base, func(c *benchConfig) {
			c.name, c.scenario, c.targets, c.concurrency = fmt.Sprintf("cache set, %d writers", w), "cache-set", all, w
		}))
	}
	steps = append(steps,
		with(base, func(c *benchConfig) {
			c.name, c.scenario, c.targets = "linearizable get (follower)", "cache-get", []string{url(via)}
		}),
		with(base, func(c *benchConfig) {
			c.name, c.scenario, c.targets, c.baseline = "session set-up (initialize, DELETE), 8 clients", "session-init", []string{url(via)}, true
			c.concurrency = 8
		}),
	)
	for _, s := range steps {
		if err := run(s); err != nil {
			return err
		}
	}

	// Failover of the tool's holder, then of the leader: a fixed-rate
	// stream through a node that is neither, the other one killed after 2 s.
	holder, leader, err = lc.roles(ctx, "pinned_echo")
	if err != nil {
		return err
	}
	victim := holder
	fo := with(base, func(c *benchConfig) {
		c.name, c.scenario, c.op, c.tool = "holder failover (pinned_echo)", "failover", "call", "pinned_echo"
		c.targets, c.rate, c.concurrency, c.duration = []string{url(other(3, holder, leader))}, 200, 64, 8*time.Second
		c.killPID, c.killAfter = lc.pid(victim), 2*time.Second
	})
	if holder == leader { // the stream must not go through the victim
		fo.targets = []string{url(other(3, holder, -1))}
		// Its window then holds a leader election too: the provider
		// moves once there is a leader to move it.
		fo.name += ", its holder leading"
	}
	if err := run(fo); err != nil {
		return err
	}
	if err := lc.revive(ctx, victim); err != nil {
		return err
	}
	_, leader, err = lc.roles(ctx, "pinned_echo")
	if err != nil {
		return err
	}
	lo := with(base, func(c *benchConfig) {
		c.name, c.scenario, c.op = "leader failover (cache set)", "failover", "cache-set"
		c.targets, c.rate, c.concurrency, c.duration = []string{url(other(3, leader, -1))}, 200, 64, 8*time.Second
		c.killPID, c.killAfter = lc.pid(leader), 2*time.Second
	})
	if err := run(lo); err != nil {
		return err
	}
	if err := lc.revive(ctx, leader); err != nil {
		return err
	}
	if *image != "" {
		lc.stop(15 * time.Second) // the scaling runs have the machine to themselves
		scaling, err := runScaling(ctx, *image, *basePort+1000, *duration, stdout)
		if err != nil {
			return err
		}
		results = append(results, scaling...)
	}

	if err := os.MkdirAll(filepath.Dir(*out), 0o755); err != nil {
		return err
	}
	png := strings.TrimSuffix(*out, filepath.Ext(*out)) + ".png"
	var md strings.Builder
	if err := writeBenchReport(&md, results, machineInfo(), filepath.Base(png)); err != nil {
		return err
	}
	if err := os.WriteFile(*out, []byte(md.String()), 0o644); err != nil {
		return err
	}
	if err := writeBenchPlot(png, results); err != nil {
		return err
	}
	js, _ := json.MarshalIndent(results, "", "  ")
	if err := os.WriteFile(strings.TrimSuffix(*out, filepath.Ext(*out))+".json", js, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s and %s\n", *out, png)
	return nil
}

// newBenchCluster describes (without starting it) a local 3-node cluster
// in dir on basePort for the benchmarks: a provider "pinned" with one
// holder (the tool pinned_echo), room for many calls, quiet logs.
func newBenchCluster(dir string, basePort int) (*localCluster, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find own executable: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cfgFile := filepath.Join(dir, "providers.yaml")
	if err := os.WriteFile(cfgFile, []byte("providers:\n  - name: pinned\n    type: builtin\n    prefix: pinned_\n    replicas: 1\n"), 0o644); err != nil {
		return nil, err
	}
	return &localCluster{self: self, n: 3, basePort: basePort, dataDir: dir, stdout: io.Discard, stderr: io.Discard,
		extra: []string{"--config", cfgFile, "--log-level", "error", "--max-concurrent", "1000", "--max-queue", "1000"}}, nil
}

// with returns a copy of c changed by f.
func with(c benchConfig, f func(*benchConfig)) benchConfig {
	f(&c)
	return c
}

// other returns the first node of n that is neither a nor b.
func other(n, a, b int) int {
	for i := range n {
		if i != a && i != b {
			return i
		}
	}
	return 0
}

// roles returns the index of tool's holder and of the leader.
func (lc *localCluster) roles(ctx context.Context, tool string) (holder, leader int, err error) {
	holder, leader = -1, -1
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		var cat struct {
			Tools []struct {
				Name    string
				Holders []string
			}
		}
		var st struct{ Leader struct{ ID string } }
		if getJSON(ctx, lc.token(), "http://"+lc.addr(0, 0)+"/v1/catalog", &cat) == nil && getJSON(ctx, lc.token(), "http://"+lc.addr(0, 0)+"/v1/status", &st) == nil {
			for _, t := range cat.Tools {
				if t.Name == tool && len(t.Holders) == 1 {
					holder = lc.index(t.Holders[0])
				}
			}
			leader = lc.index(st.Leader.ID)
			if holder >= 0 && leader >= 0 {
				return holder, leader, nil
			}
		}
		select {
		case <-ctx.Done():
			return -1, -1, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
	return -1, -1, fmt.Errorf("no holder of %s or no leader after 30s", tool)
}

// ids returns the node ids of the cluster.
func (lc *localCluster) ids() []string {
	ids := make([]string, lc.n)
	for i := range ids {
		ids[i] = lc.id(i)
	}
	return ids
}

// token is the admin token of a secured local cluster ("" otherwise).
func (lc *localCluster) token() cluster.Token {
	if lc.security == nil {
		return ""
	}
	return cluster.Token(lc.security.token)
}

func (lc *localCluster) index(id string) int {
	for i := range lc.n {
		if lc.id(i) == id {
			return i
		}
	}
	return -1
}

// revive restarts node i on its data dir and waits for the cluster.
func (lc *localCluster) revive(ctx context.Context, i int) error {
	if err := lc.startNode(i); err != nil {
		return err
	}
	return lc.waitReady(ctx, 60*time.Second)
}

// getJSON reads an admin endpoint of a node the suite started (with the
// suite's environment, so MCPCLUSTER_ADMIN_TOKEN if set).
func getJSON(ctx context.Context, token cluster.Token, url string, v any) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	setToken(req, token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// scalingCPUs is what each node's container may use in the scaling runs:
// well under a core, so that one node is CPU-bound while the clients,
// outside the limit, are not.
const scalingCPUs = "0.3"

// runScaling measures horizontal scaling: the same closed-loop calls
// spread over one node and over three, every node a container of image
// held to scalingCPUs (docker --cpus), secured like the rest of the suite.
// Each result is the 3-node run, with the 1-node run as its baseline. It
// returns nothing, after saying why, when docker does not answer.
func runScaling(ctx context.Context, image string, basePort int, duration time.Duration, stdout io.Writer) ([]BenchResult, error) {
	if err := exec.CommandContext(ctx, "docker", "version").Run(); err != nil {
		fmt.Fprintf(stdout, "scaling: skipped: docker does not answer (%v)\n", err)
		return nil, nil
	}
	type tool struct {
		name string
		args map[string]any
	}
	tools := []tool{{"echo", map[string]any{"text": "hello"}}, {"sha256", map[string]any{"text": strings.Repeat("x", 1024), "rounds": 20}}}
	runs := map[int][]BenchResult{}
	for _, n := range []int{1, 3} {
		dir, err := os.MkdirTemp("", "mcpcluster-scaling-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(dir)
		lc, err := newBenchCluster(dir, basePort+100*n)
		if err != nil {
			return nil, err
		}
		lc.n, lc.image, lc.dockerArgs = n, image, []string{"--cpus", scalingCPUs}
		if lc.security, _, err = setupLocalSecurity(dir, lc.ids()); err != nil {
			return nil, err
		}
		fmt.Fprintf(stdout, "scaling: %d node(s) in containers of %s, --cpus %s each\n", n, image, scalingCPUs)
		if err := lc.start(); err != nil {
			return nil, err
		}
		err = lc.waitReady(ctx, 90*time.Second)
		var targets []string
		for i := range n {
			targets = append(targets, "http://"+lc.addr(i, 0))
		}
		for _, t := range tools {
			if err != nil {
				break
			}
			cfg := benchConfig{name: fmt.Sprintf("scaling: %s, %d node(s)", t.name, n), scenario: "call", tool: t.name, args: t.args,
				targets: targets, protocol: legacyProtocol, concurrency: 32, duration: duration, timeout: 10 * time.Second, token: lc.token()}
			var res BenchResult
			if res, err = benchWithBaseline(ctx, cfg); err == nil {
				printResult(stdout, res)
				runs[n] = append(runs[n], res)
			}
		}
		lc.stop(15 * time.Second)
		if err != nil {
			return nil, fmt.Errorf("scaling with %d node(s): %w", n, err)
		}
	}
	var out []BenchResult
	for i, t := range tools {
		one, three := runs[1][i], runs[3][i]
		three.Name, three.Scenario = fmt.Sprintf("scaling: %s, 3 nodes ÷ 1 (--cpus %s each)", t.name, scalingCPUs), "scaling"
		three.Baseline = &one
		if one.PerSecond > 0 {
			three.Ratio = three.PerSecond / one.PerSecond
		}
		fmt.Fprintf(stdout, "scaling: %s: 3 nodes %.0f/s, 1 node %.0f/s: %.2f×\n", t.name, three.PerSecond, one.PerSecond, three.Ratio)
		out = append(out, three)
	}
	return out, nil
}
