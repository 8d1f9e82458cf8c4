package fsm

import (
	"bytes"
	"fmt"
	"math/rand"
	"reflect"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// testFSM applies commands at consecutive log indexes.
type testFSM struct {
	*FSM
	tb  testing.TB
	idx uint64
}

func newTestFSM(tb testing.TB) *testFSM { return &testFSM{FSM: New(), tb: tb} }

func (f *testFSM) log(c *Command) *raft.Log {
	f.idx++
	return &raft.Log{Index: f.idx, Term: 1, Type: raft.LogCommand, Data: mustEncode(f.tb, c)}
}

func (f *testFSM) apply(c *Command) *Result {
	f.tb.Helper()
	r, ok := f.Apply(f.log(c)).(*Result)
	if !ok || r == nil {
		f.tb.Fatalf("Apply(%s) did not return a *Result", c.Type)
	}
	return r
}

type step struct {
	cmd  Command
	want Result // Index 0 means "the index this step was applied at"
}

func TestApply(t *testing.T) {
	reg := func(id, addr string, now int64) Command {
		return Command{Type: TypeNodeRegister, Now: now, Node: &Node{ID: id, HTTPAddr: addr}}
	}
	offer := func(node string, provs ...Provider) Command {
		return Command{Type: TypeProviders, NodeID: node, Providers: provs}
	}
	put := func(provider string, tools ...Tool) Command {
		return Command{Type: TypeCatalogPut, Provider: provider, Tools: tools}
	}
	assign := func(provider string, holders ...string) Command {
		return Command{Type: TypeAssign, Assignment: &Assignment{Provider: provider, Holders: holders}}
	}
	open := func(id string, now int64) Command {
		return Command{Type: TypeSessionOpen, Now: now, Session: &Session{ID: id, Principal: "p"}}
	}
	set := func(key, val string, now, exp int64, cas *uint64) Command {
		return Command{Type: TypeCacheSet, Now: now, Key: key, Value: []byte(val), ExpiresAt: exp, CAS: cas}
	}
	del := func(key string, now int64, cas *uint64) Command {
		return Command{Type: TypeCacheDelete, Now: now, Key: key, CAS: cas}
	}
	cases := []struct {
		name  string
		steps []step
		check func(t *testing.T, f *FSM)
	}{
		{
			name: "node register upserts and keeps RegisteredAt",
			steps: []step{
				{cmd: reg("n1", "a:1", 100)},
				{cmd: reg("n2", "b:1", 150)},
				{cmd: reg("n1", "a:2", 200)},
			},
			check: func(t *testing.T, f *FSM) {
				want := []Node{{ID: "n1", HTTPAddr: "a:2", RegisteredAt: 100}, {ID: "n2", HTTPAddr: "b:1", RegisteredAt: 150}}
				if got := f.Nodes(); !reflect.DeepEqual(got, want) {
					t.Errorf("Nodes() = %+v, want %+v", got, want)
				}
				if n, ok := f.Node("n1"); !ok || n.HTTPAddr != "a:2" {
					t.Errorf("Node(n1) = %+v, %v", n, ok)
				}
			},
		},
		{
			name: "node deregister scrubs providers, tools and assignments",
			steps: []step{
				{cmd: reg("n1", "a", 1)},
				{cmd: reg("n2", "b", 1)},
				{cmd: offer("n1", Provider{Name: "p1"}, Provider{Name: "p2", Replicas: 1})},
				{cmd: offer("n2", Provider{Name: "p1"})},
				{cmd: put("p1", Tool{Name: "t1"})},
				{cmd: put("p2", Tool{Name: "t2"})},
				{cmd: assign("p1", "n2", "n1")},
				{cmd: assign("p2", "n1")},
				{cmd: Command{Type: TypeNodeDeregister, NodeID: "n1"}, want: Result{Removed: 1}},
				{cmd: Command{Type: TypeNodeDeregister, NodeID: "n1"}},
			},
			check: func(t *testing.T, f *FSM) {
				if _, ok := f.Node("n1"); ok {
					t.Error("n1 still registered")
				}
				if p, _ := f.Provider("p1"); !reflect.DeepEqual(p.Nodes, []string{"n2"}) {
					t.Errorf("p1.Nodes = %v", p.Nodes)
				}
				if _, ok := f.Provider("p2"); ok {
					t.Error("p2 kept with no capable node")
				}
				if _, ok := f.Tool("t2"); ok {
					t.Error("t2 kept after its provider was dropped")
				}
				if a, _ := f.Assignment("p1"); !reflect.DeepEqual(a.Holders, []string{"n2"}) || a.Epoch != 7 {
					t.Errorf("assignment = %+v", a)
				}
				if _, ok := f.Assignment("p2"); ok {
					t.Error("p2 assignment kept")
				}
			},
		},
		{
			name: "providers: a node's list replaces its earlier one",
			steps: []step{
				{cmd: offer("n2", Provider{Name: "b"})},
				{cmd: offer("n1", Provider{Name: "a", Replicas: 2, CacheTTL: 5}, Provider{Name: "b"})},
				{cmd: offer("n1", Provider{Name: "a", Replicas: 3})},
				{cmd: offer("n3", Provider{Name: "a", Replicas: 3})},
			},
			check: func(t *testing.T, f *FSM) {
				want := []Provider{{Name: "a", Replicas: 3, Nodes: []string{"n1", "n3"}}, {Name: "b", Nodes: []string{"n2"}}}
				if got := f.Providers(); !reflect.DeepEqual(got, want) {
					t.Errorf("Providers() = %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "catalog put replaces a provider's tools, first claim on a name wins",
			steps: []step{
				{cmd: offer("n1", Provider{Name: "p1"}, Provider{Name: "p2"})},
				{cmd: put("p1", Tool{Name: "b"}, Tool{Name: "a", CacheTTL: 7})},
				{cmd: put("p2", Tool{Name: "b"}, Tool{Name: "c"}), want: Result{Code: CodeConflict, Removed: 1}},
				{cmd: put("p1", Tool{Name: "b", Spec: []byte(`{"v":2}`)})},
				{cmd: put("ghost", Tool{Name: "z"}), want: Result{Code: CodeNotFound}},
			},
			check: func(t *testing.T, f *FSM) {
				want := []Tool{{Name: "b", Provider: "p1", Spec: []byte(`{"v":2}`)}, {Name: "c", Provider: "p2"}}
				if got := f.Tools(); !reflect.DeepEqual(got, want) {
					t.Errorf("Tools() = %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "assign sets epoch, keeps declaring holders, refuses unknown provider, replaces",
			steps: []step{
				{cmd: offer("n1", Provider{Name: "x", Replicas: 2})},
				{cmd: offer("n2", Provider{Name: "x", Replicas: 2})},
				{cmd: offer("n3", Provider{Name: "w", Replicas: 1})},
				{cmd: assign("x", "n1", "n2")},
				{cmd: assign("w", "n3", "n1", "n3")}, // n1 does not declare w
				{cmd: assign("x", "n2")},
				{cmd: assign("ghost", "n1"), want: Result{Code: CodeNotFound}},
			},
			check: func(t *testing.T, f *FSM) {
				want := []Assignment{{Provider: "w", Holders: []string{"n3"}, Epoch: 5}, {Provider: "x", Holders: []string{"n2"}, Epoch: 6}}
				if got := f.Assignments(); !reflect.DeepEqual(got, want) {
					t.Errorf("Assignments() = %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "sessions open touch delete",
			steps: []step{
				{cmd: open("s1", 100)},
				{cmd: Command{Type: TypeSessionTouch, Now: 150, SessionID: "s1"}},
				{cmd: Command{Type: TypeSessionTouch, Now: 120, SessionID: "s1"}}, // stale clock: LastSeen stays
				{cmd: Command{Type: TypeSessionTouch, Now: 150, SessionID: "nope"}, want: Result{Code: CodeNotFound}},
				{cmd: open("s2", 160)},
				{cmd: Command{Type: TypeSessionDelete, SessionID: "s2"}, want: Result{Removed: 1}},
				{cmd: Command{Type: TypeSessionDelete, SessionID: "s2"}, want: Result{Code: CodeNotFound}},
			},
			check: func(t *testing.T, f *FSM) {
				want := []Session{{ID: "s1", Principal: "p", CreatedAt: 100, LastSeen: 150}}
				if got := f.Sessions(); !reflect.DeepEqual(got, want) {
					t.Errorf("Sessions() = %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "session expire in id order with limit",
			steps: []step{
				{cmd: open("d", 10)},
				{cmd: open("c", 10)},
				{cmd: open("b", 10)},
				{cmd: open("a", 50)},
				{cmd: open("z", 1<<62)},
				{cmd: Command{Type: TypeSessionExpire, Now: 30, IdleTTL: 20, Limit: 2}, want: Result{Removed: 2}},
				{cmd: Command{Type: TypeSessionExpire, Now: 1<<63 - 1, IdleTTL: 1<<63 - 1}},
				{cmd: Command{Type: TypeSessionExpire, Now: 69, IdleTTL: 20}, want: Result{Removed: 1}},
			},
			check: func(t *testing.T, f *FSM) {
				var ids []string
				for _, s := range f.Sessions() {
					ids = append(ids, s.ID)
				}
				if want := []string{"a", "z"}; !reflect.DeepEqual(ids, want) {
					t.Errorf("sessions = %v, want %v", ids, want)
				}
			},
		},
		{
			name: "session key, lazy uses, tombstones",
			steps: []step{
				{cmd: Command{Type: TypeSessionKey, Value: bytes.Repeat([]byte{1}, SessionKeySize)}},
				{cmd: Command{Type: TypeSessionKey, Value: bytes.Repeat([]byte{2}, SessionKeySize)}, want: Result{Code: CodeConflict}},
				{cmd: Command{Type: TypeSessionUses, Sessions: []Session{
					{ID: "u1", Principal: "p", CreatedAt: 100, LastSeen: 100},
					{ID: "u2", Principal: "p", CreatedAt: 100, LastSeen: 110},
					{ID: "u3", Principal: "q", CreatedAt: 100, LastSeen: 100},
				}}},
				// A use reported late (older) keeps the newer one.
				{cmd: Command{Type: TypeSessionUses, Sessions: []Session{{ID: "u2", Principal: "p", CreatedAt: 100, LastSeen: 105}}}},
				// Deleted: a tombstone until the id's lifetime ends, even for
				// an id whose uses never arrived.
				{cmd: Command{Type: TypeSessionDelete, SessionID: "u1", Until: 1000}, want: Result{Removed: 1}},
				{cmd: Command{Type: TypeSessionDelete, SessionID: "never-seen", Until: 1000}},
				{cmd: Command{Type: TypeSessionDelete, SessionID: "u1", Until: 1000}, want: Result{Code: CodeNotFound}},
				// A late use of a deleted session does not bring it back.
				{cmd: Command{Type: TypeSessionUses, Sessions: []Session{{ID: "u1", Principal: "p", CreatedAt: 100, LastSeen: 200}}}},
				// Idle: u3 becomes a tombstone until CreatedAt+Until; u2 (used
				// at 110) too. Tombstones are not idle sessions.
				{cmd: Command{Type: TypeSessionExpire, Now: 150, IdleTTL: 45, Until: 500}, want: Result{Removed: 1}},
				{cmd: Command{Type: TypeSessionExpire, Now: 160, IdleTTL: 45, Until: 500}, want: Result{Removed: 1}},
				// Past their ends the tombstones go, without counting as sessions.
				{cmd: Command{Type: TypeSessionExpire, Now: 1000, IdleTTL: 45, Until: 500}},
			},
			check: func(t *testing.T, f *FSM) {
				if got := f.SessionKey(); !bytes.Equal(got, bytes.Repeat([]byte{1}, SessionKeySize)) {
					t.Errorf("SessionKey() = %x: the first key must stay", got)
				}
				if got := f.Sessions(); len(got) != 0 || f.Counts().Sessions != 0 {
					t.Errorf("Sessions() = %+v, %d counted", got, f.Counts().Sessions)
				}
			},
		},
		{
			name: "session tombstones in a batch",
			steps: []step{
				{cmd: Command{Type: TypeSessionUses, Sessions: []Session{{ID: "b1", Principal: "p", CreatedAt: 1, LastSeen: 2}}}},
				{cmd: Command{Type: TypeSessionDelete, Sessions: []Session{{ID: "b1", DeletedUntil: 900}, {ID: "b2", DeletedUntil: 80}}}, want: Result{Removed: 1}},
				{cmd: Command{Type: TypeSessionDelete, Sessions: []Session{{ID: "b2", DeletedUntil: 95}}}},
				{cmd: Command{Type: TypeSessionExpire, Now: 85, IdleTTL: 1000}},
				// An open over a tombstone replaces it: one session counted.
				{cmd: Command{Type: TypeSessionDelete, SessionID: "b3", Until: 500}},
				{cmd: open("b3", 90)},
				// Past its lifetime a session goes, with no idle TTL at all.
				{cmd: Command{Type: TypeSessionUses, Sessions: []Session{{ID: "b4", CreatedAt: 10, LastSeen: 99}}}},
				{cmd: Command{Type: TypeSessionExpire, Now: 100, IdleTTL: 1 << 62, Until: 50}, want: Result{Removed: 1}},
			},
			check: func(t *testing.T, f *FSM) {
				if b3, ok := f.Session("b3"); !ok || b3.Deleted() || f.Counts().Sessions != 1 {
					t.Errorf("open over a tombstone: %+v %v, %d counted", b3, ok, f.Counts().Sessions)
				}
				if _, ok := f.Session("b4"); ok {
					t.Error("a session past its lifetime stayed")
				}
				if !f.SessionsDue(1000, 1<<62, 0) || f.SessionsDue(85, 1<<62, 0) {
					t.Error("SessionsDue disagrees with the tombstone's end")
				}
				if b1, ok := f.Session("b1"); !ok || !b1.Deleted() {
					t.Errorf("b1 = %+v %v, want its tombstone", b1, ok)
				}
				if _, ok := f.Session("b2"); ok {
					t.Error("b2's tombstone outlived its end")
				}
			},
		},
		{
			name: "cache set and CAS",
			steps: []step{
				{cmd: set("k", "v1", 0, 0, nil), want: Result{Version: 1}},
				{cmd: set("k", "v2", 0, 0, u64(0)), want: Result{Code: CodeCASMismatch, Version: 1}},
				{cmd: set("k", "v2", 0, 0, u64(5)), want: Result{Code: CodeCASMismatch, Version: 1}},
				{cmd: set("k", "v3", 0, 100, u64(1)), want: Result{Version: 4}},
				{cmd: set("k", "v4", 100, 0, u64(4)), want: Result{Code: CodeCASMismatch}}, // expired counts as absent
				{cmd: set("k", "v5", 100, 0, u64(0)), want: Result{Version: 6}},
				{cmd: set("new", "x", 0, 0, u64(0)), want: Result{Version: 7}},
			},
			check: func(t *testing.T, f *FSM) {
				if e, ok := f.CacheGet("k", 1000); !ok || string(e.Value) != "v5" || e.Version != 6 || e.ExpiresAt != 0 {
					t.Errorf("CacheGet(k) = %+v, %v", e, ok)
				}
				if got, want := f.Counts(), (Counts{CacheEntries: 2, CacheBytes: 3 + 4}); got != want {
					t.Errorf("Counts() = %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "cache delete",
			steps: []step{
				{cmd: set("a", "1", 0, 0, nil), want: Result{Version: 1}},
				{cmd: set("b", "2", 0, 50, nil), want: Result{Version: 2}},
				{cmd: del("missing", 0, nil), want: Result{Code: CodeNotFound}},
				{cmd: del("b", 50, nil), want: Result{Code: CodeNotFound}},
				{cmd: del("a", 0, u64(9)), want: Result{Code: CodeCASMismatch, Version: 1}},
				{cmd: del("a", 0, u64(0)), want: Result{Code: CodeCASMismatch, Version: 1}},
				{cmd: del("a", 0, u64(1)), want: Result{Removed: 1}},
				{cmd: del("a", 0, nil), want: Result{Code: CodeNotFound}},
			},
			check: func(t *testing.T, f *FSM) {
				if got, want := f.Counts(), (Counts{CacheEntries: 1, CacheBytes: 2}); got != want {
					t.Errorf("Counts() = %+v, want %+v", got, want)
				}
				if _, ok := f.CacheGet("b", 49); !ok {
					t.Error("b hidden before expiry")
				}
				if _, ok := f.CacheGet("b", 50); ok {
					t.Error("b visible at expiry")
				}
			},
		},
		{
			name: "cache expire in key order with limit",
			steps: []step{
				{cmd: set("d", "x", 0, 10, nil), want: Result{Version: 1}},
				{cmd: set("c", "x", 0, 10, nil), want: Result{Version: 2}},
				{cmd: set("b", "x", 0, 20, nil), want: Result{Version: 3}},
				{cmd: set("a", "x", 0, 0, nil), want: Result{Version: 4}},
				{cmd: Command{Type: TypeCacheExpire, Now: 10, Limit: 1}, want: Result{Removed: 1}},
				{cmd: Command{Type: TypeCacheExpire, Now: 20}, want: Result{Removed: 2}},
				{cmd: Command{Type: TypeCacheExpire, Now: 1 << 62}},
			},
			check: func(t *testing.T, f *FSM) {
				if got := f.CacheList("", "", 0, 0); len(got) != 1 || got[0].Key != "a" {
					t.Errorf("CacheList = %+v", got)
				}
				if got, want := f.Counts(), (Counts{CacheEntries: 1, CacheBytes: 2}); got != want {
					t.Errorf("Counts() = %+v, want %+v", got, want)
				}
			},
		},
		{
			name: "dedupe applies a request id once",
			steps: []step{
				{cmd: Command{Type: TypeCacheSet, RequestID: "rq", Key: "k", Value: []byte("1")}, want: Result{Version: 1}},
				{cmd: Command{Type: TypeCacheSet, Key: "k", Value: []byte("2")}, want: Result{Version: 2}},
				{cmd: Command{Type: TypeCacheSet, RequestID: "rq", Key: "k", Value: []byte("3")}, want: Result{Index: 1, Version: 1, Duplicate: true}},
				{cmd: Command{Type: TypeCacheDelete, RequestID: "rd", Key: "zz"}, want: Result{Code: CodeNotFound}},
				{cmd: Command{Type: TypeCacheSet, RequestID: "rz", Key: "zz"}, want: Result{Version: 5}},
				{cmd: Command{Type: TypeCacheDelete, RequestID: "rd", Key: "zz"}, want: Result{Index: 4, Code: CodeNotFound, Duplicate: true}},
			},
			check: func(t *testing.T, f *FSM) {
				if e, _ := f.CacheGet("k", 0); string(e.Value) != "2" {
					t.Errorf("k = %q, want 2", e.Value)
				}
				if _, ok := f.CacheGet("zz", 0); !ok {
					t.Error("duplicate delete was applied")
				}
				if f.LastIndex() != 6 {
					t.Errorf("LastIndex() = %d, want 6", f.LastIndex())
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newTestFSM(t)
			for i, s := range tc.steps {
				got := f.apply(&s.cmd)
				want := s.want
				if want.Index == 0 {
					want.Index = f.idx
				}
				if *got != want {
					t.Fatalf("step %d (%s): result %+v, want %+v", i, s.cmd.Type, *got, want)
				}
			}
			tc.check(t, f.FSM)
		})
	}
}

func TestApplyNonCommandReturnsNil(t *testing.T) {
	f := New()
	for _, typ := range []raft.LogType{raft.LogConfiguration, raft.LogNoop, raft.LogBarrier} {
		if r := f.Apply(&raft.Log{Index: 5, Type: typ, Data: []byte("whatever")}); r != nil {
			t.Errorf("Apply(%v) = %v, want nil", typ, r)
		}
	}
	if f.LastIndex() != 0 {
		t.Errorf("LastIndex() = %d, want 0", f.LastIndex())
	}
}

func TestApplyCorruptPanics(t *testing.T) {
	for _, data := range [][]byte{nil, {EncodingVersion}, {9, 1, '{', '}'}, {EncodingVersion, byte(TypeCacheSet), '{', '}'}} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("Apply(%q) did not panic", data)
				}
			}()
			New().Apply(&raft.Log{Index: 1, Type: raft.LogCommand, Data: data})
		}()
	}
}

func TestAssignDropsOrphan(t *testing.T) {
	f := newTestFSM(t)
	// An assignment whose provider nobody declares, as an older state may hold.
	f.st.assigns["gone"] = Assignment{Provider: "gone", Holders: []string{"n1"}, Epoch: 1}
	r := f.apply(&Command{Type: TypeAssign, Assignment: &Assignment{Provider: "gone"}})
	if r.Code != CodeNotFound || r.Removed != 1 {
		t.Errorf("result %+v, want not_found with 1 removed", r)
	}
	if got := f.Assignments(); len(got) != 0 {
		t.Errorf("Assignments() = %+v, want none", got)
	}
}

func TestDedupeForgetsByStamp(t *testing.T) {
	f := newTestFSM(t)
	sec := int64(time.Second)
	// Far more ids than any count bound of old, all inside the window.
	for i := range 20000 {
		f.apply(&Command{Type: TypeCacheExpire, Now: sec, RequestID: fmt.Sprint("r", i)})
	}
	if r := f.apply(&Command{Type: TypeCacheExpire, Now: sec + int64(DedupeWindow), RequestID: "r0"}); !r.Duplicate || r.Index != 1 {
		t.Errorf("r0 forgotten inside the window: %+v", r)
	}
	// A command stamped past the window forgets every older id.
	late := 2*sec + int64(DedupeWindow)
	if r := f.apply(&Command{Type: TypeCacheExpire, Now: late, RequestID: "new"}); r.Duplicate {
		t.Errorf("new id found a duplicate: %+v", r)
	}
	if r := f.apply(&Command{Type: TypeCacheExpire, Now: late, RequestID: "r1"}); r.Duplicate {
		t.Errorf("r1 remembered past the window: %+v", r)
	}
	if n := len(f.st.dedupe); n != 2 || len(f.st.order) != 2 {
		t.Errorf("dedupe holds %d/%d ids, want 2 (new, r1)", n, len(f.st.order))
	}
	if MaxRetry*2 > DedupeWindow {
		t.Errorf("MaxRetry %s leaves too little of DedupeWindow %s for clock differences", MaxRetry, DedupeWindow)
	}
}

// randomCommands returns a deterministic mix of every command type.
func randomCommands(seed int64, n int) []*Command {
	rng := rand.New(rand.NewSource(seed))
	pick := func(p string, k int) string { return fmt.Sprintf("%s%d", p, rng.Intn(k)) }
	cmds := make([]*Command, n)
	for i := range cmds {
		now := int64(i * 10)
		c := &Command{Type: Type(rng.Intn(int(TypeSessionUses)) + 1), Now: now}
		if rng.Intn(4) == 0 {
			c.RequestID = pick("rid", 50)
		}
		switch c.Type {
		case TypeNodeRegister:
			c.Node = &Node{ID: pick("n", 5), HTTPAddr: pick("addr", 100)}
		case TypeNodeDeregister:
			c.NodeID = pick("n", 5)
		case TypeProviders:
			c.NodeID = pick("n", 5)
			c.Providers = []Provider{{Name: pick("p", 4), Replicas: rng.Intn(3)}, {Name: pick("p", 4)}}
		case TypeCatalogPut:
			c.Provider = pick("p", 4)
			c.Tools = []Tool{{Name: pick("t", 8), Spec: []byte(`{"n":1}`)}}
		case TypeAssign:
			c.Assignment = &Assignment{Provider: pick("p", 4), Holders: []string{pick("n", 5), pick("n", 5)}}
		case TypeSessionOpen:
			c.Session = &Session{ID: pick("s", 20)}
		case TypeSessionTouch, TypeSessionDelete:
			c.SessionID = pick("s", 20)
			if c.Type == TypeSessionDelete && rng.Intn(2) == 0 {
				c.Until = now + int64(rng.Intn(300))
			}
			if c.Type == TypeSessionDelete && rng.Intn(3) == 0 {
				c.SessionID, c.Sessions = "", []Session{{ID: pick("s", 20), DeletedUntil: now + 100}, {ID: pick("s", 20), DeletedUntil: now + 200}}
			}
		case TypeSessionExpire:
			c.IdleTTL, c.Limit = int64(rng.Intn(200)+1), rng.Intn(3)
			if rng.Intn(2) == 0 {
				c.Until = int64(rng.Intn(400))
			}
		case TypeSessionKey:
			c.Value = bytes.Repeat([]byte(pick("k", 3)[1:]), SessionKeySize)
		case TypeSessionUses:
			for range rng.Intn(3) + 1 {
				at := now - int64(rng.Intn(50))
				c.Sessions = append(c.Sessions, Session{ID: pick("s", 20), Principal: pick("p", 2), CreatedAt: at - 5, LastSeen: at})
			}
		case TypeCacheSet, TypeCacheDelete:
			c.Key = pick("k", 30)
			c.Value = []byte(pick("v", 1000))
			if c.Type == TypeCacheSet && rng.Intn(2) == 0 {
				c.ExpiresAt = now + int64(rng.Intn(100))
			}
			if c.Type == TypeCacheSet && rng.Intn(3) == 0 {
				c.MaxEntries, c.MaxBytes = rng.Intn(25)+1, int64(rng.Intn(400)+50)
			}
			if rng.Intn(5) == 0 {
				c.CompareValue, c.OldValue = true, []byte(pick("v", 1000))
			}
			if rng.Intn(3) == 0 {
				c.CAS = u64(uint64(rng.Intn(i + 1)))
			}
		case TypeCacheExpire:
			c.Limit = rng.Intn(3)
		}
		cmds[i] = c
	}
	return cmds
}

func TestApplyBatchEquivalence(t *testing.T) {
	cmds := randomCommands(1, 2000)
	one, batch := newTestFSM(t), New()
	var logs []*raft.Log
	var want []interface{}
	for i, c := range cmds {
		l := one.log(c)
		logs = append(logs, l)
		want = append(want, one.Apply(l))
		if i%7 == 0 { // interleave configuration entries, as raft does
			one.idx++
			cfg := &raft.Log{Index: one.idx, Type: raft.LogConfiguration}
			logs = append(logs, cfg)
			want = append(want, one.Apply(cfg))
		}
	}
	var got []interface{}
	for len(logs) > 0 {
		n := min(len(logs), 1+len(got)%64)
		got = append(got, batch.ApplyBatch(logs[:n])...)
		logs = logs[n:]
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatal("ApplyBatch results differ from Apply results")
	}
	h1, _ := one.Hash()
	h2, _ := batch.Hash()
	if h1 != h2 {
		t.Fatalf("hash %s != %s", h1, h2)
	}
	if one.LastIndex() != batch.LastIndex() {
		t.Fatalf("LastIndex %d != %d", one.LastIndex(), batch.LastIndex())
	}
}

func TestSameLogSameHash(t *testing.T) {
	a, b := newTestFSM(t), newTestFSM(t)
	for _, c := range randomCommands(2, 3000) {
		ra, rb := a.apply(c), b.apply(c)
		if *ra != *rb {
			t.Fatalf("results differ: %+v vs %+v", ra, rb)
		}
	}
	ha, err := a.Hash()
	if err != nil {
		t.Fatal(err)
	}
	if hb, _ := b.Hash(); ha != hb || len(ha) != 64 {
		t.Fatalf("hash %q != %q", ha, hb)
	}
}

func TestReadsReturnCopies(t *testing.T) {
	f := newTestFSM(t)
	f.apply(&Command{Type: TypeProviders, NodeID: "n1", Providers: []Provider{{Name: "p"}}})
	f.apply(&Command{Type: TypeCatalogPut, Provider: "p", Tools: []Tool{{Name: "t", Spec: []byte(`{"a":1}`)}}})
	f.apply(&Command{Type: TypeAssign, Assignment: &Assignment{Provider: "p", Holders: []string{"n1"}}})
	f.apply(&Command{Type: TypeCacheSet, Key: "k", Value: []byte("abc")})

	tl, _ := f.Tool("t")
	tl.Spec[0] = 'x'
	f.Tools()[0].Spec[0] = 'x'
	p, _ := f.Provider("p")
	p.Nodes[0] = "x"
	f.Providers()[0].Nodes[0] = "x"
	a, _ := f.Assignment("p")
	a.Holders[0] = "x"
	f.Assignments()[0].Holders[0] = "x"
	e, _ := f.CacheGet("k", 0)
	e.Value[0] = 'x'
	f.CacheList("", "", 1, 0)[0].Value[0] = 'x'

	if tl, _ := f.Tool("t"); string(tl.Spec) != `{"a":1}` {
		t.Errorf("tool mutated: %+v", tl)
	}
	if p, _ := f.Provider("p"); p.Nodes[0] != "n1" {
		t.Errorf("provider mutated: %+v", p)
	}
	if a, _ := f.Assignment("p"); a.Holders[0] != "n1" {
		t.Errorf("assignment mutated: %+v", a)
	}
	if e, _ := f.CacheGet("k", 0); string(e.Value) != "abc" {
		t.Errorf("cache mutated: %q", e.Value)
	}
}

func TestCacheList(t *testing.T) {
	f := newTestFSM(t)
	for i := 0; i < 250; i++ {
		exp := int64(0)
		if i%10 == 0 {
			exp = 5
		}
		f.apply(&Command{Type: TypeCacheSet, Key: fmt.Sprintf("p/%03d", i), Value: []byte{byte(i)}, ExpiresAt: exp})
	}
	f.apply(&Command{Type: TypeCacheSet, Key: "q/1", Value: []byte("q")})

	keys := func(es []CacheEntry) (ks []string) {
		for _, e := range es {
			ks = append(ks, e.Key)
		}
		return ks
	}
	if got := f.CacheList("p/", "", 0, 10); len(got) != 100 || got[0].Key != "p/001" {
		t.Errorf("default limit: %d entries, first %v", len(got), keys(got[:1]))
	}
	if got := keys(f.CacheList("p/", "p/008", 3, 10)); !reflect.DeepEqual(got, []string{"p/009", "p/011", "p/012"}) {
		t.Errorf("after/limit/expiry: %v", got)
	}
	if got := keys(f.CacheList("p/", "p/008", 3, 4)); !reflect.DeepEqual(got, []string{"p/009", "p/010", "p/011"}) {
		t.Errorf("before expiry: %v", got)
	}
	if got := keys(f.CacheList("", "p/249", 10, 10)); !reflect.DeepEqual(got, []string{"q/1"}) {
		t.Errorf("after last p: %v", got)
	}
	if got := f.CacheList("zzz", "", 10, 0); len(got) != 0 {
		t.Errorf("no match: %v", keys(got))
	}
}

func TestSubscribe(t *testing.T) {
	f := newTestFSM(t)
	ch, cancel := f.Subscribe()
	pending := func() bool {
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	f.apply(&Command{Type: TypeCacheSet, Key: "k"})
	f.apply(&Command{Type: TypeNodeRegister, Node: &Node{ID: "n1"}})
	f.apply(&Command{Type: TypeNodeDeregister, NodeID: "n1"})
	if pending() {
		t.Error("notified for a change outside catalog/assignments")
	}
	f.apply(&Command{Type: TypeProviders, NodeID: "n1", Providers: []Provider{{Name: "p"}}})
	f.apply(&Command{Type: TypeCatalogPut, Provider: "p", Tools: []Tool{{Name: "a"}}})
	f.apply(&Command{Type: TypeAssign, Assignment: &Assignment{Provider: "p"}})
	if !pending() || pending() {
		t.Error("want exactly one coalesced notification")
	}
	f.apply(&Command{Type: TypeNodeDeregister, NodeID: "n1"})
	if !pending() {
		t.Error("no notification after deregister touched a provider")
	}
	f.ApplyBatch([]*raft.Log{f.log(&Command{Type: TypeProviders, NodeID: "n2", Providers: []Provider{{Name: "q"}}})})
	if !pending() {
		t.Error("no notification after ApplyBatch")
	}
	cancel()
	cancel()
	f.apply(&Command{Type: TypeCatalogPut, Provider: "q", Tools: []Tool{{Name: "b"}}})
	if pending() {
		t.Error("notified after cancel")
	}
}
