package fsm

import (
	"bytes"
	"container/heap"
	"slices"
)

// The cache keeps two derived indexes beside its map, rebuilt on Restore
// and never snapshotted: the write order (for eviction, oldest write first)
// and an expiry heap ordered by (ExpiresAt, Key). Both hold items that may
// have gone stale (the key was overwritten or deleted) and skip them when
// reached, so a replica that applied the log and one restored from a
// snapshot remove exactly the same entries.

// keyVersion names one write of a key.
type keyVersion struct {
	key     string
	version uint64
}

type expiryItem struct {
	at      int64
	key     string
	version uint64
}

type expiryHeap []expiryItem

func (h expiryHeap) Len() int { return len(h) }
func (h expiryHeap) Less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	if h[i].key != h[j].key {
		return h[i].key < h[j].key
	}
	return h[i].version < h[j].version
}
func (h expiryHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)   { *h = append(*h, x.(expiryItem)) }
func (h *expiryHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

// current reports whether (key, version) is still the stored write.
func (s *state) current(key string, version uint64) bool {
	e, ok := s.cache[key]
	return ok && e.Version == version
}

// cachePut stores e (replacing any entry of its key) and indexes it.
func (s *state) cachePut(e CacheEntry) {
	s.cacheDelete(e.Key)
	s.cache[e.Key] = e
	s.cacheBytes += e.size()
	s.writes = append(s.writes, keyVersion{e.Key, e.Version})
	if e.ExpiresAt != 0 {
		heap.Push(&s.expiry, expiryItem{e.ExpiresAt, e.Key, e.Version})
	}
	s.compactIndexes()
}

// evict removes the oldest writes until the cache is within the bounds
// (0 = unbounded), never the entry just written (keep). It returns how many
// it removed.
func (s *state) evict(maxEntries int, maxBytes int64, keep string) int {
	n := 0
	for (maxEntries > 0 && len(s.cache) > maxEntries) || (maxBytes > 0 && s.cacheBytes > maxBytes) {
		if len(s.writes) == 0 {
			break
		}
		w := s.writes[0]
		if !s.current(w.key, w.version) {
			s.writes = s.writes[1:]
			continue
		}
		if w.key == keep {
			break
		}
		s.writes = s.writes[1:]
		s.cacheDelete(w.key)
		n++
	}
	return n
}

// expire removes entries whose ExpiresAt <= now, earliest first, at most
// limit (0 = all) of them.
func (s *state) expire(now int64, limit int) int {
	n := 0
	for len(s.expiry) > 0 && s.expiry[0].at <= now && (limit == 0 || n < limit) {
		it := heap.Pop(&s.expiry).(expiryItem)
		if s.current(it.key, it.version) {
			s.cacheDelete(it.key)
			n++
		}
	}
	return n
}

// compactIndexes drops stale index items once they outnumber live ones.
func (s *state) compactIndexes() {
	if len(s.writes) > 2*len(s.cache)+1024 {
		live := s.writes[:0:0]
		for _, w := range s.writes {
			if s.current(w.key, w.version) {
				live = append(live, w)
			}
		}
		s.writes = live
	}
	if len(s.expiry) > 2*len(s.cache)+1024 {
		live := s.expiry[:0:0]
		for _, it := range s.expiry {
			if s.current(it.key, it.version) {
				live = append(live, it)
			}
		}
		s.expiry = live
		heap.Init(&s.expiry)
	}
}

// rebuildIndexes derives both indexes from the entries (after Restore).
func (s *state) rebuildIndexes() {
	s.writes = make([]keyVersion, 0, len(s.cache))
	s.expiry = s.expiry[:0]
	for _, e := range s.cache {
		s.writes = append(s.writes, keyVersion{e.Key, e.Version})
		if e.ExpiresAt != 0 {
			s.expiry = append(s.expiry, expiryItem{e.ExpiresAt, e.Key, e.Version})
		}
	}
	slices.SortFunc(s.writes, func(a, b keyVersion) int {
		switch {
		case a.version < b.version:
			return -1
		case a.version > b.version:
			return 1
		}
		return 0
	})
	heap.Init(&s.expiry)
}

// casFails reports whether a CAS condition of c does not hold for key's
// live entry at c.Now, and the live entry's version.
func (s *state) casFails(c *Command) (bool, uint64) {
	cur := s.liveVersion(c.Key, c.Now)
	if c.CAS != nil && *c.CAS != cur {
		return true, cur
	}
	if c.CompareValue {
		e, ok := s.cache[c.Key]
		if cur == 0 || !ok || !bytes.Equal(e.Value, c.OldValue) {
			return true, cur
		}
	}
	return false, cur
}

// NextExpiry returns when the earliest entry expires (possibly one already
// overwritten), so the leader knows whether an expiry command is due.
func (f *FSM) NextExpiry() (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if len(f.st.expiry) == 0 {
		return 0, false
	}
	return f.st.expiry[0].at, true
}
