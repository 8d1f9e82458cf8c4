// Package fsm holds mcpcluster's replicated state: the node registry, the tool
// catalog, the tool-assignment map, the MCP session table and the shared cache.
//
// It is pure and deterministic: no network, no wall clock, no randomness.
// Time arrives inside each Command (Command.Now, stamped by the proposer), so
// every replica that applies the same log reaches byte-identical state.
package fsm

import (
	"bytes"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

const (
	// dedupeMax bounds how many request ids the FSM remembers, whatever
	// their age: about 75 MB at most.
	dedupeMax = 1 << 19
	// defaultListLimit is CacheList's limit when the caller passes <= 0.
	defaultListLimit = 100
)

// state is the replicated data. Map values are replaced, never mutated in
// place, so a shallow clone is a consistent snapshot.
type state struct {
	index      uint64
	nodes      map[string]Node
	providers  map[string]Provider
	tools      map[string]Tool
	assigns    map[string]Assignment
	sessions   map[string]Session
	tombstones int    // sessions that are tombstones
	sessionKey []byte // signs session ids; set once
	cache      map[string]CacheEntry
	cacheBytes int64
	writes     []keyVersion // derived: cache writes, oldest first (eviction)
	expiry     expiryHeap   // derived: entries with a TTL by expiry (expiration)
	dedupe     map[string]Result
	order      []dedupeKey // dedupe keys, in log order
}

func newState() *state {
	return &state{
		nodes:     map[string]Node{},
		providers: map[string]Provider{},
		tools:     map[string]Tool{},
		assigns:   map[string]Assignment{},
		sessions:  map[string]Session{},
		cache:     map[string]CacheEntry{},
		dedupe:    map[string]Result{},
	}
}

// FSM is the raft state machine. It implements raft.FSM and raft.BatchingFSM;
// its read methods are safe for concurrent use and return copies.
type FSM struct {
	mu sync.RWMutex
	st *state

	subMu sync.Mutex
	subs  map[chan struct{}]struct{}
}

var _ raft.BatchingFSM = (*FSM)(nil)

// New returns an empty FSM.
func New() *FSM {
	return &FSM{st: newState(), subs: map[chan struct{}]struct{}{}}
}

// Apply applies one log entry. It returns a *Result for raft.LogCommand and
// nil for any other log type. Undecodable data panics: the log is corrupt.
func (f *FSM) Apply(l *raft.Log) interface{} {
	if l.Type != raft.LogCommand {
		return nil
	}
	c := mustDecode(l)
	f.mu.Lock()
	r, changed := f.st.apply(l.Index, c)
	f.mu.Unlock()
	if changed {
		f.notify()
	}
	return r
}

// ApplyBatch applies logs in order under one lock acquisition, with the same
// per-entry results as Apply. Every entry is decoded before any is applied.
func (f *FSM) ApplyBatch(logs []*raft.Log) []interface{} {
	cmds := make([]*Command, len(logs))
	for i, l := range logs {
		if l.Type == raft.LogCommand {
			cmds[i] = mustDecode(l)
		}
	}
	out := make([]interface{}, len(logs))
	changed := false
	f.mu.Lock()
	for i, c := range cmds {
		if c != nil {
			r, ch := f.st.apply(logs[i].Index, c)
			out[i], changed = r, changed || ch
		}
	}
	f.mu.Unlock()
	if changed {
		f.notify()
	}
	return out
}

func mustDecode(l *raft.Log) *Command {
	c, err := Decode(l.Data)
	if err != nil {
		panic(fmt.Sprintf("fsm: corrupt log entry at index %d: %v", l.Index, err))
	}
	return c
}

// apply executes c at log index. It reports whether the catalog or the
// assignments changed.
func (s *state) apply(index uint64, c *Command) (*Result, bool) {
	s.index = index
	if c.RequestID != "" {
		if r, ok := s.dedupe[c.RequestID]; ok {
			r.Duplicate = true
			return &r, false
		}
	}
	r := Result{Index: index}
	changed := false
	switch c.Type {
	case TypeNodeRegister:
		n := *c.Node
		n.RegisteredAt = c.Now
		if old, ok := s.nodes[n.ID]; ok {
			n.RegisteredAt = old.RegisteredAt
		}
		s.nodes[n.ID] = n
	case TypeNodeDeregister:
		changed = s.deregister(c.NodeID, &r)
	case TypeProviders:
		changed = s.setProviders(c.NodeID, c.Providers)
	case TypeCatalogPut:
		changed = s.putCatalog(c.Provider, c.Tools, &r)
	case TypeAssign:
		changed = s.assign(index, *c.Assignment, &r)
	case TypeSessionOpen:
		ss := *c.Session
		ss.CreatedAt, ss.LastSeen = c.Now, c.Now
		if old, ok := s.sessions[ss.ID]; ok && old.Deleted() {
			s.tombstones--
		}
		s.sessions[ss.ID] = ss
	case TypeSessionTouch:
		if ss, ok := s.sessions[c.SessionID]; ok {
			ss.LastSeen = max(ss.LastSeen, c.Now)
			s.sessions[ss.ID] = ss
		} else {
			r.Code = CodeNotFound
		}
	case TypeSessionDelete:
		if len(c.Sessions) > 0 {
			// A batch of tombstones: deleted whether or not their uses
			// reached the state.
			for _, d := range c.Sessions {
				if ss, ok := s.sessions[d.ID]; ok && ss.Deleted() {
					continue
				} else if ok {
					r.Removed++
				}
				s.sessions[d.ID] = Session{ID: d.ID, DeletedUntil: d.DeletedUntil}
				s.tombstones++
			}
			break
		}
		ss, ok := s.sessions[c.SessionID]
		switch {
		case ok && ss.Deleted():
			r.Code = CodeNotFound
		case ok:
			delete(s.sessions, c.SessionID)
			r.Removed = 1
		case c.Until == 0:
			r.Code = CodeNotFound
		}
		if c.Until != 0 && !(ok && ss.Deleted()) {
			// A verifiable id is refused everywhere until its lifetime ends,
			// whether or not its uses reached the state yet.
			s.sessions[c.SessionID] = Session{ID: c.SessionID, DeletedUntil: c.Until}
			s.tombstones++
		}
	case TypeSessionExpire:
		var ids []string
		for id, ss := range s.sessions {
			if ss.due(c.Now, c.IdleTTL, c.Until) {
				ids = append(ids, id)
			}
		}
		for _, id := range firstN(ids, c.Limit) {
			ss := s.sessions[id]
			switch {
			case ss.Deleted():
				s.tombstones--
				delete(s.sessions, id)
			case c.Until > 0 && ss.CreatedAt <= math.MaxInt64-c.Until && ss.CreatedAt+c.Until > c.Now:
				// Its id verifies on every node until its lifetime ends.
				s.sessions[id] = Session{ID: id, DeletedUntil: ss.CreatedAt + c.Until}
				s.tombstones++
				r.Removed++
			default:
				delete(s.sessions, id)
				r.Removed++
			}
		}
	case TypeSessionKey:
		if s.sessionKey != nil {
			r.Code = CodeConflict // the first key stays
			break
		}
		s.sessionKey = slices.Clone(c.Value)
	case TypeSessionUses:
		for _, u := range c.Sessions {
			ss, ok := s.sessions[u.ID]
			switch {
			case ok && ss.Deleted():
				// Deleted: a late use does not bring it back.
			case ok:
				ss.LastSeen = max(ss.LastSeen, u.LastSeen)
				s.sessions[u.ID] = ss
			default:
				s.sessions[u.ID] = u
			}
		}
	case TypeCacheSet:
		if fails, cur := s.casFails(c); fails {
			r.Code, r.Version = CodeCASMismatch, cur
			break
		}
		s.cachePut(CacheEntry{Key: c.Key, Value: c.Value, Version: index, ExpiresAt: c.ExpiresAt})
		r.Version = index
		r.Removed = s.evict(c.MaxEntries, c.MaxBytes, c.Key)
	case TypeCacheDelete:
		fails, cur := s.casFails(c)
		switch {
		case fails:
			r.Code, r.Version = CodeCASMismatch, cur
		case cur == 0:
			r.Code = CodeNotFound
		default:
			s.cacheDelete(c.Key)
			r.Removed = 1
		}
	case TypeCacheExpire:
		r.Removed = s.expire(c.Now, c.Limit)
	}
	if c.RequestID != "" {
		s.remember(c.RequestID, c.Now, r)
	}
	return &r, changed
}

// deregister removes a node and scrubs it from every provider and assignment.
func (s *state) deregister(id string, r *Result) (changed bool) {
	if _, ok := s.nodes[id]; ok {
		delete(s.nodes, id)
		r.Removed = 1
	}
	changed = s.setProviders(id, nil)
	for name, a := range s.assigns {
		if slices.Contains(a.Holders, id) {
			a.Holders = without(a.Holders, id)
			s.assigns[name] = a
			changed = true
		}
	}
	return changed
}

// setProviders records that node can run exactly the providers in offered:
// their definitions are upserted, node joins their Nodes and leaves every
// other provider's. A provider no node can run any more is dropped with its
// tools and assignment.
func (s *state) setProviders(node string, offered []Provider) (changed bool) {
	want := make(map[string]Provider, len(offered))
	for _, p := range offered {
		want[p.Name] = p
	}
	for name, p := range s.providers {
		if _, ok := want[name]; ok || !slices.Contains(p.Nodes, node) {
			continue
		}
		changed = true
		if p.Nodes = without(p.Nodes, node); len(p.Nodes) == 0 {
			s.dropProvider(name)
			continue
		}
		s.providers[name] = p
	}
	for name, def := range want {
		cur, ok := s.providers[name]
		nodes := cur.Nodes
		if !slices.Contains(nodes, node) {
			nodes = append(slices.Clone(nodes), node)
			slices.Sort(nodes)
		}
		next := Provider{Name: name, Replicas: def.Replicas, CacheTTL: def.CacheTTL, Nodes: nodes}
		if !ok || cur.Replicas != next.Replicas || cur.CacheTTL != next.CacheTTL || !slices.Equal(cur.Nodes, next.Nodes) {
			s.providers[name] = next
			changed = true
		}
	}
	return changed
}

// assign records the holders of a provider. Only nodes that declare the
// provider can hold it, and a provider nobody declares has no assignment:
// assigning it removes the assignment left from before it was dropped
// (CodeNotFound), so the assignment map never holds orphans.
func (s *state) assign(index uint64, a Assignment, r *Result) (changed bool) {
	p, ok := s.providers[a.Provider]
	if !ok {
		r.Code = CodeNotFound
		if _, had := s.assigns[a.Provider]; had {
			delete(s.assigns, a.Provider)
			r.Removed = 1
			return true
		}
		return false
	}
	var holders []string
	for _, h := range a.Holders {
		if slices.Contains(p.Nodes, h) && !slices.Contains(holders, h) {
			holders = append(holders, h)
		}
	}
	a.Holders, a.Epoch = holders, index
	s.assigns[a.Provider] = a
	return true
}

func (s *state) dropProvider(name string) {
	delete(s.providers, name)
	delete(s.assigns, name)
	for tn, t := range s.tools {
		if t.Provider == name {
			delete(s.tools, tn)
		}
	}
}

// putCatalog replaces the tool list of provider. A name that another
// provider already serves is skipped and counted (CodeConflict): the first
// provider to claim a name keeps it.
func (s *state) putCatalog(provider string, tools []Tool, r *Result) (changed bool) {
	if _, ok := s.providers[provider]; !ok {
		r.Code = CodeNotFound
		return false
	}
	keep := make(map[string]bool, len(tools))
	for _, t := range tools {
		if cur, ok := s.tools[t.Name]; ok && cur.Provider != provider {
			r.Removed++
			continue
		}
		t.Provider = provider
		keep[t.Name] = true
		if cur, ok := s.tools[t.Name]; !ok || cur.CacheTTL != t.CacheTTL || !bytes.Equal(cur.Spec, t.Spec) {
			s.tools[t.Name] = t
			changed = true
		}
	}
	for name, t := range s.tools {
		if t.Provider == provider && !keep[name] {
			delete(s.tools, name)
			changed = true
		}
	}
	if r.Removed > 0 {
		r.Code = CodeConflict
	}
	return changed
}

// liveVersion returns the version of key's live entry, or 0 if it is absent
// or expired at now. Versions are log indexes, so a live entry is never 0.
func (s *state) liveVersion(key string, now int64) uint64 {
	if e, ok := s.cache[key]; ok && !e.expired(now) {
		return e.Version
	}
	return 0
}

func (s *state) cacheDelete(key string) {
	if e, ok := s.cache[key]; ok {
		s.cacheBytes -= e.size()
		delete(s.cache, key)
	}
}

// DedupeWindow is how long, by the proposers' clocks, the FSM remembers a
// request id after the command's stamp (Command.Now). A proposer retries a
// command for at most MaxRetry after stamping it; the rest of the window
// absorbs clock differences between the nodes whose commands advance it.
const (
	DedupeWindow = 60 * time.Second
	MaxRetry     = 20 * time.Second
)

// dedupeKey is one remembered request id with its command's stamp.
type dedupeKey struct {
	ID  string
	Now int64
}

// remember records id's result, first forgetting ids stamped more than
// DedupeWindow before now (in log order; an older stamp behind a newer one
// waits for it, which only keeps it longer) and, past dedupeMax, the oldest.
func (s *state) remember(id string, now int64, r Result) {
	cut := now - int64(DedupeWindow)
	drop := 0
	for drop < len(s.order) && (s.order[drop].Now < cut || len(s.order)-drop >= dedupeMax) {
		delete(s.dedupe, s.order[drop].ID)
		drop++
	}
	if drop > 0 {
		s.order = s.order[drop:]
	}
	s.dedupe[id] = r
	s.order = append(s.order, dedupeKey{ID: id, Now: now})
}

// without returns a new slice holding s minus every occurrence of v.
func without(s []string, v string) []string {
	var out []string
	for _, x := range s {
		if x != v {
			out = append(out, x)
		}
	}
	return out
}

// firstN sorts keys and returns at most n of them (n == 0: all).
func firstN(keys []string, n int) []string {
	slices.Sort(keys)
	if n > 0 && len(keys) > n {
		keys = keys[:n]
	}
	return keys
}

// Subscribe returns a channel that receives a value (non-blocking, coalesced,
// buffer 1) after any Apply or Restore that changed the catalog or the
// assignments, and a function that cancels the subscription. The channel is
// never closed.
func (f *FSM) Subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	f.subMu.Lock()
	f.subs[ch] = struct{}{}
	f.subMu.Unlock()
	return ch, func() {
		f.subMu.Lock()
		delete(f.subs, ch)
		f.subMu.Unlock()
	}
}

func (f *FSM) notify() {
	f.subMu.Lock()
	defer f.subMu.Unlock()
	for ch := range f.subs {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// LastIndex returns the log index of the last applied command (or of the
// restored snapshot). Non-command log entries do not advance it.
func (f *FSM) LastIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.index
}

// Node returns the registered node with the given id.
func (f *FSM) Node(id string) (Node, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	n, ok := f.st.nodes[id]
	return n, ok
}

// Nodes returns every registered node, sorted by ID.
func (f *FSM) Nodes() []Node {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return sortedValues(f.st.nodes, func(n Node) Node { return n })
}

// Providers returns every provider, sorted by Name.
func (f *FSM) Providers() []Provider {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return sortedValues(f.st.providers, Provider.clone)
}

// Provider returns the provider with the given name.
func (f *FSM) Provider(name string) (Provider, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	p, ok := f.st.providers[name]
	return p.clone(), ok
}

// Tools returns the catalog, sorted by Name.
func (f *FSM) Tools() []Tool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return sortedValues(f.st.tools, Tool.clone)
}

// Tool returns the catalog entry with the given name.
func (f *FSM) Tool(name string) (Tool, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t, ok := f.st.tools[name]
	return t.clone(), ok
}

// ToolProvider returns the provider of the named tool and its cache TTL,
// without copying its definition: what routing a call needs.
func (f *FSM) ToolProvider(name string) (provider string, cacheTTL int64, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	t, ok := f.st.tools[name]
	return t.Provider, t.CacheTTL, ok
}

// Assignment returns the assignment of the given provider.
func (f *FSM) Assignment(provider string) (Assignment, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	a, ok := f.st.assigns[provider]
	return a.clone(), ok
}

// Assignments returns every assignment, sorted by Provider.
func (f *FSM) Assignments() []Assignment {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return sortedValues(f.st.assigns, Assignment.clone)
}

// Session returns the session with the given id. Expiry is not applied here:
// sessions are removed by SessionExpire commands.
func (f *FSM) Session(id string) (Session, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s, ok := f.st.sessions[id]
	return s, ok
}

// SessionsDue reports whether a SessionExpire at now, with idleTTL and
// lifetime (ns; 0: none), would remove or turn into a tombstone anything.
func (f *FSM) SessionsDue(now, idleTTL, lifetime int64) bool {
	f.mu.RLock()
	defer f.mu.RUnlock()
	for _, ss := range f.st.sessions {
		if ss.due(now, idleTTL, lifetime) {
			return true
		}
	}
	return false
}

// due reports whether SessionExpire at now acts on s: a tombstone past its
// end, or a session idle for idleTTL or past its lifetime (0: none). The
// sums do not overflow.
func (s Session) due(now, idleTTL, lifetime int64) bool {
	if s.Deleted() {
		return s.DeletedUntil <= now
	}
	idle := s.LastSeen <= math.MaxInt64-idleTTL && s.LastSeen+idleTTL <= now
	return idle || (lifetime > 0 && s.pastLifetime(now, lifetime))
}

// pastLifetime reports whether s was created lifetime or more before now.
func (s Session) pastLifetime(now, lifetime int64) bool {
	return s.CreatedAt <= math.MaxInt64-lifetime && s.CreatedAt+lifetime <= now
}

// SessionKey returns the key that signs session ids, nil until the
// leader has set one.
func (f *FSM) SessionKey() []byte {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.st.sessionKey
}

// Sessions returns every session, tombstones included, sorted by ID.
func (f *FSM) Sessions() []Session {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return sortedValues(f.st.sessions, func(s Session) Session { return s })
}

// CacheGet returns the live cache entry for key; entries with
// ExpiresAt != 0 && ExpiresAt <= now are hidden.
func (f *FSM) CacheGet(key string, now int64) (CacheEntry, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	e, ok := f.st.cache[key]
	if !ok || e.expired(now) {
		return CacheEntry{}, false
	}
	return e.clone(), true
}

// CacheList returns live entries whose key has prefix and sorts after after,
// in key order, at most limit of them (limit <= 0 means 100).
func (f *FSM) CacheList(prefix, after string, limit int, now int64) []CacheEntry {
	if limit <= 0 {
		limit = defaultListLimit
	}
	f.mu.RLock()
	defer f.mu.RUnlock()
	var keys []string
	for k, e := range f.st.cache {
		if k > after && strings.HasPrefix(k, prefix) && !e.expired(now) {
			keys = append(keys, k)
		}
	}
	keys = firstN(keys, limit)
	out := make([]CacheEntry, len(keys))
	for i, k := range keys {
		out[i] = f.st.cache[k].clone()
	}
	return out
}

// Counts returns the number of entries in each table and the cache size in
// bytes (sum of len(key)+len(value), expired-but-not-removed entries included).
func (f *FSM) Counts() Counts {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := f.st
	return Counts{
		Nodes:        len(s.nodes),
		Providers:    len(s.providers),
		Tools:        len(s.tools),
		Assignments:  len(s.assigns),
		Sessions:     len(s.sessions) - s.tombstones,
		CacheEntries: len(s.cache),
		CacheBytes:   s.cacheBytes,
	}
}

// sortedValues returns m's values in key order, each passed through cp.
func sortedValues[V any](m map[string]V, cp func(V) V) []V {
	out := make([]V, 0, len(m))
	eachSorted(m, func(v *V) { out = append(out, cp(*v)) })
	return out
}
