package integration

import (
	"context"
	"crypto/rand"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Acceptance 1: three processes started at the same moment with the same
// --join list and --bootstrap-expect 3 form exactly one cluster, ten times.
func TestBootstrapAllAtOnce(t *testing.T) {
	for round := range 10 {
		t.Run(fmt.Sprintf("round%d", round+1), func(t *testing.T) {
			c := newCluster(t, 3)
			leader := c.waitStable(30*time.Second, c.nodes, c.ids()...)
			leaders := 0
			var bootstrapped []string
			for _, nd := range c.nodes {
				st, err := nd.status()
				if err != nil {
					t.Fatal(err)
				}
				if st.Raft.State == "Leader" {
					leaders++
					if st.Node != leader {
						t.Errorf("%s claims leadership, others follow %s", st.Node, leader)
					}
				}
				if strings.Contains(nd.log(), "bootstrapping cluster") {
					bootstrapped = append(bootstrapped, nd.id)
				}
				for _, line := range strings.Split(nd.log(), "\n") {
					if strings.Contains(line, "bootstrapping cluster") && !strings.Contains(line, "voters=\"[node1 node2 node3]\"") {
						t.Errorf("%s bootstrapped with a different server list: %s", nd.id, line)
					}
				}
			}
			if leaders != 1 {
				t.Errorf("%d nodes in state Leader, want 1", leaders)
			}
			if len(bootstrapped) != 1 {
				t.Errorf("nodes that bootstrapped a configuration: %v, want exactly one", bootstrapped)
			}
			for _, nd := range c.nodes {
				nd.stop(10 * time.Second)
			}
		})
	}
}

// Acceptance 2: join, leave (command and --leave-on-terminate), plain
// restart without membership change, and removal of a killed node after the
// dead-server timeout while the rest keep quorum.
func TestMembershipChanges(t *testing.T) {
	c := newCluster(t, 3, "--dead-server-timeout", "6s")
	c.waitStable(30*time.Second, c.nodes, "node1", "node2", "node3")

	// A fourth node started later with --join becomes a raft server: a
	// non-voter, as the voter set stays odd (3 voters for 4 nodes).
	n4 := newNode(t, "node4", append([]string{"--bootstrap-expect", "3", "--dead-server-timeout", "6s"}, c.joinFlags()...)...)
	n4.start()
	c.nodes = append(c.nodes, n4)
	if r := suffrages(c.waitSuffrage(30*time.Second, c.nodes, 3, 1))["node4"]; r != "Nonvoter" {
		t.Fatalf("node4 is %q", r)
	}

	// `mcpcluster leave` removes it from the raft configuration; it exits 0.
	code, out, errOut := runCLI(t, "leave", "--http-addr", n4.http)
	if code != 0 {
		t.Fatalf("mcpcluster leave: exit %d: %s %s", code, out, errOut)
	}
	if code, ok := n4.wait(20 * time.Second); !ok || code != 0 {
		t.Fatalf("node4 after leave: exited=%v code=%d", ok, code)
	}
	c.nodes = c.except("node4")
	c.waitStable(30*time.Second, c.nodes, "node1", "node2", "node3")

	// SIGTERM with --leave-on-terminate leaves too.
	n5 := newNode(t, "node5", append([]string{"--leave-on-terminate", "--dead-server-timeout", "6s"}, c.joinFlags()...)...)
	n5.start()
	c.waitSuffrage(30*time.Second, append(c.nodes, n5), 3, 1)
	if code := n5.stop(30 * time.Second); code != 0 {
		t.Fatalf("node5 exit code after SIGTERM: %d", code)
	}
	c.waitStable(30*time.Second, c.nodes, "node1", "node2", "node3")
	if !strings.Contains(n5.log(), "left the raft configuration") {
		t.Error("node5 did not log leaving the raft configuration")
	}

	// Plain SIGTERM and a restart on the same data dir: no membership change.
	n2 := c.node("node2")
	if code := n2.stop(15 * time.Second); code != 0 {
		t.Fatalf("node2 exit code after SIGTERM: %d", code)
	}
	for _, nd := range c.except("node2") {
		st, err := nd.status()
		if err != nil {
			t.Fatal(err)
		}
		if got := voters(st); !slices.Equal(got, []string{"node1", "node2", "node3"}) {
			t.Fatalf("after a plain SIGTERM of node2, %s sees voters %v", nd.id, got)
		}
	}
	n2.start()
	leader := c.waitStable(30*time.Second, c.nodes, "node1", "node2", "node3")
	if strings.Contains(n2.log(), "bootstrapping cluster") && strings.Count(n2.log(), "bootstrapping cluster") > 1 {
		t.Error("node2 bootstrapped again after restart")
	}
	for _, line := range strings.Split(c.node(leader).log(), "\n") {
		if strings.Contains(line, "removing") && strings.Contains(line, "id=node2") {
			t.Errorf("leader removed node2 during a plain restart: %s", line)
		}
	}

	// SIGKILL: removed after the dead-server timeout; the others keep quorum.
	victim := c.except(leader)[0]
	killedAt := time.Now()
	victim.kill()
	rest := c.except(victim.id)
	var want []string
	for _, nd := range rest {
		want = append(want, nd.id)
	}
	c.waitStable(45*time.Second, rest, want...)
	removedAfter := time.Since(killedAt)
	if removedAfter < 6*time.Second {
		t.Errorf("killed node removed after %s, before the 6s dead-server timeout", removedAfter)
	}
	t.Logf("killed voter removed after %s (dead-server timeout 6s)", removedAfter.Round(time.Millisecond))
	rest[0].mustPut("after-removal", "ok")
}

// Acceptance 3: SIGKILL the leader; a write through a survivor succeeds
// again, and the test reports how long that took.
func TestLeaderKillWriteAvailability(t *testing.T) {
	c := newCluster(t, 3)
	leader := c.waitStable(30*time.Second, c.nodes, c.ids()...)
	c.nodes[0].mustPut("before", "1")

	ln := c.node(leader)
	survivor := c.except(leader)[0]
	killedAt := time.Now()
	ln.kill()
	var took time.Duration
	waitFor(t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		code, body, err := survivor.put(ctx, "after", "2")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("put: %d %s %v", code, body, err)
		}
		took = time.Since(killedAt)
		return nil
	})
	t.Logf("write through a survivor succeeded %s after SIGKILL of the leader", took.Round(time.Millisecond))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, nd := range c.except(leader) {
		for key, want := range map[string]string{"before": "1", "after": "2"} {
			if code, body, err := nd.get(ctx, key, "linearizable"); err != nil || code != 200 || body != want {
				t.Errorf("%s get %s: %d %q %v", nd.id, key, code, body, err)
			}
		}
	}
}

// Acceptance 4: SIGKILL every node and restart on the same data dirs:
// every acknowledged write is there and nothing is bootstrapped twice.
func TestKillAllRestart(t *testing.T) {
	c := newCluster(t, 3, "--snapshot-threshold", "64")
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	const keys = 300
	for i := range keys {
		c.nodes[i%3].mustPut(fmt.Sprintf("k%03d", i), fmt.Sprintf("v%d", i))
	}
	for _, nd := range c.nodes {
		nd.kill()
	}
	c.startAll()
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range keys {
		nd := c.nodes[(i+1)%3]
		code, body, err := nd.get(ctx, fmt.Sprintf("k%03d", i), "linearizable")
		if err != nil || code != 200 || body != fmt.Sprintf("v%d", i) {
			t.Fatalf("after restart, %s get k%03d: %d %q %v", nd.id, i, code, body, err)
		}
	}
	for _, nd := range c.nodes {
		if n := strings.Count(nd.log(), "bootstrapping cluster"); n > 1 {
			t.Errorf("%s bootstrapped %d times", nd.id, n)
		}
		if !strings.Contains(nd.log(), "existing_state=true") {
			t.Errorf("%s did not restart on its existing raft state", nd.id)
		}
	}
}

// Acceptance 5: a write sent to a follower is applied through the leader;
// a linearizable read on any node right after the acknowledgement sees it.
func TestFollowerWriteLinearizableRead(t *testing.T) {
	c := newCluster(t, 3)
	leader := c.waitStable(30*time.Second, c.nodes, c.ids()...)
	followers := c.except(leader)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for i := range 50 {
		f := followers[i%2]
		key, val := fmt.Sprintf("f%d", i), fmt.Sprintf("value-%d", i)
		if code, body, err := f.put(ctx, key, val); err != nil || code != 200 {
			t.Fatalf("put via follower %s: %d %s %v", f.id, code, body, err)
		}
		for _, nd := range c.nodes {
			code, body, err := nd.get(ctx, key, "linearizable")
			if err != nil || code != 200 || body != val {
				t.Fatalf("linearizable get %s on %s right after the ack: %d %q %v", key, nd.id, code, body, err)
			}
		}
	}
	// The follower never led: the writes went through the leader's log.
	st, err := c.node(leader).status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Raft.State != "Leader" || st.FSM.CacheEntries != 50 {
		t.Fatalf("leader %s: state %s, %d cache entries", leader, st.Raft.State, st.FSM.CacheEntries)
	}
}

// Acceptance 6a: garbage on the cluster RPC port and the gossip port does
// not crash or wedge a node.
func TestGarbageOnClusterPorts(t *testing.T) {
	c := newCluster(t, 3)
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	target := c.nodes[1]
	junk := make([]byte, 64<<10)
	send := func(network, addr string, prefix []byte) {
		conn, err := net.DialTimeout(network, addr, 2*time.Second)
		if err != nil {
			t.Fatalf("dial %s %s: %v", network, addr, err)
		}
		defer conn.Close()
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		_, _ = rand.Read(junk)
		_, _ = conn.Write(append(prefix, junk...))
	}
	for range 5 {
		send("tcp", target.rpc, nil)         // unknown protocol byte
		send("tcp", target.rpc, []byte{'R'}) // raft, then garbage
		send("tcp", target.rpc, []byte{'C'}) // node RPC, then garbage
		send("tcp", target.gossip, nil)      // gossip stream
		for range 20 {
			send("udp", target.gossip, nil) // gossip packets
		}
	}
	// A connection that sends nothing must not block others.
	idle, err := net.Dial("tcp", target.rpc)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	target.mustPut("after-garbage", "ok")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if code, body, err := target.get(ctx, "after-garbage", "linearizable"); err != nil || code != 200 || body != "ok" {
		t.Fatalf("after garbage: %d %q %v", code, body, err)
	}
	if !target.running() {
		t.Fatal("node exited after garbage")
	}
}

// Acceptance 6b: bad flags, addresses and config files give a one-line
// error naming the problem and exit status 2.
func TestBadInvocations(t *testing.T) {
	dir := t.TempDir()
	unreadable := filepath.Join(dir, "unreadable.yaml")
	if err := os.WriteFile(unreadable, []byte("node_id: x\n"), 0o000); err != nil {
		t.Fatal(err)
	}
	unknownKey := filepath.Join(dir, "unknown.yaml")
	if err := os.WriteFile(unknownKey, []byte("node_id: x\nbogus_setting: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"agent", "--no-such-flag"}, "no-such-flag"},
		{"unknown command", []string{"frobnicate"}, "frobnicate"},
		{"bad http address", []string{"agent", "--dev", "--http-addr", "127.0.0.1:99999"}, "http-addr"},
		{"address without port", []string{"agent", "--dev", "--rpc-addr", "127.0.0.1"}, "rpc-addr"},
		{"bad advertise", []string{"agent", "--dev", "--gossip-advertise", "0.0.0.0:7946"}, "gossip-advertise"},
		{"missing config file", []string{"agent", "--config", filepath.Join(dir, "nope.yaml")}, "nope.yaml"},
		{"config path is a directory", []string{"agent", "--config", dir}, "is a directory"},
		{"unknown config key", []string{"agent", "--config", unknownKey}, "bogus_setting"},
		{"bad duration", []string{"agent", "--dev", "--dead-server-timeout", "soon"}, "dead-server-timeout"},
		{"no data dir", []string{"agent"}, "data dir"},
		{"bad status address", []string{"status", "--http-addr", "nowhere"}, "http-addr"},
	}
	if os.Geteuid() != 0 { // root reads files whatever their mode
		cases = append(cases, struct {
			name string
			args []string
			want string
		}{"unreadable config file", []string{"agent", "--config", unreadable}, "unreadable.yaml"})
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCLI(t, tc.args...)
			if code != 2 {
				t.Fatalf("exit %d, want 2 (stdout %q stderr %q)", code, stdout, stderr)
			}
			lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
			if len(lines) != 1 || !strings.Contains(stderr, tc.want) {
				t.Fatalf("want one line naming %q, got %q", tc.want, stderr)
			}
		})
	}
}

// A node refuses to start on a data dir that belongs to another node id.
func TestDataDirBelongsToOtherNode(t *testing.T) {
	n := newNode(t, "first", "--bootstrap-expect", "1")
	n.start()
	waitFor(t, 20*time.Second, func() error { _, err := n.status(); return err })
	n.stop(10 * time.Second)
	n.id = "second"
	code, _, stderr := runCLI(t, n.args()...)
	if code == 0 || !strings.Contains(stderr, `belongs to node "first"`) {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}
