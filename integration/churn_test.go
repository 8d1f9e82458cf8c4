package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mcpcluster/mcpcluster/cluster"
)

// Churn: a node paused past the dead-server timeout is removed, and with it
// its providers; resumed, it rejoins as a voter and declares its providers
// again, so the tools only it offers come back.
func TestReturningNodeDeclaresProvidersAgain(t *testing.T) {
	c := newCluster(t, 3, "--dead-server-timeout", "3s")
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	// node3 alone offers the provider "only3"; restart it with that config.
	cfg := filepath.Join(t.TempDir(), "only3.yaml")
	if err := os.WriteFile(cfg, []byte("providers:\n  - name: only3\n    type: builtin\n    prefix: only3_\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	n3 := c.node("node3")
	n3.stop(15 * time.Second)
	n3.extra = append(n3.extra, "--config", cfg)
	n3.start()
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	c.nodes[0].holders(t, "only3_echo", 1)

	n3.signal(syscall.SIGSTOP)
	others := c.except("node3")
	c.waitStable(60*time.Second, others, "node1", "node2")
	waitFor(t, 30*time.Second, func() error {
		tools, err := c.nodes[0].catalog()
		if err != nil {
			return err
		}
		for _, tl := range tools {
			if tl.Name == "only3_echo" {
				return fmt.Errorf("only3_echo still in the catalog with holders %v", tl.Holders)
			}
		}
		return nil
	})

	n3.signal(syscall.SIGCONT)
	c.waitStable(60*time.Second, c.nodes, c.ids()...)
	for _, nd := range c.nodes {
		if got := nd.holders(t, "only3_echo", 1); len(got) != 1 || got[0] != "node3" {
			t.Fatalf("%s: only3_echo held by %v", nd.id, got)
		}
	}
	n3.waitLog(5*time.Second, "declaring them again")
}

// Churn: SIGTERM the holder of a replicas: 1 stdio provider while calls of
// its slow, non-idempotent tool run in it through another node. The
// provider moves, but the instance on the draining holder takes no new
// call and finishes the ones inside before it is closed: none fails.
func TestDrainFinishesProviderCalls(t *testing.T) {
	providers := fmt.Sprintf("  - name: slow\n    type: stdio\n    command: [%q]\n    env: [STDIO_SERVER_DELAY=1500ms]\n    prefix: slow_\n    replicas: 1\n", stdioServer)
	c := newProviderCluster(t, 3, providers)
	holder := c.node(c.nodes[0].holders(t, "slow_tick", 1)[0])
	via := c.except(holder.id)[0]
	cl := mcpgoClient(t, via.mcpURL(), legacy)

	const calls = 6
	type result struct {
		text, ranOn string
		err         error
	}
	results := make(chan result, calls)
	for range calls {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			text, ranOn, err := callTool(ctx, cl, "slow_tick", nil)
			results <- result{text, ranOn, err}
		}()
	}
	time.Sleep(500 * time.Millisecond) // the calls are inside the provider on the holder
	holder.signal(syscall.SIGTERM)
	for range calls {
		r := <-results
		if r.err != nil {
			t.Errorf("call in flight during the holder's drain failed: %v", r.err)
		} else if r.ranOn != holder.id {
			t.Errorf("call ran on %s, want the old holder %s", r.ranOn, holder.id)
		}
	}
	if code, ok := holder.wait(30 * time.Second); !ok || code != 0 {
		t.Fatalf("holder after drain: exited=%v code=%d", ok, code)
	}
	if !strings.Contains(holder.log(), "stopped after its calls") {
		t.Error("the old holder did not log closing the provider after its calls")
	}
	// New calls go to the new holder.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	text, ranOn, err := callTool(ctx, cl, "slow_tick", nil)
	if err != nil || ranOn == holder.id || !strings.HasPrefix(text, "tick") {
		t.Fatalf("call after the move: %q on %s, %v", text, ranOn, err)
	}
}

// Bootstrap with extra nodes: five processes started at once with
// --bootstrap-expect 3 form one cluster. One node bootstraps it with three
// voters; the two others join as non-voters and are promoted once caught
// up and stable.
func TestBootstrapExtraNodes(t *testing.T) {
	c := &testCluster{t: t}
	for i := range 5 {
		c.nodes = append(c.nodes, newNode(t, fmt.Sprintf("node%d", i+1)))
	}
	for _, nd := range c.nodes {
		nd.extra = append(nd.extra, "--bootstrap-expect", "3")
		nd.extra = append(nd.extra, c.joinFlags()...)
	}
	c.startAll()

	// Poll the leader's view: the extra nodes must be seen as non-voters
	// before they are voters.
	seenNonvoter := map[string]bool{}
	waitFor(t, 90*time.Second, func() error {
		var st cluster.Status
		var err error
		for _, nd := range c.nodes {
			if st, err = nd.status(); err == nil && st.Raft.State == "Leader" {
				break
			}
		}
		if err != nil || st.Raft.State != "Leader" {
			return fmt.Errorf("no leader yet: %v", err)
		}
		voters := 0
		for _, s := range st.Servers {
			switch s.Suffrage {
			case "Nonvoter":
				seenNonvoter[s.ID] = true
			case "Voter":
				voters++
			}
		}
		if voters != 5 {
			return fmt.Errorf("%d voters in %+v", voters, st.Servers)
		}
		return nil
	})
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	if len(seenNonvoter) != 2 {
		t.Errorf("nodes seen as non-voters before promotion: %v, want the 2 beyond --bootstrap-expect", seenNonvoter)
	}
	bootstrapped := 0
	for _, nd := range c.nodes {
		if strings.Contains(nd.log(), "bootstrapping cluster") {
			bootstrapped++
		}
	}
	if bootstrapped != 1 {
		t.Errorf("%d nodes bootstrapped a configuration, want exactly 1", bootstrapped)
	}
	c.nodes[4].mustPut("one", "cluster")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	for _, nd := range c.nodes {
		if code, body, err := nd.get(ctx, "one", "linearizable"); err != nil || code != 200 || body != "cluster" {
			t.Errorf("%s: %d %q %v", nd.id, code, body, err)
		}
	}
}

// A holder killed with calls of a tool that is safe to repeat inside it:
// the callers' nodes report it, the leader moves the provider, and the
// calls are repeated on the new holder (or on the old one if it is back
// first). No call through a live node fails.
func TestHolderKilledMidCall(t *testing.T) {
	c := newProviderCluster(t, 3, pinnedProvider, "--dead-server-timeout", "15s")
	// holderFollower returns the holder, moving leadership off it first.
	holderFollower := func() *node {
		h := c.node(c.nodes[0].holders(t, "pinned_echo", 1)[0])
		if st, err := h.status(); err == nil && st.Leader.ID == h.id {
			if code, body, err := h.do(context.Background(), "POST", "/v1/agent/transfer-leadership", ""); err != nil || code != 200 {
				t.Fatalf("transfer leadership: %d %s %v", code, body, err)
			}
			c.waitStable(30*time.Second, c.nodes, c.ids()...)
		}
		return h
	}
	// Callers use every node but the one down; a call whose node was
	// killed while it ran is not the cluster's failure.
	type outage struct {
		id         string
		start, end time.Time
	}
	var mu sync.Mutex
	var outages []outage
	var calls, failed int
	downDuring := func(id string, from, to time.Time) bool {
		mu.Lock()
		defer mu.Unlock()
		for _, o := range outages {
			if o.id == id && o.start.Before(to) && (o.end.IsZero() || o.end.After(from)) {
				return true
			}
		}
		return false
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 2 {
		clients := map[string]*client.Client{}
		for _, nd := range c.nodes {
			clients[nd.id] = mcpgoClient(t, nd.mcpURL(), []string{legacy, modern}[w])
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				via := c.nodes[(i+w)%len(c.nodes)]
				if downDuring(via.id, time.Now(), time.Now()) {
					continue
				}
				began := time.Now()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				text, _, err := callTool(ctx, clients[via.id], "pinned_echo", map[string]any{"text": "x"})
				cancel()
				if downDuring(via.id, began, time.Now()) {
					continue
				}
				mu.Lock()
				calls++
				if err != nil || text != "x" {
					failed++
					t.Errorf("call through live %s failed: %q %v", via.id, text, err)
				}
				mu.Unlock()
			}
		}()
	}
	for _, down := range []time.Duration{2 * time.Second, 8 * time.Second} {
		cur := holderFollower()
		t.Logf("killing holder %s for %s", cur.id, down)
		mu.Lock()
		outages = append(outages, outage{id: cur.id, start: time.Now()})
		mu.Unlock()
		cur.kill()
		select {
		case <-time.After(down): // the outage under test
		case <-t.Context().Done():
		}
		cur.start()
		c.waitStable(60*time.Second, c.nodes, c.ids()...)
		mu.Lock()
		outages[len(outages)-1].end = time.Now()
		mu.Unlock()
	}
	close(stop)
	wg.Wait()
	t.Logf("%d calls through live nodes while holders were killed, %d failed", calls, failed)
}
