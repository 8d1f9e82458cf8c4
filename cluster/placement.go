package cluster

import (
	"context"
	"fmt"
	"slices"
	"sort"

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
	members := n.members.Members()
	eligible := make(map[string]membership.Member, len(members))
	for _, m := range members {
		if m.State == membership.StateAlive && m.Status == membership.StatusRunning && !n.isUnreachable(m.ID, m.RPCAddr) {
			eligible[m.ID] = m
		}
	}
	assigns := n.fsm.Assignments()
	held := make(map[string]int) // node → providers it holds
	current := make(map[string][]string, len(assigns))
	for _, a := range assigns {
		current[a.Provider] = a.Holders
		for _, h := range a.Holders {
			held[h]++
		}
	}
	for _, p := range n.fsm.Providers() {
		want := chooseHolders(p, current[p.Name], eligible, held)
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

// chooseHolders returns the holders provider p should have, given its
// current holders, the nodes eligible to hold anything, and how many
// providers each node holds.
func chooseHolders(p fsm.Provider, current []string, eligible map[string]membership.Member, held map[string]int) []string {
	var capable []string
	for _, id := range p.Nodes {
		if _, ok := eligible[id]; ok {
			capable = append(capable, id)
		}
	}
	if p.Replicas == 0 {
		return capable // sorted, as Provider.Nodes is
	}
	var out []string
	for _, id := range current {
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
		a, b := eligible[free[i]], eligible[free[j]]
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
