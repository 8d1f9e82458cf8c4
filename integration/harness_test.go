// Package integration runs real mcpcluster processes on loopback and checks
// what the cluster does when they are started, stopped, killed and fed garbage.
package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// binary is the mcpcluster executable under test: $MCPCLUSTER_BIN, or built
// once by TestMain. stdioServer is examples/stdio-server, built by TestMain,
// the upstream MCP server that stdio providers run.
var binary, stdioServer string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "mcpcluster-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	build := func(out, pkg string) error {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		cmd.Dir = root
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd.Run()
	}
	if err := os.Mkdir(filepath.Join(dir, "security"), 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "integration:", err)
		return 1
	}
	binary = os.Getenv("MCPCLUSTER_BIN")
	if binary == "" {
		binary = filepath.Join(dir, "mcpcluster")
		if err := build(binary, "./cmd/mcpcluster"); err != nil {
			fmt.Fprintln(os.Stderr, "integration: build mcpcluster:", err)
			return 1
		}
	}
	if sec, err = newSecurity(filepath.Join(dir, "security")); err != nil {
		fmt.Fprintln(os.Stderr, "integration: security:", err)
		return 1
	}
	stdioServer = filepath.Join(dir, "stdio-server")
	if err := build(stdioServer, "./examples/stdio-server"); err != nil {
		fmt.Fprintln(os.Stderr, "integration: build stdio-server:", err)
		return 1
	}
	return m.Run()
}

// waitFor polls fn until it returns nil or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

var (
	portMu   sync.Mutex
	usedPort = map[int]bool{}
)

// freePort returns a loopback port free for TCP and UDP, never handed out
// twice in this test process.
func freePort(t testing.TB) int {
	t.Helper()
	portMu.Lock()
	defer portMu.Unlock()
	for range 100 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("find free port: %v", err)
		}
		port := ln.Addr().(*net.TCPAddr).Port
		udp, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", port))
		ln.Close()
		if err != nil {
			continue
		}
		udp.Close()
		if !usedPort[port] {
			usedPort[port] = true
			return port
		}
	}
	t.Fatal("no free port found")
	return 0
}

// portsFree reports whether base..base+n are free for TCP and UDP, and
// reserves them for this test process.
func portsFree(base, n int) bool {
	portMu.Lock()
	defer portMu.Unlock()
	for p := base; p <= base+n; p++ {
		if usedPort[p] && p != base {
			return false
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return false
		}
		ln.Close()
		udp, err := net.ListenPacket("udp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			return false
		}
		udp.Close()
	}
	for p := base; p <= base+n; p++ {
		usedPort[p] = true
	}
	return true
}

// node is one mcpcluster agent process.
type node struct {
	t       testing.TB
	id      string
	dataDir string
	http    string
	rpc     string
	gossip  string
	extra   []string // flags beyond the addresses
	logPath string
	// plain runs the node without TLS, gossip key and admin tokens (a
	// loopback experiment); every other node is secured (see security).
	plain bool
	env   []string // extra environment variables of the process
	token string   // admin token of its API, when not the test's own (sec)

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	err    error // exit error, valid after exited closed
	starts int
}

// fastFlags shrink timeouts so tests on loopback run quickly.
var fastFlags = []string{
	"--gossip-profile", "local",
	"--raft-heartbeat-timeout", "500ms",
	"--raft-election-timeout", "500ms",
	"--reconcile-interval", "500ms",
	"--drain-grace", "5s",
	"--log-level", "debug",
}

func newNode(t testing.TB, id string, extra ...string) *node {
	dir := t.TempDir()
	return &node{
		t:       t,
		id:      id,
		dataDir: filepath.Join(dir, "data"),
		http:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		rpc:     fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		gossip:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		extra:   extra,
		logPath: filepath.Join(dir, "agent.log"),
	}
}

func (n *node) args() []string {
	a := []string{"agent", "--node-id", n.id, "--data-dir", n.dataDir,
		"--http-addr", n.http, "--rpc-addr", n.rpc, "--gossip-addr", n.gossip}
	a = append(a, fastFlags...)
	if !n.plain {
		a = append(a, sec.flags(n.t, n.id)...)
	}
	return append(a, n.extra...)
}

// start launches the process; it is stopped (SIGTERM, then SIGKILL) at test end.
func (n *node) start() {
	n.t.Helper()
	n.mu.Lock()
	defer n.mu.Unlock()
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		n.t.Fatalf("open log: %v", err)
	}
	fmt.Fprintf(logf, "=== start %d: %s\n", n.starts+1, strings.Join(n.args(), " "))
	cmd := exec.Command(binary, n.args()...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if len(n.env) > 0 {
		cmd.Env = append(os.Environ(), n.env...)
	}
	if err := cmd.Start(); err != nil {
		logf.Close()
		n.t.Fatalf("start %s: %v", n.id, err)
	}
	n.starts++
	n.cmd = cmd
	exited := make(chan struct{})
	n.exited = exited
	go func() {
		err := cmd.Wait()
		logf.Close()
		n.mu.Lock()
		n.err = err
		n.mu.Unlock()
		close(exited)
	}()
	if n.starts == 1 {
		n.t.Cleanup(func() {
			n.stop(10 * time.Second)
			if n.t.Failed() {
				n.dumpLog(60)
			}
		})
	}
}

func (n *node) running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.cmd == nil {
		return false
	}
	select {
	case <-n.exited:
		return false
	default:
		return true
	}
}

func (n *node) signal(sig syscall.Signal) {
	n.mu.Lock()
	cmd := n.cmd
	n.mu.Unlock()
	if cmd != nil && n.running() {
		_ = cmd.Process.Signal(sig)
	}
}

// wait waits for the process to exit and returns its exit code (-1 if killed).
func (n *node) wait(timeout time.Duration) (int, bool) {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	if exited == nil {
		return 0, true
	}
	select {
	case <-exited:
	case <-time.After(timeout):
		return 0, false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	var ee *exec.ExitError
	if errors.As(n.err, &ee) {
		return ee.ExitCode(), true
	}
	return 0, true
}

// stop sends SIGTERM, waits, then SIGKILLs; returns the exit code.
func (n *node) stop(timeout time.Duration) int {
	if !n.running() {
		code, _ := n.wait(0)
		return code
	}
	n.signal(syscall.SIGTERM)
	code, ok := n.wait(timeout)
	if !ok {
		n.signal(syscall.SIGKILL)
		code, _ = n.wait(10 * time.Second)
		n.t.Errorf("%s did not stop within %s of SIGTERM", n.id, timeout)
	}
	return code
}

// kill SIGKILLs the process and waits for it.
func (n *node) kill() {
	n.signal(syscall.SIGKILL)
	if _, ok := n.wait(10 * time.Second); !ok {
		n.t.Fatalf("%s survived SIGKILL", n.id)
	}
}

func (n *node) log() string {
	b, _ := os.ReadFile(n.logPath)
	return string(b)
}

func (n *node) dumpLog(lines int) {
	all := strings.Split(strings.TrimRight(n.log(), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	n.t.Logf("--- last %d log lines of %s ---\n%s", len(all), n.id, strings.Join(all, "\n"))
}

// httpClient calls nodes' HTTP ports with the admin write token.
var httpClient = &http.Client{Timeout: 10 * time.Second, Transport: withToken(nil)}

func (n *node) status() (cluster.Status, error) {
	var st cluster.Status
	req, err := http.NewRequest(http.MethodGet, "http://"+n.http+"/v1/status", nil)
	if err != nil {
		return st, err
	}
	if n.token != "" {
		req.Header.Set("Authorization", "Bearer "+n.token)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("status: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

// put writes key=value through n; it returns the HTTP status and body.
func (n *node) put(ctx context.Context, key, value string) (int, string, error) {
	return n.do(ctx, http.MethodPut, "/v1/cache/"+key, value)
}

// get reads key through n at the given consistency.
func (n *node) get(ctx context.Context, key, consistency string) (int, string, error) {
	return n.do(ctx, http.MethodGet, "/v1/cache/"+key+"?consistency="+consistency, "")
}

func (n *node) do(ctx context.Context, method, path, body string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, method, "http://"+n.http+path, strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// mustPut writes and fails the test unless the write is acknowledged.
func (n *node) mustPut(key, value string) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	code, body, err := n.put(ctx, key, value)
	if err != nil || code != http.StatusOK {
		n.t.Fatalf("put %s via %s: %d %s %v", key, n.id, code, body, err)
	}
}

// testCluster is a set of nodes started together.
type testCluster struct {
	t     testing.TB
	nodes []*node
}

// newCluster creates n nodes (node1..nodeN) that all join each other with
// --bootstrap-expect n, and starts them at the same moment.
func newCluster(t testing.TB, n int, extra ...string) *testCluster {
	c := &testCluster{t: t}
	for i := range n {
		c.nodes = append(c.nodes, newNode(t, fmt.Sprintf("node%d", i+1)))
	}
	for _, nd := range c.nodes {
		nd.extra = append(append(nd.extra, extra...), "--bootstrap-expect", fmt.Sprint(n))
		nd.extra = append(nd.extra, c.joinFlags()...)
	}
	c.startAll()
	return c
}

func (c *testCluster) joinFlags() []string {
	var f []string
	for _, nd := range c.nodes {
		f = append(f, "--join", nd.gossip)
	}
	return f
}

// startAll starts every node from its own goroutine, released together.
func (c *testCluster) startAll() {
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for _, nd := range c.nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			nd.start()
		}()
	}
	close(gate)
	wg.Wait()
}

// waitStable waits until every listed node is ready, agrees on one leader,
// and reports exactly the want set of voters.
func (c *testCluster) waitStable(timeout time.Duration, nodes []*node, want ...string) string {
	c.t.Helper()
	sort.Strings(want)
	var leader string
	waitFor(c.t, timeout, func() error {
		sts, err := oneLeader(nodes)
		if err != nil {
			return err
		}
		for i, st := range sts {
			if got := voters(st); strings.Join(got, ",") != strings.Join(want, ",") {
				return fmt.Errorf("%s sees voters %v, want %v", nodes[i].id, got, want)
			}
		}
		leader = sts[0].Leader.ID
		return nil
	})
	return leader
}

// oneLeader returns the status of each node, or why they are not all
// ready and following one leader.
func oneLeader(nodes []*node) ([]cluster.Status, error) {
	sts := make([]cluster.Status, 0, len(nodes))
	for _, nd := range nodes {
		st, err := nd.status()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", nd.id, err)
		}
		if !st.Ready {
			return nil, fmt.Errorf("%s not ready: %s", nd.id, st.ReadyError)
		}
		if len(sts) > 0 && st.Leader.ID != sts[0].Leader.ID {
			return nil, fmt.Errorf("%s sees leader %q, %s sees %q", nd.id, st.Leader.ID, nodes[0].id, sts[0].Leader.ID)
		}
		sts = append(sts, st)
	}
	return sts, nil
}

func (c *testCluster) ids() []string {
	var ids []string
	for _, nd := range c.nodes {
		ids = append(ids, nd.id)
	}
	return ids
}

func (c *testCluster) node(id string) *node {
	for _, nd := range c.nodes {
		if nd.id == id {
			return nd
		}
	}
	c.t.Fatalf("no node %q", id)
	return nil
}

func (c *testCluster) except(ids ...string) []*node {
	var out []*node
	for _, nd := range c.nodes {
		skip := false
		for _, id := range ids {
			skip = skip || nd.id == id
		}
		if !skip {
			out = append(out, nd)
		}
	}
	return out
}

func voters(st cluster.Status) []string {
	var v []string
	for _, s := range st.Servers {
		if s.Suffrage == "Voter" {
			v = append(v, s.ID)
		}
	}
	sort.Strings(v)
	return v
}

// waitDrained waits until count is 0 on every node's status, e.g. the
// sessions or cache entries of its replica.
func (c *testCluster) waitDrained(timeout time.Duration, what string, count func(cluster.Status) int) {
	c.t.Helper()
	waitFor(c.t, timeout, func() error {
		for _, nd := range c.nodes {
			st, err := nd.status()
			if err != nil {
				return err
			}
			if n := count(st); n != 0 {
				return fmt.Errorf("%s still holds %d %s", nd.id, n, what)
			}
		}
		return nil
	})
}

// waitLog waits until n's log has a line containing text.
func (n *node) waitLog(timeout time.Duration, text string) {
	n.t.Helper()
	waitFor(n.t, timeout, func() error {
		if !strings.Contains(n.log(), text) {
			return fmt.Errorf("%s has not logged %q", n.id, text)
		}
		return nil
	})
}

// runCLI runs the mcpcluster binary with args, with the admin write token
// in its environment, and returns its exit code and output.
func runCLI(t testing.TB, args ...string) (int, string, string) {
	t.Helper()
	return runCLIEnv(t, nil, args...)
}

// runCLIEnv is runCLI with extra environment variables, which win over
// the token (MCPCLUSTER_ADMIN_TOKEN= runs without one).
func runCLIEnv(t testing.TB, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(append(os.Environ(), "MCPCLUSTER_ADMIN_TOKEN="+sec.writeToken), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("run %v: %v", args, err)
	}
	return code, stdout.String(), stderr.String()
}
