package fsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

// memSink is an in-memory raft.SnapshotSink.
type memSink struct {
	bytes.Buffer
	closed, canceled bool
	failWrite        bool
}

func (s *memSink) Write(p []byte) (int, error) {
	if s.failWrite {
		return 0, errors.New("disk full")
	}
	return s.Buffer.Write(p)
}
func (s *memSink) ID() string    { return "mem" }
func (s *memSink) Close() error  { s.closed = true; return nil }
func (s *memSink) Cancel() error { s.canceled = true; return nil }

var _ raft.SnapshotSink = (*memSink)(nil)

func persist(tb testing.TB, f *FSM) []byte {
	tb.Helper()
	snap, err := f.Snapshot()
	if err != nil {
		tb.Fatal(err)
	}
	defer snap.Release()
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		tb.Fatal(err)
	}
	if !sink.closed || sink.canceled {
		tb.Fatalf("sink closed=%v canceled=%v", sink.closed, sink.canceled)
	}
	return sink.Bytes()
}

// populate fills every table of f, plus nCache cache entries.
func populate(tb testing.TB, nCache int) *testFSM {
	f := newTestFSM(tb)
	f.apply(&Command{Type: TypeNodeRegister, Now: 1, Node: &Node{ID: "n2", HTTPAddr: "h2", RPCAddr: "r2", GossipAddr: "g2"}})
	f.apply(&Command{Type: TypeNodeRegister, Now: 2, Node: &Node{ID: "n1", HTTPAddr: "h1"}})
	f.apply(&Command{Type: TypeProviders, NodeID: "n1", Providers: []Provider{{Name: "builtin", CacheTTL: 3}}})
	f.apply(&Command{Type: TypeProviders, NodeID: "n2", Providers: []Provider{{Name: "builtin", CacheTTL: 3}, {Name: "stdio", Replicas: 1}}})
	f.apply(&Command{Type: TypeCatalogPut, Provider: "builtin", Tools: []Tool{
		{Name: "echo", Spec: []byte(`{"name":"echo","description":"<b>"}`), CacheTTL: 7},
	}})
	f.apply(&Command{Type: TypeCatalogPut, Provider: "stdio", Tools: []Tool{{Name: "grep"}}})
	f.apply(&Command{Type: TypeAssign, Assignment: &Assignment{Provider: "stdio", Holders: []string{"n2"}}})
	f.apply(&Command{Type: TypeAssign, Assignment: &Assignment{Provider: "empty"}})
	f.apply(&Command{Type: TypeSessionOpen, Now: 5, Session: &Session{ID: "s2", Principal: "bob", Node: "n1"}})
	f.apply(&Command{Type: TypeSessionOpen, Now: 6, Session: &Session{ID: "s1", ProtocolVersion: "2025-11-25"}})
	f.apply(&Command{Type: TypeSessionKey, Value: bytes.Repeat([]byte{7}, SessionKeySize)})
	f.apply(&Command{Type: TypeSessionUses, Sessions: []Session{{ID: "s3", Principal: "carol", CreatedAt: 6, LastSeen: 8}}})
	f.apply(&Command{Type: TypeSessionDelete, SessionID: "s4", Until: 1 << 40})
	f.apply(&Command{Type: TypeCacheSet, Key: "empty", Now: 7})
	for i := 0; i < nCache; i++ {
		c := &Command{Type: TypeCacheSet, Key: fmt.Sprintf("k/%06d", nCache-i), Value: bytes.Repeat([]byte{byte(i)}, 100)}
		if i%3 == 0 {
			c.ExpiresAt = int64(i)
		}
		if i%5 == 0 {
			c.RequestID = fmt.Sprint("req", i)
		}
		f.apply(c)
	}
	return f
}

type readView struct {
	Last        uint64
	Nodes       []Node
	Providers   []Provider
	Tools       []Tool
	Assignments []Assignment
	Sessions    []Session
	Cache       []CacheEntry
	Counts      Counts
}

func readAll(f *FSM) readView {
	v := readView{Last: f.LastIndex(), Nodes: f.Nodes(), Providers: f.Providers(), Tools: f.Tools(), Assignments: f.Assignments(), Sessions: f.Sessions(), Counts: f.Counts()}
	for after := ""; ; {
		page := f.CacheList("", after, 500, 0)
		if len(page) == 0 {
			return v
		}
		v.Cache = append(v.Cache, page...)
		after = page[len(page)-1].Key
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	src := populate(t, 3000)
	b1 := persist(t, src.FSM)

	dst := New()
	ch, cancel := dst.Subscribe()
	defer cancel()
	if err := dst.Restore(io.NopCloser(bytes.NewReader(b1))); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ch:
	default:
		t.Error("Restore did not notify subscribers")
	}
	if b2 := persist(t, dst); !bytes.Equal(b1, b2) {
		t.Fatalf("snapshot bytes differ after restore (%d vs %d bytes)", len(b1), len(b2))
	}
	h1, _ := src.Hash()
	h2, _ := dst.Hash()
	if h1 != h2 {
		t.Fatalf("hash %s != %s", h1, h2)
	}
	if a, b := readAll(src.FSM), readAll(dst); !reflect.DeepEqual(a, b) {
		t.Fatal("reads differ after restore")
	}
	if got := dst.Counts(); got.CacheEntries != 3001 || got.Nodes != 2 || got.Sessions != 3 {
		t.Fatalf("Counts() = %+v (the tombstone is no session)", got)
	}
	if !bytes.Equal(dst.SessionKey(), src.SessionKey()) || dst.SessionKey() == nil {
		t.Fatal("the session key did not travel with the snapshot")
	}
	if s4, ok := dst.Session("s4"); !ok || !s4.Deleted() {
		t.Fatalf("tombstone after restore: %+v %v", s4, ok)
	}

	// The dedupe table travels with the snapshot.
	d := &testFSM{FSM: dst, tb: t, idx: src.idx}
	dup := &Command{Type: TypeCacheSet, RequestID: "req0", Key: "x"}
	// req0 went with the first generated cache entry, the last entry before the loop + 1.
	req0 := src.idx - uint64(3000) + 1
	if r1, r2 := src.apply(dup), d.apply(dup); !r2.Duplicate || r2.Index != req0 || *r1 != *r2 {
		t.Fatalf("dedupe lost in snapshot: %+v vs %+v", r1, r2)
	}
	// And both replicas keep agreeing afterwards.
	for _, c := range randomCommands(3, 500) {
		if r1, r2 := src.apply(c), d.apply(c); *r1 != *r2 {
			t.Fatalf("results diverge after restore: %+v vs %+v", r1, r2)
		}
	}
	if a, b := src.Counts(), d.Counts(); a != b {
		t.Fatalf("counts diverge after restore: %+v vs %+v", a, b)
	}
	// A fresh restore of either agrees too (the tombstone count is derived
	// again on restore).
	again := New()
	if err := again.Restore(io.NopCloser(bytes.NewReader(persist(t, src.FSM)))); err != nil {
		t.Fatal(err)
	}
	if a, b := src.Counts(), again.Counts(); a != b {
		t.Fatalf("counts after a second restore: %+v vs %+v", a, b)
	}
}

func TestSnapshotIsolatedFromLaterApplies(t *testing.T) {
	f := populate(t, 10)
	want := persist(t, f.FSM)
	snap, _ := f.Snapshot()
	for _, c := range randomCommands(4, 500) {
		f.apply(c)
	}
	sink := &memSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(sink.Bytes(), want) {
		t.Fatal("snapshot changed after later applies")
	}
}

func TestPersistErrorCancels(t *testing.T) {
	snap, _ := populate(t, 1000).Snapshot()
	sink := &memSink{failWrite: true}
	if err := snap.Persist(sink); err == nil || !sink.canceled || sink.closed {
		t.Fatalf("err=%v canceled=%v closed=%v", err, sink.canceled, sink.closed)
	}
}

type closeRecorder struct {
	io.Reader
	closed bool
}

func (c *closeRecorder) Close() error { c.closed = true; return nil }

func TestRestoreErrorsLeaveStateUntouched(t *testing.T) {
	good := persist(t, populate(t, 3).FSM)
	lines := strings.SplitAfter(string(good), "\n")
	header, end := lines[0], lines[len(lines)-2]
	cases := map[string]string{
		"empty":          "",
		"garbage":        "\x00\x01garbage",
		"not header":     lines[1],
		"wrong format":   strings.Replace(header, `"format":1`, `"format":2`, 1),
		"no end":         strings.Join(lines[:len(lines)-2], ""),
		"unknown kind":   header + `{"kind":"widget"}` + "\n" + end,
		"unknown field":  header + `{"kind":"node","node":{"id":"x","color":"red"}}` + "\n",
		"two payloads":   header + `{"kind":"node","node":{"id":"x"},"session":{"id":"y"}}` + "\n",
		"wrong payload":  header + `{"kind":"node","session":{"id":"y"}}` + "\n",
		"empty key":      header + `{"kind":"cache","cache":{"key":"","version":1}}` + "\n",
		"duplicate node": header + `{"kind":"node","node":{"id":"x"}}` + "\n" + `{"kind":"node","node":{"id":"x"}}` + "\n",
		"bad count":      header + `{"kind":"end","count":3}` + "\n",
		"trailing data":  string(good) + "{}",
	}
	for i := 0; i < len(good)-1; i++ {
		cases[fmt.Sprintf("truncated at %d", i)] = string(good[:i])
	}

	f := populate(t, 50)
	before, _ := f.Hash()
	for name, in := range cases {
		rc := &closeRecorder{Reader: strings.NewReader(in)}
		if err := f.Restore(rc); err == nil {
			t.Errorf("%s: Restore succeeded", name)
		}
		if !rc.closed {
			t.Errorf("%s: reader not closed", name)
		}
	}
	if after, _ := f.Hash(); after != before {
		t.Fatal("failed Restore changed the state")
	}
	// Sanity: the untruncated input restores.
	if err := f.Restore(io.NopCloser(bytes.NewReader(good))); err != nil {
		t.Fatal(err)
	}
}

func FuzzRestore(f *testing.F) {
	good := persist(f, populate(f, 5).FSM)
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add([]byte(`{"kind":"header","format":1}` + "\n" + `{"kind":"end"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fsm := New()
		if err := fsm.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
			return
		}
		// Whatever restored must persist and restore again.
		out := persist(t, fsm)
		if err := New().Restore(io.NopCloser(bytes.NewReader(out))); err != nil {
			t.Fatalf("re-restore of persisted state: %v", err)
		}
	})
}

func BenchmarkApplyCacheSet(b *testing.B) {
	f := New()
	// One template payload whose request id and key digits are rewritten in
	// place, so every iteration is a distinct request without encoding cost.
	data := mustEncode(b, &Command{Type: TypeCacheSet, RequestID: "rid-000000000000", Now: 1,
		Key: "key/000000", Value: bytes.Repeat([]byte("x"), 100)})
	rid := data[bytes.Index(data, []byte("rid-"))+4:][:12]
	key := data[bytes.Index(data, []byte("key/"))+4:][:6]
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		putDigits(rid, i)
		putDigits(key, i%10_000)
		f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data})
	}
}

func putDigits(b []byte, n int) {
	for j := len(b) - 1; j >= 0; j-- {
		b[j] = byte('0' + n%10)
		n /= 10
	}
}

func BenchmarkSnapshotPersist100k(b *testing.B) {
	f := New()
	val := bytes.Repeat([]byte("v"), 100)
	logs := make([]*raft.Log, 100_000)
	for i := range logs {
		logs[i] = &raft.Log{Index: uint64(i + 1), Type: raft.LogCommand,
			Data: mustEncode(b, &Command{Type: TypeCacheSet, Key: fmt.Sprintf("key/%08d", i), Value: val})}
	}
	f.ApplyBatch(logs)
	b.ReportAllocs()
	b.ResetTimer()
	var n int
	for i := 0; i < b.N; i++ {
		snap, err := f.Snapshot()
		if err != nil {
			b.Fatal(err)
		}
		sink := &countSink{}
		if err := snap.Persist(sink); err != nil {
			b.Fatal(err)
		}
		n = sink.n
	}
	b.ReportMetric(float64(n), "snapshot-bytes")
	b.SetBytes(int64(n))
}

// countSink discards what it is given and counts the bytes.
type countSink struct{ n int }

func (s *countSink) Write(p []byte) (int, error) { s.n += len(p); return len(p), nil }
func (s *countSink) ID() string                  { return "count" }
func (s *countSink) Close() error                { return nil }
func (s *countSink) Cancel() error               { return nil }
