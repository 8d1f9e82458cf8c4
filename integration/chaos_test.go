package integration

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	"github.com/mark3labs/mcp-go/client"
	mcplib "github.com/mark3labs/mcp-go/mcp"
)

var (
	chaosMode = flag.String("chaos", "", "run the chaos suite: short (3 nodes, one round of faults) or full (3 and 5 nodes)")
	chaosOut  = flag.String("chaos.out", "chaos-out", "directory for histories and summaries")
)

// TestChaos runs the cluster under faults while clients use it, then
// checks what they saw. make chaos-short / make chaos.
func TestChaos(t *testing.T) {
	switch *chaosMode {
	case "":
		t.Skip("chaos suite not requested (make chaos-short or make chaos)")
	case "short":
		t.Run("nodes=3", func(t *testing.T) { runChaos(t, 3, 1) })
	case "full":
		t.Run("nodes=3", func(t *testing.T) { runChaos(t, 3, 2) })
		t.Run("nodes=5", func(t *testing.T) { runChaos(t, 5, 1) })
		t.Run("nodes=7", func(t *testing.T) { runChaos(t, 7, 1) })
	default:
		t.Fatalf("-chaos %q: want short or full", *chaosMode)
	}
}

// chaosRun is the state of one chaos run.
type chaosRun struct {
	t     *testing.T
	c     *testCluster
	start time.Time
	rng   *rand.Rand

	mu      sync.Mutex
	history []histOp
	acked   map[string]string // unique key → value, acknowledged
	calls   []histOp          // tool calls (Input.Op = "call", Input.Key = the tool), for availability
	fails   []opFailure       // every failed or unknown operation, with its real return time
	faults  map[string]int
	windows []faultWindow              // when each fault was in place, until healed
	leaders map[uint64]map[string]bool // term → nodes that reported leading it
	down    map[string]bool            // nodes the nemesis has taken down, until ready again
	downAt  map[string]int64           // when each node in down went down
	downs   map[string][]span          // past down intervals of each node
	joined  int                        // nodes the nemesis added beyond n
	extra   []*node                    // those nodes
	idles   []span                     // when the clients idled
	loaded  bool                       // the cache holds chaosEntries entries
	idle    atomic.Bool                // clients wait while the cache is filled
	slow    []map[string]*client.Client
	stop    chan struct{}
	wg      sync.WaitGroup
}

// span is an interval of the run, in ns since its start.
type span struct{ start, end int64 }

// overlaps reports whether [call, ret] and s share a moment.
func (s span) overlaps(call, ret int64) bool { return s.start <= ret && s.end >= call }

// opFailure is one operation that did not succeed: a failed read or tool
// call, or a write whose outcome is unknown.
type opFailure struct {
	op        string // get, put, cas, or the tool called
	client    int
	node      string // the node the request went to
	call, ret int64
	err       string
}

func (r *chaosRun) now() int64 { return int64(time.Since(r.start)) }

// faultWindow is when one fault was in place, from injection to healed.
type faultWindow struct {
	name       string
	start, end int64
}

// hold lets the workload run for d while a fault is in place: the wait is
// the behaviour under test.
func (r *chaosRun) hold(d time.Duration) {
	select {
	case <-time.After(d):
	case <-r.t.Context().Done():
	}
}

// chaosDeadServerTimeout is how long the leader keeps a failed voter. It
// is longer than any fault keeps a node down save the long pause, which
// outlasts it on purpose.
const chaosDeadServerTimeout = 15 * time.Second

// slowProvider is a stdio upstream whose tools take a second: slow_tick,
// which is not safe to repeat, is called while its holder drains.
func slowProvider() string {
	return fmt.Sprintf("  - name: slow\n    type: stdio\n    command: [%q]\n    env: [STDIO_SERVER_DELAY=1s]\n    prefix: slow_\n    replicas: 1\n", stdioServer)
}

func runChaos(t *testing.T, n, rounds int) {
	var c *testCluster
	if n > scaleVoters {
		c = newScaleProviderCluster(t, n, pinnedProvider+slowProvider(), "--dead-server-timeout", chaosDeadServerTimeout.String())
	} else {
		c = newProviderCluster(t, n, pinnedProvider+slowProvider(), "--dead-server-timeout", chaosDeadServerTimeout.String())
	}
	r := &chaosRun{t: t, c: c, start: time.Now(), rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1)),
		acked: map[string]string{}, faults: map[string]int{}, leaders: map[uint64]map[string]bool{},
		down: map[string]bool{}, downAt: map[string]int64{}, downs: map[string][]span{}, stop: make(chan struct{})}
	// When the run fails, every node's log is kept next to the history.
	stamp := time.Now().Format("150405")
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		for _, nd := range append(slices.Clone(c.nodes), r.extra...) {
			name := filepath.Join(*chaosOut, fmt.Sprintf("history-%dnodes-%s.%s.log", n, stamp, nd.id))
			if os.MkdirAll(*chaosOut, 0o755) == nil && os.WriteFile(name, []byte(nd.log()), 0o644) == nil {
				t.Logf("log of %s kept in %s", nd.id, name)
			}
		}
	})
	sessionNode := c.nodes[0]
	session := mcpgoClient(t, sessionNode.mcpURL(), legacy).GetSessionId()

	r.wg.Add(1)
	go r.watchLeaders()
	for w := range 12 {
		r.wg.Add(1)
		go r.kvClient(w)
	}
	// Real MCP clients, one per node per worker, made while every node is
	// up: half keep 2025-11-25 sessions (which must survive the nodes
	// restarting), half speak 2026-07-28. The pinned_echo callers run all
	// along; the slow_tick callers only while its holder drains.
	clientsFor := func(w int) map[string]*client.Client {
		version := legacy
		if w%2 == 1 {
			version = modern
		}
		clients := map[string]*client.Client{}
		for _, nd := range c.nodes {
			clients[nd.id] = mcpgoClient(t, nd.mcpURL(), version)
		}
		return clients
	}
	// Every node's MCP server lists both tools before the clients start:
	// the catalog reaches a node's front door a sync after the cluster forms.
	for id, cl := range clientsFor(0) {
		waitFor(t, 30*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			list, err := cl.ListTools(ctx, mcplib.ListToolsRequest{})
			if err != nil {
				return err
			}
			found := 0
			for _, tl := range list.Tools {
				if tl.Name == "pinned_echo" || tl.Name == "slow_tick" {
					found++
				}
			}
			if found != 2 {
				return fmt.Errorf("%s lists %d of pinned_echo and slow_tick", id, found)
			}
			return nil
		})
	}
	for w := range 4 {
		clients := clientsFor(w)
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			r.callClient(100+w, "pinned_echo", clients, r.stop, "")
		}()
	}
	for w := range 3 {
		r.slow = append(r.slow, clientsFor(w))
	}
	r.hold(2 * time.Second)
	for round := range rounds {
		t.Logf("round %d of faults", round+1)
		r.nemesis()
	}
	r.hold(2 * time.Second)
	close(r.stop)
	r.wg.Wait()

	// After healing: one cluster, the same state everywhere, every
	// acknowledged write there, a live holder, the session still good.
	r.heal()
	c.waitSameState(60*time.Second, c.nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	lost := 0
	for k, v := range r.acked {
		code, body, err := c.nodes[r.rng.IntN(n)].get(ctx, k, "linearizable")
		if err != nil || code != 200 || body != v {
			lost++
			t.Errorf("acknowledged write %s=%s: %d %q %v", k, v, code, body, err)
		}
	}
	for _, tool := range []string{"pinned_echo", "slow_tick"} {
		holder := c.nodes[0].holders(t, tool, 1)[0]
		if nd := chaosNode(c, holder); nd == nil || !nd.running() {
			t.Errorf("%s held by %s, which is not a running node of the cluster", tool, holder)
		}
	}
	other := c.except(sessionNode.id)[0]
	if code, body := rawMCP(t, other, http.MethodPost, session, "application/json", echoCall); code != 200 {
		t.Errorf("session opened before the faults, through %s after them: %d %s", other.id, code, body)
	}
	twoLeaders := 0
	for term, ids := range r.leaders {
		if len(ids) > 1 {
			twoLeaders++
			t.Errorf("term %d had %d leaders: %v", term, len(ids), ids)
		}
	}

	verdict := checkLinearizable(r.history, 5*time.Minute) // Unknown means the budget ran out, on two shared cores
	if err := os.MkdirAll(*chaosOut, 0o755); err != nil {
		t.Fatal(err)
	}
	histFile := filepath.Join(*chaosOut, fmt.Sprintf("history-%dnodes-%s.jsonl", n, stamp))
	if err := writeHistory(histFile, r.history); err != nil {
		t.Fatal(err)
	}
	summary := r.summary(n, verdict, lost, twoLeaders, histFile)
	t.Log("\n" + summary)
	_ = os.WriteFile(strings.TrimSuffix(histFile, ".jsonl")+".summary.txt", []byte(summary), 0o644)
	for _, f := range r.liveFailures() {
		if mustNotFail[f.op] {
			t.Errorf("%s failed through live node %s, called %.1fs, returned %.1fs, during %s: %s", f.op, f.node,
				time.Duration(f.call).Seconds(), time.Duration(f.ret).Seconds(), r.windowsAt(f.call, f.ret), r.nameAddrs(f.err))
		}
	}
	if verdict != porcupine.Ok {
		t.Errorf("linearizability: %s (history in %s)", verdict, histFile)
	}
}

// nemesis injects each fault once, healing after each.
func (r *chaosRun) nemesis() {
	if len(r.c.nodes) > scaleVoters {
		r.nemesisScale()
		return
	}
	c := r.c
	kill := func(nodes ...*node) {
		for _, v := range nodes {
			v.kill()
		}
	}
	restart := func(nodes ...*node) {
		for _, v := range nodes {
			v.start()
		}
	}
	r.fault("kill follower", func() { r.outage(2*time.Second, kill, restart, c.except(r.leader().id)[0]) })
	r.fault("kill leader", func() { r.outage(3*time.Second, kill, restart, r.leader()) })
	r.fault("kill tool holder", func() {
		r.outage(3*time.Second, kill, restart, c.node(c.except()[0].holders(r.t, "pinned_echo", 1)[0]))
	})
	r.fault("pause past failure detection", func() {
		pause := func(nodes ...*node) { nodes[0].signal(syscall.SIGSTOP) }
		resume := func(nodes ...*node) { nodes[0].signal(syscall.SIGCONT) }
		r.outage(7*time.Second, pause, resume, c.except(r.leader().id)[0])
	})
	r.fault("wipe data and rejoin", func() {
		wipe := func(nodes ...*node) {
			kill(nodes...)
			if err := os.RemoveAll(nodes[0].dataDir); err != nil {
				r.t.Fatal(err)
			}
		}
		r.outage(time.Second, wipe, restart, c.except(r.leader().id)[0])
	})
	r.fault(faultKillMajority, func() {
		l := r.leader()
		r.outage(3*time.Second, kill, restart, append([]*node{l}, c.except(l.id)[:len(c.nodes)/2]...)...)
	})
	r.fault("pause past the dead-server timeout", r.longPause)
	r.fault("drain the slow tool's holder", r.drainSlowHolder)
	r.fault("leave while a voter is dead", r.leaveWithDeadVoter)
	r.fault("rolling restart", r.rollingRestart)
	r.loadEntries()
	r.fault("join with 100k cache entries", r.joinWithEntries)
}

// faultKillMajority is the fault during which the cluster has no quorum.
const faultKillMajority = "kill majority, restart it"

// leader returns the node the cluster reports as leader.
func (r *chaosRun) leader() *node {
	var l string
	waitFor(r.t, 60*time.Second, func() error {
		st, err := r.c.nodes[0].status()
		if err != nil || st.Leader.ID == "" {
			return fmt.Errorf("no leader: %v", err)
		}
		l = st.Leader.ID
		return nil
	})
	return r.c.node(l)
}

// heal waits until the cluster is whole again: every node ready, one
// leader, every node a voter, and every node's providers declared.
func (r *chaosRun) heal() {
	if n := len(r.c.nodes); n > scaleVoters {
		r.c.waitSuffrage(90*time.Second, r.c.nodes, scaleVoters, n-scaleVoters)
	} else {
		r.c.waitStable(60*time.Second, r.c.nodes, r.c.ids()...)
	}
	r.waitDeclared(60*time.Second, r.c.nodes)
}

// fault injects one fault with f, heals, and records when it was in place.
func (r *chaosRun) fault(name string, f func()) {
	r.t.Logf("fault: %s", name)
	start := r.now()
	began := time.Now()
	f()
	r.heal()
	r.mu.Lock()
	r.faults[name]++
	r.windows = append(r.windows, faultWindow{name: name, start: start, end: r.now()})
	r.mu.Unlock()
	r.t.Logf("fault: %s healed after %s", name, time.Since(began).Round(100*time.Millisecond))
	r.hold(time.Second)
}

// pick returns a random node the nemesis has not taken down, other than
// except, as a client behind health checks would.
func (r *chaosRun) pick(rng *rand.Rand, except string) *node {
	r.mu.Lock()
	defer r.mu.Unlock()
	var up []*node
	for _, nd := range r.c.nodes {
		if !r.down[nd.id] && nd.id != except {
			up = append(up, nd)
		}
	}
	if len(up) == 0 {
		up = r.c.nodes
	}
	return up[rng.IntN(len(up))]
}

// setDown marks nodes down (or up again) for the clients, and records
// each node's down intervals for the summary.
func (r *chaosRun) setDown(down bool, nodes ...*node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := r.now()
	for _, nd := range nodes {
		switch {
		case down && !r.down[nd.id]:
			r.downAt[nd.id] = now
		case !down && r.down[nd.id]:
			r.downs[nd.id] = append(r.downs[nd.id], span{r.downAt[nd.id], now})
		}
		r.down[nd.id] = down
	}
}

// outage takes nodes down with down, keeps them so for d while clients
// avoid them, brings them back with up, and lets clients use them again
// once they are ready.
func (r *chaosRun) outage(d time.Duration, down, up func(...*node), nodes ...*node) {
	r.setDown(true, nodes...)
	down(nodes...)
	r.hold(d)
	up(nodes...)
	r.waitReady(60*time.Second, nodes...)
	r.setDown(false, nodes...)
}

// readyClient asks /readyz, which needs no token, with a short timeout.
var readyClient = &http.Client{Timeout: 2 * time.Second}

// waitReady waits until each node answers /readyz with 200, as a health
// check in front of it would before sending it clients again.
func (r *chaosRun) waitReady(timeout time.Duration, nodes ...*node) {
	r.t.Helper()
	waitFor(r.t, timeout, func() error {
		for _, nd := range nodes {
			resp, err := readyClient.Get("http://" + nd.http + "/readyz")
			if err != nil {
				return fmt.Errorf("%s: %w", nd.id, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				return fmt.Errorf("%s not ready: %s %s", nd.id, resp.Status, strings.TrimSpace(string(b)))
			}
		}
		return nil
	})
}

// failed records an operation that did not succeed.
func (r *chaosRun) failed(op string, h histOp, ret int64, err string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.fails = append(r.fails, opFailure{op: op, client: h.Client, node: h.Node, call: h.Call, ret: ret, err: err})
}

// waitBusy waits while the clients are told to idle; false when the run
// stops meanwhile.
func (r *chaosRun) waitBusy() bool {
	for r.idle.Load() {
		select {
		case <-r.stop:
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	return true
}

// kvClient runs cache operations through random nodes until stopped.
func (r *chaosRun) kvClient(id int) {
	defer r.wg.Done()
	rng := rand.New(rand.NewPCG(uint64(id), uint64(time.Now().UnixNano())))
	cl := &http.Client{Timeout: 3 * time.Second, Transport: withToken(nil)}
	seen := map[string]string{}
	for i := 0; ; i++ {
		select {
		case <-r.stop:
			return
		default:
		}
		if !r.waitBusy() {
			return
		}
		nd := r.pick(rng, "")
		key := fmt.Sprintf("reg%d", rng.IntN(4))
		value := fmt.Sprintf("c%d-%d", id, i)
		var in kvInput
		switch p := rng.IntN(100); {
		case p < 10:
			in = kvInput{Op: "put", Key: fmt.Sprintf("ack-%d-%d", id, i), Value: value}
		case p < 55:
			in = kvInput{Op: "get", Key: key}
		case p < 85:
			in = kvInput{Op: "put", Key: key, Value: value}
		default:
			in = kvInput{Op: "cas", Key: key, Old: seen[key], Value: value}
		}
		h := histOp{Client: id, Input: in, Call: r.now(), Node: nd.id}
		out, err := kvDo(cl, nd, in)
		h.Return = r.now()
		switch {
		case err == nil:
			h.Output = out
			if in.Op == "get" {
				seen[key] = out.Value
			}
		case in.Op == "get":
			r.failed(in.Op, h, h.Return, err.Error())
			continue // a failed read had no effect
		default:
			r.failed(in.Op, h, h.Return, err.Error())
			h.Output, h.Return, h.Error = kvOutput{Unknown: true}, never, err.Error()
		}
		r.mu.Lock()
		r.history = append(r.history, h)
		if err == nil && strings.HasPrefix(in.Key, "ack-") {
			r.acked[in.Key] = in.Value
		}
		r.mu.Unlock()
	}
}

// kvDo runs one cache operation through nd.
func kvDo(cl *http.Client, nd *node, in kvInput) (kvOutput, error) {
	var req *http.Request
	base := "http://" + nd.http + "/v1/cache/" + in.Key
	switch in.Op {
	case "get":
		req, _ = http.NewRequest(http.MethodGet, base+"?consistency=linearizable", nil)
	case "put":
		req, _ = http.NewRequest(http.MethodPut, base, strings.NewReader(in.Value))
	case "cas":
		req, _ = http.NewRequest(http.MethodPut, base+"?old="+in.Old, strings.NewReader(in.Value))
	}
	resp, err := cl.Do(req)
	if err != nil {
		return kvOutput{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	switch {
	case in.Op == "get" && resp.StatusCode == 200:
		return kvOutput{Value: string(b)}, nil
	case in.Op == "get" && resp.StatusCode == 404:
		return kvOutput{}, nil
	case in.Op == "cas" && resp.StatusCode == 409:
		return kvOutput{OK: false}, nil
	case resp.StatusCode == 200:
		return kvOutput{OK: true}, nil
	}
	return kvOutput{}, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(b)))
}

// callClient calls tool (pinned_echo, which echoes, or slow_tick, which
// counts) through random live nodes other than except with its MCP
// clients until stop is closed.
func (r *chaosRun) callClient(id int, tool string, clients map[string]*client.Client, stop <-chan struct{}, except string) {
	rng := rand.New(rand.NewPCG(uint64(id), 7))
	args, timeout := map[string]any{"text": "x"}, 10*time.Second
	if tool == "slow_tick" {
		args, timeout = nil, 20*time.Second
	}
	for i := 0; ; i++ {
		select {
		case <-stop:
			return
		default:
		}
		if !r.waitBusy() {
			return
		}
		nd := r.pick(rng, except)
		h := histOp{Client: id, Input: kvInput{Op: "call", Key: tool}, Call: r.now(), Node: nd.id}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		text, _, err := callTool(ctx, clients[nd.id], tool, args)
		cancel()
		h.Return = r.now()
		ok := err == nil && text == "x"
		if tool == "slow_tick" {
			ok = err == nil && strings.HasPrefix(text, "tick ")
		}
		if !ok {
			h.Output.Unknown = true
			h.Error = fmt.Sprintf("%q %v", text, err)
			r.failed(tool, h, h.Return, h.Error)
		}
		r.mu.Lock()
		r.calls = append(r.calls, h)
		r.mu.Unlock()
	}
}

// watchLeaders records which nodes report leading each term.
func (r *chaosRun) watchLeaders() {
	defer r.wg.Done()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-tick.C:
		}
		for _, nd := range r.c.nodes {
			st, err := nd.status()
			if err != nil || st.Raft.State != "Leader" {
				continue
			}
			r.mu.Lock()
			if r.leaders[st.Raft.Term] == nil {
				r.leaders[st.Raft.Term] = map[string]bool{}
			}
			r.leaders[st.Raft.Term][nd.id] = true
			r.mu.Unlock()
		}
	}
}
