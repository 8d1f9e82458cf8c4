package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// Node is a registered cluster member.
type Node struct {
	ID           string `json:"id"`
	HTTPAddr     string `json:"http_addr"`
	RPCAddr      string `json:"rpc_addr"`
	GossipAddr   string `json:"gossip_addr"`
	RegisteredAt int64  `json:"registered_at"` // set by Apply from Command.Now
}

// Provider is a source of tools (built-in, an upstream stdio command, an
// upstream HTTP URL) that some nodes are able to run.
type Provider struct {
	Name     string   `json:"name"`
	Replicas int      `json:"replicas"`            // 0 = everywhere: every capable node serves it
	CacheTTL int64    `json:"cache_ttl,omitempty"` // ns; results of its tools are cached this long
	Nodes    []string `json:"nodes,omitempty"`     // capable nodes, sorted; maintained by Apply
}

// Tool is one entry of the cluster-wide tool catalog.
type Tool struct {
	Name     string          `json:"name"`
	Provider string          `json:"provider"`
	Spec     json.RawMessage `json:"spec,omitempty"`      // the MCP tool definition as JSON
	CacheTTL int64           `json:"cache_ttl,omitempty"` // ns; overrides the provider's when set
}

// Assignment lists the nodes the leader chose to run a provider.
type Assignment struct {
	Provider string   `json:"provider"`
	Holders  []string `json:"holders"` // node ids, in the order the leader chose
	Epoch    uint64   `json:"epoch"`   // set by Apply: log index of the assignment
}

// Session is a replicated MCP session.
type Session struct {
	ID              string `json:"id"`
	Principal       string `json:"principal,omitempty"`
	ProtocolVersion string `json:"protocol_version,omitempty"`
	Node            string `json:"node,omitempty"` // node that opened it
	CreatedAt       int64  `json:"created_at"`     // set by Apply from Now on open; by the proposer in SessionUses
	LastSeen        int64  `json:"last_seen"`      // set by Apply from Now on open/touch; by the proposer in SessionUses
	// DeletedUntil marks a tombstone: the session was deleted, and its id
	// (verifiable by every node without a lookup) is refused until then,
	// the end of the id's lifetime, when SessionExpire removes it.
	DeletedUntil int64 `json:"deleted_until,omitempty"`
}

// SessionKeySize is the size of the key that signs session ids.
const SessionKeySize = 32

// Deleted reports whether s is a tombstone.
func (s Session) Deleted() bool { return s.DeletedUntil != 0 }

// CacheEntry is one value of the shared cache.
type CacheEntry struct {
	Key       string `json:"key"`
	Value     []byte `json:"value"`
	Version   uint64 `json:"version"`    // raft log index of the write that produced it
	ExpiresAt int64  `json:"expires_at"` // 0 = never
}

func (e *CacheEntry) expired(now int64) bool { return e.ExpiresAt != 0 && e.ExpiresAt <= now }
func (e *CacheEntry) size() int64            { return int64(len(e.Key) + len(e.Value)) }

// Result is what Apply returns (as *Result) for every command.
type Result struct {
	Index     uint64 `json:"index"`             // log index the command was applied at (for a duplicate: the original index)
	Version   uint64 `json:"version,omitempty"` // CacheSet: new version; CAS failure: current version (0 if absent)
	Removed   int    `json:"removed,omitempty"` // expire/delete commands: how many removed; CatalogPut conflict: how many skipped
	Code      string `json:"code,omitempty"`    // "" ok; CodeCASMismatch; CodeNotFound
	Duplicate bool   `json:"duplicate,omitempty"`
}

// Result codes for domain errors. They are returned in Result.Code, not
// raised: the command was applied and changed nothing.
const (
	CodeCASMismatch = "cas_mismatch"
	CodeNotFound    = "not_found"
	CodeConflict    = "conflict" // CatalogPut: a tool name belongs to another provider
)

// Sentinel errors returned by Result.Err.
var (
	ErrCASMismatch = errors.New("cas mismatch")
	ErrNotFound    = errors.New("not found")
	ErrConflict    = errors.New("tool name conflict")
)

// Err returns nil for a successful result, or an error wrapping
// ErrCASMismatch or ErrNotFound for a domain error.
func (r *Result) Err() error {
	if r == nil {
		return nil
	}
	switch r.Code {
	case "":
		return nil
	case CodeCASMismatch:
		return fmt.Errorf("%w (current version %d)", ErrCASMismatch, r.Version)
	case CodeNotFound:
		return ErrNotFound
	case CodeConflict:
		return fmt.Errorf("%w: %d tool(s) kept by another provider", ErrConflict, r.Removed)
	default:
		return fmt.Errorf("unknown result code %q", r.Code)
	}
}

// Counts summarises the size of the replicated state.
type Counts struct {
	Nodes, Providers, Tools, Assignments, Sessions, CacheEntries int
	CacheBytes                                                   int64
}

// Deep copies for values handed to callers; stored values are never mutated
// in place, so these are only needed at the read API boundary.

func (p Provider) clone() Provider {
	p.Nodes = slices.Clone(p.Nodes)
	return p
}

func (t Tool) clone() Tool {
	t.Spec = bytes.Clone(t.Spec)
	return t
}

func (a Assignment) clone() Assignment {
	a.Holders = slices.Clone(a.Holders)
	return a
}

func (e CacheEntry) clone() CacheEntry {
	e.Value = bytes.Clone(e.Value)
	return e
}
