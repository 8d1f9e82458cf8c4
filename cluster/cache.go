package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mcpcluster/mcpcluster/fsm"
)

// CacheConfig bounds the shared cache.
type CacheConfig struct {
	// MaxEntries and MaxBytes (keys plus values) bound the cache; past them
	// the oldest writes are evicted, the same ones on every node.
	MaxEntries int
	MaxBytes   int64
	// MaxKeyBytes and MaxValueBytes bound one entry.
	MaxKeyBytes   int
	MaxValueBytes int
}

// DefaultCacheConfig returns the cache defaults.
func DefaultCacheConfig() CacheConfig {
	return CacheConfig{MaxEntries: 1_000_000, MaxBytes: 256 << 20, MaxKeyBytes: 512, MaxValueBytes: 1 << 20}
}

// ErrInvalid marks a cache request rejected before anything was written.
var ErrInvalid = errors.New("invalid cache request")

// InternalKeyPrefix starts the cache keys the cluster keeps for its own use,
// such as the MCP front door's cached tool results. The public writes
// (CacheSet, CacheDelete: the HTTP API and the cache tools) refuse them, so
// nobody can plant a result that other principals then receive; the node's
// own code writes them with CacheSetInternal. Reads are not restricted here:
// the admin API may read them, the MCP cache tools refuse to.
const InternalKeyPrefix = "mcpcluster/"

// IsInternalKey reports whether key is reserved for the cluster's own use.
func IsInternalKey(key string) bool { return strings.HasPrefix(key, InternalKeyPrefix) }

// errReservedKey is the refusal of an internal key by a public operation.
var errReservedKey = fmt.Errorf("%w: key prefix %s is reserved for the cluster's own use", ErrInvalid, InternalKeyPrefix)

// SetOptions are the conditions and lifetime of a cache write.
type SetOptions struct {
	// TTL makes the entry expire; 0 keeps it until deleted or evicted.
	TTL time.Duration
	// CAS applies the write only if the live entry has this version (0: the
	// key must not exist).
	CAS *uint64
	// CompareValue applies the write only if the key is live with OldValue.
	CompareValue bool
	OldValue     []byte
}

func (n *Node) checkKey(key string) error {
	switch {
	case key == "":
		return fmt.Errorf("%w: empty key", ErrInvalid)
	case len(key) > n.cfg.Cache.MaxKeyBytes:
		return fmt.Errorf("%w: key is %d bytes, the maximum is %d", ErrInvalid, len(key), n.cfg.Cache.MaxKeyBytes)
	}
	return nil
}

// checkValue bounds one value (what names it in the error).
func (n *Node) checkValue(what string, v []byte) error {
	if len(v) > n.cfg.Cache.MaxValueBytes {
		return fmt.Errorf("%w: %s is %d bytes, the maximum is %d", ErrInvalid, what, len(v), n.cfg.Cache.MaxValueBytes)
	}
	return nil
}

// checkCacheBounds holds a cache write command to this node's bounds of one
// entry; the leader runs it on every command (checkCommand).
func (n *Node) checkCacheBounds(c *fsm.Command) error {
	if c.Type != fsm.TypeCacheSet && c.Type != fsm.TypeCacheDelete {
		return nil
	}
	if err := n.checkKey(c.Key); err != nil {
		return err
	}
	if err := n.checkValue("value", c.Value); err != nil {
		return err
	}
	return n.checkValue("old value", c.OldValue)
}

// CacheGet reads key at the given consistency. A missing or expired key
// is fsm.ErrNotFound.
func (n *Node) CacheGet(ctx context.Context, key string, level Consistency) (fsm.CacheEntry, ReadInfo, error) {
	if err := n.checkKey(key); err != nil {
		return fsm.CacheEntry{}, ReadInfo{}, err
	}
	info, err := n.ReadBarrier(ctx, level)
	if err != nil {
		return fsm.CacheEntry{}, info, err
	}
	e, ok := n.fsm.CacheGet(key, time.Now().UnixNano())
	if !ok {
		return e, info, fmt.Errorf("cache key %q: %w", key, fsm.ErrNotFound)
	}
	return e, info, nil
}

// CacheList returns up to limit live entries whose key starts with prefix
// and sorts after after, in key order.
func (n *Node) CacheList(ctx context.Context, prefix, after string, limit int, level Consistency) ([]fsm.CacheEntry, ReadInfo, error) {
	if limit <= 0 || limit > 1000 {
		return nil, ReadInfo{}, fmt.Errorf("%w: limit must be 1 to 1000", ErrInvalid)
	}
	info, err := n.ReadBarrier(ctx, level)
	if err != nil {
		return nil, info, err
	}
	return n.fsm.CacheList(prefix, after, limit, time.Now().UnixNano()), info, nil
}

// CacheSet writes key=value through raft. The result's Err is
// fsm.ErrCASMismatch when a condition failed. A key under
// InternalKeyPrefix is refused (ErrInvalid).
func (n *Node) CacheSet(ctx context.Context, key string, value []byte, opt SetOptions) (*fsm.Result, error) {
	if IsInternalKey(key) {
		return nil, errReservedKey
	}
	return n.cacheSet(ctx, key, value, opt)
}

// CacheSetInternal is CacheSet for the cluster's own keys: key must start
// with InternalKeyPrefix. It is for code inside the node (the MCP front
// door's result cache), never for what a client sends.
func (n *Node) CacheSetInternal(ctx context.Context, key string, value []byte, opt SetOptions) (*fsm.Result, error) {
	if !IsInternalKey(key) {
		return nil, fmt.Errorf("%w: internal key %q does not start with %s", ErrInvalid, key, InternalKeyPrefix)
	}
	return n.cacheSet(ctx, key, value, opt)
}

func (n *Node) cacheSet(ctx context.Context, key string, value []byte, opt SetOptions) (*fsm.Result, error) {
	if err := n.checkKey(key); err != nil {
		return nil, err
	}
	if err := n.checkValue("value", value); err != nil {
		return nil, err
	}
	if opt.TTL < 0 {
		return nil, fmt.Errorf("%w: negative ttl %s", ErrInvalid, opt.TTL)
	}
	now := time.Now()
	cmd := &fsm.Command{
		Type: fsm.TypeCacheSet, Key: key, Value: value, Now: now.UnixNano(),
		CAS: opt.CAS, CompareValue: opt.CompareValue, OldValue: opt.OldValue,
		MaxEntries: n.cfg.Cache.MaxEntries, MaxBytes: n.cfg.Cache.MaxBytes,
	}
	if opt.TTL > 0 {
		cmd.ExpiresAt = now.Add(opt.TTL).UnixNano()
	}
	return n.Apply(ctx, cmd)
}

// CacheDelete deletes key through raft (conditions as CacheSet; TTL unused).
// The result's Err is fsm.ErrNotFound for a missing key. A key under
// InternalKeyPrefix is refused (ErrInvalid); internal entries leave by
// their TTL or by eviction.
func (n *Node) CacheDelete(ctx context.Context, key string, opt SetOptions) (*fsm.Result, error) {
	if IsInternalKey(key) {
		return nil, errReservedKey
	}
	if err := n.checkKey(key); err != nil {
		return nil, err
	}
	return n.Apply(ctx, &fsm.Command{Type: fsm.TypeCacheDelete, Key: key, CAS: opt.CAS, CompareValue: opt.CompareValue, OldValue: opt.OldValue})
}

// cacheExpireBatch bounds how many entries one expiry command removes.
const cacheExpireBatch = 10000

// expireCache runs on the leader: when an entry's expiry has passed, it
// removes expired entries in batches (reads already hide them).
func (n *Node) expireCache(ctx context.Context) error {
	for range 10 {
		at, ok := n.fsm.NextExpiry()
		now := time.Now()
		if !ok || at > now.UnixNano() {
			return nil
		}
		res, err := n.Apply(ctx, &fsm.Command{Type: fsm.TypeCacheExpire, Now: now.UnixNano(), Limit: cacheExpireBatch})
		if err != nil {
			return fmt.Errorf("expire cache: %w", err)
		}
		if res.Removed > 0 {
			n.logger.Debug("expired cache entries", "count", res.Removed)
		}
	}
	return nil
}
