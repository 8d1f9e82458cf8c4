package cluster

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestEventLogKeepsTheNewest(t *testing.T) {
	var l eventLog
	if got := l.list(); len(got) != 0 {
		t.Fatalf("empty log lists %v", got)
	}
	texts := func(es []Event) []string {
		var out []string
		for _, e := range es {
			out = append(out, e.Text)
		}
		return out
	}
	for i := range 3 {
		l.add(Event{Kind: EventLeader, Text: fmt.Sprint(i)})
	}
	if got := texts(l.list()); !slices.Equal(got, []string{"2", "1", "0"}) {
		t.Fatalf("3 events: %v, want newest first", got)
	}
	for i := 3; i < eventLogSize+25; i++ {
		l.add(Event{Kind: EventPlacement, Text: fmt.Sprint(i)})
	}
	got := texts(l.list())
	if len(got) != eventLogSize {
		t.Fatalf("%d events held, want the last %d", len(got), eventLogSize)
	}
	if got[0] != fmt.Sprint(eventLogSize+24) || got[len(got)-1] != "25" {
		t.Fatalf("held %s..%s, want %d..25", got[0], got[len(got)-1], eventLogSize+24)
	}
	for i := 1; i < len(got); i++ {
		var a, b int
		fmt.Sscan(got[i-1], &a)
		fmt.Sscan(got[i], &b)
		if a != b+1 {
			t.Fatalf("events out of order at %d: %s then %s", i, got[i-1], got[i])
		}
	}
}

func TestEventLogConcurrent(t *testing.T) {
	var l eventLog
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				l.add(Event{Kind: EventLeader, Text: fmt.Sprintf("%d-%d", w, i)})
				_ = l.list()
			}
		}()
	}
	wg.Wait()
	if n := len(l.list()); n != eventLogSize {
		t.Fatalf("%d events held after 800 adds, want %d", n, eventLogSize)
	}
}

func TestPlacementMoves(t *testing.T) {
	for _, tc := range []struct {
		name      string
		prev, cur map[string][]string
		want      []string
	}{
		{"nothing", map[string][]string{"a": {"n1"}}, map[string][]string{"a": {"n1"}}, nil},
		{"placed", map[string][]string{}, map[string][]string{"a": {"n1", "n2"}}, []string{"a placed on n1, n2"}},
		{"placed after none", map[string][]string{"a": {}}, map[string][]string{"a": {"n3"}}, []string{"a placed on n3"}},
		{"moved", map[string][]string{"a": {"n1"}}, map[string][]string{"a": {"n2"}}, []string{"a moved: n1 → n2"}},
		{"lost its holders", map[string][]string{"a": {"n1"}}, map[string][]string{"a": nil}, []string{"a moved: n1 → no node"}},
		{"unassigned", map[string][]string{"a": {"n1"}}, map[string][]string{}, []string{"a unassigned (was on n1)"}},
		{"several, in provider order",
			map[string][]string{"b": {"n1"}, "c": {"n2"}},
			map[string][]string{"a": {"n3"}, "b": {"n2"}, "c": {"n2"}},
			[]string{"a placed on n3", "b moved: n1 → n2"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := placementMoves(tc.prev, tc.cur); !slices.Equal(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestEventsEndpoint(t *testing.T) {
	nodes := newTestCluster(t, 1)
	srv := httptest.NewServer(NewAPI(nodes[0], DefaultAPIConfig()))
	t.Cleanup(srv.Close)
	waitFor(t, 10*time.Second, func() error {
		resp, err := http.Get(srv.URL + "/v1/events")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var body struct {
			Node   string  `json:"node"`
			Events []Event `json:"events"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return fmt.Errorf("decode /v1/events: %w", err)
		}
		for _, e := range body.Events {
			if e.Kind == EventLeader && strings.HasPrefix(e.Text, "n1 is leader") && !e.Time.IsZero() {
				return nil
			}
		}
		return fmt.Errorf("node %s: no leader event in %+v", body.Node, body.Events)
	})
}
