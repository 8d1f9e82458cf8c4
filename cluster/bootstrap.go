package cluster

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/membership"
)

// Bootstrap forms exactly one cluster however many nodes start at once:
//
//   - a node bootstraps only without raft state, once BootstrapExpect alive
//     members (agreeing on BootstrapExpect) are in its gossip view, and only
//     if none of them reports a raft configuration;
//   - only the lowest id of its view that may vote proposes, with a
//     configuration of the lowest such ids as voters (BootstrapExpect of
//     them, at most MaxVoters); every other node waits for the
//     leader to reach it (the configuration arrives by replication, and an
//     extra node is added later as a non-voter);
//   - before writing it, the proposer collects a promise from every member of
//     its view. A node promises to one proposer at a time (itself included
//     while it proposes), for bootstrapPromiseTTL, and never once it holds a
//     configuration. Two proposers whose views overlap cannot both collect
//     their promises, so views that differ while nodes arrive (a lower id
//     showing up late) cannot produce two clusters.
const bootstrapPromiseTTL = 15 * time.Second

// bootstrapState is a node's bootstrap promise.
type bootstrapState struct {
	mu    sync.Mutex
	to    string // proposer promised to, "" none
	until time.Time
}

// promise grants proposer the promise unless another proposer holds a live
// one. It reports the current holder when refusing.
func (b *bootstrapState) promise(proposer string, now time.Time) (bool, string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.to != "" && b.to != proposer && now.Before(b.until) {
		return false, b.to
	}
	b.to, b.until = proposer, now.Add(bootstrapPromiseTTL)
	return true, ""
}

// release drops proposer's promise, if it still holds it.
func (b *bootstrapState) release(proposer string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.to == proposer {
		b.to = ""
	}
}

// BootstrapPromiseArgs asks a node to promise not to bootstrap, or take part
// in another bootstrap, while Proposer bootstraps; Release withdraws it.
type BootstrapPromiseArgs struct {
	Proposer string
	Release  bool
}

// BootstrapPromiseReply grants or refuses the promise, saying why.
type BootstrapPromiseReply struct {
	Granted bool
	Reason  string
}

// BootstrapPromise answers a proposer's request (see bootstrapPromiseTTL).
func (s *rpcService) BootstrapPromise(args BootstrapPromiseArgs, reply *BootstrapPromiseReply) error {
	if err := s.speaksFor(args.Proposer); err != nil {
		return err
	}
	if args.Release {
		s.n.boot.release(args.Proposer)
		return nil
	}
	servers, err := s.n.Servers()
	if err != nil {
		return err
	}
	if len(servers) > 0 {
		reply.Reason = "already in a cluster"
		return nil
	}
	ok, holder := s.n.boot.promise(args.Proposer, time.Now())
	if !ok {
		reply.Reason = "promised to " + holder
		return nil
	}
	reply.Granted = true
	return nil
}

// bootstrapLoop runs maybeBootstrap until this node is part of a cluster.
func (n *Node) bootstrapLoop() {
	ticker := time.NewTicker(500 * time.Millisecond)
	defer ticker.Stop()
	for {
		done, err := n.maybeBootstrap()
		if err != nil {
			n.logger.Warn("bootstrap check failed", "error", err)
		}
		if done {
			return
		}
		select {
		case <-n.shutdownCh:
			return
		case <-ticker.C:
		case <-n.bootstrapCh:
		}
	}
}

// maybeBootstrap returns true when no further attempt is needed.
func (n *Node) maybeBootstrap() (bool, error) {
	servers, err := n.Servers()
	if err != nil {
		return false, err
	}
	if len(servers) > 0 {
		return true, nil // added to an existing cluster meanwhile
	}
	var alive []membership.Member
	for _, m := range n.members.Members() {
		if m.State != membership.StateAlive || m.RPCAddr == "" {
			continue
		}
		if m.Expect != 0 && m.Expect != n.cfg.BootstrapExpect {
			n.logger.Error("peer has a different bootstrap-expect; not bootstrapping", "peer", m.ID, "theirs", m.Expect, "ours", n.cfg.BootstrapExpect)
			return false, nil
		}
		alive = append(alive, m)
	}
	if len(alive) < n.cfg.BootstrapExpect {
		return false, nil
	}
	for _, m := range alive {
		if m.ID == n.id {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var reply PeersReply
		err := n.pool.call(ctx, m.RPCAddr, "Peers", PeersArgs{}, &reply)
		cancel()
		if err != nil {
			return false, err
		}
		if reply.ID != m.ID {
			return false, errors.New("peer " + m.ID + " answered as " + reply.ID)
		}
		if reply.Servers > 0 {
			n.logger.Info("peer already belongs to a cluster; not bootstrapping", "peer", m.ID)
			return true, nil
		}
	}
	sort.Slice(alive, func(i, j int) bool { return alive[i].ID < alive[j].ID })
	var voters []membership.Member // those that may vote, lowest ids first
	for _, m := range alive {
		if m.ID == n.id {
			m.Meta = n.members.LocalMeta()
		}
		if !m.NoVote && len(voters) < min(n.cfg.BootstrapExpect, n.cfg.MaxVoters) {
			voters = append(voters, m)
		}
	}
	if len(voters) == 0 {
		n.logger.Error("every member is pinned non-voting (--voter=false); no cluster can form", "members", len(alive))
		return false, nil
	}
	if voters[0].ID != n.id {
		return false, nil // the lowest voting id proposes; the leader will reach us
	}
	if err := n.collectPromises(alive); err != nil {
		return false, err
	}
	cfg := raft.Configuration{}
	ids := make([]string, 0, len(voters))
	for _, m := range voters {
		cfg.Servers = append(cfg.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.RPCAddr)})
		ids = append(ids, m.ID)
	}
	n.logger.Info("bootstrapping cluster", "voters", ids, "members", len(alive))
	if err := n.raft.BootstrapCluster(cfg).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return false, err
	}
	return true, nil
}

// collectPromises obtains this node's own promise and every other member's,
// or releases those it got and returns why it could not.
func (n *Node) collectPromises(alive []membership.Member) error {
	if ok, holder := n.boot.promise(n.id, time.Now()); !ok {
		return fmt.Errorf("not proposing a bootstrap: promised to %s", holder)
	}
	var granted []membership.Member
	release := func() {
		for _, m := range granted {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = n.pool.call(ctx, m.RPCAddr, "BootstrapPromise", BootstrapPromiseArgs{Proposer: n.id, Release: true}, &BootstrapPromiseReply{})
			cancel()
		}
		n.boot.release(n.id)
	}
	for _, m := range alive {
		if m.ID == n.id {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		var reply BootstrapPromiseReply
		err := n.pool.call(ctx, m.RPCAddr, "BootstrapPromise", BootstrapPromiseArgs{Proposer: n.id}, &reply)
		cancel()
		if err == nil && !reply.Granted {
			err = errors.New(reply.Reason)
		}
		if err != nil {
			release()
			return fmt.Errorf("bootstrap promise from %s: %w", m.ID, err)
		}
		granted = append(granted, m)
	}
	return nil
}
