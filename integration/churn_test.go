package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
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
