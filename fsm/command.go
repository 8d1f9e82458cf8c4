package fsm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// EncodingVersion is the first byte of every encoded Command.
const EncodingVersion byte = 1

// Type identifies the kind of state change a Command carries. It is stored
// in the second byte of the encoding.
type Type uint8

// Command types. Values are part of the log format: never reorder them.
const (
	TypeNodeRegister Type = iota + 1
	TypeNodeDeregister
	TypeProviders
	TypeCatalogPut
	TypeAssign
	TypeSessionOpen
	TypeSessionTouch
	TypeSessionDelete
	TypeSessionExpire
	TypeCacheSet
	TypeCacheDelete
	TypeCacheExpire
	TypeSessionKey
	TypeSessionUses
)

var typeNames = [...]string{
	TypeNodeRegister:   "node_register",
	TypeNodeDeregister: "node_deregister",
	TypeProviders:      "providers",
	TypeCatalogPut:     "catalog_put",
	TypeAssign:         "assign",
	TypeSessionOpen:    "session_open",
	TypeSessionTouch:   "session_touch",
	TypeSessionDelete:  "session_delete",
	TypeSessionExpire:  "session_expire",
	TypeCacheSet:       "cache_set",
	TypeCacheDelete:    "cache_delete",
	TypeCacheExpire:    "cache_expire",
	TypeSessionKey:     "session_key",
	TypeSessionUses:    "session_uses",
}

func (t Type) valid() bool { return t >= TypeNodeRegister && t <= TypeSessionUses }

// String returns the snake_case name of t, or "Type(n)" for an unknown type.
func (t Type) String() string {
	if t.valid() {
		return typeNames[t]
	}
	return fmt.Sprintf("Type(%d)", uint8(t))
}

// Command is one state change. One struct serves every Type; each type uses
// only the fields documented next to them.
type Command struct {
	Type       Type        `json:"-"`                    // carried in the header byte
	RequestID  string      `json:"rid,omitempty"`        // idempotency key, see dedupe
	Now        int64       `json:"now"`                  // proposer's clock, unix ns
	Node       *Node       `json:"node,omitempty"`       // NodeRegister (required, Node.ID non-empty)
	NodeID     string      `json:"node_id,omitempty"`    // NodeDeregister, Providers (required)
	Providers  []Provider  `json:"providers,omitempty"`  // Providers: every provider NodeID can run (replaces its earlier list)
	Provider   string      `json:"provider,omitempty"`   // CatalogPut (required)
	Tools      []Tool      `json:"tools,omitempty"`      // CatalogPut: the provider's whole tool list (each Name non-empty)
	Assignment *Assignment `json:"assignment,omitempty"` // Assign (required, Provider non-empty)
	Session    *Session    `json:"session,omitempty"`    // SessionOpen (required, ID non-empty)
	SessionID  string      `json:"session_id,omitempty"` // SessionTouch, SessionDelete (required)
	Until      int64       `json:"until,omitempty"`      // SessionDelete: keep a tombstone until then (unix ns), 0 = none; SessionExpire: an idle session becomes a tombstone until CreatedAt+Until (ns), 0 = removed
	Sessions   []Session   `json:"sessions,omitempty"`   // SessionUses: sessions opened or used, stamped by the proposer (each ID non-empty); SessionDelete (instead of SessionID): tombstones, each with ID and DeletedUntil
	IdleTTL    int64       `json:"idle_ttl,omitempty"`   // SessionExpire: remove sessions with LastSeen+IdleTTL <= Now (required > 0)
	Key        string      `json:"key,omitempty"`        // CacheSet, CacheDelete (required non-empty)
	Value      []byte      `json:"value,omitempty"`      // CacheSet; SessionKey: the key (32 bytes)
	ExpiresAt  int64       `json:"expires_at,omitempty"` // CacheSet: absolute unix ns; 0 = never
	CAS        *uint64     `json:"cas,omitempty"`        // CacheSet/CacheDelete: only if the live entry's Version == *CAS; 0 = must not exist
	// CacheSet/CacheDelete: with CompareValue, only if the key is live and
	// its value equals OldValue.
	CompareValue bool   `json:"cmp,omitempty"`
	OldValue     []byte `json:"old,omitempty"`
	// CacheSet: the bounds to keep after this write (0 = unbounded); the
	// oldest writes are evicted. Carried in the command so every replica
	// evicts the same entries whatever its configuration.
	MaxEntries int   `json:"max_entries,omitempty"`
	MaxBytes   int64 `json:"max_bytes,omitempty"`
	Limit      int   `json:"limit,omitempty"` // SessionExpire/CacheExpire: max removed, 0 = no limit
}

// Encode returns the log encoding of c: EncodingVersion, the type byte, then
// the JSON of c. It rejects an unknown type and any command Decode would
// reject, so a bad command fails at the proposer instead of in Apply.
func Encode(c *Command) ([]byte, error) {
	if c == nil {
		return nil, errors.New("encode command: nil command")
	}
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("encode %s: %w", c.Type, err)
	}
	js, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode %s: %w", c.Type, err)
	}
	b := make([]byte, 2, 2+len(js))
	b[0], b[1] = EncodingVersion, byte(c.Type)
	return append(b, js...), nil
}

// Decode parses a Command produced by Encode. It returns an error, and never
// panics, on short input, a wrong version, an unknown type, invalid JSON,
// trailing data, a missing required field or a negative duration/limit.
// Decoded commands are normalised (empty slices are nil, tool specs are
// compacted) so that Decode(Encode(Decode(b))) equals Decode(b).
//
// Decode is lenient about JSON fields it does not know, so that a log
// written by a newer version still applies; what is proposed for commit
// goes through Check first.
func Decode(b []byte) (*Command, error) {
	c, err := decode(b, false)
	if err != nil {
		return nil, fmt.Errorf("decode command: %w", err)
	}
	return c, nil
}

// Check is the test a proposed command passes before it may be committed:
// everything Decode checks, and also no JSON field this version does not
// understand (a newer node's command would be applied half understood) and
// nothing after the JSON object. A command Check accepts, Decode accepts,
// so Apply cannot panic on it. It returns the decoded command.
func Check(b []byte) (*Command, error) {
	return decode(b, true)
}

// decode parses b; strict refuses unknown JSON fields.
func decode(b []byte, strict bool) (*Command, error) {
	if len(b) < 2 {
		return nil, fmt.Errorf("short input (%d bytes)", len(b))
	}
	if b[0] != EncodingVersion {
		return nil, fmt.Errorf("unsupported encoding version %d", b[0])
	}
	t := Type(b[1])
	if !t.valid() {
		return nil, fmt.Errorf("unknown command type %d", b[1])
	}
	payload := b[2:]
	if p := bytes.TrimLeft(payload, jsonSpace); len(p) == 0 || p[0] != '{' {
		return nil, fmt.Errorf("%s: payload is not a json object", t)
	}
	c := &Command{}
	if strict {
		dec := json.NewDecoder(bytes.NewReader(payload))
		dec.DisallowUnknownFields()
		if err := dec.Decode(c); err != nil {
			return nil, fmt.Errorf("%s: %w", t, err)
		}
		if rest := bytes.TrimLeft(payload[dec.InputOffset():], jsonSpace); len(rest) > 0 {
			return nil, fmt.Errorf("%s: %d bytes of trailing data after the json object", t, len(rest))
		}
	} else if err := json.Unmarshal(payload, c); err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	c.Type = t
	c.normalize()
	if err := c.validate(); err != nil {
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	return c, nil
}

// jsonSpace is the whitespace JSON allows between tokens.
const jsonSpace = " \t\r\n"

// validate checks the fields the command's type requires.
func (c *Command) validate() error {
	switch {
	case c.ExpiresAt < 0:
		return errors.New("negative expires_at")
	case c.IdleTTL < 0:
		return errors.New("negative idle_ttl")
	case c.Limit < 0:
		return errors.New("negative limit")
	case c.MaxEntries < 0 || c.MaxBytes < 0:
		return errors.New("negative cache bound")
	}
	switch c.Type {
	case TypeNodeRegister:
		if c.Node == nil || c.Node.ID == "" {
			return errors.New("missing node id")
		}
	case TypeNodeDeregister:
		if c.NodeID == "" {
			return errors.New("missing node_id")
		}
	case TypeProviders:
		if c.NodeID == "" {
			return errors.New("missing node_id")
		}
		for i, p := range c.Providers {
			if err := p.validate(); err != nil {
				return fmt.Errorf("provider %d: %w", i, err)
			}
		}
	case TypeCatalogPut:
		if c.Provider == "" {
			return errors.New("missing provider")
		}
		for i, t := range c.Tools {
			if err := t.validate(); err != nil {
				return fmt.Errorf("tool %d: %w", i, err)
			}
		}
	case TypeAssign:
		if c.Assignment == nil || c.Assignment.Provider == "" {
			return errors.New("missing assignment provider")
		}
	case TypeSessionOpen:
		if c.Session == nil || c.Session.ID == "" {
			return errors.New("missing session id")
		}
	case TypeSessionTouch:
		if c.SessionID == "" {
			return errors.New("missing session_id")
		}
	case TypeSessionDelete:
		if (c.SessionID == "") == (len(c.Sessions) == 0) {
			return errors.New("want session_id or sessions")
		}
		for i, s := range c.Sessions {
			if s.ID == "" || s.DeletedUntil == 0 {
				return fmt.Errorf("session %d: missing id or deleted_until", i)
			}
		}
	case TypeSessionExpire:
		if c.IdleTTL <= 0 {
			return errors.New("idle_ttl must be positive")
		}
	case TypeCacheSet, TypeCacheDelete:
		if c.Key == "" {
			return errors.New("missing key")
		}
	case TypeCacheExpire:
	case TypeSessionKey:
		if len(c.Value) != SessionKeySize {
			return fmt.Errorf("session key must be %d bytes, not %d", SessionKeySize, len(c.Value))
		}
	case TypeSessionUses:
		if len(c.Sessions) == 0 {
			return errors.New("no sessions")
		}
		for i, s := range c.Sessions {
			if s.ID == "" || s.DeletedUntil != 0 {
				return fmt.Errorf("session %d: missing id or marked deleted", i)
			}
		}
	default:
		return fmt.Errorf("unknown command type %d", uint8(c.Type))
	}
	return nil
}

func (p *Provider) validate() error {
	switch {
	case p.Name == "":
		return errors.New("missing name")
	case p.Replicas < 0:
		return errors.New("negative replicas")
	case p.CacheTTL < 0:
		return errors.New("negative cache_ttl")
	}
	return nil
}

func (t *Tool) validate() error {
	switch {
	case t.Name == "":
		return errors.New("missing name")
	case t.CacheTTL < 0:
		return errors.New("negative cache_ttl")
	}
	return nil
}

// normalize puts c in the canonical form that survives an Encode/Decode
// round trip unchanged.
func (c *Command) normalize() {
	c.Value = nilIfEmpty(c.Value)
	c.OldValue = nilIfEmpty(c.OldValue)
	c.Providers = nilIfEmpty(c.Providers)
	for i := range c.Providers {
		c.Providers[i].Nodes = nilIfEmpty(c.Providers[i].Nodes)
	}
	c.Tools = nilIfEmpty(c.Tools)
	for i := range c.Tools {
		c.Tools[i].normalize()
	}
	if c.Assignment != nil {
		c.Assignment.Holders = nilIfEmpty(c.Assignment.Holders)
	}
}

func (t *Tool) normalize() {
	if len(t.Spec) == 0 {
		t.Spec = nil
	} else if b, err := json.Marshal(t.Spec); err == nil {
		t.Spec = b // compact and escaped, exactly as Encode writes it
	}
}

func nilIfEmpty[S ~[]E, E any](s S) S {
	if len(s) == 0 {
		return nil
	}
	return s
}
