package cluster

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/fsm"
	"github.com/mcpcluster/mcpcluster/membership"
)

// monitorLeadership is the one goroutine that watches raft's leadership
// notifications and starts or stops the leader loop.
func (n *Node) monitorLeadership() {
	var stop, done chan struct{}
	stopLoop := func() {
		if stop != nil {
			close(stop)
			<-done
			stop, done = nil, nil
		}
	}
	for {
		select {
		case isLeader := <-n.notifyCh:
			switch {
			case isLeader && stop == nil:
				stop, done = make(chan struct{}), make(chan struct{})
				go func(stop, done chan struct{}) {
					defer close(done)
					n.leaderLoop(stop)
				}(stop, done)
				n.logger.Info("cluster leadership acquired")
			case !isLeader && stop != nil:
				stopLoop()
				n.logger.Info("cluster leadership lost")
			}
		case <-n.shutdownCh:
			stopLoop()
			return
		}
	}
}

// leaderLoop runs while this node leads: a barrier first, so the FSM holds
// every entry of earlier terms, then reconciliation of gossip into raft.
func (n *Node) leaderLoop(stop chan struct{}) {
	for {
		term := n.raft.CurrentTerm()
		ctx, cancel := StopContext(stop)
		err := n.await(ctx, n.raft.Barrier(n.cfg.ApplyTimeout))
		cancel()
		if err == nil && n.raft.CurrentTerm() == term {
			// Every entry of earlier terms is applied: this term's
			// leader may serve read-index reads.
			n.leaderTerm.Store(term)
			break
		}
		if err == nil {
			continue // a new term began meanwhile: barrier again in it
		}
		if ctx.Err() != nil || errors.Is(err, ErrShutdown) {
			return
		}
		n.logger.Warn("leader barrier failed", "error", err)
		select {
		case <-stop:
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
	defer n.leaderTerm.Store(0)
	defer func() {
		n.unreachMu.Lock()
		clear(n.unreachable)
		n.unreachMu.Unlock()
	}()

	// A new leader may take over from one that died with providers on it
	// (or died with others): check every member's cluster port before the
	// first placement rather than wait for gossip to declare them failed.
	n.probeMembers()
	r := &reconciler{n: n, unknownSince: make(map[string]time.Time)}
	ticker := time.NewTicker(n.cfg.ReconcileInterval)
	defer ticker.Stop()
	// Provider changes (a node declaring what it can run) need placement now.
	changes, unsubscribe := n.fsm.Subscribe()
	defer unsubscribe()
	expiry := time.NewTicker(cacheExpiryCheck)
	defer expiry.Stop()
	for {
		ctx, cancel := StopContext(stop)
		if err := r.reconcile(ctx); err != nil {
			n.logger.Warn("reconcile failed", "error", err)
		}
		cancel()
		for waiting := true; waiting; {
			select {
			case <-stop:
				return
			case <-ticker.C:
				waiting = false
			case <-n.reconcileCh:
				waiting = false
			case <-changes:
				waiting = false
			case <-expiry.C:
				sctx, scancel := StopContext(stop)
				ctx, cancel := context.WithTimeout(sctx, n.cfg.ApplyTimeout)
				if err := n.expireCache(ctx); err != nil && sctx.Err() == nil {
					n.logger.Warn("cache expiry failed", "error", err)
				}
				cancel()
				scancel()
			}
		}
	}
}

// StopContext returns a context cancelled when stop is closed.
func StopContext(stop <-chan struct{}) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-stop:
		case <-ctx.Done():
		}
		cancel()
	}()
	return ctx, cancel
}

// cacheExpiryCheck is how often the leader looks for expired cache entries.
const cacheExpiryCheck = time.Second

// reconciler carries what the leader remembers between reconcile passes.
type reconciler struct {
	n *Node
	// unknownSince records when a raft server absent from gossip was first seen.
	unknownSince map[string]time.Time
	// stableSince records since when a non-voter has been healthy and
	// caught up, for promotion.
	stableSince map[string]time.Time
	// overSince records since when a node has been at full capacity.
	overSince map[string]time.Time
	// refused remembers members whose identity check failed, so the
	// warning is logged once per member and reason.
	refused map[string]string
}

// refuseAdmission logs, once per member and reason, that a gossip member
// was not made a raft server.
func (r *reconciler) refuseAdmission(id string, err error) {
	if r.refused == nil {
		r.refused = make(map[string]string)
	}
	if r.refused[id] == err.Error() {
		return
	}
	r.refused[id] = err.Error()
	r.n.logger.Warn("not admitting gossip member as a raft server: identity not proven", "id", id, "error", err)
}

// reconcile makes the raft configuration and the FSM node registry follow
// gossip: alive members join as non-voters and are promoted once caught up
// and stable (their address follows gossip), members that left are
// removed, failed ones are removed after the dead-server timeout while the
// healthy voters keep a quorum.
func (r *reconciler) reconcile(ctx context.Context) error {
	n := r.n
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	inConfig := make(map[string]raft.Server, len(servers))
	for _, s := range servers {
		inConfig[string(s.ID)] = s
	}
	members := n.members.Members()
	byID := make(map[string]membership.Member, len(members))
	for _, m := range members {
		if m.ID == "" || m.RPCAddr == "" {
			continue
		}
		byID[m.ID] = m
	}

	for _, m := range members {
		if m.ID == "" || m.RPCAddr == "" || m.ID == n.id {
			continue
		}
		srv, ok := inConfig[m.ID]
		switch m.State {
		case membership.StateAlive, membership.StateSuspect:
			if ok && string(srv.Address) == m.RPCAddr {
				break
			}
			// Gossip alone admits no one: the node must prove on its
			// cluster port that it is m.ID (with TLS, by a certificate of
			// the cluster CA naming it).
			if err := n.verifyIdentity(ctx, m.ID, m.RPCAddr); err != nil {
				r.refuseAdmission(m.ID, err)
				break
			}
			if ok {
				// The address changes in place; the suffrage stays.
				n.logger.Info("server address changed", "id", m.ID, "old", srv.Address, "new", m.RPCAddr, "suffrage", srv.Suffrage)
				add := n.raft.AddNonvoter
				if srv.Suffrage == raft.Voter {
					add = n.raft.AddVoter
				}
				if err := add(srv.ID, raft.ServerAddress(m.RPCAddr), 0, 0).Error(); err != nil {
					return fmt.Errorf("change address of %s: %w", m.ID, err)
				}
				break
			}
			// A new server replicates the log (a snapshot first, if it
			// is far behind) without a vote; promote makes it a voter once
			// it has caught up and stayed healthy.
			n.logger.Info("adding non-voter", "id", m.ID, "addr", m.RPCAddr)
			if err := n.raft.AddNonvoter(raft.ServerID(m.ID), raft.ServerAddress(m.RPCAddr), 0, 0).Error(); err != nil {
				return fmt.Errorf("add non-voter %s: %w", m.ID, err)
			}
		case membership.StateLeft:
			if ok {
				n.logger.Info("removing server that left", "id", m.ID)
				if err := n.raft.RemoveServer(srv.ID, 0, 0).Error(); err != nil {
					return fmt.Errorf("remove %s: %w", m.ID, err)
				}
				delete(inConfig, m.ID)
			}
		}
	}

	// Ahead of voters and placement, which may fail for a while: without
	// the key every session open is a raft write.
	if err := r.ensureSessionKey(ctx); err != nil {
		return err
	}
	if err := r.pruneDead(inConfig, byID); err != nil {
		return err
	}
	if err := r.adjustVoters(ctx, inConfig, byID); err != nil {
		return err
	}
	if err := r.syncRegistry(ctx, byID); err != nil {
		return err
	}
	if err := r.place(ctx); err != nil {
		return err
	}
	return r.expireSessions(ctx)
}

// ensureSessionKey gives the cluster the key that signs session ids, once:
// with it every node opens and checks sessions without a raft write.
func (r *reconciler) ensureSessionKey(ctx context.Context) error {
	if r.n.fsm.SessionKey() != nil {
		return nil
	}
	key := make([]byte, fsm.SessionKeySize)
	if _, err := rand.Read(key); err != nil {
		return fmt.Errorf("session key: %w", err)
	}
	if _, err := r.n.Apply(ctx, &fsm.Command{Type: fsm.TypeSessionKey, Value: key}); err != nil {
		return fmt.Errorf("set session key: %w", err)
	}
	return nil
}

// expireBatch bounds how many sessions one expiry command removes.
const expireBatch = 1000

// expireSessions removes sessions idle for SessionIdleTTL, in batches,
// when there are any: the leader's clock stamps the command, so every node
// removes the same ones.
func (r *reconciler) expireSessions(ctx context.Context) error {
	n := r.n
	// A session's use reaches the state up to SessionIdleGrace late: it
	// expires that long after its TTL, never early.
	ttl := int64(math.MaxInt64) // no idle TTL: only tombstones and lifetimes end
	if n.cfg.SessionIdleTTL > 0 {
		ttl = int64(n.cfg.SessionIdleTTL + SessionIdleGrace(n.cfg.SessionIdleTTL))
	}
	now := time.Now().UnixNano()
	if !n.fsm.SessionsDue(now, ttl, int64(n.cfg.SessionMaxLifetime)) {
		return nil
	}
	res, err := n.Apply(ctx, &fsm.Command{Type: fsm.TypeSessionExpire, Now: now, IdleTTL: ttl,
		Until: int64(n.cfg.SessionMaxLifetime), Limit: expireBatch})
	if err != nil {
		return fmt.Errorf("expire sessions: %w", err)
	}
	n.logger.Info("expired idle sessions", "count", res.Removed, "idle_ttl", n.cfg.SessionIdleTTL)
	if res.Removed == expireBatch {
		kick(n.reconcileCh)
	}
	return nil
}

// pruneDead removes voters that have been failed (or unknown to gossip)
// for longer than the dead-server timeout, as long as the remaining healthy
// voters are a majority of the configuration.
func (r *reconciler) pruneDead(inConfig map[string]raft.Server, byID map[string]membership.Member) error {
	n := r.n
	now := time.Now()
	var failed []string
	healthy, voters := 0, 0
	for id, s := range inConfig {
		if s.Suffrage != raft.Voter {
			if r.deadFor(id, byID, now) >= n.cfg.DeadServerTimeout {
				// A non-voter counts towards no quorum.
				n.logger.Info("removing failed non-voter after dead-server timeout", "id", id, "timeout", n.cfg.DeadServerTimeout)
				if err := n.raft.RemoveServer(s.ID, 0, 0).Error(); err != nil {
					return fmt.Errorf("remove failed non-voter %s: %w", id, err)
				}
				delete(inConfig, id)
				delete(r.unknownSince, id)
			}
			continue
		}
		voters++
		switch dead := r.deadFor(id, byID, now); {
		case dead == 0:
			healthy++
		case dead >= n.cfg.DeadServerTimeout:
			failed = append(failed, id)
		}
	}
	sort.Strings(failed)
	for _, id := range failed {
		// Removing a failed voter keeps the healthy voters as they are and
		// shrinks the configuration, so it is safe while they are a majority
		// of the configuration they are leaving.
		if healthy*2 <= voters {
			n.logger.Warn("not removing failed server: healthy voters are not a majority", "id", id, "healthy", healthy, "voters", voters)
			return nil
		}
		n.logger.Info("removing failed server after dead-server timeout", "id", id, "timeout", n.cfg.DeadServerTimeout)
		if err := n.raft.RemoveServer(raft.ServerID(id), 0, 0).Error(); err != nil {
			return fmt.Errorf("remove failed server %s: %w", id, err)
		}
		delete(inConfig, id)
		delete(r.unknownSince, id)
		voters--
	}
	return nil
}

// deadFor returns how long server id has been failed (or unknown to
// gossip), 0 while it is alive or suspect.
func (r *reconciler) deadFor(id string, byID map[string]membership.Member, now time.Time) time.Duration {
	if id == r.n.id {
		return 0
	}
	m, known := byID[id]
	if !known {
		if _, ok := r.unknownSince[id]; !ok {
			r.unknownSince[id] = now
		}
		return max(now.Sub(r.unknownSince[id]), time.Nanosecond)
	}
	delete(r.unknownSince, id)
	if m.State == membership.StateAlive || m.State == membership.StateSuspect {
		return 0
	}
	return max(now.Sub(m.Since), time.Nanosecond)
}

// promoteMaxLag is how many log entries a non-voter may trail the leader's
// last index by and still count as caught up.
const promoteMaxLag = 256

// adjustVoters keeps the voter set: it finds which non-voters are ready
// (healthy and caught up for ServerStabilizationTime: alive in gossip and
// not stopping, reachable, answering on their cluster port as themselves,
// with their log within promoteMaxLag of the leader's) and makes the next
// change planVoters asks for. A server still receiving a snapshot, or one
// that flaps, adds nothing to the quorum until it is done.
func (r *reconciler) adjustVoters(ctx context.Context, inConfig map[string]raft.Server, byID map[string]membership.Member) error {
	n := r.n
	if r.stableSince == nil {
		r.stableSince = make(map[string]time.Time)
	}
	now := time.Now()
	var wake time.Duration
	views := make([]serverView, 0, len(inConfig))
	for id, s := range inConfig {
		m := byID[id]
		if id == n.id {
			m.Meta = n.members.LocalMeta()
		}
		v := serverView{ID: id, Voter: s.Suffrage == raft.Voter, Leader: id == n.id,
			Healthy: n.voterHealthy(id), NoVote: m.NoVote, Zone: m.Zone}
		if v.Voter || v.NoVote {
			delete(r.stableSince, id)
			views = append(views, v)
			continue
		}
		lag, err := r.lag(ctx, id, byID)
		if err != nil {
			if _, was := r.stableSince[id]; was {
				n.logger.Info("non-voter no longer ready for promotion", "id", id, "reason", err)
			}
			delete(r.stableSince, id)
			views = append(views, v)
			continue
		}
		since, ok := r.stableSince[id]
		if !ok {
			since = now
			r.stableSince[id] = now
			n.logger.Info("non-voter caught up", "id", id, "lag", lag)
		}
		if wait := n.cfg.ServerStabilizationTime - now.Sub(since); wait > 0 {
			if wake == 0 || wait < wake {
				wake = wait
			}
		} else {
			v.Ready = true
		}
		views = append(views, v)
	}
	if wake > 0 {
		// Come back when the first waiting server has been stable long
		// enough, rather than at the next reconcile tick.
		time.AfterFunc(wake, func() { kick(n.reconcileCh) })
	}
	if n.cfg.NonVoter {
		// Pinned non-voting but leading (restarted with --voter=false while
		// a voter): hand leadership to a voter, which then demotes us.
		n.logger.Warn("this node is pinned non-voting but leads: transferring leadership")
		if err := n.raft.LeadershipTransfer().Error(); err != nil {
			return fmt.Errorf("transfer leadership off a pinned non-voter: %w", err)
		}
		return nil
	}
	c := planVoters(views, n.cfg.MaxVoters)
	if c == nil {
		return nil
	}
	s := inConfig[c.ID]
	if c.Promote {
		n.logger.Info("promoting non-voter to voter", "id", c.ID, "reason", c.Reason, "stable_for", now.Sub(r.stableSince[c.ID]).Round(time.Millisecond))
		if err := n.raft.AddVoter(s.ID, s.Address, 0, 0).Error(); err != nil {
			return fmt.Errorf("promote %s: %w", c.ID, err)
		}
		delete(r.stableSince, c.ID)
	} else {
		n.logger.Info("demoting voter to non-voter", "id", c.ID, "reason", c.Reason)
		if err := n.raft.DemoteVoter(s.ID, 0, 0).Error(); err != nil {
			return fmt.Errorf("demote %s: %w", c.ID, err)
		}
	}
	kick(n.reconcileCh) // plan the next step from the new configuration
	return nil
}

// lag returns how far non-voter id's log trails the leader's, or why it is
// not a candidate for promotion now.
func (r *reconciler) lag(ctx context.Context, id string, byID map[string]membership.Member) (uint64, error) {
	n := r.n
	m, ok := byID[id]
	switch {
	case !ok || m.State != membership.StateAlive:
		return 0, errors.New("not alive in gossip")
	case m.Status == membership.StatusStopping:
		return 0, errors.New("stopping")
	case n.isUnreachable(m.ID, m.RPCAddr):
		return 0, errors.New("unreachable")
	}
	// Over the pooled connection: its dial proved the peer's identity, so
	// the leader does not open a new one per non-voter every pass.
	var reply PeersReply
	if err := n.pool.call(ctx, m.RPCAddr, "Peers", PeersArgs{}, &reply); err != nil {
		return 0, fmt.Errorf("ask %s for its log: %w", id, err)
	}
	if reply.ID != id {
		return 0, fmt.Errorf("%s at %s answers as %q", id, m.RPCAddr, reply.ID)
	}
	last := n.raft.LastIndex()
	if reply.LastIndex+promoteMaxLag < last {
		return 0, fmt.Errorf("log at %d, leader at %d", reply.LastIndex, last)
	}
	return last - min(last, reply.LastIndex), nil
}

// syncRegistry keeps the FSM's node registry equal to the raft
// configuration, with each node's addresses from gossip.
func (r *reconciler) syncRegistry(ctx context.Context, byID map[string]membership.Member) error {
	n := r.n
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	want := make(map[string]bool, len(servers))
	for _, s := range servers {
		id := string(s.ID)
		want[id] = true
		m, ok := byID[id]
		if !ok {
			continue
		}
		node := fsm.Node{ID: id, HTTPAddr: m.HTTPAddr, RPCAddr: m.RPCAddr, GossipAddr: m.GossipAddr}
		if cur, ok := n.fsm.Node(id); ok && cur.HTTPAddr == node.HTTPAddr && cur.RPCAddr == node.RPCAddr && cur.GossipAddr == node.GossipAddr {
			continue
		}
		if _, err := n.Apply(ctx, &fsm.Command{Type: fsm.TypeNodeRegister, Node: &node}); err != nil {
			return fmt.Errorf("register node %s: %w", id, err)
		}
	}
	for _, node := range n.fsm.Nodes() {
		if want[node.ID] {
			continue
		}
		if _, err := n.Apply(ctx, &fsm.Command{Type: fsm.TypeNodeDeregister, NodeID: node.ID}); err != nil {
			return fmt.Errorf("deregister node %s: %w", node.ID, err)
		}
	}
	return nil
}
