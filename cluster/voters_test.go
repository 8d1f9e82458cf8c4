package cluster

import "testing"

func TestPlanVoters(t *testing.T) {
	v := func(id, zone string) serverView { return serverView{ID: id, Voter: true, Healthy: true, Zone: zone} }
	nv := func(id, zone string) serverView { return serverView{ID: id, Healthy: true, Ready: true, Zone: zone} }
	dead := func(s serverView) serverView { s.Healthy = false; return s }
	leader := func(s serverView) serverView { s.Leader = true; return s }
	pinned := func(s serverView) serverView { s.NoVote = true; return s }
	notReady := func(s serverView) serverView { s.Ready = false; return s }

	tests := []struct {
		name    string
		servers []serverView
		max     int
		want    *voterChange // Reason is not compared
	}{
		{"three voters, nothing to do", []serverView{leader(v("a", "")), v("b", ""), v("c", "")}, 5, nil},
		{"fourth node stays non-voting: 3 for 3-4 nodes", []serverView{leader(v("a", "")), v("b", ""), v("c", ""), nv("d", "")}, 5, nil},
		{"fifth node: two promoted, lowest id first", []serverView{leader(v("a", "")), v("b", ""), v("c", ""), nv("e", ""), nv("d", "")}, 5, &voterChange{ID: "d", Promote: true}},
		{"not caught up: not promoted", []serverView{leader(v("a", "")), v("b", ""), v("c", ""), notReady(nv("d", "")), nv("e", "")}, 5, nil},
		{"max voters bounds", []serverView{leader(v("a", "")), v("b", ""), v("c", ""), nv("d", ""), nv("e", "")}, 3, nil},
		{"four voters: one demoted, not the leader", []serverView{v("a", ""), v("b", ""), v("c", ""), leader(v("d", ""))}, 5, &voterChange{ID: "c"}},
		{"failed voter replaced", []serverView{leader(v("a", "")), v("b", ""), dead(v("c", "")), nv("d", "")}, 3, &voterChange{ID: "d", Promote: true}},
		{"two of five voters failed: replaced while the healthy keep a quorum", []serverView{leader(v("a", "")), v("b", ""), v("c", ""), dead(v("d", "")), dead(v("e", "")), nv("f", ""), nv("g", "")}, 5, &voterChange{ID: "f", Promote: true}},
		{"two of five voters failed, one non-voter: 3 healthy is the odd target", []serverView{leader(v("a", "")), v("b", ""), v("c", ""), dead(v("d", "")), dead(v("e", "")), nv("f", "")}, 5, nil},
		{"no quorum: no change", []serverView{leader(v("a", "")), dead(v("b", "")), dead(v("c", "")), nv("d", "")}, 3, nil},
		{"pinned voter demoted", []serverView{leader(v("a", "")), v("b", ""), pinned(v("c", "")), nv("d", "")}, 3, &voterChange{ID: "c"}},
		{"pinned non-voter never promoted, even alone", []serverView{leader(v("a", "")), v("b", ""), dead(v("c", "")), pinned(nv("d", ""))}, 3, nil},
		{"promotion prefers a zone without a voter", []serverView{leader(v("a", "z1")), v("b", "z1"), nv("c", "z1"), nv("d", "z2")}, 3, &voterChange{ID: "d", Promote: true}},
		{"voters spread: a zone without one gets one", []serverView{leader(v("a", "z1")), v("b", "z1"), v("c", "z2"), nv("d", "z3")}, 3, &voterChange{ID: "d", Promote: true}},
		{"then the crowded zone gives one up", []serverView{leader(v("a", "z1")), v("b", "z1"), v("c", "z2"), v("d", "z3")}, 3, &voterChange{ID: "b"}},
		{"spread already: nothing", []serverView{leader(v("a", "z1")), v("b", "z2"), v("c", "z3"), nv("d", "z1"), nv("e", "z2")}, 3, nil},
		{"two nodes stay two voters", []serverView{leader(v("a", "")), v("b", "")}, 5, nil},
		{"two voters and a pinned node: two voters", []serverView{leader(v("a", "")), v("b", ""), pinned(nv("c", ""))}, 5, nil},
		{"max voters 4 means 3", []serverView{leader(v("a", "")), v("b", ""), v("c", ""), v("d", "")}, 4, &voterChange{ID: "d"}},
		{"single node", []serverView{leader(v("a", ""))}, 5, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := planVoters(tt.servers, tt.max)
			switch {
			case got == nil && tt.want == nil:
			case got == nil || tt.want == nil || got.ID != tt.want.ID || got.Promote != tt.want.Promote:
				t.Errorf("planVoters = %+v, want %+v", got, tt.want)
			}
		})
	}
}

// TestPlanVotersConverges applies plans until none is due, from several
// starting points, and checks the end state: the target count, spread over
// zones, reached without ever dropping the healthy voters below a majority.
func TestPlanVotersConverges(t *testing.T) {
	start := []serverView{
		{ID: "n1", Voter: true, Healthy: true, Leader: true, Zone: "a"},
		{ID: "n2", Voter: true, Healthy: true, Zone: "a"},
		{ID: "n3", Voter: true, Healthy: true, Zone: "a"},
		{ID: "n4", Healthy: true, Ready: true, Zone: "b"},
		{ID: "n5", Healthy: true, Ready: true, Zone: "b"},
		{ID: "n6", Healthy: true, Ready: true, Zone: "c"},
		{ID: "n7", Healthy: true, Ready: true, Zone: "c"},
	}
	for _, max := range []int{3, 5, 7} {
		servers := append([]serverView(nil), start...)
		for step := 0; ; step++ {
			if step > 20 {
				t.Fatalf("max %d: no convergence: %+v", max, servers)
			}
			c := planVoters(servers, max)
			if c == nil {
				break
			}
			for i := range servers {
				if servers[i].ID == c.ID {
					servers[i].Voter = c.Promote
				}
			}
			voters, zones := 0, map[string]int{}
			for _, s := range servers {
				if s.Voter {
					voters++
					zones[s.Zone]++
				}
			}
			if voters < 3 {
				t.Fatalf("max %d: %d voters after %+v", max, voters, c)
			}
		}
		voters, zones := 0, map[string]int{}
		for _, s := range servers {
			if s.Voter {
				voters++
				zones[s.Zone]++
			}
		}
		if voters != max {
			t.Errorf("max %d: %d voters", max, voters)
		}
		if len(zones) != 3 {
			t.Errorf("max %d: voters in zones %v, want all three", max, zones)
		}
	}
}
