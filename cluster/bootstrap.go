package cluster

import (
	"context"
	"errors"
	"sort"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/membership"
)

// bootstrapLoop bootstraps a new cluster once BootstrapExpect servers are
// alive in gossip. It is safe when all servers start at once and when they
// restart: it runs only without existing raft state, every node derives the
// same sorted server list, and it gives up as soon as any peer reports a
// raft configuration (the cluster exists; the leader will add this node).
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
	cfg := raft.Configuration{}
	ids := make([]string, 0, len(alive))
	for _, m := range alive {
		cfg.Servers = append(cfg.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(m.ID), Address: raft.ServerAddress(m.RPCAddr)})
		ids = append(ids, m.ID)
	}
	n.logger.Info("bootstrapping cluster", "servers", ids)
	if err := n.raft.BootstrapCluster(cfg).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		return false, err
	}
	return true, nil
}
