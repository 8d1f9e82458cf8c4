package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mcpcluster/mcpcluster/fsm"
)

func waitFor(t testing.TB, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("MCPCLUSTER_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func testConfig(t testing.TB, id string, expect int, join ...string) Config {
	cfg := DefaultConfig()
	cfg.NodeID = id
	cfg.DataDir = t.TempDir()
	cfg.RPCBindAddr = "127.0.0.1:0"
	cfg.GossipBindAddr = "127.0.0.1:0"
	cfg.Join = join
	cfg.BootstrapExpect = expect
	cfg.GossipProfile = "local"
	cfg.RaftHeartbeatTimeout = 300 * time.Millisecond
	cfg.RaftElectionTimeout = 300 * time.Millisecond
	cfg.RaftLeaderLeaseTimeout = 150 * time.Millisecond
	cfg.ReconcileInterval = 200 * time.Millisecond
	cfg.DeadServerTimeout = 2 * time.Second
	cfg.ServerStabilizationTime = 500 * time.Millisecond
	cfg.Logger = testLogger(t).With("test_node", id)
	return cfg
}

// newTestCluster starts n in-process nodes that bootstrap together.
// Each opt adjusts every node's configuration.
func newTestCluster(t testing.TB, n int, opts ...func(*Config)) []*Node {
	t.Helper()
	config := func(id string, join ...string) Config {
		cfg := testConfig(t, id, n, join...)
		for _, o := range opts {
			o(&cfg)
		}
		return cfg
	}
	first, err := New(config("n1"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Shutdown() })
	nodes := []*Node{first}
	for i := 2; i <= n; i++ {
		nd, err := New(config(fmt.Sprintf("n%d", i), first.GossipAddr()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Shutdown() })
		nodes = append(nodes, nd)
	}
	waitStable(t, nodes, n)
	return nodes
}

// waitStable waits for one leader seen by all nodes and want voters each.
func waitStable(t testing.TB, nodes []*Node, want int) *Node {
	t.Helper()
	var leader *Node
	waitFor(t, 20*time.Second, func() error {
		leader = nil
		for _, nd := range nodes {
			if err := nd.Ready(); err != nil {
				return fmt.Errorf("%s: %w", nd.ID(), err)
			}
			servers, err := nd.Servers()
			if err != nil {
				return err
			}
			if len(servers) != want {
				return fmt.Errorf("%s has %d servers, want %d", nd.ID(), len(servers), want)
			}
			if nd.IsLeader() {
				leader = nd
			}
		}
		if leader == nil {
			return errors.New("no leader")
		}
		for _, nd := range nodes {
			if id, _ := nd.Leader(); id != leader.ID() {
				return fmt.Errorf("%s follows %q, leader is %s", nd.ID(), id, leader.ID())
			}
		}
		return nil
	})
	return leader
}

func set(t *testing.T, nd *Node, key, value string) *fsm.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := nd.Apply(ctx, &fsm.Command{Type: fsm.TypeCacheSet, Key: key, Value: []byte(value)})
	if err != nil {
		t.Fatalf("set %s via %s: %v", key, nd.ID(), err)
	}
	return res
}

func readAt(t *testing.T, nd *Node, level Consistency, key string) (string, bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	info, err := nd.ReadBarrier(ctx, level)
	if err != nil {
		t.Fatalf("%s read barrier on %s: %v", level, nd.ID(), err)
	}
	if info.Level != level || info.Node != nd.ID() {
		t.Fatalf("read info %+v", info)
	}
	e, ok := nd.FSM().CacheGet(key, time.Now().UnixNano())
	return string(e.Value), ok
}

func TestClusterWritesReadsAndFailover(t *testing.T) {
	nodes := newTestCluster(t, 3)
	leader := waitStable(t, nodes, 3)
	var followers []*Node
	for _, nd := range nodes {
		if nd != leader {
			followers = append(followers, nd)
		}
	}

	// Writes through a follower are applied through the leader and visible
	// to linearizable and default reads everywhere right after the ack.
	for i := range 20 {
		key := fmt.Sprintf("k%d", i)
		set(t, followers[i%2], key, "v")
		for _, nd := range nodes {
			for _, level := range []Consistency{Linearizable, Default} {
				if _, ok := readAt(t, nd, level, key); !ok {
					t.Fatalf("%s read of %s on %s missed an acknowledged write", level, key, nd.ID())
				}
			}
		}
	}

	// A retried command (same request id) is applied once.
	cmd := &fsm.Command{Type: fsm.TypeCacheSet, Key: "dup", Value: []byte("1"), RequestID: "req-1"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	first, err := followers[0].Apply(ctx, cmd)
	if err != nil {
		t.Fatal(err)
	}
	again, err := followers[1].Apply(ctx, &fsm.Command{Type: fsm.TypeCacheSet, Key: "dup", Value: []byte("2"), RequestID: "req-1"})
	if err != nil {
		t.Fatal(err)
	}
	if !again.Duplicate || again.Index != first.Index {
		t.Fatalf("retry not deduplicated: first %+v again %+v", first, again)
	}
	if v, _ := readAt(t, leader, Linearizable, "dup"); v != "1" {
		t.Fatalf("dup = %q, want 1", v)
	}

	// The leader goes away: the others elect a new one and take writes.
	if err := leader.Shutdown(); err != nil {
		t.Fatalf("shutdown leader: %v", err)
	}
	if err := leader.Shutdown(); err != nil {
		t.Fatalf("second shutdown is not idempotent: %v", err)
	}
	waitFor(t, 20*time.Second, func() error {
		for _, nd := range followers {
			if nd.IsLeader() {
				return nil
			}
		}
		return errors.New("no new leader")
	})
	set(t, followers[0], "after-failover", "ok")
	if v, ok := readAt(t, followers[1], Linearizable, "after-failover"); !ok || v != "ok" {
		t.Fatalf("after failover: %q %v", v, ok)
	}
}

func TestLeaveRemovesFromRaft(t *testing.T) {
	nodes := newTestCluster(t, 3)
	leader := waitStable(t, nodes, 3)
	// The leader itself leaves: leadership moves first.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := leader.Leave(ctx); err != nil {
		t.Fatalf("leave: %v", err)
	}
	leader.Shutdown()
	var rest []*Node
	for _, nd := range nodes {
		if nd != leader {
			rest = append(rest, nd)
		}
	}
	waitStable(t, rest, 2)
	set(t, rest[0], "after-leave", "ok")
}

func TestStaleReadNeedsNoLeader(t *testing.T) {
	nd, err := New(testConfig(t, "solo", 0))
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Shutdown()
	// Not bootstrapped: no leader, yet a stale read answers at once.
	if _, err := nd.ReadBarrier(context.Background(), Stale); err != nil {
		t.Fatalf("stale read: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := nd.ReadBarrier(ctx, Linearizable); err == nil {
		t.Fatal("linearizable read without a leader succeeded")
	}
	if _, err := nd.Apply(ctx, &fsm.Command{Type: fsm.TypeCacheSet, Key: "k"}); err == nil {
		t.Fatal("write without a leader succeeded")
	}
	if _, err := ParseConsistency("strong"); err == nil {
		t.Fatal("unknown consistency accepted")
	}
}

func TestClusterPortGarbage(t *testing.T) {
	nodes := newTestCluster(t, 3)
	target := nodes[1]
	for _, prefix := range [][]byte{{0x00}, {connRaft}, {connRPC}, []byte("GET / HTTP/1.1\r\n\r\n")} {
		conn, err := net.Dial("tcp", target.RPCAddr())
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write(append(prefix, []byte("\xff\xfe garbage \x00\x01\x02 that is not a protocol")...))
		conn.Close()
	}
	set(t, target, "after-garbage", "ok")
}

func TestNodeIDPersisted(t *testing.T) {
	dir := t.TempDir()
	id, err := resolveNodeID(dir, "")
	if err != nil {
		t.Fatal(err)
	}
	again, err := resolveNodeID(dir, "")
	if err != nil || again != id {
		t.Fatalf("id not stable: %q then %q (%v)", id, again, err)
	}
	if _, err := resolveNodeID(dir, "other"); err == nil {
		t.Fatal("data dir of one node accepted for another id")
	}
}

func TestTransferLeadershipTo(t *testing.T) {
	nodes := newTestCluster(t, 3)
	leader := waitStable(t, nodes, 3)
	var follower *Node
	for _, nd := range nodes {
		if nd != leader {
			follower = nd
		}
	}
	if err := leader.TransferLeadershipTo("nope"); err == nil || !strings.Contains(err.Error(), `no voter "nope"`) {
		t.Fatalf("transfer to an unknown node: %v", err)
	}
	if err := follower.TransferLeadershipTo(leader.ID()); err == nil || !strings.Contains(err.Error(), "does not lead") {
		t.Fatalf("transfer asked of a follower: %v", err)
	}
	if err := follower.TransferLeadership(); err != nil {
		t.Fatalf("a follower with no target has nothing to do: %v", err)
	}
	if err := leader.TransferLeadershipTo(follower.ID()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		if id, _ := leader.Leader(); id != follower.ID() {
			return fmt.Errorf("leader is %q", id)
		}
		return nil
	})
}

// A node shut down while its leader loop waits for its first barrier stops
// (raft never answers a barrier left in its apply queue at shutdown).
func TestShutdownRightAfterLeadership(t *testing.T) {
	for i := range 5 {
		nd, err := New(testConfig(t, fmt.Sprintf("solo%d", i), 1))
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, func() error {
			if !nd.IsLeader() {
				return errors.New("not leader yet")
			}
			return nil
		})
		done := make(chan error, 1)
		go func() { done <- nd.Shutdown() }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Fatalf("round %d: shutdown right after leadership hangs", i)
		}
	}
}

// Leader readiness belongs to a term: a node that leads again later runs
// its barrier again before it serves read-index reads, and a node that
// lost leadership is not ready.
func TestLeaderReadinessPerTerm(t *testing.T) {
	nodes := newTestCluster(t, 3)
	a := waitStable(t, nodes, 3)
	var b *Node
	for _, nd := range nodes {
		if nd != a {
			b = nd
		}
	}
	waitFor(t, 10*time.Second, func() error {
		if !a.leaderReady() {
			return errors.New("leader has not passed its barrier yet")
		}
		return nil
	})
	firstTerm := a.leaderTerm.Load()
	for _, hop := range []struct{ from, to *Node }{{a, b}, {b, a}} {
		if err := hop.from.TransferLeadershipTo(hop.to.ID()); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, func() error {
			if !hop.to.leaderReady() {
				return fmt.Errorf("%s not a ready leader yet", hop.to.ID())
			}
			return nil
		})
		if hop.from.leaderReady() {
			t.Fatalf("%s still ready after handing leadership over", hop.from.ID())
		}
	}
	if got := a.leaderTerm.Load(); got <= firstTerm || got != a.raft.CurrentTerm() {
		t.Fatalf("re-elected leader ready for term %d (first term %d, current %d)", got, firstTerm, a.raft.CurrentTerm())
	}
	set(t, b, "after-reelection", "v")
	if v, _ := readAt(t, b, Linearizable, "after-reelection"); v != "v" {
		t.Fatalf("linearizable read after re-election: %q", v)
	}
}
