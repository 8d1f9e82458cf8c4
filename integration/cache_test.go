package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// getInfo reads key through n and returns status, body and the level that answered.
func (n *node) getInfo(ctx context.Context, key, level string) (int, string, string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.http+"/v1/cache/"+key+"?consistency="+level, nil)
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, "", "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), resp.Header.Get("X-Mcpcluster-Consistency"), err
}

func (n *node) hash(t testing.TB) string {
	t.Helper()
	resp, err := httpClient.Get("http://" + n.http + "/v1/fsm/hash")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var h struct{ Hash string }
	if err := json.NewDecoder(resp.Body).Decode(&h); err != nil {
		t.Fatal(err)
	}
	return h.Hash
}

// waitSameState waits until every node holds the same replicated state.
func (c *testCluster) waitSameState(timeout time.Duration, nodes []*node) {
	c.t.Helper()
	waitFor(c.t, timeout, func() error {
		first := nodes[0].hash(c.t)
		for _, nd := range nodes[1:] {
			if h := nd.hash(c.t); h != first {
				return fmt.Errorf("%s has state %s, %s has %s", nodes[0].id, first[:12], nd.id, h[:12])
			}
		}
		return nil
	})
}

// Acceptance 4.1: a value set through A is returned by a linearizable get
// on B and C right after the ack, a lagging node included; every answer
// says which level served it.
func TestCacheReadLevels(t *testing.T) {
	c := newCluster(t, 3)
	leader := c.waitStable(30*time.Second, c.nodes, c.ids()...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i, a := range c.nodes {
		key := fmt.Sprintf("k%d", i)
		a.mustPut(key, "v"+key)
		for _, nd := range c.nodes {
			for _, level := range []string{"linearizable", "default"} {
				code, body, got, err := nd.getInfo(ctx, key, level)
				if err != nil || code != 200 || body != "v"+key || got != level {
					t.Fatalf("%s get %s on %s after the ack through %s: %d %q level %q %v", level, key, nd.id, a.id, code, body, got, err)
				}
			}
		}
	}
	// A follower that missed writes: stale may miss, linearizable may not.
	lag := c.except(leader)[0]
	lag.signal(syscall.SIGSTOP)
	c.node(leader).mustPut("late", "1")
	lag.signal(syscall.SIGCONT)
	code, _, level, err := lag.getInfo(ctx, "late", "stale")
	if err != nil || level != "stale" || (code != 200 && code != 404) {
		t.Fatalf("stale read on %s: %d level %q %v", lag.id, code, level, err)
	}
	t.Logf("stale read on the lagging node right after it resumed: %d", code)
	if code, body, level, err := lag.getInfo(ctx, "late", "linearizable"); err != nil || code != 200 || body != "1" || level != "linearizable" {
		t.Fatalf("linearizable read on the lagging node: %d %q %q %v", code, body, level, err)
	}
}

// Acceptance 4.2: a 1 s TTL entry is visible before expiry, invisible on
// every node after it, and then removed from every node's state.
func TestCacheTTL(t *testing.T) {
	c := newCluster(t, 3)
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	before := c.nodes[0].hash(t)
	start := time.Now()
	code, body, err := c.nodes[0].do(ctx, http.MethodPut, "/v1/cache/short?ttl=1s", "brief")
	if err != nil || code != 200 {
		t.Fatalf("put: %d %s %v", code, body, err)
	}
	for _, nd := range c.nodes {
		if code, body, _ := nd.get(ctx, "short", "linearizable"); code != 200 || body != "brief" {
			if time.Since(start) < time.Second {
				t.Fatalf("%s before expiry: %d %q", nd.id, code, body)
			}
		}
	}
	waitFor(t, 5*time.Second, func() error {
		if time.Since(start) < time.Second+50*time.Millisecond {
			return fmt.Errorf("not expired yet")
		}
		return nil
	})
	for _, nd := range c.nodes {
		for _, level := range []string{"stale", "default", "linearizable"} {
			if code, body, _ := nd.get(ctx, "short", level); code != 404 {
				t.Fatalf("%s %s read after expiry: %d %q", nd.id, level, code, body)
			}
		}
	}
	c.waitDrained(15*time.Second, "cache entries", func(st cluster.Status) int { return st.FSM.CacheEntries })
	c.waitSameState(10*time.Second, c.nodes)
	if c.nodes[0].hash(t) == before {
		t.Fatal("state hash unchanged: the write and its expiry left no trace")
	}
}

// Acceptance 4.3: of 20 concurrent CAS increments from different nodes,
// exactly the successful ones are in the final value.
func TestCacheCASIncrements(t *testing.T) {
	c := newCluster(t, 3)
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	c.nodes[0].mustPut("counter", "0")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var ok, conflict atomic.Int64
	var wg sync.WaitGroup
	gate := make(chan struct{})
	for i := range 20 {
		nd := c.nodes[i%3]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-gate
			// A client's CAS loop: read, increment at that version, retry on conflict.
			for range 10 {
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+nd.http+"/v1/cache/counter", nil)
				resp, err := httpClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				n, _ := strconv.Atoi(string(b))
				version := resp.Header.Get("X-Mcpcluster-Version")
				code, body, err := nd.do(ctx, http.MethodPut, "/v1/cache/counter?cas="+version, strconv.Itoa(n+1))
				switch {
				case err != nil:
					t.Error(err)
					return
				case code == 200:
					ok.Add(1)
					return
				case code == 409:
					conflict.Add(1)
				default:
					t.Errorf("cas put: %d %s", code, body)
					return
				}
			}
		}()
	}
	close(gate)
	wg.Wait()
	_, final, _ := c.nodes[2].get(ctx, "counter", "linearizable")
	if got, _ := strconv.Atoi(final); int64(got) != ok.Load() || ok.Load() == 0 || conflict.Load() == 0 {
		t.Fatalf("final value %q, %d successes, %d conflicts", final, ok.Load(), conflict.Load())
	}
	t.Logf("20 concurrent CAS increment loops: %d increments succeeded, %d attempts conflicted, final value %s", ok.Load(), conflict.Load(), final)
}

// Acceptance 4.4: with a bound of N entries, writing 2N leaves exactly the
// same N on every node.
func TestCacheBound(t *testing.T) {
	const n = 50
	c := newCluster(t, 3, "--cache-max-entries", strconv.Itoa(n))
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	for i := range 2 * n {
		c.nodes[i%3].mustPut(fmt.Sprintf("k%03d", i), "v")
	}
	c.waitSameState(10*time.Second, c.nodes)
	for _, nd := range c.nodes {
		resp, err := httpClient.Get("http://" + nd.http + "/v1/cache?consistency=stale&limit=1000")
		if err != nil {
			t.Fatal(err)
		}
		var l struct{ Entries []struct{ Key string } }
		err = json.NewDecoder(resp.Body).Decode(&l)
		resp.Body.Close()
		if err != nil || len(l.Entries) != n || l.Entries[0].Key != fmt.Sprintf("k%03d", n) || l.Entries[n-1].Key != fmt.Sprintf("k%03d", 2*n-1) {
			t.Fatalf("%s holds %d entries (%v), want the newest %d", nd.id, len(l.Entries), err, n)
		}
	}
}

// Acceptance 4.5: a tool with cache_ttl called twice with the same
// arguments through different nodes runs once; other arguments run again;
// after the TTL it runs again.
func TestToolResultCache(t *testing.T) {
	up := startHTTPUpstream(t)
	c := newProviderCluster(t, 3, fmt.Sprintf(`
  - name: weather
    type: http
    url: %s
    replicas: 1
    cache_ttl: 2s
`, up.url))
	c.nodes[0].holders(t, "forecast", 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := func(nd *node, city string) {
		t.Helper()
		cl := mcpgoClient(t, nd.mcpURL(), legacy)
		if text, _, err := callTool(ctx, cl, "forecast", map[string]any{"city": city}); err != nil || text != "sunny in "+city {
			t.Fatalf("forecast %s through %s: %q %v", city, nd.id, text, err)
		}
	}
	start := time.Now()
	call(c.nodes[0], "Oslo")
	call(c.nodes[1], "Oslo")
	call(c.nodes[2], "Oslo")
	if got := up.calls.Load(); got != 1 {
		t.Fatalf("same arguments through three nodes ran %d times, want 1", got)
	}
	call(c.nodes[1], "Rome")
	if got := up.calls.Load(); got != 2 {
		t.Fatalf("other arguments: %d executions, want 2", got)
	}
	waitFor(t, 10*time.Second, func() error {
		if time.Since(start) < 2100*time.Millisecond {
			return fmt.Errorf("ttl not over")
		}
		return nil
	})
	call(c.nodes[2], "Oslo")
	if got := up.calls.Load(); got != 3 {
		t.Fatalf("after the ttl: %d executions, want 3", got)
	}
}

// Acceptance 4.7: bad input gets a clear 4xx (or tool error) and writes nothing.
func TestCacheBadInput(t *testing.T) {
	c := newCluster(t, 3, "--cache-max-key-bytes", "16", "--cache-max-value-bytes", "32")
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	n := c.nodes[0]
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cacheEntries := func() int {
		st, err := n.status()
		if err != nil {
			t.Fatal(err)
		}
		return st.FSM.CacheEntries
	}
	cases := []struct {
		name, method, path, body string
		status                   int
		want                     string
	}{
		{"empty key", http.MethodPut, "/v1/cache/", "v", 400, "empty key"},
		{"key over the maximum", http.MethodPut, "/v1/cache/" + strings.Repeat("k", 17), "v", 400, "maximum is 16"},
		{"value over the maximum", http.MethodPut, "/v1/cache/k", strings.Repeat("v", 33), 413, "maximum of 32"},
		{"negative ttl", http.MethodPut, "/v1/cache/k?ttl=-1s", "v", 400, "ttl"},
		{"unparsable ttl", http.MethodPut, "/v1/cache/k?ttl=soon", "v", 400, "ttl"},
		{"non-numeric cas", http.MethodPut, "/v1/cache/k?cas=abc", "v", 400, "cas"},
		{"bad consistency", http.MethodGet, "/v1/cache/k?consistency=strong", "", 400, "consistency"},
		{"bad list limit", http.MethodGet, "/v1/cache?limit=0", "", 400, "limit"},
	}
	for _, tc := range cases {
		code, body, err := n.do(ctx, tc.method, tc.path, tc.body)
		if err != nil || code != tc.status || !strings.Contains(body, tc.want) {
			t.Errorf("%s: %d %s %v, want %d with %q", tc.name, code, body, err, tc.status, tc.want)
		}
	}
	cl := mcpgoClient(t, n.mcpURL(), legacy)
	for _, args := range []map[string]any{
		{"key": "", "value": "v"},
		{"key": strings.Repeat("k", 17), "value": "v"},
		{"key": "k", "value": strings.Repeat("v", 33)},
		{"key": "k", "value": "v", "ttl": "-5s"},
		{"key": "k", "value": "v", "cas": "abc"},
	} {
		if _, _, err := callTool(ctx, cl, "cache_set", args); err == nil || !strings.Contains(err.Error(), "tool error") {
			t.Errorf("cache_set %v: %v, want a tool error", args, err)
		}
	}
	if got := cacheEntries(); got != 0 {
		t.Fatalf("bad input wrote %d cache entries", got)
	}
	// The tools work with good input, on any node.
	if _, _, err := callTool(ctx, cl, "cache_set", map[string]any{"key": "tool", "value": "ok", "ttl": "1m"}); err != nil {
		t.Fatal(err)
	}
	if text, _, err := callTool(ctx, mcpgoClient(t, c.nodes[2].mcpURL(), legacy), "cache_get", map[string]any{"key": "tool"}); err != nil || text != "ok" {
		t.Fatalf("cache_get through another node: %q %v", text, err)
	}
}

// loadEntries writes n entries of 100 bytes through all nodes with 64 writers.
func (c *testCluster) loadEntries(n int) {
	c.t.Helper()
	value := strings.Repeat("v", 100)
	var next atomic.Int64
	var failed atomic.Int64
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for w := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				if i >= int64(n) || failed.Load() > 0 {
					return
				}
				nd := c.nodes[int(i)%len(c.nodes)]
				req, _ := http.NewRequestWithContext(ctx, http.MethodPut, fmt.Sprintf("http://%s/v1/cache/e%06d", nd.http, i), strings.NewReader(value))
				resp, err := benchClient.Do(req)
				if err != nil {
					failed.Add(1)
					c.t.Errorf("writer %d: %v", w, err)
					return
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					failed.Add(1)
					c.t.Errorf("writer %d: %s", w, resp.Status)
					return
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() > 0 {
		c.t.FailNow()
	}
}

// countEntries pages through n's cache (stale reads) and returns the keys seen.
func (n *node) countEntries(t testing.TB) int {
	t.Helper()
	total, after := 0, ""
	for range 1000 {
		resp, err := httpClient.Get("http://" + n.http + "/v1/cache?consistency=stale&limit=1000&after=" + after)
		if err != nil {
			t.Fatal(err)
		}
		var l struct{ Entries []struct{ Key string } }
		err = json.NewDecoder(resp.Body).Decode(&l)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Entries) == 0 {
			return total
		}
		total += len(l.Entries)
		after = l.Entries[len(l.Entries)-1].Key
	}
	t.Fatal("too many pages")
	return 0
}

// Acceptance 4.6: 100k entries survive a snapshot and SIGKILL of every
// node; a node that joins afterwards receives them by snapshot.
func TestCache100kSnapshotRestart(t *testing.T) {
	const n = 100_000
	c := newCluster(t, 3, "--snapshot-threshold", "20000")
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	start := time.Now()
	c.loadEntries(n)
	t.Logf("wrote %d entries of 100 bytes in %s", n, time.Since(start).Round(time.Millisecond))
	for _, nd := range c.nodes {
		code, body, err := nd.do(context.Background(), http.MethodPost, "/v1/agent/snapshot", "")
		if err != nil || code != 200 {
			t.Fatalf("snapshot on %s: %d %s %v", nd.id, code, body, err)
		}
		var info struct {
			Index    uint64
			Size     int64
			Duration time.Duration `json:"duration_ns"`
		}
		_ = json.Unmarshal([]byte(body), &info)
		t.Logf("snapshot on %s: index %d, %d bytes, %s", nd.id, info.Index, info.Size, info.Duration.Round(time.Millisecond))
	}
	c.waitSameState(30*time.Second, c.nodes)

	for _, nd := range c.nodes {
		nd.kill()
	}
	c.startAll()
	c.waitStable(60*time.Second, c.nodes, c.ids()...)
	c.waitSameState(60*time.Second, c.nodes)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, i := range []int{0, 1, n / 2, n - 1} {
		key := fmt.Sprintf("e%06d", i)
		if code, body, err := c.nodes[i%3].get(ctx, key, "linearizable"); err != nil || code != 200 || body != strings.Repeat("v", 100) {
			t.Fatalf("%s after restart: %d %.20q %v", key, code, body, err)
		}
	}
	for _, nd := range c.nodes {
		if got := nd.countEntries(t); got != n {
			t.Fatalf("%s holds %d entries after restart, want %d", nd.id, got, n)
		}
	}

	// A new node catches up from a snapshot: the log before it is gone.
	n4 := newNode(t, "node4", append([]string{"--bootstrap-expect", "3"}, c.joinFlags()...)...)
	n4.start()
	all := append(c.nodes, n4)
	c.waitSuffrage(60*time.Second, all, 3, 1)
	c.waitSameState(60*time.Second, all)
	if got := n4.countEntries(t); got != n {
		t.Fatalf("new node holds %d entries, want %d", got, n)
	}
	if !strings.Contains(n4.log(), "Installed remote snapshot") {
		t.Fatal("the new node did not install a snapshot")
	}
}
