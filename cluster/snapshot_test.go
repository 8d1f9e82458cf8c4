package cluster

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/fsm"
)

// testArchive returns an archive of state with made-up raft metadata.
func testArchive(t *testing.T, state []byte) ([]byte, *raft.SnapshotMeta) {
	t.Helper()
	meta := &raft.SnapshotMeta{
		Version: 1, ID: "2-9-123", Index: 9, Term: 2, Size: int64(len(state)), ConfigurationIndex: 3,
		Configuration: raft.Configuration{Servers: []raft.Server{{Suffrage: raft.Voter, ID: "n1", Address: "127.0.0.1:1"}}},
	}
	var buf bytes.Buffer
	if _, err := writeSnapshotArchive(&buf, "n1", meta, bytes.NewReader(state)); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), meta
}

// member is one file of a hand-made archive.
type member struct {
	name string
	body []byte
}

// members unpacks an archive without checking it.
func members(t *testing.T, archive []byte) []member {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var out []member
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(tr)
		out = append(out, member{hdr.Name, b})
	}
}

// pack builds an archive from members as given, checksums untouched.
func pack(t *testing.T, ms []member) []byte {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, m := range ms {
		if err := tw.WriteHeader(&tar.Header{Name: m.name, Mode: 0o600, Size: int64(len(m.body)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(m.body)
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

func TestSnapshotArchiveRoundTrip(t *testing.T) {
	state := []byte(strings.Repeat("{\"kind\":\"cache\",\"cache\":{\"key\":\"k\"}}\n", 500))
	archive, meta := testArchive(t, state)

	var got bytes.Buffer
	m, err := ReadSnapshotArchive(bytes.NewReader(archive), &got, MaxSnapshotBytes)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), state) {
		t.Fatal("state differs after the round trip")
	}
	if m.Index != meta.Index || m.Term != meta.Term || m.Size != meta.Size || m.ID != meta.ID || m.Version != meta.Version ||
		m.Node != "n1" || m.ConfigurationIndex != 3 || len(m.Servers) != 1 || m.Servers[0].ID != "n1" || m.Format != snapshotArchiveFormat {
		t.Fatalf("meta after the round trip: %+v", m)
	}
	ms := members(t, archive)
	if len(ms) != 3 || ms[0].name != "meta.json" || ms[1].name != "state.bin" || ms[2].name != "SHA256SUMS" {
		t.Fatalf("archive members: %v", ms)
	}

	// An empty state is a valid archive too.
	empty, _ := testArchive(t, nil)
	if _, err := ReadSnapshotArchive(bytes.NewReader(empty), io.Discard, MaxSnapshotBytes); err != nil {
		t.Fatalf("empty state: %v", err)
	}
}

func TestSnapshotArchiveRefusesDamage(t *testing.T) {
	state := []byte(strings.Repeat("{\"kind\":\"cache\",\"cache\":{\"key\":\"k\"}}\n", 500))
	archive, _ := testArchive(t, state)
	ms := members(t, archive)
	alter := func(i int, f func([]byte) []byte) []member {
		out := append([]member(nil), ms...)
		out[i] = member{out[i].name, f(bytes.Clone(out[i].body))}
		return out
	}
	flip := func(b []byte) []byte { b[len(b)/2] ^= 1; return b }
	setIndex := func(b []byte) []byte {
		var m map[string]any
		json.Unmarshal(b, &m)
		m["index"] = 999999
		out, _ := json.Marshal(m)
		return out
	}

	cases := map[string][]byte{
		"not gzip":           []byte("hello, not an archive"),
		"empty":              nil,
		"state altered":      pack(t, alter(1, flip)),
		"meta altered":       pack(t, alter(0, setIndex)),
		"sums altered":       pack(t, alter(2, flip)),
		"no sums":            pack(t, ms[:2]),
		"no state":           pack(t, []member{ms[0], ms[2]}),
		"wrong order":        pack(t, []member{ms[1], ms[0], ms[2]}),
		"extra member":       pack(t, append(append([]member(nil), ms...), member{"evil.sh", []byte("x")})),
		"state short":        pack(t, alter(1, func(b []byte) []byte { return b[:len(b)-1] })),
		"sums duplicate":     pack(t, alter(2, func(b []byte) []byte { return append(b, b[:len(b)/2]...) })),
		"trailing data":      append(bytes.Clone(archive), "junk"...),
		"trailing gzip":      append(bytes.Clone(archive), pack(t, ms)...),
		"last byte dropped":  archive[:len(archive)-1],
		"gzip trailer wrong": append(bytes.Clone(archive[:len(archive)-8]), 0, 0, 0, 0, 0, 0, 0, 0),
	}
	// Truncated anywhere.
	for _, n := range []int{1, 10, 20, 100, 200, len(archive) / 3, len(archive) / 2, len(archive) - 20, len(archive) - 9} {
		cases[fmt.Sprintf("truncated at %d", n)] = archive[:n]
	}
	for name, b := range cases {
		_, err := ReadSnapshotArchive(bytes.NewReader(b), io.Discard, MaxSnapshotBytes)
		if !errors.Is(err, ErrBadSnapshot) {
			t.Errorf("%s: err = %v, want ErrBadSnapshot", name, err)
		}
	}
	if _, err := ReadSnapshotArchive(bytes.NewReader(pack(t, alter(1, flip))), io.Discard, MaxSnapshotBytes); err == nil || !strings.Contains(err.Error(), "checksum mismatch") {
		t.Errorf("altered state: %v, want a checksum mismatch", err)
	}
	// The state bound.
	if _, err := ReadSnapshotArchive(bytes.NewReader(archive), io.Discard, int64(len(state)-1)); !errors.Is(err, ErrBadSnapshot) || !strings.Contains(err.Error(), "allowed") {
		t.Errorf("state over the bound: %v", err)
	}
	// A failing destination is not the archive's fault.
	if _, err := ReadSnapshotArchive(bytes.NewReader(archive), failWriter{}, MaxSnapshotBytes); err == nil || errors.Is(err, ErrBadSnapshot) {
		t.Errorf("failing destination: %v", err)
	}
}

type failWriter struct{}

func (failWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestInspectSnapshot(t *testing.T) {
	f := fsm.New()
	for i, c := range []*fsm.Command{
		{Type: fsm.TypeNodeRegister, Node: &fsm.Node{ID: "n1"}},
		{Type: fsm.TypeCacheSet, Key: "a", Value: []byte("1")},
		{Type: fsm.TypeCacheSet, Key: "b", Value: []byte("2")},
		{Type: fsm.TypeSessionOpen, Session: &fsm.Session{ID: "s1"}},
	} {
		data, err := fsm.Encode(c)
		if err != nil {
			t.Fatal(err)
		}
		f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data})
	}
	snap, _ := f.Snapshot()
	sink := &bufSink{}
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	archive, _ := testArchive(t, sink.Bytes())
	sum, err := InspectSnapshot(bytes.NewReader(archive))
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, r := range sum.Records {
		counts[r.Kind] = r.Count
		if len(r.SHA256) != 64 || r.Bytes == 0 {
			t.Errorf("record stats %+v", r)
		}
	}
	want := map[string]int{"header": 1, "node": 1, "session": 1, "cache": 2, "end": 1}
	if !reflect.DeepEqual(counts, want) {
		t.Fatalf("record counts %v, want %v", counts, want)
	}
	if sum.Meta.Index != 9 {
		t.Fatalf("meta %+v", sum.Meta)
	}
}

type bufSink struct{ bytes.Buffer }

func (*bufSink) ID() string    { return "buf" }
func (*bufSink) Close() error  { return nil }
func (*bufSink) Cancel() error { return nil }

// apiNode is an in-process node with its admin API on a real HTTP port
// that it gossips, as the agent does.
type apiNode struct {
	*Node
	url string
}

const (
	snapWriteTok = "snapshot-write-token-0123456789"
	snapReadTok  = "snapshot-read-token-0123456789"
)

// newAPICluster starts n nodes that bootstrap together, each serving the
// admin API (with tokens) on the HTTP address it gossips.
func newAPICluster(t *testing.T, n int) []*apiNode {
	t.Helper()
	tokens, err := ParseTokenFile([]byte(snapWriteTok + "\nread " + snapReadTok + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	var out []*apiNode
	var nodes []*Node
	for i := 1; i <= n; i++ {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var join []string
		if i > 1 {
			join = []string{out[0].GossipAddr()}
		}
		cfg := testConfig(t, fmt.Sprintf("n%d", i), n, join...)
		cfg.HTTPAdvertiseAddr = ln.Addr().String()
		nd, err := New(cfg)
		if err != nil {
			ln.Close()
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Shutdown() })
		srv := httptest.NewUnstartedServer(NewAPI(nd, APIConfig{Tokens: tokens, Logger: cfg.Logger}))
		srv.Listener.Close()
		srv.Listener = ln
		srv.Start()
		t.Cleanup(srv.Close)
		out = append(out, &apiNode{Node: nd, url: srv.URL})
		nodes = append(nodes, nd)
	}
	waitStable(t, nodes, n)
	return out
}

func (a *apiNode) request(t *testing.T, method, path, token string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, a.url+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s on %s: read: %v", method, path, a.ID(), err)
	}
	return resp.StatusCode, b
}

func follower(nodes []*apiNode) *apiNode {
	for _, nd := range nodes {
		if !nd.IsLeader() {
			return nd
		}
	}
	return nil
}

func setTTL(t *testing.T, nd *Node, key, value string, expires int64) *fsm.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := nd.Apply(ctx, &fsm.Command{Type: fsm.TypeCacheSet, Key: key, Value: []byte(value), ExpiresAt: expires})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestSnapshotSaveRestoreAPI saves through a follower of one cluster and
// restores through a follower of another, refusing damaged archives first.
func TestSnapshotSaveRestoreAPI(t *testing.T) {
	a := newAPICluster(t, 3)
	far := time.Now().Add(24 * time.Hour).UnixNano()
	want := map[string]string{}
	for i := range 20 {
		k, v := fmt.Sprintf("k%02d", i), fmt.Sprintf("value %d", i)
		if i%2 == 0 {
			setTTL(t, a[i%3].Node, k, v, far)
		} else {
			set(t, a[i%3].Node, k, v)
		}
		want[k] = v
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := a[0].Apply(ctx, &fsm.Command{Type: fsm.TypeSessionOpen, Now: time.Now().UnixNano(), Session: &fsm.Session{ID: "sess-1"}}); err != nil {
		t.Fatal(err)
	}

	// Save is an operator's: a read token is refused.
	src := follower(a)
	if code, body := src.request(t, "GET", "/v1/snapshot", snapReadTok, nil); code != http.StatusForbidden {
		t.Fatalf("save with a read token: %d %s", code, body)
	}
	code, archive := src.request(t, "GET", "/v1/snapshot", snapWriteTok, nil)
	if code != http.StatusOK {
		t.Fatalf("save through follower %s: %d %s", src.ID(), code, archive)
	}
	sum, err := InspectSnapshot(bytes.NewReader(archive))
	if err != nil {
		t.Fatalf("saved archive: %v", err)
	}
	if sum.Meta.Node != src.ID() || sum.Meta.Index == 0 || sum.Meta.Size == 0 {
		t.Fatalf("saved meta %+v", sum.Meta)
	}

	// The Go API writes the same archive.
	var direct bytes.Buffer
	if m, err := a[0].SaveSnapshot(ctx, &direct); err != nil || m.Node != a[0].ID() {
		t.Fatalf("SaveSnapshot: %+v %v", m, err)
	}
	if m, err := ReadSnapshotArchive(&direct, io.Discard, MaxSnapshotBytes); err != nil || m.Index < sum.Meta.Index {
		t.Fatalf("SaveSnapshot's archive: %+v %v", m, err)
	}

	b := newAPICluster(t, 3)
	set(t, b[0].Node, "b-only", "x")
	before := map[string]uint64{}
	for _, nd := range b {
		before[nd.ID()] = nd.FSM().LastIndex()
	}
	via := follower(b)

	ms := members(t, archive)
	tampered := append([]member(nil), ms...)
	tampered[1] = member{"state.bin", bytes.Replace(ms[1].body, []byte(`"key":"k07"`), []byte(`"key":"k7X"`), 1)}
	if bytes.Equal(tampered[1].body, ms[1].body) {
		t.Fatal("tampering changed nothing")
	}
	bad := map[string][]byte{
		"truncated": archive[:len(archive)/2],
		"tampered":  pack(t, tampered),
	}
	for name, body := range bad {
		code, resp := via.request(t, "PUT", "/v1/snapshot", snapWriteTok, bytes.NewReader(body))
		if code != http.StatusBadRequest || !strings.Contains(string(resp), "nothing was restored") {
			t.Fatalf("%s archive through %s: %d %s", name, via.ID(), code, resp)
		}
	}
	// A forwarded restore that reaches a follower is not forwarded again.
	req, _ := http.NewRequest("PUT", via.url+"/v1/snapshot", bytes.NewReader(archive))
	req.Header.Set("Authorization", "Bearer "+snapWriteTok)
	req.Header.Set(forwardedHeader, "n9")
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("twice-forwarded restore: %v %v", resp, err)
	} else {
		resp.Body.Close()
	}
	if code, body := via.request(t, "PUT", "/v1/snapshot", snapReadTok, bytes.NewReader(archive)); code != http.StatusForbidden {
		t.Fatalf("restore with a read token: %d %s", code, body)
	}
	for _, nd := range b {
		_, kept := readAt(t, nd.Node, Linearizable, "b-only")
		_, got := readAt(t, nd.Node, Linearizable, "k01")
		if !kept || got {
			t.Fatalf("%s changed after refused restores: b-only %v, k01 %v", nd.ID(), kept, got)
		}
	}

	code, resp := via.request(t, "PUT", "/v1/snapshot", snapWriteTok, bytes.NewReader(archive))
	if code != http.StatusOK {
		t.Fatalf("restore through follower %s: %d %s", via.ID(), code, resp)
	}
	var info RestoreInfo
	if err := json.Unmarshal(resp, &info); err != nil {
		t.Fatal(err)
	}
	if info.Index != sum.Meta.Index || info.Size != sum.Meta.Size || info.Node == via.ID() {
		t.Fatalf("restore answer %+v for meta %+v", info, sum.Meta)
	}
	for _, nd := range b {
		for k, v := range want {
			if got, ok := readAt(t, nd.Node, Linearizable, k); !ok || got != v {
				t.Fatalf("%s after restore: %s = %q, %v; want %q", nd.ID(), k, got, ok, v)
			}
		}
		if _, ok := readAt(t, nd.Node, Linearizable, "b-only"); ok {
			t.Fatalf("%s still has b-only after the restore", nd.ID())
		}
		if _, ok := nd.FSM().Session("sess-1"); !ok {
			t.Fatalf("%s lacks the restored session", nd.ID())
		}
		if idx := nd.FSM().LastIndex(); idx < before[nd.ID()] || idx < info.RestoredIndex {
			t.Fatalf("%s index went from %d to %d (restored at %d)", nd.ID(), before[nd.ID()], idx, info.RestoredIndex)
		}
	}
	if e, ok := b[1].FSM().CacheGet("k00", 0); !ok || e.ExpiresAt != far {
		t.Fatalf("TTL lost: %+v", e)
	}
	// Writes go on, with versions above every restored one.
	res := set(t, via.Node, "after", "y")
	if res.Version <= info.RestoredIndex {
		t.Fatalf("write after restore got version %d, restored index %d", res.Version, info.RestoredIndex)
	}
	// The restored replicas agree, and with the source on what they
	// restored (the registry follows each cluster's own nodes).
	waitFor(t, 10*time.Second, func() error {
		h0, _ := b[0].FSM().Hash()
		for _, nd := range b[1:] {
			if h, _ := nd.FSM().Hash(); h != h0 {
				return fmt.Errorf("%s differs from %s", nd.ID(), b[0].ID())
			}
		}
		return nil
	})
	// The registry came from A; the leader puts B's own addresses back.
	waitFor(t, 10*time.Second, func() error {
		for _, nd := range b {
			reg, ok := b[0].FSM().Node(nd.ID())
			if !ok || reg.RPCAddr != nd.RPCAddr() || reg.HTTPAddr != nd.cfg.HTTPAdvertiseAddr {
				return fmt.Errorf("registry entry of %s: %+v", nd.ID(), reg)
			}
		}
		return nil
	})
	if left, _ := filepath.Glob(filepath.Join(via.cfg.DataDir, restoreSpoolPrefix+"*")); len(left) > 0 {
		t.Fatalf("spool files left: %v", left)
	}
	for _, nd := range b {
		if left, _ := filepath.Glob(filepath.Join(nd.cfg.DataDir, restoreSpoolPrefix+"*")); len(left) > 0 {
			t.Fatalf("spool files left on %s: %v", nd.ID(), left)
		}
	}
}

func TestRestoreSpoolsRemovedAtStart(t *testing.T) {
	nd := newTestCluster(t, 1)[0]
	// Shutting down before the leader loop's barrier returned can hang
	// (the barrier's future is never answered): let it finish first.
	waitFor(t, 10*time.Second, func() error {
		if !nd.leaderReady() {
			return errors.New("leader loop not past its barrier")
		}
		return nil
	})
	p := filepath.Join(nd.cfg.DataDir, restoreSpoolPrefix+"123.tmp")
	if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	NewAPI(nd, APIConfig{})
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("leftover spool file still there: %v", err)
	}
}
