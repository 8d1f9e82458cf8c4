package cluster

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/fsm"
)

// Snapshot archives: a gzipped tar of
//
//	meta.json   the raft snapshot's metadata (SnapshotMeta)
//	state.bin   the FSM's snapshot stream, exactly as raft stores it
//	SHA256SUMS  "<hex>  meta.json" and "<hex>  state.bin", sha256sum's format
//
// in that order and nothing else. Every reader checks the whole archive
// (gzip CRC, tar framing, sizes, both checksums) before it trusts any of it.
const (
	snapshotArchiveFormat = 1
	archiveMetaName       = "meta.json"
	archiveStateName      = "state.bin"
	archiveSumsName       = "SHA256SUMS"

	// maxArchiveMeta and maxArchiveSums bound the small archive members.
	maxArchiveMeta = 1 << 20
	maxArchiveSums = 4 << 10
)

// MaxSnapshotBytes bounds a snapshot restore: the archive uploaded, and
// the state it holds once decompressed (the cache, the largest part, is
// bounded far below this by its own limits).
const MaxSnapshotBytes int64 = 4 << 30

// ErrBadSnapshot is returned for an archive that is not a complete,
// unaltered snapshot archive: truncated, tampered with, or not one at all.
var ErrBadSnapshot = errors.New("invalid snapshot archive")

// SnapshotMeta is the meta.json of a snapshot archive: the raft snapshot's
// metadata, and where and when it was taken.
type SnapshotMeta struct {
	Format  int                  `json:"format"`
	ID      string               `json:"id"`
	Version raft.SnapshotVersion `json:"version"`
	Index   uint64               `json:"index"`
	Term    uint64               `json:"term"`
	// Size is the size of state.bin in bytes.
	Size int64 `json:"size"`
	// ConfigurationIndex and Servers are the raft configuration of the
	// cluster the snapshot came from, for the record: a restore keeps the
	// configuration of the cluster it restores into.
	ConfigurationIndex uint64       `json:"configuration_index"`
	Servers            []ServerInfo `json:"servers"`
	Node               string       `json:"node"`
	CreatedAt          time.Time    `json:"created_at"`
}

// writeSnapshotArchive streams a snapshot archive of the raft snapshot
// (meta, state) to w. state must hold exactly meta.Size bytes.
func writeSnapshotArchive(w io.Writer, node string, meta *raft.SnapshotMeta, state io.Reader) (SnapshotMeta, error) {
	m := SnapshotMeta{
		Format: snapshotArchiveFormat, ID: meta.ID, Version: meta.Version,
		Index: meta.Index, Term: meta.Term, Size: meta.Size,
		ConfigurationIndex: meta.ConfigurationIndex, Servers: []ServerInfo{},
		Node: node, CreatedAt: time.Now().UTC(),
	}
	for _, s := range meta.Configuration.Servers {
		m.Servers = append(m.Servers, ServerInfo{ID: string(s.ID), Address: string(s.Address), Suffrage: s.Suffrage.String()})
	}
	metaJSON, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return m, err
	}
	gz, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		return m, err
	}
	tw := tar.NewWriter(gz)
	header := func(name string, size int64) error {
		return tw.WriteHeader(&tar.Header{Name: name, Mode: 0o600, Size: size, ModTime: m.CreatedAt.Truncate(time.Second), Typeflag: tar.TypeReg})
	}
	metaSum := sha256.Sum256(metaJSON)
	if err := header(archiveMetaName, int64(len(metaJSON))); err != nil {
		return m, err
	}
	if _, err := tw.Write(metaJSON); err != nil {
		return m, err
	}
	if err := header(archiveStateName, meta.Size); err != nil {
		return m, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tw, h), io.LimitReader(state, meta.Size))
	if err != nil {
		return m, fmt.Errorf("copy state: %w", err)
	}
	if n != meta.Size {
		return m, fmt.Errorf("copy state: snapshot has %d bytes, its metadata says %d", n, meta.Size)
	}
	sums := fmt.Sprintf("%x  %s\n%x  %s\n", metaSum, archiveMetaName, h.Sum(nil), archiveStateName)
	if err := header(archiveSumsName, int64(len(sums))); err != nil {
		return m, err
	}
	if _, err := io.WriteString(tw, sums); err != nil {
		return m, err
	}
	if err := tw.Close(); err != nil {
		return m, err
	}
	return m, gz.Close()
}

// errWriter remembers the first error of the writer it wraps, to tell the
// destination's failures (disk full) from the archive's.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	n, err := e.w.Write(p)
	if err != nil && e.err == nil {
		e.err = err
	}
	return n, err
}

// ReadSnapshotArchive reads a snapshot archive from r, writes its state to
// state and returns its metadata once the whole archive has been checked.
// state receives the bytes before the checksums are known: on error,
// whatever it got must be thrown away. Errors about the archive itself wrap
// ErrBadSnapshot (and the reader's own error, such as an
// *http.MaxBytesError); an error of state does not.
func ReadSnapshotArchive(r io.Reader, state io.Writer, maxState int64) (SnapshotMeta, error) {
	var m SnapshotMeta
	bad := func(format string, args ...any) (SnapshotMeta, error) {
		return SnapshotMeta{}, fmt.Errorf("%w: "+format, append([]any{ErrBadSnapshot}, args...)...)
	}
	gz, err := gzip.NewReader(r)
	if err != nil {
		return bad("not a gzip stream: %w", err)
	}
	tr := tar.NewReader(gz)
	next := func(name string, max int64) (*tar.Header, error) {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: %s is missing", ErrBadSnapshot, name)
		}
		if err != nil {
			return nil, fmt.Errorf("%w: read %s header: %w", ErrBadSnapshot, name, err)
		}
		if hdr.Name != name || hdr.Typeflag != tar.TypeReg {
			return nil, fmt.Errorf("%w: found %q where %s belongs", ErrBadSnapshot, hdr.Name, name)
		}
		if hdr.Size < 0 || hdr.Size > max {
			return nil, fmt.Errorf("%w: %s is %d bytes, more than the %d allowed", ErrBadSnapshot, name, hdr.Size, max)
		}
		return hdr, nil
	}

	hdr, err := next(archiveMetaName, maxArchiveMeta)
	if err != nil {
		return m, err
	}
	metaJSON := make([]byte, hdr.Size)
	if _, err := io.ReadFull(tr, metaJSON); err != nil {
		return bad("read %s: %w", archiveMetaName, err)
	}
	dec := json.NewDecoder(bytes.NewReader(metaJSON))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return bad("decode %s: %w", archiveMetaName, err)
	}
	switch {
	case m.Format != snapshotArchiveFormat:
		return bad("archive format %d is not %d", m.Format, snapshotArchiveFormat)
	case m.Version < raft.SnapshotVersionMin || m.Version > raft.SnapshotVersionMax:
		return bad("raft snapshot version %d is not supported", m.Version)
	case m.Size < 0 || m.Size > maxState:
		return bad("state of %d bytes is more than the %d allowed", m.Size, maxState)
	}

	if hdr, err = next(archiveStateName, maxState); err != nil {
		return SnapshotMeta{}, err
	}
	if hdr.Size != m.Size {
		return bad("%s is %d bytes, %s says %d", archiveStateName, hdr.Size, archiveMetaName, m.Size)
	}
	stateSum := sha256.New()
	ew := &errWriter{w: state}
	n, err := io.Copy(io.MultiWriter(ew, stateSum), tr)
	if ew.err != nil {
		return SnapshotMeta{}, fmt.Errorf("write state: %w", ew.err)
	}
	if err != nil {
		return bad("read %s: %w", archiveStateName, err)
	}
	if n != m.Size {
		return bad("%s ends after %d of %d bytes", archiveStateName, n, m.Size)
	}

	if hdr, err = next(archiveSumsName, maxArchiveSums); err != nil {
		return SnapshotMeta{}, err
	}
	sums := make([]byte, hdr.Size)
	if _, err := io.ReadFull(tr, sums); err != nil {
		return bad("read %s: %w", archiveSumsName, err)
	}
	want, err := parseSums(sums)
	if err != nil {
		return SnapshotMeta{}, err
	}
	for name, h := range map[string]hash.Hash{archiveMetaName: sha256Of(metaJSON), archiveStateName: stateSum} {
		if got := hex.EncodeToString(h.Sum(nil)); got != want[name] {
			return bad("%s checksum mismatch: the archive is corrupt or was altered", name)
		}
	}

	if hdr, err := tr.Next(); !errors.Is(err, io.EOF) {
		if err != nil {
			return bad("after %s: %w", archiveSumsName, err)
		}
		return bad("unexpected member %q after %s", hdr.Name, archiveSumsName)
	}
	// The rest of the gzip stream (tar's end padding) must be zeros; reading
	// it to the end checks gzip's CRC and length.
	var buf [4096]byte
	for {
		k, err := gz.Read(buf[:])
		if !allZero(buf[:k]) {
			return bad("trailing data after the archive")
		}
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return bad("end of archive: %w", err)
		}
	}
	return m, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func sha256Of(b []byte) hash.Hash {
	h := sha256.New()
	h.Write(b)
	return h
}

// parseSums parses SHA256SUMS: exactly one "<hex>  <name>" line for each
// of meta.json and state.bin.
func parseSums(b []byte) (map[string]string, error) {
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		sum, name, ok := strings.Cut(line, "  ")
		if !ok || len(sum) != 2*sha256.Size || (name != archiveMetaName && name != archiveStateName) || out[name] != "" {
			return nil, fmt.Errorf("%w: malformed %s line %q", ErrBadSnapshot, archiveSumsName, line)
		}
		out[name] = strings.ToLower(sum)
	}
	if len(out) != 2 {
		return nil, fmt.Errorf("%w: %s lacks a checksum", ErrBadSnapshot, archiveSumsName)
	}
	return out, nil
}

// RecordStats describes the records of one kind in a snapshot's state.
type RecordStats struct {
	Kind  string `json:"kind"`
	Count int    `json:"count"`
	Bytes int64  `json:"bytes"`
	// SHA256 is the hex sha256 of these records' encoding, in stream
	// order: two snapshots hold the same records of a kind when it matches.
	SHA256 string `json:"sha256"`
}

// SnapshotSummary is what InspectSnapshot finds in an archive.
type SnapshotSummary struct {
	Meta    SnapshotMeta  `json:"meta"`
	Records []RecordStats `json:"records"`
}

// InspectSnapshot checks a snapshot archive and summarizes its state by
// record kind (nodes, providers, tools, assignments, sessions, cache, ...):
// the FSM writes one JSON record per line, each with a "kind".
func InspectSnapshot(r io.Reader) (SnapshotSummary, error) {
	sc := &recordScanner{hashes: map[string]hash.Hash{}, stats: map[string]*RecordStats{}}
	meta, err := ReadSnapshotArchive(r, sc, MaxSnapshotBytes)
	if err != nil {
		return SnapshotSummary{}, err
	}
	sc.flush()
	out := SnapshotSummary{Meta: meta}
	for _, kind := range sc.order {
		st := sc.stats[kind]
		st.SHA256 = hex.EncodeToString(sc.hashes[kind].Sum(nil))
		out.Records = append(out.Records, *st)
	}
	return out, nil
}

// recordScanner is an io.Writer that splits the state into lines and
// counts and hashes them by kind.
type recordScanner struct {
	line   []byte
	order  []string
	stats  map[string]*RecordStats
	hashes map[string]hash.Hash
}

func (s *recordScanner) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			s.line = append(s.line, p...)
			break
		}
		s.line = append(s.line, p[:i+1]...)
		s.record(s.line)
		s.line = s.line[:0]
		p = p[i+1:]
	}
	return n, nil
}

func (s *recordScanner) flush() {
	if len(s.line) > 0 {
		s.record(s.line)
		s.line = nil
	}
}

func (s *recordScanner) record(line []byte) {
	var r struct {
		Kind string `json:"kind"`
	}
	if json.Unmarshal(line, &r) != nil || r.Kind == "" {
		r.Kind = "(undecodable)"
	}
	st, ok := s.stats[r.Kind]
	if !ok {
		st = &RecordStats{Kind: r.Kind}
		s.stats[r.Kind], s.hashes[r.Kind] = st, sha256.New()
		s.order = append(s.order, r.Kind)
	}
	st.Count++
	st.Bytes += int64(len(line))
	s.hashes[r.Kind].Write(line)
}

// openSnapshot takes a raft snapshot that holds every write acknowledged
// before the call (a linearizable read barrier first) and opens it.
func (n *Node) openSnapshot(ctx context.Context) (*raft.SnapshotMeta, io.ReadCloser, error) {
	if _, err := n.ReadBarrier(ctx, Linearizable); err != nil {
		return nil, nil, fmt.Errorf("snapshot: %w", err)
	}
	f := n.raft.Snapshot()
	if err := f.Error(); err != nil {
		return nil, nil, fmt.Errorf("snapshot: %w", err)
	}
	meta, rc, err := f.Open()
	if err != nil {
		return nil, nil, fmt.Errorf("open snapshot: %w", err)
	}
	return meta, rc, nil
}

// SaveSnapshot writes a snapshot archive of the replicated state to w: it
// holds every write acknowledged before the call. The state streams from
// the raft snapshot on disk, never whole in memory.
func (n *Node) SaveSnapshot(ctx context.Context, w io.Writer) (SnapshotMeta, error) {
	meta, rc, err := n.openSnapshot(ctx)
	if err != nil {
		return SnapshotMeta{}, err
	}
	defer rc.Close()
	m, err := writeSnapshotArchive(w, n.id, meta, rc)
	if err != nil {
		return SnapshotMeta{}, fmt.Errorf("write snapshot archive: %w", err)
	}
	return m, nil
}

// RestoreInfo is the answer of a snapshot restore.
type RestoreInfo struct {
	// Node is the leader that restored the snapshot.
	Node string `json:"node"`
	// Index, Term and Size are the archive's: the snapshot's raft index
	// and term in the cluster it came from, and the state's size.
	Index uint64 `json:"index"`
	Term  uint64 `json:"term"`
	Size  int64  `json:"size"`
	// RestoredIndex is the index the restored state has in this cluster.
	RestoredIndex uint64        `json:"restored_index"`
	Duration      time.Duration `json:"duration_ns"`
}

// restoreIndexGap is how far past the leader's last log index a restored
// state's index is put. The FSM's index is what reads wait for, so it must
// not move backwards on any node; entries appended between reading the
// last index and raft taking the restore (a few batches at most) must stay
// below it.
const restoreIndexGap = 1 << 20

// restoreSpoolPrefix names the temporary files a restore spools archives
// to, in the data dir.
const restoreSpoolPrefix = "snapshot-restore-"

// RestoreSnapshot replaces the replicated state with the snapshot archive
// read from archive, on every node. It runs on the leader only. The archive
// is spooled to a file in the data dir while it is checked, its state is
// decoded once to make sure the FSM will take it, and only then is it
// handed to raft, which keeps this cluster's configuration and sends the
// state to every follower. A bad archive wraps ErrBadSnapshot and changes
// nothing.
func (n *Node) RestoreSnapshot(ctx context.Context, archive io.Reader) (RestoreInfo, error) {
	start := time.Now()
	if !n.IsLeader() {
		return RestoreInfo{}, fmt.Errorf("restore snapshot: %w", raft.ErrNotLeader)
	}
	f, err := os.CreateTemp(n.cfg.DataDir, restoreSpoolPrefix+"*.tmp")
	if err != nil {
		return RestoreInfo{}, fmt.Errorf("restore snapshot: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	meta, err := ReadSnapshotArchive(archive, f, MaxSnapshotBytes)
	if err != nil {
		return RestoreInfo{}, fmt.Errorf("restore snapshot: %w", err)
	}
	// Nothing unvalidated reaches raft: a state the FSM refuses would make
	// raft panic on every node that restores it.
	if err := fsm.New().Restore(io.NopCloser(io.NewSectionReader(f, 0, meta.Size))); err != nil {
		return RestoreInfo{}, fmt.Errorf("restore snapshot: %w: %w", ErrBadSnapshot, err)
	}
	if err := ctx.Err(); err != nil {
		return RestoreInfo{}, fmt.Errorf("restore snapshot: %w", err)
	}
	index := max(meta.Index, n.raft.LastIndex()) + restoreIndexGap
	state, delta, err := fsm.ReindexSnapshot(io.NewSectionReader(f, 0, meta.Size), index)
	if err != nil {
		return RestoreInfo{}, fmt.Errorf("restore snapshot: %w: %w", ErrBadSnapshot, err)
	}
	rm := &raft.SnapshotMeta{Version: meta.Version, ID: meta.ID, Index: index, Term: meta.Term, Size: meta.Size + delta}
	n.logger.Warn("restoring snapshot: the replicated state is being replaced", "snapshot", meta.ID,
		"index", meta.Index, "size", meta.Size, "from_node", meta.Node, "restored_index", index)
	if err := n.raft.Restore(rm, state, n.cfg.ApplyTimeout); err != nil {
		return RestoreInfo{}, fmt.Errorf("restore snapshot: %w", err)
	}
	// Registry and placement follow this cluster's members again at once.
	kick(n.reconcileCh)
	info := RestoreInfo{Node: n.id, Index: meta.Index, Term: meta.Term, Size: meta.Size, RestoredIndex: index, Duration: time.Since(start)}
	n.logger.Info("snapshot restored", "snapshot", meta.ID, "restored_index", index, "took", info.Duration.Round(time.Millisecond))
	return info, nil
}

// removeRestoreSpools removes archives a restore left in the data dir
// when the process died in the middle of it.
func (n *Node) removeRestoreSpools() {
	stale, _ := filepath.Glob(filepath.Join(n.cfg.DataDir, restoreSpoolPrefix+"*.tmp"))
	for _, p := range stale {
		if err := os.Remove(p); err == nil {
			n.logger.Info("removed a restore's leftover spool file", "path", p)
		}
	}
}

// forwardedHeader marks a restore a follower forwarded to the leader; it
// is never forwarded twice.
const forwardedHeader = "X-Mcpcluster-Forwarded-By"

// snapshotAPI serves GET and PUT /v1/snapshot.
type snapshotAPI struct {
	a         *API
	n         *Node
	restoring chan struct{} // one restore at a time
	client    *http.Client  // to the leader's HTTP address
}

// snapshotRoutes mounts the snapshot endpoints: both at write level, since
// a snapshot holds every secret of the state (cache values, sessions).
func (a *API) snapshotRoutes() {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil // node to node, never through an environment proxy
	s := &snapshotAPI{a: a, n: a.n, restoring: make(chan struct{}, 1), client: &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
	// No restore can be running yet: whatever a killed one left is garbage.
	a.n.removeRestoreSpools()
	a.handle("GET /v1/snapshot", AccessWrite, s.save)
	a.handle("PUT /v1/snapshot", AccessWrite, s.restore)
}

// save streams a snapshot archive of the state, consistent as of the
// request (linearizable), from whichever node serves it.
func (s *snapshotAPI) save(w http.ResponseWriter, r *http.Request) {
	meta, rc, err := s.n.openSnapshot(r.Context())
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	defer rc.Close()
	w.Header().Set("Content-Type", "application/gzip")
	w.Header().Set("X-Mcpcluster-Node", s.n.id)
	w.Header().Set("X-Mcpcluster-Snapshot-Index", strconv.FormatUint(meta.Index, 10))
	w.WriteHeader(http.StatusOK)
	if _, err := writeSnapshotArchive(w, s.n.id, meta, rc); err != nil {
		// The status is sent: cut the stream so the client sees a failure
		// (and an archive without its checksums), not a clean end.
		s.a.cfg.Logger.Warn("snapshot save aborted", "snapshot", meta.ID, "error", err)
		panic(http.ErrAbortHandler)
	}
}

// restore replaces the state with the uploaded archive. A follower
// forwards the request to the leader (see forward).
func (s *snapshotAPI) restore(w http.ResponseWriter, r *http.Request) {
	if !s.n.IsLeader() {
		s.forward(w, r)
		return
	}
	select {
	case s.restoring <- struct{}{}:
		defer func() { <-s.restoring }()
	default:
		writeError(w, http.StatusConflict, errors.New("a snapshot restore is already running on this node"))
		return
	}
	body := http.MaxBytesReader(w, r.Body, MaxSnapshotBytes)
	info, err := s.n.RestoreSnapshot(r.Context(), body)
	var mbe *http.MaxBytesError
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, info)
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("snapshot archive exceeds the maximum of %d bytes", mbe.Limit))
	case errors.Is(err, ErrBadSnapshot):
		writeError(w, http.StatusBadRequest, fmt.Errorf("%w; nothing was restored", err))
	case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrEnqueueTimeout):
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("%w; try again", err))
	default:
		writeError(w, http.StatusInternalServerError, err)
	}
}

// forward sends a restore that reached a follower on to the leader's HTTP
// address, with the caller's Authorization header, and relays the answer.
//
// It is as sound as the client's own request: the token was already
// checked here at write level, so only an operator's request travels; the
// leader is raft's (known over the mutually authenticated cluster port)
// and its HTTP address is the one it gossips (gossip is encrypted and
// authenticated with the cluster key), the address `mcpcluster status`
// shows; the leader checks the token and the archive itself; and a
// forwarded request is never forwarded again.
func (s *snapshotAPI) forward(w http.ResponseWriter, r *http.Request) {
	if by := r.Header.Get(forwardedHeader); by != "" {
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("snapshot restore forwarded by %s reached %s, which does not lead (leadership moved); try again", by, s.n.id))
		return
	}
	id, _ := s.n.Leader()
	if id == "" {
		writeError(w, http.StatusServiceUnavailable, errors.New("no known leader to restore the snapshot; try again once the cluster has one"))
		return
	}
	m, ok := s.n.members.Member(id)
	if !ok || m.HTTPAddr == "" {
		writeError(w, http.StatusServiceUnavailable, fmt.Errorf("%s does not lead and does not know the HTTP address of the leader %s: restore on the leader", s.n.id, id))
		return
	}
	out, err := http.NewRequestWithContext(r.Context(), http.MethodPut, "http://"+m.HTTPAddr+"/v1/snapshot", http.MaxBytesReader(w, r.Body, MaxSnapshotBytes))
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	out.ContentLength = r.ContentLength
	for _, h := range []string{"Authorization", "Content-Type"} {
		if v := r.Header.Get(h); v != "" {
			out.Header.Set(h, v)
		}
	}
	out.Header.Set(forwardedHeader, s.n.id)
	resp, err := s.client.Do(out)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("snapshot archive exceeds the maximum of %d bytes", mbe.Limit))
			return
		}
		writeError(w, http.StatusBadGateway, fmt.Errorf("forward the restore to the leader %s at %s: %w", id, m.HTTPAddr, err))
		return
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.Header().Set("X-Mcpcluster-Leader", id)
	w.WriteHeader(resp.StatusCode)
	_, _ = io.Copy(w, io.LimitReader(resp.Body, 1<<20))
}
