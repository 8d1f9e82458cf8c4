package fsm

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"

	"github.com/hashicorp/raft"
)

// Snapshot format: newline-delimited JSON records. A header record, then the
// sections nodes, providers, tools, assignments, the session key, sessions, cache
// (each sorted by key),
// then the dedupe table in FIFO order, then an end record carrying the
// number of data records so truncation is detected.
const snapshotFormat = 1

const (
	kindHeader     = "header"
	kindNode       = "node"
	kindProvider   = "provider"
	kindTool       = "tool"
	kindAssignment = "assignment"
	kindSession    = "session"
	kindSessionKey = "session_key"
	kindCache      = "cache"
	kindDedupe     = "dedupe"
	kindEnd        = "end"
)

// record is one line of the snapshot stream.
type record struct {
	Kind       string      `json:"kind"`
	Format     int         `json:"format,omitempty"` // header
	Index      uint64      `json:"index,omitempty"`  // header: last applied index
	Count      int         `json:"count,omitempty"`  // end: number of data records
	Node       *Node       `json:"node,omitempty"`
	Provider   *Provider   `json:"provider,omitempty"`
	Tool       *Tool       `json:"tool,omitempty"`
	Assignment *Assignment `json:"assignment,omitempty"`
	Session    *Session    `json:"session,omitempty"`
	SessionKey []byte      `json:"session_key,omitempty"`
	Cache      *CacheEntry `json:"cache,omitempty"`
	Dedupe     *dedupeRec  `json:"dedupe,omitempty"`
}

type dedupeRec struct {
	ID     string `json:"id"`
	Now    int64  `json:"now,omitempty"` // the command's stamp
	Result Result `json:"result"`
}

func (r *record) payloads() int {
	n := 0
	for _, set := range []bool{r.Node != nil, r.Provider != nil, r.Tool != nil, r.Assignment != nil,
		r.Session != nil, r.SessionKey != nil, r.Cache != nil, r.Dedupe != nil} {
		if set {
			n++
		}
	}
	return n
}

// clone returns a shallow copy of s that shares no mutable structure with it.
func (s *state) clone() *state {
	c := *s
	c.nodes = maps.Clone(s.nodes)
	c.providers = maps.Clone(s.providers)
	c.tools = maps.Clone(s.tools)
	c.assigns = maps.Clone(s.assigns)
	c.sessions = maps.Clone(s.sessions)
	c.cache = maps.Clone(s.cache)
	c.writes, c.expiry = nil, nil // derived; snapshots don't carry them
	c.dedupe = maps.Clone(s.dedupe)
	c.order = slices.Clone(s.order)
	return &c
}

// snapshot is a point-in-time copy of the state, encoded by Persist.
type snapshot struct{ st *state }

// Snapshot copies the state shallowly under the lock and returns at once;
// the encoding happens in Persist.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return &snapshot{st: f.st.clone()}, nil
}

// Persist streams the snapshot to sink and closes it, or cancels it on error.
func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	w := bufio.NewWriterSize(sink, 64<<10)
	err := s.st.encode(w)
	if err == nil {
		err = w.Flush()
	}
	if err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("persist snapshot: %w", err)
	}
	if err := sink.Close(); err != nil {
		return fmt.Errorf("close snapshot sink: %w", err)
	}
	return nil
}

// Release is a no-op: the snapshot holds only immutable copies.
func (s *snapshot) Release() {}

// Hash returns the hex sha256 of the snapshot encoding of the current state.
func (f *FSM) Hash() (string, error) {
	f.mu.RLock()
	st := f.st.clone()
	f.mu.RUnlock()
	h := sha256.New()
	w := bufio.NewWriterSize(h, 64<<10)
	if err := st.encode(w); err != nil {
		return "", fmt.Errorf("hash state: %w", err)
	}
	if err := w.Flush(); err != nil {
		return "", fmt.Errorf("hash state: %w", err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// encode writes the snapshot encoding of s to w.
func (s *state) encode(w io.Writer) error {
	enc := json.NewEncoder(w)
	err := enc.Encode(&record{Kind: kindHeader, Format: snapshotFormat, Index: s.index})
	n := 0 // data records written
	put := func(r *record) {
		if err == nil {
			n++
			err = enc.Encode(r)
		}
	}
	eachSorted(s.nodes, func(v *Node) { put(&record{Kind: kindNode, Node: v}) })
	eachSorted(s.providers, func(v *Provider) { put(&record{Kind: kindProvider, Provider: v}) })
	eachSorted(s.tools, func(v *Tool) { put(&record{Kind: kindTool, Tool: v}) })
	eachSorted(s.assigns, func(v *Assignment) { put(&record{Kind: kindAssignment, Assignment: v}) })
	if s.sessionKey != nil {
		put(&record{Kind: kindSessionKey, SessionKey: s.sessionKey})
	}
	eachSorted(s.sessions, func(v *Session) { put(&record{Kind: kindSession, Session: v}) })
	eachSorted(s.cache, func(v *CacheEntry) { put(&record{Kind: kindCache, Cache: v}) })
	for _, k := range s.order {
		put(&record{Kind: kindDedupe, Dedupe: &dedupeRec{ID: k.ID, Now: k.Now, Result: s.dedupe[k.ID]}})
	}
	if err != nil {
		return err
	}
	return enc.Encode(&record{Kind: kindEnd, Count: n})
}

// eachSorted calls fn for each value of m in key order.
func eachSorted[V any](m map[string]V, fn func(*V)) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := m[k]
		fn(&v)
	}
}

// Restore replaces the state with the snapshot read from rc, which it
// closes. The stream is fully decoded and validated before the swap, so on
// error the current state is left untouched.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	st, err := decodeState(bufio.NewReaderSize(rc, 64<<10))
	if err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	f.mu.Lock()
	f.st = st
	f.mu.Unlock()
	f.notify()
	return nil
}

func decodeState(r io.Reader) (*state, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var h record
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("read header: %w", err)
	}
	if h.Kind != kindHeader {
		return nil, fmt.Errorf("first record is %q, want %q", h.Kind, kindHeader)
	}
	if h.Format != snapshotFormat {
		return nil, fmt.Errorf("unsupported snapshot format %d", h.Format)
	}
	st := newState()
	st.index = h.Index
	for n := 0; ; n++ {
		var r record
		if err := dec.Decode(&r); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return nil, fmt.Errorf("read record %d: %w", n, err)
		}
		if r.Kind == kindEnd {
			if r.Count != n || r.payloads() != 0 {
				return nil, fmt.Errorf("end record counts %d records, read %d", r.Count, n)
			}
			break
		}
		if err := st.restore(&r); err != nil {
			return nil, fmt.Errorf("record %d (%s): %w", n, r.Kind, err)
		}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("trailing data after end record")
	}
	st.rebuildIndexes()
	return st, nil
}

// restore adds one data record to s, validating it.
func (s *state) restore(r *record) error {
	if r.payloads() != 1 {
		return errors.New("record must carry exactly one payload")
	}
	dup := func(ok bool, key string) error {
		if ok {
			return fmt.Errorf("duplicate key %q", key)
		}
		return nil
	}
	switch r.Kind {
	case kindNode:
		if r.Node == nil || r.Node.ID == "" {
			return errors.New("missing node id")
		}
		_, ok := s.nodes[r.Node.ID]
		s.nodes[r.Node.ID] = *r.Node
		return dup(ok, r.Node.ID)
	case kindProvider:
		if r.Provider == nil {
			return errors.New("missing provider")
		}
		if err := r.Provider.validate(); err != nil {
			return err
		}
		r.Provider.Nodes = nilIfEmpty(r.Provider.Nodes)
		_, ok := s.providers[r.Provider.Name]
		s.providers[r.Provider.Name] = *r.Provider
		return dup(ok, r.Provider.Name)
	case kindTool:
		if r.Tool == nil {
			return errors.New("missing tool")
		}
		if err := r.Tool.validate(); err != nil {
			return err
		}
		r.Tool.normalize()
		_, ok := s.tools[r.Tool.Name]
		s.tools[r.Tool.Name] = *r.Tool
		return dup(ok, r.Tool.Name)
	case kindAssignment:
		if r.Assignment == nil || r.Assignment.Provider == "" {
			return errors.New("missing assignment provider")
		}
		r.Assignment.Holders = nilIfEmpty(r.Assignment.Holders)
		_, ok := s.assigns[r.Assignment.Provider]
		s.assigns[r.Assignment.Provider] = *r.Assignment
		return dup(ok, r.Assignment.Provider)
	case kindSession:
		if r.Session == nil || r.Session.ID == "" {
			return errors.New("missing session id")
		}
		_, ok := s.sessions[r.Session.ID]
		s.sessions[r.Session.ID] = *r.Session
		if r.Session.Deleted() && !ok {
			s.tombstones++
		}
		return dup(ok, r.Session.ID)
	case kindSessionKey:
		if len(r.SessionKey) != SessionKeySize || s.sessionKey != nil {
			return errors.New("invalid or repeated session key")
		}
		s.sessionKey = r.SessionKey
		return nil
	case kindCache:
		e := r.Cache
		if e == nil || e.Key == "" || e.Version == 0 || e.ExpiresAt < 0 {
			return errors.New("invalid cache entry")
		}
		e.Value = nilIfEmpty(e.Value)
		_, ok := s.cache[e.Key]
		if err := dup(ok, e.Key); err != nil {
			return err
		}
		s.cache[e.Key] = *e
		s.cacheBytes += e.size()
		return nil // indexes are rebuilt once every entry is read
	case kindDedupe:
		d := r.Dedupe
		if d == nil || d.ID == "" || d.Result.Duplicate {
			return errors.New("invalid dedupe record")
		}
		if len(s.order) >= dedupeMax {
			return fmt.Errorf("more than %d dedupe records", dedupeMax)
		}
		_, ok := s.dedupe[d.ID]
		if err := dup(ok, d.ID); err != nil {
			return err
		}
		// As they were: the next command's stamp ages them out.
		s.dedupe[d.ID] = d.Result
		s.order = append(s.order, dedupeKey{ID: d.ID, Now: d.Now})
		return nil
	default:
		return fmt.Errorf("unknown record kind %q", r.Kind)
	}
}

// maxHeaderLine bounds the header record's line that ReindexSnapshot reads.
const maxHeaderLine = 4096

// ReindexSnapshot returns the snapshot stream src with its header's index
// replaced by index, and how many bytes longer the result is than src
// (negative when shorter). Only the header line is read here; the rest of
// src streams through the returned reader.
//
// A restore of a snapshot taken elsewhere needs it: the FSM's index is
// what reads wait for (read-index), so it must not move backwards, and the
// index inside the stream is the one of the cluster the snapshot came from.
func ReindexSnapshot(src io.Reader, index uint64) (io.Reader, int64, error) {
	br := bufio.NewReaderSize(src, maxHeaderLine)
	line, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			err = fmt.Errorf("header longer than %d bytes", maxHeaderLine)
		}
		return nil, 0, fmt.Errorf("read snapshot header: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.DisallowUnknownFields()
	var h record
	if err := dec.Decode(&h); err != nil {
		return nil, 0, fmt.Errorf("read snapshot header: %w", err)
	}
	if h.Kind != kindHeader || h.Format != snapshotFormat || h.payloads() != 0 {
		return nil, 0, fmt.Errorf("first record is not a format %d header", snapshotFormat)
	}
	h.Index = index
	var nb bytes.Buffer
	if err := json.NewEncoder(&nb).Encode(&h); err != nil {
		return nil, 0, err
	}
	delta := int64(nb.Len()) - int64(len(line))
	return io.MultiReader(&nb, br), delta, nil
}
