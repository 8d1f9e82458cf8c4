package integration

import (
	"fmt"
	"os"
	"path/filepath"
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
