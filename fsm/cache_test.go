package fsm

import (
	"fmt"
	"slices"
	"testing"
)

func cacheKeys(f *FSM, now int64) []string {
	var keys []string
	for _, e := range f.CacheList("", "", 1<<20, now) {
		keys = append(keys, e.Key)
	}
	return keys
}

func TestCacheEvictsOldestWrites(t *testing.T) {
	f := newTestFSM(t)
	const n = 5
	for i := range 2 * n {
		r := f.apply(&Command{Type: TypeCacheSet, Key: fmt.Sprintf("k%02d", i), Value: []byte("v"), MaxEntries: n})
		if want := 0; i >= n {
			want = 1
			if r.Removed != want {
				t.Fatalf("set %d evicted %d, want %d", i, r.Removed, want)
			}
		}
	}
	if got, want := cacheKeys(f.FSM, 0), []string{"k05", "k06", "k07", "k08", "k09"}; !slices.Equal(got, want) {
		t.Fatalf("kept %v, want the newest %v", got, want)
	}
	// Rewriting an old key makes it the newest write.
	f.apply(&Command{Type: TypeCacheSet, Key: "k05", Value: []byte("again"), MaxEntries: n})
	f.apply(&Command{Type: TypeCacheSet, Key: "new", Value: []byte("x"), MaxEntries: n})
	if got, want := cacheKeys(f.FSM, 0), []string{"k05", "k07", "k08", "k09", "new"}; !slices.Equal(got, want) {
		t.Fatalf("kept %v, want %v", got, want)
	}
}

func TestCacheByteBound(t *testing.T) {
	f := newTestFSM(t)
	for i := range 10 {
		f.apply(&Command{Type: TypeCacheSet, Key: fmt.Sprintf("k%d", i), Value: make([]byte, 98), MaxBytes: 300}) // 100 bytes each
	}
	if c := f.Counts(); c.CacheEntries != 3 || c.CacheBytes != 300 {
		t.Fatalf("counts %+v, want 3 entries, 300 bytes", c)
	}
	// An entry alone over the bound is kept; everything older goes.
	r := f.apply(&Command{Type: TypeCacheSet, Key: "big", Value: make([]byte, 500), MaxBytes: 300})
	if r.Removed != 3 || f.Counts().CacheEntries != 1 {
		t.Fatalf("removed %d, counts %+v", r.Removed, f.Counts())
	}
}

func TestCacheCompareValue(t *testing.T) {
	f := newTestFSM(t)
	f.apply(&Command{Type: TypeCacheSet, Key: "k", Value: []byte("1")})
	if r := f.apply(&Command{Type: TypeCacheSet, Key: "k", Value: []byte("2"), CompareValue: true, OldValue: []byte("0")}); r.Code != CodeCASMismatch {
		t.Fatalf("wrong old value accepted: %+v", r)
	}
	if r := f.apply(&Command{Type: TypeCacheSet, Key: "k", Value: []byte("2"), CompareValue: true, OldValue: []byte("1")}); r.Code != "" {
		t.Fatalf("right old value refused: %+v", r)
	}
	if r := f.apply(&Command{Type: TypeCacheSet, Key: "absent", Value: []byte("x"), CompareValue: true}); r.Code != CodeCASMismatch {
		t.Fatalf("value CAS on an absent key: %+v", r)
	}
	if r := f.apply(&Command{Type: TypeCacheDelete, Key: "k", CompareValue: true, OldValue: []byte("1")}); r.Code != CodeCASMismatch {
		t.Fatalf("delete with a stale old value: %+v", r)
	}
	if r := f.apply(&Command{Type: TypeCacheDelete, Key: "k", CompareValue: true, OldValue: []byte("2")}); r.Removed != 1 {
		t.Fatalf("delete with the right old value: %+v", r)
	}
}

func TestCacheExpireOrderAndLimit(t *testing.T) {
	f := newTestFSM(t)
	f.apply(&Command{Type: TypeCacheSet, Key: "b", ExpiresAt: 10})
	f.apply(&Command{Type: TypeCacheSet, Key: "a", ExpiresAt: 10})
	f.apply(&Command{Type: TypeCacheSet, Key: "c", ExpiresAt: 5})
	f.apply(&Command{Type: TypeCacheSet, Key: "d", ExpiresAt: 50})
	f.apply(&Command{Type: TypeCacheSet, Key: "c", ExpiresAt: 40}) // rewritten: the old expiry is stale
	if at, ok := f.NextExpiry(); !ok || at != 5 {
		t.Fatalf("NextExpiry = %d %v", at, ok)
	}
	if r := f.apply(&Command{Type: TypeCacheExpire, Now: 20, Limit: 1}); r.Removed != 1 {
		t.Fatalf("removed %d", r.Removed)
	}
	if got := cacheKeys(f.FSM, 0); !slices.Equal(got, []string{"b", "c", "d"}) {
		t.Fatalf("after the first expiry: %v (a expires first: same time as b, smaller key)", got)
	}
	if r := f.apply(&Command{Type: TypeCacheExpire, Now: 45}); r.Removed != 2 {
		t.Fatalf("removed %d, want b and c", r.Removed)
	}
	if got := cacheKeys(f.FSM, 0); !slices.Equal(got, []string{"d"}) {
		t.Fatalf("left %v", got)
	}
}

func TestCacheIndexesCompact(t *testing.T) {
	f := newTestFSM(t)
	for i := range 20000 {
		f.apply(&Command{Type: TypeCacheSet, Key: fmt.Sprint(i % 10), ExpiresAt: int64(1e9 + i)})
	}
	f.mu.RLock()
	w, e := len(f.st.writes), len(f.st.expiry)
	f.mu.RUnlock()
	if w > 2*10+1024+1 || e > 2*10+1024+1 {
		t.Fatalf("indexes grew to %d writes and %d expiries for 10 keys", w, e)
	}
}
