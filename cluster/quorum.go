package cluster

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strings"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/membership"
)

// ErrQuorum is returned when removing a server would leave the healthy
// voters short of a majority of the new configuration.
var ErrQuorum = errors.New("removal would break quorum")

// checkRemoval returns nil when the raft configuration without server id
// keeps healthy voters that are a majority of it; otherwise an ErrQuorum
// error naming the failed voters to remove first. Health is this node's
// view: alive (or suspect) in gossip and not found unreachable.
func (n *Node) checkRemoval(id string) error {
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	if !hasServer(servers, id) {
		return fmt.Errorf("%w: %q is not a raft server", ErrInvalid, id)
	}
	remaining, healthy := 0, 0
	var failed []string
	for _, s := range servers {
		sid := string(s.ID)
		if s.Suffrage != raft.Voter || sid == id {
			continue
		}
		remaining++
		if n.voterHealthy(sid) {
			healthy++
		} else {
			failed = append(failed, sid)
		}
	}
	if remaining == 0 || healthy*2 > remaining {
		return nil
	}
	sort.Strings(failed)
	return fmt.Errorf("%w: without %s, %d of the %d remaining voters are healthy, not a majority; remove the failed voters first (mcpcluster operator raft remove-peer %s)",
		ErrQuorum, id, healthy, remaining, strings.Join(failed, ", "))
}

// voterHealthy reports whether a voter counts towards a quorum now.
func (n *Node) voterHealthy(id string) bool {
	if id == n.id {
		return true
	}
	m, ok := n.members.Member(id)
	if !ok || (m.State != membership.StateAlive && m.State != membership.StateSuspect) {
		return false
	}
	n.unreachMu.Lock()
	marked := n.unreachable[id]
	n.unreachMu.Unlock()
	return !marked
}

// removeServer removes id from the raft configuration on this node, which
// must lead, if the quorum rule allows it.
func (n *Node) removeServer(ctx context.Context, id string) error {
	if err := n.checkRemoval(id); err != nil {
		return err
	}
	if err := n.await(ctx, n.raft.RemoveServer(raft.ServerID(id), 0, 0)); err != nil {
		if isRetryable(err) {
			return fmt.Errorf("%w: %v", errRetry, err)
		}
		return fmt.Errorf("remove server %s: %w", id, err)
	}
	return nil
}

// OperatorRemovePeerArgs asks the leader to remove a server for an operator.
type OperatorRemovePeerArgs struct {
	ID     string
	DryRun bool // only check the quorum rule
}

// OperatorRemovePeerReply is the leader's answer; Refused carries a
// quorum or validation refusal, which is not worth retrying.
type OperatorRemovePeerReply struct {
	NotLeader bool
	Refused   string
}

// OperatorRemovePeer removes (or, dry, checks the removal of) a server, if
// this node leads and the quorum rule allows it.
func (s *rpcService) OperatorRemovePeer(args OperatorRemovePeerArgs, reply *OperatorRemovePeerReply) error {
	if s.n.raft.State() != raft.Leader {
		reply.NotLeader = true
		return nil
	}
	var err error
	if args.DryRun {
		err = s.n.checkRemoval(args.ID)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), s.n.cfg.ApplyTimeout)
		defer cancel()
		err = s.n.removeServer(ctx, args.ID)
		if err == nil {
			s.n.logger.Info("removed server on request", "id", args.ID, "from", s.peer)
		}
	}
	switch {
	case errors.Is(err, errRetry):
		reply.NotLeader = true
		return nil
	case errors.Is(err, ErrQuorum) || errors.Is(err, ErrInvalid):
		reply.Refused = err.Error()
		return nil
	}
	return err
}

// RemovePeer removes server id from the raft configuration through the
// leader, only while the healthy voters that remain are a majority of the
// new configuration (an operator removing a dead server, or a node
// leaving). With dryRun it only checks. Refusals wrap ErrQuorum or
// ErrInvalid.
func (n *Node) RemovePeer(ctx context.Context, id string, dryRun bool) error {
	return n.onLeader(ctx, func(ctx context.Context) error {
		if dryRun {
			return n.checkRemoval(id)
		}
		err := n.removeServer(ctx, id)
		if err == nil {
			n.logger.Info("removed server on request", "id", id)
		}
		return err
	}, func(ctx context.Context, addr string) (bool, error) {
		var reply OperatorRemovePeerReply
		if err := n.pool.call(ctx, addr, "OperatorRemovePeer", OperatorRemovePeerArgs{ID: id, DryRun: dryRun}, &reply); err != nil {
			return false, err
		}
		if reply.Refused != "" {
			return false, removalRefusal{reply.Refused}
		}
		return reply.NotLeader, nil
	})
}

// removalRefusal is a leader's refusal of a removal carried over RPC:
// permanent, an ErrQuorum or ErrInvalid as the leader's was.
type removalRefusal struct{ msg string }

func (r removalRefusal) Error() string { return r.msg }
func (r removalRefusal) Is(target error) bool {
	return target == ErrQuorum && strings.Contains(r.msg, ErrQuorum.Error()) ||
		target == ErrInvalid && strings.Contains(r.msg, ErrInvalid.Error())
}

// RaftPeer is one server of the raft configuration with its health as
// this node sees it.
type RaftPeer struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Suffrage string `json:"suffrage"`
	Leader   bool   `json:"leader"`
	Healthy  bool   `json:"healthy"`
	Gossip   string `json:"gossip"` // the member's gossip state, "" if unknown
}

// RaftPeers lists the raft configuration, as `operator raft list-peers`.
func (n *Node) RaftPeers() ([]RaftPeer, error) {
	servers, err := n.Servers()
	if err != nil {
		return nil, err
	}
	leader, _ := n.Leader()
	out := make([]RaftPeer, 0, len(servers))
	for _, s := range servers {
		p := RaftPeer{ID: string(s.ID), Address: string(s.Address), Suffrage: s.Suffrage.String(), Leader: string(s.ID) == leader}
		if m, ok := n.members.Member(p.ID); ok {
			p.Gossip = string(m.State)
		}
		p.Healthy = n.voterHealthy(p.ID)
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// raftRoutes adds GET /v1/operator/raft/peers (read) and POST
// /v1/operator/raft/remove-peer?id=ID (write).
func (a *API) raftRoutes() {
	a.handle("GET /v1/operator/raft/peers", AccessRead, func(w http.ResponseWriter, _ *http.Request) {
		peers, err := a.n.RaftPeers()
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, err)
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"peers": peers})
	})
	a.handle("POST /v1/operator/raft/remove-peer", AccessWrite, func(w http.ResponseWriter, r *http.Request) {
		id := r.URL.Query().Get("id")
		if id == "" {
			writeError(w, http.StatusBadRequest, errors.New("remove-peer needs ?id=<node id>"))
			return
		}
		err := a.n.RemovePeer(r.Context(), id, false)
		switch {
		case errors.Is(err, ErrQuorum):
			writeError(w, http.StatusConflict, err)
		case errors.Is(err, ErrInvalid):
			writeError(w, http.StatusBadRequest, err)
		case err != nil:
			writeError(w, http.StatusServiceUnavailable, err)
		default:
			writeJSON(w, http.StatusOK, map[string]string{"removed": id})
		}
	})
}
