package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// restoredKinds are the snapshot records a restore must carry over as
// they are. The node registry ("node") holds each cluster's own addresses,
// the header its own index, and "dedupe" the request ids of its own
// recent writes: those differ between clusters by design.
var restoredKinds = []string{"provider", "tool", "assignment", "session", "cache"}

// inspect runs `mcpcluster snapshot inspect --json` on file.
func inspect(t *testing.T, file string) cluster.SnapshotSummary {
	t.Helper()
	code, out, stderr := runCLI(t, "snapshot", "inspect", "--json", file)
	if code != 0 {
		t.Fatalf("snapshot inspect %s: exit %d: %s", file, code, stderr)
	}
	var sum cluster.SnapshotSummary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("snapshot inspect --json: %v: %s", err, out)
	}
	return sum
}

// sections maps each record kind of a summary to "count sha256".
func sections(sum cluster.SnapshotSummary) map[string]string {
	out := map[string]string{}
	for _, r := range sum.Records {
		out[r.Kind] = fmt.Sprintf("%d %s", r.Count, r.SHA256)
	}
	return out
}

// followerOf returns a node of c that does not lead.
func (c *testCluster) followerOf(leader string) *node {
	c.t.Helper()
	for _, nd := range c.nodes {
		if nd.id != leader {
			return nd
		}
	}
	c.t.Fatal("no follower")
	return nil
}

// fsmHashes returns each node's /v1/fsm/hash.
func (c *testCluster) fsmHashes() map[string]string {
	c.t.Helper()
	out := map[string]string{}
	for _, nd := range c.nodes {
		code, body, err := nd.do(context.Background(), http.MethodGet, "/v1/fsm/hash", "")
		var h struct{ Hash string }
		if err != nil || code != http.StatusOK || json.Unmarshal([]byte(body), &h) != nil {
			c.t.Fatalf("fsm hash of %s: %d %s %v", nd.id, code, body, err)
		}
		out[nd.id] = h.Hash
	}
	return out
}

// settled waits until every node of c reports the same FSM hash, and the
// same for a while (a new cluster places providers and publishes tools
// for a moment after it is stable), and returns the hashes.
func (c *testCluster) settled(timeout time.Duration) map[string]string {
	c.t.Helper()
	var last map[string]string
	same := 0
	waitFor(c.t, timeout, func() error {
		h := c.fsmHashes()
		for _, v := range h {
			if v != h[c.nodes[0].id] {
				same, last = 0, nil
				return fmt.Errorf("nodes disagree: %v", h)
			}
		}
		if !maps.Equal(h, last) {
			same, last = 0, h
			return errors.New("state still changing")
		}
		if same++; same < 20 {
			return errors.New("state not quiet for long enough yet")
		}
		return nil
	})
	return last
}

// tamper rewrites the archive at src with one byte of its state changed
// and the checksums left as they were.
func tamper(t *testing.T, src []byte) []byte {
	t.Helper()
	gz, err := gzip.NewReader(bytes.NewReader(src))
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(gz)
	var out bytes.Buffer
	gw := gzip.NewWriter(&out)
	tw := tar.NewWriter(gw)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(tr)
		if hdr.Name == "state.bin" {
			changed := bytes.Replace(body, []byte(`"key":"snap-01"`), []byte(`"key":"snap-0X"`), 1)
			if bytes.Equal(changed, body) {
				t.Fatal("tampering changed nothing")
			}
			body = changed
		}
		tw.WriteHeader(hdr)
		tw.Write(body)
	}
	tw.Close()
	gw.Close()
	return out.Bytes()
}

// TestSnapshotSaveRestore saves cluster A through a follower with
// `mcpcluster snapshot save`, refuses damaged archives on cluster B, then
// restores A's snapshot into B through a follower: every cache entry, the
// MCP session and the assignment are there on every node of B, and what a
// restore carries is identical in A's snapshot and a snapshot of B.
func TestSnapshotSaveRestore(t *testing.T) {
	a := newProviderCluster(t, 3, pinnedProvider)
	leaderA := a.waitStable(30*time.Second, a.nodes, a.ids()...)
	holdersA := a.nodes[0].holders(t, "pinned_echo", 1)

	want := map[string]string{}
	for i := range 12 {
		key, value := fmt.Sprintf("snap-%02d", i), fmt.Sprintf("value %d", i)
		path := "/v1/cache/" + key
		if i%2 == 0 {
			path += "?ttl=240h" // expires long after the test
		}
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		code, body, err := a.nodes[i%3].do(ctx, http.MethodPut, path, value)
		cancel()
		if err != nil || code != http.StatusOK {
			t.Fatalf("put %s: %d %s %v", key, code, body, err)
		}
		want[key] = value
	}
	cl := mcpgoClient(t, a.nodes[2].mcpURL(), legacy)
	sid := cl.GetSessionId()
	if sid == "" {
		t.Fatal("no session id issued")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if _, _, err := callTool(ctx, cl, "pinned_echo", map[string]any{"text": "before the snapshot"}); err != nil {
		t.Fatal(err)
	}
	// The session reaches the replicated state with its node's next flush.
	waitFor(t, 10*time.Second, func() error {
		for _, nd := range a.nodes {
			if st, err := nd.status(); err != nil || st.FSM.Sessions != 1 {
				return fmt.Errorf("%s: %+v %v", nd.id, st.FSM, err)
			}
		}
		return nil
	})

	dir := t.TempDir()
	file := filepath.Join(dir, "a.snap")
	viaA := a.followerOf(leaderA)
	code, out, stderr := runCLI(t, "snapshot", "save", "--http-addr", viaA.http, file)
	if code != 0 || !strings.Contains(out, "index") {
		t.Fatalf("snapshot save through follower %s: exit %d: %s%s", viaA.id, code, out, stderr)
	}
	t.Logf("save: %s", strings.TrimSpace(out))
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("snapshot file: %v %v", fi.Mode(), err)
	}
	sumA := inspect(t, file)
	secA := sections(sumA)
	if sumA.Meta.Node != viaA.id || /* builtin (everywhere) and pinned */ !strings.HasPrefix(secA["cache"], "12 ") || !strings.HasPrefix(secA["session"], "1 ") || !strings.HasPrefix(secA["assignment"], "2 ") {
		t.Fatalf("snapshot of A: meta %+v, records %v", sumA.Meta, secA)
	}
	archive, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}

	// Cluster B: same node ids, its own ports, data and one key of its own.
	b := newProviderCluster(t, 3, pinnedProvider)
	leaderB := b.waitStable(30*time.Second, b.nodes, b.ids()...)
	b.nodes[0].mustPut("b-only", "mine")
	viaB := b.followerOf(leaderB)
	b.nodes[0].holders(t, "pinned_echo", 1)
	before := b.settled(30 * time.Second)

	// Damaged archives change nothing: the CLI refuses a tampered file
	// before sending it, the node (through the follower, forwarded to the
	// leader) refuses tampered and truncated uploads with 400.
	bad := filepath.Join(dir, "tampered.snap")
	tampered := tamper(t, archive)
	if err := os.WriteFile(bad, tampered, 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, stderr = runCLI(t, "snapshot", "restore", "--http-addr", viaB.http, bad)
	if code != 1 || !strings.Contains(stderr, "checksum mismatch") || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("restore of a tampered archive: exit %d: %q", code, stderr)
	}
	for name, body := range map[string][]byte{"tampered": tampered, "truncated": archive[:len(archive)*2/3]} {
		code, answer, err := viaB.do(ctx, http.MethodPut, "/v1/snapshot", string(body))
		if err != nil || code != http.StatusBadRequest || !strings.Contains(answer, "nothing was restored") {
			t.Fatalf("PUT of a %s archive through %s: %d %s %v", name, viaB.id, code, answer, err)
		}
	}
	if after := b.fsmHashes(); !maps.Equal(before, after) {
		t.Fatalf("B's state changed after refused restores: %v -> %v", before, after)
	}

	// The restore, through a follower.
	code, out, stderr = runCLI(t, "snapshot", "restore", "--http-addr", viaB.http, file)
	if code != 0 || !strings.Contains(out, "through leader "+leaderB) {
		t.Fatalf("snapshot restore through follower %s: exit %d: %s%s", viaB.id, code, out, stderr)
	}
	t.Logf("restore: %s", strings.TrimSpace(out))

	// What a restore carries is the same in A's snapshot and in B's now.
	fileB := filepath.Join(dir, "b.snap")
	waitFor(t, 20*time.Second, func() error {
		if code, out, stderr := runCLI(t, "snapshot", "save", "--http-addr", b.followerOf(leaderB).http, fileB); code != 0 {
			return fmt.Errorf("save B: exit %d: %s%s", code, out, stderr)
		}
		secB := sections(inspect(t, fileB))
		for _, kind := range restoredKinds {
			if secA[kind] != secB[kind] {
				return fmt.Errorf("%s records: A %q, B %q", kind, secA[kind], secB[kind])
			}
		}
		return nil
	})

	// Every cache entry on every node of B (linearizable), B's own key gone.
	for _, nd := range b.nodes {
		for k, v := range want {
			code, body, err := nd.get(ctx, k, "linearizable")
			if err != nil || code != http.StatusOK || body != v {
				t.Fatalf("%s on %s after restore: %d %q %v, want %q", k, nd.id, code, body, err, v)
			}
		}
		if code, body, _ := nd.get(ctx, "b-only", "linearizable"); code != http.StatusNotFound {
			t.Fatalf("b-only on %s after restore: %d %s", nd.id, code, body)
		}
	}
	// The assignment is A's, and B's catalog follows it.
	for _, nd := range b.nodes {
		if got := nd.holders(t, "pinned_echo", 1); !slices.Equal(got, holdersA) {
			t.Fatalf("pinned_echo holders on %s: %v, A had %v", nd.id, got, holdersA)
		}
	}
	// A's MCP session is accepted by every node of B; a made-up one is not.
	call := `{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"pinned_echo","arguments":{"text":"restored"}}}`
	for _, nd := range b.nodes {
		waitFor(t, 20*time.Second, func() error {
			if code, body := rawMCP(t, nd, http.MethodPost, sid, "application/json", call); code != http.StatusOK || !strings.Contains(body, "restored") {
				return fmt.Errorf("session %s on %s: %d %s", sid, nd.id, code, body)
			}
			return nil
		})
	}
	if code, body := rawMCP(t, b.nodes[0], http.MethodPost, "no-such-session-0123456789", "application/json", call); code != http.StatusNotFound {
		t.Fatalf("unknown session on %s: %d %s", b.nodes[0].id, code, body)
	}
	// And B goes on: a write through a follower, read on every node.
	viaB.mustPut("after-restore", "yes")
	for _, nd := range b.nodes {
		if code, body, err := nd.get(ctx, "after-restore", "linearizable"); err != nil || code != http.StatusOK || body != "yes" {
			t.Fatalf("after-restore on %s: %d %q %v", nd.id, code, body, err)
		}
	}
	b.waitStable(30*time.Second, b.nodes, b.ids()...)
}
