package cluster

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"github.com/mcpcluster/mcpcluster/fsm"
	"github.com/mcpcluster/mcpcluster/membership"
)

// place runs on the leader: it gives every provider its holders. An
// "everywhere" provider (Replicas 0) is held by every capable node that is
// alive and running; a "replicas: N" provider keeps the holders it has while
// they stay so, and the free places go to the least loaded capable nodes
// (fewest held providers next, then id), so a holder's failure, leave or
// drain moves only what it held.
func (r *reconciler) place(ctx context.Context) error {
	n := r.n
	// A new holder must be running; a current holder keeps its providers
	// while it is alive, not stopping and answers (a status still reading
	// "starting" may just be gossip not caught up, e.g. on a new leader).
	members := n.members.Members()
	eligible := make(map[string]membership.Member, len(members))
	keep := make(map[string]membership.Member, len(members))
	for _, m := range members {
		if m.State != membership.StateAlive || m.Status == membership.StatusStopping || n.isUnreachable(m.ID, m.RPCAddr) {
			continue
		}
		keep[m.ID] = m
		if m.Status == membership.StatusRunning {
			eligible[m.ID] = m
		}
	}
	overloaded := r.overloaded(eligible, time.Now())
	assigns := n.fsm.Assignments()
	held := make(map[string]int) // node → providers it holds
	current := make(map[string][]string, len(assigns))
	for _, a := range assigns {
		current[a.Provider] = a.Holders
		for _, h := range a.Holders {
			held[h]++
		}
	}
	providers := n.fsm.Providers()
	declared := make(map[string]bool, len(providers))
	for _, p := range providers {
		declared[p.Name] = true
	}
	for name := range current {
		if declared[name] {
			continue
		}
		// No node declares it any more: an assignment applied after its
		// provider was dropped, or one from an older state.
		n.logger.Info("dropping assignment of a provider nobody declares", "provider", name, "holders", current[name])
		if _, err := n.Apply(ctx, &fsm.Command{Type: fsm.TypeAssign, Assignment: &fsm.Assignment{Provider: name}}); err != nil {
			return fmt.Errorf("drop assignment of %s: %w", name, err)
		}
	}
	for _, p := range providers {
		want := chooseHolders(p, current[p.Name], eligible, keep, held, overloaded)
		if slices.Equal(want, current[p.Name]) {
			continue
		}
		for _, h := range current[p.Name] {
			held[h]--
		}
		for _, h := range want {
			held[h]++
		}
		n.logger.Info("assigning provider", "provider", p.Name, "holders", want, "previous", current[p.Name])
		if _, err := n.Apply(ctx, &fsm.Command{Type: fsm.TypeAssign, Assignment: &fsm.Assignment{Provider: p.Name, Holders: want}}); err != nil {
			return fmt.Errorf("assign %s: %w", p.Name, err)
		}
	}
	return nil
}

// overloadGrace is how long a node must stay at full capacity before the
// leader moves its replicas elsewhere.
const overloadGrace = 10 * time.Second

// overloaded returns the eligible nodes that have been at full capacity
// (gossiped in-flight calls >= capacity) for overloadGrace.
func (r *reconciler) overloaded(eligible map[string]membership.Member, now time.Time) map[string]bool {
	if r.overSince == nil {
		r.overSince = map[string]time.Time{}
	}
	out := map[string]bool{}
	for id, m := range eligible {
		if m.Capacity <= 0 || m.InFlight < m.Capacity {
			delete(r.overSince, id)
			continue
		}
		if _, ok := r.overSince[id]; !ok {
			r.overSince[id] = now
		}
		if now.Sub(r.overSince[id]) >= overloadGrace {
			out[id] = true
		}
	}
	return out
}

// chooseHolders returns the holders provider p should have, given its
// current holders, the nodes eligible to take a provider, those that may
// keep one they hold, how many providers each node holds, and which nodes
// stay overloaded. A replicas:N provider leaves one overloaded holder per
// pass, when a capable node under half load can take its place.
func chooseHolders(p fsm.Provider, current []string, eligible, keep map[string]membership.Member, held map[string]int, overloaded map[string]bool) []string {
	var capable []string // may take it now
	for _, id := range p.Nodes {
		_, isNew := eligible[id]
		_, kept := keep[id]
		if isNew || (kept && slices.Contains(current, id)) {
			capable = append(capable, id)
		}
	}
	if p.Replicas == 0 {
		return capable // sorted, as Provider.Nodes is
	}
	relief := ""
	for _, id := range capable {
		if !slices.Contains(current, id) && !overloaded[id] && loadOf(keep[id]) < 50 {
			relief = id
			break
		}
	}
	var out []string
	for _, id := range current {
		if relief != "" && overloaded[id] {
			relief = "" // this one leaves; the least loaded fill its place
			continue
		}
		if slices.Contains(capable, id) && len(out) < p.Replicas {
			out = append(out, id)
		}
	}
	var free []string
	for _, id := range capable {
		if !slices.Contains(out, id) {
			free = append(free, id)
		}
	}
	sort.SliceStable(free, func(i, j int) bool {
		a, b := keep[free[i]], keep[free[j]]
		if la, lb := loadOf(a), loadOf(b); la != lb {
			return la < lb
		}
		if held[free[i]] != held[free[j]] {
			return held[free[i]] < held[free[j]]
		}
		return free[i] < free[j]
	})
	for _, id := range free {
		if len(out) == p.Replicas {
			break
		}
		out = append(out, id)
	}
	return out
}

// loadOf is a member's gossiped load as a fraction of its capacity, in
// whole percent so that small fluctuations do not reorder nodes.
func loadOf(m membership.Member) int {
	if m.Capacity <= 0 {
		return 0
	}
	return 100 * m.InFlight / m.Capacity
}
