package cluster

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/fsm"
)

// suffrageOf returns id's suffrage in nd's configuration, "" if absent.
func suffrageOf(t *testing.T, nd *Node, id string) string {
	t.Helper()
	servers, err := nd.Servers()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		if string(s.ID) == id {
			return s.Suffrage.String()
		}
	}
	return ""
}

func TestJoinAsNonvoterThenPromoted(t *testing.T) {
	stabilize := func(c *Config) { c.ServerStabilizationTime = 2 * time.Second }
	nodes := newTestCluster(t, 3, stabilize)
	leader := waitStable(t, nodes, 3)
	// Enough state that the newcomer needs a while to catch up.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	value := []byte(strings.Repeat("v", 1024))
	for i := range 300 {
		if _, err := leader.Apply(ctx, &fsm.Command{Type: fsm.TypeCacheSet, Key: fmt.Sprintf("k%04d", i), Value: value}); err != nil {
			t.Fatal(err)
		}
	}

	// Two newcomers: with five nodes the cluster wants five voters.
	joined := []*Node{}
	for _, id := range []string{"n4", "n5"} {
		cfg := testConfig(t, id, 3, nodes[0].GossipAddr())
		stabilize(&cfg)
		nd, err := New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Shutdown() })
		joined = append(joined, nd)
	}

	// They enter as non-voters: the quorum stays 2 of 3 while they catch up.
	added := map[string]time.Time{}
	waitFor(t, 20*time.Second, func() error {
		for _, nd := range joined {
			if _, ok := added[nd.ID()]; ok {
				continue
			}
			switch s := suffrageOf(t, leader, nd.ID()); s {
			case raft.Nonvoter.String():
				added[nd.ID()] = time.Now()
			case raft.Voter.String():
				t.Fatalf("%s a voter before seen as a non-voter", nd.ID())
			default:
				return fmt.Errorf("%s not added", nd.ID())
			}
		}
		return nil
	})
	for _, nd := range joined {
		waitFor(t, 20*time.Second, func() error {
			if s := suffrageOf(t, leader, nd.ID()); s != raft.Voter.String() {
				return fmt.Errorf("%s is %q", nd.ID(), s)
			}
			return nil
		})
		if waited := time.Since(added[nd.ID()]); waited < 2*time.Second-200*time.Millisecond {
			t.Errorf("%s promoted %s after joining, before the 2s stabilization time", nd.ID(), waited)
		}
		// Promoted only once caught up: it holds the writes made before it joined.
		if got := nd.raft.AppliedIndex(); got+promoteMaxLag < leader.raft.AppliedIndex() {
			t.Errorf("%s applied %d, leader %d", nd.ID(), got, leader.raft.AppliedIndex())
		}
	}
	waitStable(t, append(nodes, joined...), 5)
}

func TestNonvoterNotPromotedWhileDown(t *testing.T) {
	nodes := newTestCluster(t, 3, func(c *Config) { c.ServerStabilizationTime = time.Minute })
	leader := waitStable(t, nodes, 3)
	cfg := testConfig(t, "n4", 3, nodes[0].GossipAddr())
	n4, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, func() error {
		if s := suffrageOf(t, leader, "n4"); s == "" {
			return fmt.Errorf("n4 not added")
		}
		return nil
	})
	if s := suffrageOf(t, leader, "n4"); s == raft.Voter.String() {
		t.Fatalf("n4 a voter at once")
	}
	// Gone before it stabilized: it is never promoted, and the dead-server
	// timeout removes it without any quorum concern.
	n4.Shutdown()
	waitFor(t, 20*time.Second, func() error {
		if s := suffrageOf(t, leader, "n4"); s != "" {
			return fmt.Errorf("n4 still %q", s)
		}
		return nil
	})
}

func TestBootstrapWithExtraNodes(t *testing.T) {
	// Five nodes with --bootstrap-expect 3 start at once, each listing the
	// others as seeds: their gossip views differ while they start, yet
	// they form exactly one cluster.
	ids := []string{"n1", "n2", "n3", "n4", "n5"}
	addrs := make([]string, len(ids))
	for i := range ids {
		addrs[i] = fmt.Sprintf("127.0.0.1:%d", freeTCPPort(t))
	}
	nodes := make([]*Node, len(ids))
	errs := make(chan error, len(ids))
	for i, id := range ids {
		go func() {
			var join []string
			for k := range addrs {
				if k != i {
					join = append(join, addrs[(k+i)%len(addrs)])
				}
			}
			cfg := testConfig(t, id, 3, join...)
			cfg.GossipBindAddr = addrs[i]
			nd, err := New(cfg)
			nodes[i] = nd
			errs <- err
		}()
	}
	for range ids {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for _, nd := range nodes {
		t.Cleanup(func() { nd.Shutdown() })
	}
	leader := waitStable(t, nodes, 5)
	waitFor(t, 20*time.Second, func() error {
		for _, nd := range nodes {
			if s := suffrageOf(t, leader, nd.ID()); s != raft.Voter.String() {
				return fmt.Errorf("%s is %q", nd.ID(), s)
			}
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := nodes[4].Apply(ctx, &fsm.Command{Type: fsm.TypeCacheSet, Key: "one", Value: []byte("cluster")}); err != nil {
		t.Fatal(err)
	}
	for _, nd := range nodes {
		if v, ok := readAt(t, nd, Linearizable, "one"); !ok || v != "cluster" {
			t.Errorf("%s reads %q %v", nd.ID(), v, ok)
		}
	}
}

// freeTCPPort returns a loopback port that was free a moment ago.
func freeTCPPort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func TestBootstrapPromise(t *testing.T) {
	var b bootstrapState
	now := time.Now()
	if ok, _ := b.promise("a", now); !ok {
		t.Fatal("first promise refused")
	}
	if ok, _ := b.promise("a", now); !ok {
		t.Error("the same proposer asking again refused")
	}
	if ok, holder := b.promise("b", now.Add(time.Second)); ok || holder != "a" {
		t.Errorf("second proposer: %v %q, want refused, held by a", ok, holder)
	}
	b.release("b") // not b's to release
	if ok, _ := b.promise("b", now.Add(time.Second)); ok {
		t.Error("a release by another proposer dropped a's promise")
	}
	if ok, _ := b.promise("b", now.Add(bootstrapPromiseTTL+time.Second)); !ok {
		t.Error("promise outlived its TTL")
	}
	b.release("b")
	if ok, _ := b.promise("c", now.Add(bootstrapPromiseTTL+time.Second)); !ok {
		t.Error("released promise still held")
	}
}

func TestRestartedPinnedVoterDemoted(t *testing.T) {
	nodes := newTestCluster(t, 3)
	leader := waitStable(t, nodes, 3)
	var victim *Node
	for _, nd := range nodes {
		if nd != leader {
			victim = nd
			break
		}
	}
	cfg := victim.cfg
	cfg.RPCBindAddr = victim.RPCAddr() // the same address: the leader keeps dialing it
	cfg.RPCAdvertiseAddr = ""
	if err := victim.Shutdown(); err != nil {
		t.Fatal(err)
	}
	// Same data and id, now --voter=false: the leader demotes it.
	cfg.NonVoter = true
	cfg.Join = []string{leader.GossipAddr()}
	again, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { again.Shutdown() })
	waitFor(t, 20*time.Second, func() error {
		if s := suffrageOf(t, leader, again.ID()); s != raft.Nonvoter.String() {
			return fmt.Errorf("%s is %q", again.ID(), s)
		}
		return nil
	})
	// Two voters remain, and writes still commit.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := again.Apply(ctx, &fsm.Command{Type: fsm.TypeCacheSet, Key: "k", Value: []byte("v")}); err != nil {
		t.Fatal(err)
	}
}
