package cluster

import (
	"bytes"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/mcpcluster/mcpcluster/fsm"
	"github.com/mcpcluster/mcpcluster/membership"
)

func TestChooseHolders(t *testing.T) {
	member := func(id string, inflight, capacity int) membership.Member {
		return membership.Member{Meta: membership.Meta{ID: id, InFlight: inflight, Capacity: capacity}}
	}
	eligible := map[string]membership.Member{
		"a": member("a", 10, 100),
		"b": member("b", 90, 100),
		"c": member("c", 0, 100),
		"d": member("d", 0, 0),
	}
	cases := []struct {
		name    string
		p       fsm.Provider
		current []string
		held    map[string]int
		want    []string
	}{
		{"everywhere takes every eligible capable node", fsm.Provider{Replicas: 0, Nodes: []string{"a", "b", "x"}}, nil, nil, []string{"a", "b"}},
		{"least loaded first", fsm.Provider{Replicas: 2, Nodes: []string{"a", "b", "c"}}, nil, nil, []string{"c", "a"}},
		{"ties broken by providers held, then id", fsm.Provider{Replicas: 1, Nodes: []string{"c", "d"}}, nil, map[string]int{"c": 2}, []string{"d"}},
		{"current holders stay", fsm.Provider{Replicas: 2, Nodes: []string{"a", "b", "c"}}, []string{"b", "a"}, nil, []string{"b", "a"}},
		{"a failed holder is replaced, the other stays", fsm.Provider{Replicas: 2, Nodes: []string{"a", "b", "c", "x"}}, []string{"x", "b"}, nil, []string{"b", "c"}},
		{"fewer capable than replicas", fsm.Provider{Replicas: 3, Nodes: []string{"a", "x"}}, nil, nil, []string{"a"}},
		{"replicas lowered", fsm.Provider{Replicas: 1, Nodes: []string{"a", "b"}}, []string{"b", "a"}, nil, []string{"b"}},
		{"no capable node", fsm.Provider{Replicas: 1, Nodes: []string{"x"}}, []string{"x"}, nil, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			held := tc.held
			if held == nil {
				held = map[string]int{}
			}
			if got := chooseHolders(tc.p, tc.current, eligible, eligible, held, nil); !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPlacementLeavesOverloadedHolder(t *testing.T) {
	m := func(id string, inflight int) membership.Member {
		return membership.Member{Meta: membership.Meta{ID: id, InFlight: inflight, Capacity: 100}}
	}
	eligible := map[string]membership.Member{"a": m("a", 100), "b": m("b", 10), "c": m("c", 0), "d": m("d", 80)}
	p := fsm.Provider{Replicas: 2, Nodes: []string{"a", "b", "c", "d"}}
	if got := chooseHolders(p, []string{"a", "b"}, eligible, eligible, map[string]int{}, map[string]bool{"a": true}); !slices.Equal(got, []string{"b", "c"}) {
		t.Fatalf("overloaded holder a: got %v, want [b c]", got)
	}
	// Nobody under half load to take over: the holders stay.
	busy := map[string]membership.Member{"a": m("a", 100), "b": m("b", 10), "d": m("d", 80)}
	if got := chooseHolders(p, []string{"a", "b"}, busy, busy, map[string]int{}, map[string]bool{"a": true}); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("no relief: got %v, want [a b]", got)
	}

	r := &reconciler{}
	now := time.Now()
	if got := r.overloaded(eligible, now); len(got) != 0 {
		t.Fatalf("overloaded at once: %v", got)
	}
	if got := r.overloaded(eligible, now.Add(overloadGrace)); !got["a"] || len(got) != 1 {
		t.Fatalf("after the grace: %v, want a", got)
	}
	eligible["a"] = m("a", 50)
	if got := r.overloaded(eligible, now.Add(2*overloadGrace)); len(got) != 0 {
		t.Fatalf("after the load dropped: %v", got)
	}
}

func TestPlacementKeepsHolderWhoseStatusLags(t *testing.T) {
	m := func(id string) membership.Member {
		return membership.Member{Meta: membership.Meta{ID: id, Capacity: 100}}
	}
	eligible := map[string]membership.Member{"b": m("b"), "c": m("c")}          // running
	keep := map[string]membership.Member{"a": m("a"), "b": m("b"), "c": m("c")} // a: alive, status "starting" in this view
	one := fsm.Provider{Replicas: 1, Nodes: []string{"a", "b", "c"}}
	if got := chooseHolders(one, []string{"a"}, eligible, keep, map[string]int{}, nil); !slices.Equal(got, []string{"a"}) {
		t.Fatalf("replicas:1 held by a: got %v, want [a] kept", got)
	}
	if got := chooseHolders(one, nil, eligible, keep, map[string]int{}, nil); slices.Contains(got, "a") {
		t.Fatalf("a new holder must be running: got %v", got)
	}
	all := fsm.Provider{Nodes: []string{"a", "b", "c"}}
	if got := chooseHolders(all, []string{"a", "b"}, eligible, keep, map[string]int{}, nil); !slices.Equal(got, []string{"a", "b", "c"}) {
		t.Fatalf("everywhere: got %v, want [a b c]", got)
	}
}

func TestLeaderDropsOrphanAssignment(t *testing.T) {
	a := newAPICluster(t, 1)
	// A state whose assignment names a provider nobody declares, as an
	// older version or a hand-made backup may hold.
	state := `{"kind":"header","format":1,"index":7}
{"kind":"assignment","assignment":{"provider":"gone","holders":["n1"],"epoch":5}}
{"kind":"end","count":1}
`
	archive, _ := testArchive(t, []byte(state))
	if code, body := a[0].request(t, "PUT", "/v1/snapshot", snapWriteTok, bytes.NewReader(archive)); code != http.StatusOK {
		t.Fatalf("restore: %d %s", code, body)
	}
	waitFor(t, 10*time.Second, func() error {
		if as := a[0].fsm.Assignments(); len(as) != 0 {
			return fmt.Errorf("assignments %+v", as)
		}
		return nil
	})
}
