package cluster

import (
	"fmt"
	"sort"
)

// DefaultMaxVoters is the default bound on raft voters: 5 voters survive
// two failures, and every further node serves as a non-voter.
const DefaultMaxVoters = 5

// serverView is what the leader knows of one raft server when it plans the
// voter set.
type serverView struct {
	ID      string
	Voter   bool
	Leader  bool
	Healthy bool   // alive in gossip, reachable, not stopping
	Ready   bool   // a non-voter caught up and stable: may be promoted
	NoVote  bool   // pinned non-voting (--voter=false)
	Zone    string // --zone, "" when unset
}

// voterChange is one step towards the wanted voter set.
type voterChange struct {
	ID      string
	Promote bool // false: demote
	Reason  string
}

// voterTarget is how many healthy voters the cluster wants: as many as
// the nodes that may vote, up to maxVoters, and odd from 3 up (4 voters
// tolerate no more failures than 3). Two stay two: one voter would
// acknowledge writes held on a single disk.
func voterTarget(servers []serverView, maxVoters int) int {
	usable := 0
	for _, s := range servers {
		if s.Healthy && !s.NoVote && (s.Voter || s.Ready) {
			usable++
		}
	}
	return oddVoters(min(usable, maxVoters))
}

// oddVoters rounds a voter count down to odd, from 3 up.
func oddVoters(n int) int {
	if n > 3 && n%2 == 0 {
		return n - 1
	}
	return n
}

// planVoters returns the next change to the voter set, or nil when none
// is due. One change at a time: raft applies configuration changes one by
// one, and each is re-planned from the configuration it produced. The
// plan, in order:
//
//  1. a voter pinned non-voting is demoted;
//  2. while the healthy voters are fewer than the target (a voter failed,
//     a node joined), the best ready non-voter is promoted: one in the zone
//     with the fewest healthy voters, then by id;
//  3. while they are more, the voter in the most crowded zone is demoted,
//     never the leader;
//  4. with the count right, a ready non-voter in a zone without a healthy
//     voter is promoted while another zone holds two or more (step 3 then
//     demotes one of those), so voters spread over zones.
//
// Every demotion keeps the healthy voters a majority of the voters that
// remain, and every promotion keeps them a majority of the voters there
// will be: never below quorum.
func planVoters(servers []serverView, maxVoters int) *voterChange {
	target := voterTarget(servers, maxVoters)
	voters, healthy := 0, 0
	zones := map[string]int{} // healthy voters per zone
	for _, s := range servers {
		if s.Voter {
			voters++
			if s.Healthy {
				healthy++
				zones[s.Zone]++
			}
		}
	}
	canDemote := func(s serverView) bool {
		h := healthy
		if s.Healthy {
			h--
		}
		return !s.Leader && h*2 > voters-1
	}
	canPromote := (healthy+1)*2 > voters+1

	for _, s := range sortedViews(servers) {
		if s.Voter && s.NoVote && canDemote(s) {
			return &voterChange{ID: s.ID, Reason: "pinned non-voting"}
		}
	}
	var candidates []serverView
	for _, s := range servers {
		if !s.Voter && s.Ready && s.Healthy && !s.NoVote {
			candidates = append(candidates, s)
		}
	}
	sort.Slice(candidates, func(i, j int) bool {
		a, b := candidates[i], candidates[j]
		if zones[a.Zone] != zones[b.Zone] {
			return zones[a.Zone] < zones[b.Zone]
		}
		return a.ID < b.ID
	})
	if healthy < target && len(candidates) > 0 && canPromote {
		return &voterChange{ID: candidates[0].ID, Promote: true,
			Reason: fmt.Sprintf("%d healthy voters, want %d", healthy, target)}
	}
	if healthy > target {
		var demote *serverView
		for _, s := range sortedViews(servers) {
			if !s.Voter || !s.Healthy || !canDemote(s) {
				continue
			}
			if demote == nil || zones[s.Zone] > zones[demote.Zone] {
				demote = &s
			}
		}
		if demote != nil {
			return &voterChange{ID: demote.ID, Reason: fmt.Sprintf("%d healthy voters, want %d", healthy, target)}
		}
		return nil
	}
	if healthy == target && len(candidates) > 0 && zones[candidates[0].Zone] == 0 && canPromote {
		for _, n := range zones {
			if n >= 2 {
				return &voterChange{ID: candidates[0].ID, Promote: true,
					Reason: fmt.Sprintf("zone %q has no voter", candidates[0].Zone)}
			}
		}
	}
	return nil
}

// sortedViews returns servers by id, highest first, so that among equals
// the newest-looking id is demoted first and the result is stable.
func sortedViews(servers []serverView) []serverView {
	out := append([]serverView(nil), servers...)
	sort.Slice(out, func(i, j int) bool { return out[i].ID > out[j].ID })
	return out
}
