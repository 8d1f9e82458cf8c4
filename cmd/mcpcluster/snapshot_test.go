package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// makeArchive builds a snapshot archive of state by hand, as the node
// writes them; tamper, if set, changes state after the checksums.
func makeArchive(t *testing.T, state []byte, tamper func([]byte) []byte) []byte {
	t.Helper()
	meta, _ := json.Marshal(cluster.SnapshotMeta{Format: 1, ID: "2-40-1", Version: 1, Index: 40, Term: 2, Size: int64(len(state)),
		Servers: []cluster.ServerInfo{}, Node: "node2", CreatedAt: time.Now().UTC()})
	sums := fmt.Sprintf("%x  meta.json\n%x  state.bin\n", sha256.Sum256(meta), sha256.Sum256(state))
	if tamper != nil {
		state = tamper(bytes.Clone(state))
	}
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, m := range []struct {
		name string
		body []byte
	}{{"meta.json", meta}, {"state.bin", state}, {"SHA256SUMS", []byte(sums)}} {
		tw.WriteHeader(&tar.Header{Name: m.name, Mode: 0o600, Size: int64(len(m.body)), Typeflag: tar.TypeReg})
		tw.Write(m.body)
	}
	tw.Close()
	gz.Close()
	return buf.Bytes()
}

var testState = []byte("{\"kind\":\"header\",\"format\":1,\"index\":40}\n{\"kind\":\"cache\",\"cache\":{\"key\":\"k\",\"value\":\"dg==\",\"version\":3}}\n{\"kind\":\"end\",\"count\":1}\n")

// snapshotNode is a fake node's /v1/snapshot: GET answers archive, PUT
// records the body and answers a RestoreInfo.
type snapshotNode struct {
	mu       sync.Mutex
	archive  []byte
	code     int
	uploaded [][]byte
	auth     []string
	srv      *httptest.Server
}

func newSnapshotNode(t *testing.T, archive []byte, code int) *snapshotNode {
	s := &snapshotNode{archive: archive, code: code}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.auth = append(s.auth, r.Header.Get("Authorization"))
		if r.URL.Path != "/v1/snapshot" {
			http.NotFound(w, r)
			return
		}
		if s.code != http.StatusOK {
			w.WriteHeader(s.code)
			io.WriteString(w, `{"error":"this node says no"}`)
			return
		}
		switch r.Method {
		case http.MethodGet:
			w.Header().Set("Content-Type", "application/gzip")
			w.Write(s.archive)
		case http.MethodPut:
			b, _ := io.ReadAll(r.Body)
			s.uploaded = append(s.uploaded, b)
			json.NewEncoder(w).Encode(cluster.RestoreInfo{Node: "node1", Index: 40, Term: 2, Size: int64(len(testState)), RestoredIndex: 1 << 20})
		}
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *snapshotNode) addr() string { return strings.TrimPrefix(s.srv.URL, "http://") }

func runArgs(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestSnapshotSaveCLI(t *testing.T) {
	archive := makeArchive(t, testState, nil)
	node := newSnapshotNode(t, archive, http.StatusOK)
	dir := t.TempDir()
	file := filepath.Join(dir, "backup.snap")
	code, out, errOut := runArgs("snapshot", "save", "--http-addr", node.addr(), "--token", cliTok, file)
	if code != 0 || !strings.Contains(out, "index 40") || !strings.Contains(out, "term 2") {
		t.Fatalf("save: %d %q %q", code, out, errOut)
	}
	got, err := os.ReadFile(file)
	if err != nil || !bytes.Equal(got, archive) {
		t.Fatalf("saved file differs from what the node sent (%v)", err)
	}
	if fi, _ := os.Stat(file); fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
	if node.auth[0] != "Bearer "+cliTok {
		t.Fatalf("Authorization %q", node.auth[0])
	}

	// A cut transfer leaves the old file as it was and no temporary file.
	node.archive = archive[:len(archive)/2]
	code, _, errOut = runArgs("snapshot", "save", "--http-addr", node.addr(), file)
	if code != 1 || !strings.Contains(errOut, "does not check out") || strings.Count(errOut, "\n") != 1 {
		t.Fatalf("cut transfer: %d %q", code, errOut)
	}
	if got, _ := os.ReadFile(file); !bytes.Equal(got, archive) {
		t.Fatal("a failed save touched the existing file")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Fatalf("files left in %s: %v", dir, ents)
	}

	// The node's refusal, in one line.
	refusing := newSnapshotNode(t, nil, http.StatusForbidden)
	code, _, errOut = runArgs("snapshot", "save", "--http-addr", refusing.addr(), filepath.Join(dir, "other"))
	if code != 1 || !strings.Contains(errOut, "this node says no") || strings.Count(errOut, "\n") != 1 {
		t.Fatalf("refused save: %d %q", code, errOut)
	}
}

func TestSnapshotRestoreCLI(t *testing.T) {
	archive := makeArchive(t, testState, nil)
	node := newSnapshotNode(t, nil, http.StatusOK)
	dir := t.TempDir()
	good := filepath.Join(dir, "good.snap")
	os.WriteFile(good, archive, 0o600)
	code, out, errOut := runArgs("snapshot", "restore", good, "--http-addr", node.addr(), "--token", cliTok)
	if code != 0 || !strings.Contains(out, "leader node1") || !strings.Contains(out, "index 1048576") {
		t.Fatalf("restore: %d %q %q", code, out, errOut)
	}
	if len(node.uploaded) != 1 || !bytes.Equal(node.uploaded[0], archive) || node.auth[0] != "Bearer "+cliTok {
		t.Fatalf("uploaded %d archives, auth %v", len(node.uploaded), node.auth)
	}

	// A tampered file is refused before anything is sent.
	bad := filepath.Join(dir, "bad.snap")
	os.WriteFile(bad, makeArchive(t, testState, func(b []byte) []byte { b[50] ^= 1; return b }), 0o600)
	code, _, errOut = runArgs("snapshot", "restore", "--http-addr", node.addr(), bad)
	if code != 1 || !strings.Contains(errOut, "checksum mismatch") || !strings.Contains(errOut, "nothing was sent") {
		t.Fatalf("tampered restore: %d %q", code, errOut)
	}
	if len(node.uploaded) != 1 {
		t.Fatal("a tampered archive was uploaded")
	}

	refusing := newSnapshotNode(t, nil, http.StatusBadRequest)
	code, _, errOut = runArgs("snapshot", "restore", "--http-addr", refusing.addr(), good)
	if code != 1 || !strings.Contains(errOut, "this node says no") {
		t.Fatalf("refused restore: %d %q", code, errOut)
	}
}

func TestSnapshotInspectCLI(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "s.snap")
	os.WriteFile(file, makeArchive(t, testState, nil), 0o600)
	code, out, errOut := runArgs("snapshot", "inspect", file)
	if code != 0 || !strings.Contains(out, "Index      40") || !strings.Contains(out, "cache") || !strings.Contains(out, "Checksums  OK") {
		t.Fatalf("inspect: %d\n%s%s", code, out, errOut)
	}
	code, out, _ = runArgs("snapshot", "inspect", "--json", file)
	var sum cluster.SnapshotSummary
	if code != 0 || json.Unmarshal([]byte(out), &sum) != nil || sum.Meta.Index != 40 || len(sum.Records) != 3 {
		t.Fatalf("inspect --json: %d %s", code, out)
	}
	os.WriteFile(file, makeArchive(t, testState, func(b []byte) []byte { return b[:len(b)-1] }), 0o600)
	if code, _, errOut := runArgs("snapshot", "inspect", file); code != 1 || !strings.Contains(errOut, "invalid snapshot archive") {
		t.Fatalf("inspect of a bad archive: %d %q", code, errOut)
	}
}

func TestSnapshotUsage(t *testing.T) {
	for _, args := range [][]string{
		{"snapshot"}, {"snapshot", "bogus"}, {"snapshot", "--json"},
		{"snapshot", "save"}, {"snapshot", "save", "a", "b"}, {"snapshot", "restore"},
		{"snapshot", "inspect"}, {"snapshot", "save", "--no-such-flag", "f"},
		{"snapshot", "save", "--http-addr", "nope", "f"},
	} {
		if code, _, errOut := runArgs(args...); code != 2 || errOut == "" {
			t.Errorf("%v: exit %d %q, want 2", args, code, errOut)
		}
	}
	if code, out, _ := runArgs("snapshot", "help"); code != 0 || !strings.Contains(out, "snapshot <save|restore|inspect>") {
		t.Errorf("help: %d %q", code, out)
	}
	if !flagGiven([]string{"--timeout=3s"}, "timeout") || !flagGiven([]string{"f", "-timeout", "3s"}, "timeout") || flagGiven([]string{"--", "-timeout"}, "timeout") {
		t.Error("flagGiven")
	}
}
