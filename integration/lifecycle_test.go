package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// steadyCalls calls tool through every node in vias from workers
// goroutines until stop is closed; it counts successes and failures.
type steadyCalls struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	ranOn      map[string]int
	wg         sync.WaitGroup
	stop       chan struct{}
}

func startSteadyCalls(t *testing.T, vias []*node, tool string, args map[string]any, workers int) *steadyCalls {
	s := &steadyCalls{stop: make(chan struct{}), ranOn: map[string]int{}}
	for w := range workers {
		cl := mcpgoClient(t, vias[w%len(vias)].mcpURL(), legacy)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-s.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				_, ranOn, err := callTool(ctx, cl, tool, args)
				cancel()
				s.mu.Lock()
				if err != nil {
					s.failed.Add(1)
					s.errs = append(s.errs, fmt.Sprintf("worker %d call %d: %v", w, i, err))
				} else {
					s.ok.Add(1)
					s.ranOn[ranOn]++
				}
				s.mu.Unlock()
			}
		}()
	}
	return s
}

func (s *steadyCalls) finish() {
	close(s.stop)
	s.wg.Wait()
}

// waitCalls waits until n more calls have succeeded.
func (s *steadyCalls) waitCalls(t *testing.T, n int64) {
	t.Helper()
	target := s.ok.Load() + n
	waitFor(t, 60*time.Second, func() error {
		if got := s.ok.Load(); got < target {
			return fmt.Errorf("%d of %d calls", got, target)
		}
		return nil
	})
}

// Acceptance 5.5: SIGTERM the node that holds a replicas-1 tool and leads
// raft, during a steady stream of calls through the other nodes: no call
// fails, the tool gets a new holder, leadership moves, and the node exits 0
// within the grace period.
func TestDrainLeaderHolder(t *testing.T) {
	c := newProviderCluster(t, 3, pinnedProvider, "--drain-grace", "10s")
	holder := c.node(c.nodes[0].holders(t, "pinned_sleep", 1)[0])
	// Make the holder the leader too, by moving leadership until it is.
	waitFor(t, 30*time.Second, func() error {
		st, err := holder.status()
		if err != nil {
			return err
		}
		if st.Leader.ID == holder.id {
			return nil
		}
		leader := c.node(st.Leader.ID)
		code, body, err := leader.do(context.Background(), "POST", "/v1/agent/transfer-leadership?to="+holder.id, "")
		if err != nil || code != 200 {
			return fmt.Errorf("transfer: %d %s %v", code, body, err)
		}
		return fmt.Errorf("leader was %s", st.Leader.ID)
	})
	others := c.except(holder.id)
	calls := startSteadyCalls(t, others, "pinned_sleep", map[string]any{"ms": 50}, 6)
	calls.waitCalls(t, 40)

	start := time.Now()
	holder.signal(syscall.SIGTERM)
	code, exited := holder.wait(15 * time.Second)
	drained := time.Since(start)
	if !exited || code != 0 {
		t.Fatalf("holder after SIGTERM: exited=%v code=%d", exited, code)
	}
	if drained > 10*time.Second {
		t.Fatalf("drain took %s, grace is 10s", drained)
	}
	calls.waitCalls(t, 40)
	calls.finish()
	if n := calls.failed.Load(); n != 0 {
		t.Fatalf("%d of %d calls failed:\n%s", n, n+calls.ok.Load(), strings.Join(calls.errs, "\n"))
	}
	newHolder := others[0].holders(t, "pinned_sleep", 1)[0]
	if newHolder == holder.id {
		t.Fatal("the drained node still holds the tool")
	}
	st, err := others[0].status()
	if err != nil || st.Leader.ID == holder.id || st.Leader.ID == "" {
		t.Fatalf("leader after the drain: %q %v", st.Leader.ID, err)
	}
	if !strings.Contains(holder.log(), "drained") {
		t.Fatal("the node did not log its drain")
	}
	t.Logf("SIGTERM of leader+holder %s: exited 0 after %s; %d calls, none failed; new holder %s, new leader %s",
		holder.id, drained.Round(time.Millisecond), calls.ok.Load(), newHolder, st.Leader.ID)
}

// scrape parses n's /metrics with the Prometheus text parser.
func (n *node) scrape(t *testing.T) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := httpClient.Get("http://" + n.http + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("/metrics of %s does not parse: %v", n.id, err)
	}
	return fams
}

// sample returns the value of family name at the given labels (all must match).
func sample(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	f, ok := fams[name]
	if !ok {
		return -1
	}
	total := 0.0
	for _, m := range f.GetMetric() {
		match := true
		for k, v := range labels {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			match = match && found
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			total += m.Counter.GetValue()
		case m.Gauge != nil:
			total += m.Gauge.GetValue()
		case m.Histogram != nil:
			total += float64(m.Histogram.GetSampleCount())
		}
	}
	return total
}

// Acceptance 5.6: /metrics parses with the Prometheus text parser and its
// counters move when calls are made.
func TestMetrics(t *testing.T) {
	c := newProviderCluster(t, 3, pinnedProvider)
	holder := c.nodes[0].holders(t, "pinned_echo", 1)[0]
	via := c.except(holder)[0]
	before := via.scrape(t)
	for _, name := range []string{"mcpcluster_raft_term", "mcpcluster_raft_commit_index", "mcpcluster_raft_applied_index",
		"mcpcluster_leader_changes_total", "mcpcluster_members", "mcpcluster_inflight_calls", "mcpcluster_queue_length"} {
		if sample(before, name, nil) < 0 {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	waitFor(t, 10*time.Second, func() error {
		if got := sample(via.scrape(t), "mcpcluster_members", map[string]string{"state": "alive", "status": "running"}); got != 3 {
			return fmt.Errorf("alive running members: %v, want 3", got)
		}
		return nil
	})
	cl := mcpgoClient(t, via.mcpURL(), legacy)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for range 5 {
		if _, _, err := callTool(ctx, cl, "echo", map[string]any{"text": "m"}); err != nil {
			t.Fatal(err)
		}
		if _, _, err := callTool(ctx, cl, "pinned_echo", map[string]any{"text": "m"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := callTool(ctx, cl, "nope", nil); err == nil {
		t.Fatal("unknown tool succeeded")
	}
	after := via.scrape(t)
	checks := []struct {
		name   string
		labels map[string]string
		delta  float64
	}{
		{"mcpcluster_requests_total", map[string]string{"method": "tools/call", "tool": "echo"}, 5},
		{"mcpcluster_requests_total", map[string]string{"method": "tools/call", "tool": "pinned_echo"}, 5},
		{"mcpcluster_call_duration_seconds", map[string]string{"tool": "echo", "where": "local"}, 5},
		{"mcpcluster_call_duration_seconds", map[string]string{"tool": "pinned_echo", "where": "forwarded"}, 5},
		{"mcpcluster_request_errors_total", map[string]string{"method": "tools/call", "tool": "(unknown)"}, 1},
	}
	for _, ch := range checks {
		b, a := max(sample(before, ch.name, ch.labels), 0), sample(after, ch.name, ch.labels)
		if a-b != ch.delta {
			t.Errorf("%s%v moved by %v, want %v", ch.name, ch.labels, a-b, ch.delta)
		}
	}
}

// postCall sends one stateless 2025-11-25 tools/call and returns the HTTP
// status, the Retry-After header and the body.
func postCall(ctx context.Context, cl *http.Client, n *node, tool string, args map[string]any) (int, string, string, error) {
	params, _ := json.Marshal(map[string]any{"name": tool, "arguments": args})
	body := `{"jsonrpc":"2.0","id":1,"method":"tools/call","params":` + string(params) + `}`
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.mcpURL(), strings.NewReader(body))
	if err != nil {
		return 0, "", "", err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	req.Header.Set("Mcp-Protocol-Version", legacy)
	resp, err := cl.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), string(b), err
}

// Acceptance 5.1: a node with 100 slots and a queue of 100, hit by 1,000
// concurrent slow calls: the excess is refused at once with 429, every
// admitted call completes, memory stays bounded, and the node serves
// normally right after.
func TestBackpressure(t *testing.T) {
	n := newNode(t, "solo", "--bootstrap-expect", "1", "--max-concurrent", "100", "--max-queue", "100", "--call-timeout", "10s")
	n.start()
	c := &testCluster{t: t, nodes: []*node{n}}
	c.waitStable(30*time.Second, c.nodes, "solo")
	cl := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 1000, MaxConnsPerHost: 0}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// A refusal that waited for a slot would take at least one sleep; one
	// refused at once takes what a thousand connections at once cost on
	// this machine (with the race detector, up to a second or so).
	const total, sleepMS = 1000, 4000
	var ok, busy, other atomic.Int64
	var slowestRefusal atomic.Int64
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for range total {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			start := time.Now()
			code, retry, body, err := postCall(ctx, cl, n, "sleep", map[string]any{"ms": sleepMS})
			switch {
			case err == nil && code == 200 && strings.Contains(body, "slept"):
				ok.Add(1)
			case err == nil && code == 429 && retry != "" && strings.Contains(body, "server busy"):
				busy.Add(1)
				if d := int64(time.Since(start)); d > slowestRefusal.Load() {
					slowestRefusal.Store(d)
				}
			default:
				other.Add(1)
				t.Errorf("call: %d %q %.200s %v", code, retry, body, err)
			}
		}()
	}
	close(gate)
	wg.Wait()
	t.Logf("%d calls: %d completed, %d refused with 429 (slowest refusal %s), %d other",
		total, ok.Load(), busy.Load(), time.Duration(slowestRefusal.Load()).Round(time.Millisecond), other.Load())
	if ok.Load() < 200 || ok.Load()+busy.Load() != total {
		t.Fatalf("want at least the 200 admitted calls completed and the rest refused")
	}
	if time.Duration(slowestRefusal.Load()) >= sleepMS*time.Millisecond/2 {
		t.Fatalf("a refusal took %s: the excess must be refused at once", time.Duration(slowestRefusal.Load()))
	}
	fams := n.scrape(t)
	if rss := sample(fams, "process_resident_memory_bytes", nil); rss <= 0 || rss > 512<<20 {
		t.Fatalf("resident memory %v after the burst", rss)
	}
	if got := sample(fams, "mcpcluster_rejections_total", map[string]string{"reason": "busy"}); got != float64(busy.Load()) {
		t.Fatalf("rejections counted %v, clients saw %d", got, busy.Load())
	}
	if !n.running() {
		t.Fatal("node died")
	}
	if code, _, body, err := postCall(ctx, cl, n, "echo", map[string]any{"text": "after"}); err != nil || code != 200 || !strings.Contains(body, "after") {
		t.Fatalf("after the burst: %d %s %v", code, body, err)
	}
}

// Acceptance 5.2: a call that outlives its timeout ends with an error
// naming the timeout, and the tool's handler sees the cancellation: here
// and, for a forwarded call, on the holder.
func TestCallTimeout(t *testing.T) {
	c := newProviderCluster(t, 3, pinnedProvider, "--call-timeout", "1s")
	holder := c.node(c.nodes[0].holders(t, "pinned_sleep", 1)[0])
	via := c.except(holder.id)[0]
	cl := mcpgoClient(t, via.mcpURL(), legacy)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	start := time.Now()
	_, _, err := callTool(ctx, cl, "sleep", map[string]any{"ms": 10000})
	if err == nil || !strings.Contains(err.Error(), `tool "sleep" timed out after 1s`) || !strings.Contains(err.Error(), "sleep cancelled") {
		t.Fatalf("local call past its timeout: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("local timeout answered after %s", d)
	}

	start = time.Now()
	_, _, err = callTool(ctx, cl, "pinned_sleep", map[string]any{"ms": 10000})
	if err == nil || !strings.Contains(err.Error(), `tool "pinned_sleep" timed out after 1s`) {
		t.Fatalf("forwarded call past its timeout: %v", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("forwarded timeout answered after %s", d)
	}
	holder.waitLog(5*time.Second, "sleep cancelled") // the holder saw the call cancelled
}

// Acceptance 5.4: of two holders, one slow, a steady stream of calls
// through a third node runs mostly on the fast one.
func TestCallsAvoidSlowHolder(t *testing.T) {
	dir := t.TempDir()
	provider := func(delay string) string {
		cfg := filepath.Join(dir, "node-"+delay+".yaml")
		body := fmt.Sprintf("providers:\n  - name: dual\n    type: stdio\n    command: [%q]\n    env: [STDIO_SERVER_DELAY=%s]\n    prefix: dual_\n    replicas: 2\n", stdioServer, delay)
		if err := os.WriteFile(cfg, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	c := &testCluster{t: t}
	slow := newNode(t, "node1", "--config", provider("300ms"))
	fast := newNode(t, "node2", "--config", provider("0s"))
	via := newNode(t, "node3")
	c.nodes = []*node{slow, fast, via}
	for _, nd := range c.nodes {
		nd.extra = append(nd.extra, append([]string{"--bootstrap-expect", "3"}, c.joinFlags()...)...)
	}
	c.startAll()
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	via.holders(t, "dual_echo", 2)

	calls := startSteadyCalls(t, []*node{via}, "dual_echo", map[string]any{"text": "x"}, 8)
	calls.waitCalls(t, 300)
	calls.finish()
	if calls.failed.Load() != 0 {
		t.Fatalf("%d calls failed: %v", calls.failed.Load(), calls.errs)
	}
	calls.mu.Lock()
	onFast, onSlow := calls.ranOn[fast.id], calls.ranOn[slow.id]
	calls.mu.Unlock()
	t.Logf("calls through %s: %d on the fast holder, %d on the slow one", via.id, onFast, onSlow)
	if onFast < 4*onSlow {
		t.Fatalf("fast holder ran %d calls, slow holder %d: want most on the fast one", onFast, onSlow)
	}
}

// SIGTERM drains; a second signal during the drain stops the node at once.
func TestSecondSignalStopsAtOnce(t *testing.T) {
	n := newNode(t, "solo", "--bootstrap-expect", "1", "--drain-grace", "60s", "--call-timeout", "60s")
	n.start()
	c := &testCluster{t: t, nodes: []*node{n}}
	c.waitStable(30*time.Second, c.nodes, "solo")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	go postCall(ctx, http.DefaultClient, n, "sleep", map[string]any{"ms": 50000}) // keeps the drain waiting
	waitFor(t, 10*time.Second, func() error {
		if sample(n.scrape(t), "mcpcluster_inflight_calls", nil) != 1 {
			return fmt.Errorf("call not running yet")
		}
		return nil
	})
	n.signal(syscall.SIGTERM)
	waitFor(t, 10*time.Second, func() error {
		if !strings.Contains(n.log(), "draining") {
			return fmt.Errorf("not draining yet")
		}
		return nil
	})
	if _, exited := n.wait(500 * time.Millisecond); exited {
		t.Fatal("the node did not wait for its in-flight call")
	}
	start := time.Now()
	n.signal(syscall.SIGINT)
	if _, exited := n.wait(5 * time.Second); !exited {
		t.Fatal("second signal did not stop the node")
	}
	t.Logf("stopped %s after the second signal", time.Since(start).Round(time.Millisecond))
}

// A paused holder (SIGSTOP: it still accepts connections, never answers)
// is noticed by the calls it holds up, checked by the leader with a ping
// and relieved of its providers; calls of a read-only tool waiting on it go
// to the new holder. With the lan gossip profile, gossip alone would take
// longer than the bound checked here.
func TestPausedHolderReplaced(t *testing.T) {
	c := newProviderCluster(t, 3, pinnedProvider, "--gossip-profile", "lan")
	holder := c.node(c.nodes[0].holders(t, "pinned_echo", 1)[0])
	waitFor(t, 30*time.Second, func() error { // the holder must not lead: a paused leader is another test
		st, err := holder.status()
		if err != nil {
			return err
		}
		if st.Leader.ID != holder.id {
			return nil
		}
		code, body, err := holder.do(context.Background(), http.MethodPost, "/v1/agent/transfer-leadership", "")
		return fmt.Errorf("holder leads; transfer: %d %s %v", code, body, err)
	})
	calls := startSteadyCalls(t, c.except(holder.id), "pinned_echo", map[string]any{"text": "x"}, 4)
	calls.waitCalls(t, 40)
	holder.signal(syscall.SIGSTOP)
	t.Cleanup(func() { holder.signal(syscall.SIGCONT) })
	paused := time.Now()
	before := calls.ok.Load()
	calls.waitCalls(t, 40)
	recovered := time.Since(paused)
	calls.finish()
	if n := calls.failed.Load(); n != 0 {
		t.Fatalf("%d calls failed while the holder was paused: %v", n, calls.errs)
	}
	if recovered > 4*time.Second {
		t.Fatalf("calls took %s to flow again after the holder paused", recovered)
	}
	calls.mu.Lock()
	ranOn := fmt.Sprint(calls.ranOn)
	calls.mu.Unlock()
	t.Logf("holder %s paused: 40 more calls done %s later (%d before), none failed; ran on %s", holder.id, recovered.Round(time.Millisecond), before, ranOn)
}
