package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// Churn: removal never breaks quorum. With one follower dead, leaving with
// the other would leave {leader, dead node}: no majority, no writes. The
// leave is refused, naming the dead voter; the operator removes it with
// `operator raft remove-peer`, and then the leave goes through.
func TestLeaveKeepsQuorum(t *testing.T) {
	c := newCluster(t, 3, "--dead-server-timeout", "10m")
	leaderID := c.waitStable(30*time.Second, c.nodes, c.ids()...)
	followers := c.except(leaderID)
	dead, leaving := followers[0], followers[1]
	leader := c.node(leaderID)

	dead.kill()
	waitFor(t, 30*time.Second, func() error {
		code, out, stderr := runCLI(t, "operator", "raft", "list-peers", "--http-addr", leader.http, "--json")
		if code != 0 {
			return fmt.Errorf("list-peers: exit %d %s", code, stderr)
		}
		var resp struct{ Peers []cluster.RaftPeer }
		if err := json.Unmarshal([]byte(out), &resp); err != nil {
			return err
		}
		for _, p := range resp.Peers {
			if p.ID == dead.id && !p.Healthy {
				return nil
			}
		}
		return fmt.Errorf("%s not reported unhealthy yet: %s", dead.id, out)
	})

	code, stdout, stderr := runCLI(t, "leave", "--http-addr", leaving.http)
	if code != 1 || !strings.Contains(stderr, dead.id) || !strings.Contains(stderr, "remove-peer") {
		t.Fatalf("leave with a dead voter: exit %d, stdout %q, stderr %q", code, stdout, stderr)
	}
	if !leaving.running() {
		t.Fatalf("%s exited after a refused leave", leaving.id)
	}
	// Nothing changed: three servers, writes through the refused node work.
	st, err := leader.status()
	if err != nil || len(voters(st)) != 3 {
		t.Fatalf("voters after a refused leave: %v %v", voters(st), err)
	}
	leaving.mustPut("after-refused-leave", "v")

	// Removing the healthy follower through the operator is refused too.
	code, _, stderr = runCLI(t, "operator", "raft", "remove-peer", "--http-addr", leaving.http, leaving.id)
	if code != 1 || !strings.Contains(stderr, dead.id) {
		t.Fatalf("remove-peer of a healthy voter with a dead one: exit %d, stderr %q", code, stderr)
	}
	// Removing the dead one goes through, from any node.
	code, stdout, stderr = runCLI(t, "operator", "raft", "remove-peer", "--http-addr", leaving.http, dead.id)
	if code != 0 {
		t.Fatalf("remove-peer %s: exit %d, %s %s", dead.id, code, stdout, stderr)
	}
	c.waitStable(30*time.Second, []*node{leader, leaving}, leaderID, leaving.id)

	// Now the leave is safe: the leader alone is a majority of {leader}.
	code, stdout, stderr = runCLI(t, "leave", "--http-addr", leaving.http)
	if code != 0 {
		t.Fatalf("leave after removing the dead voter: exit %d, %s %s", code, stdout, stderr)
	}
	if code, ok := leaving.wait(20 * time.Second); !ok || code != 0 {
		t.Fatalf("%s after leave: exited=%v code=%d", leaving.id, ok, code)
	}
	c.waitStable(30*time.Second, []*node{leader}, leaderID)
	leader.mustPut("after-leave", "v")
}
