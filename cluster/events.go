package cluster

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/fsm"
)

// Kinds of Event.
const (
	EventLeader    = "leader"    // the leader this node sees changed
	EventPlacement = "placement" // a provider's holders changed
)

// eventLogSize is how many recent events a node keeps.
const eventLogSize = 100

// Event is one entry of a node's recent history, as this node observed it.
type Event struct {
	Time time.Time `json:"time"`
	Kind string    `json:"kind"` // EventLeader or EventPlacement
	Text string    `json:"text"`
}

// eventLog is a ring buffer of the last eventLogSize events. Its zero
// value is ready to use.
type eventLog struct {
	mu   sync.Mutex
	buf  [eventLogSize]Event
	next int // index the next event goes to
	size int // events held, at most eventLogSize
}

func (l *eventLog) add(e Event) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf[l.next] = e
	l.next = (l.next + 1) % len(l.buf)
	l.size = min(l.size+1, len(l.buf))
}

// list returns the events held, newest first.
func (l *eventLog) list() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]Event, 0, l.size)
	for i := 1; i <= l.size; i++ {
		out = append(out, l.buf[(l.next-i+len(l.buf))%len(l.buf)])
	}
	return out
}

// Events returns the node's recent leader changes and placement moves,
// newest first.
func (n *Node) Events() []Event { return n.events.list() }

func (n *Node) addEvent(kind, text string) {
	n.events.add(Event{Time: time.Now().UTC(), Kind: kind, Text: text})
}

// leaderEvent records a leader observation from raft.
func (n *Node) leaderEvent(o raft.Observation) {
	lo, ok := o.Data.(raft.LeaderObservation)
	if !ok {
		return
	}
	term := n.raft.CurrentTerm()
	if lo.LeaderID == "" {
		n.addEvent(EventLeader, fmt.Sprintf("no leader (term %d)", term))
		return
	}
	n.addEvent(EventLeader, fmt.Sprintf("%s is leader (term %d)", lo.LeaderID, term))
}

// watchPlacement records every change of a provider's holders in the
// local replica, until shutdown.
func (n *Node) watchPlacement() {
	changed, cancel := n.fsm.Subscribe()
	defer cancel()
	prev := holderSets(n.fsm.Assignments())
	for {
		select {
		case <-changed:
			cur := holderSets(n.fsm.Assignments())
			for _, text := range placementMoves(prev, cur) {
				n.addEvent(EventPlacement, text)
			}
			prev = cur
		case <-n.shutdownCh:
			return
		}
	}
}

// holderSets maps each provider to its holders, sorted.
func holderSets(as []fsm.Assignment) map[string][]string {
	out := make(map[string][]string, len(as))
	for _, a := range as {
		out[a.Provider] = slices.Sorted(slices.Values(a.Holders))
	}
	return out
}

// placementMoves describes how the holders changed from prev to cur, one
// text per provider whose holders changed, in provider order.
func placementMoves(prev, cur map[string][]string) []string {
	var providers []string
	for p := range prev {
		providers = append(providers, p)
	}
	for p := range cur {
		if _, ok := prev[p]; !ok {
			providers = append(providers, p)
		}
	}
	slices.Sort(providers)
	var out []string
	for _, p := range providers {
		before, had := prev[p]
		after, has := cur[p]
		switch {
		case had && has && slices.Equal(before, after):
		case !had || len(before) == 0:
			out = append(out, fmt.Sprintf("%s placed on %s", p, holderList(after)))
		case !has:
			out = append(out, fmt.Sprintf("%s unassigned (was on %s)", p, holderList(before)))
		default:
			out = append(out, fmt.Sprintf("%s moved: %s → %s", p, holderList(before), holderList(after)))
		}
	}
	return out
}

func holderList(h []string) string {
	if len(h) == 0 {
		return "no node"
	}
	return strings.Join(h, ", ")
}

// eventRoutes adds GET /v1/events (read): the node's recent leader
// changes and placement moves, newest first.
func (a *API) eventRoutes() {
	a.handle("GET /v1/events", AccessRead, func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"node": a.n.id, "events": a.n.Events()})
	})
}
