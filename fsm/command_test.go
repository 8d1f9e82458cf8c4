package fsm

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

func u64(v uint64) *uint64 { return &v }

func mustEncode(tb testing.TB, c *Command) []byte {
	tb.Helper()
	b, err := Encode(c)
	if err != nil {
		tb.Fatalf("Encode(%s): %v", c.Type, err)
	}
	return b
}

// sampleCommands returns one fully populated command of every type.
func sampleCommands() []*Command {
	return []*Command{
		{Type: TypeNodeRegister, RequestID: "r1", Now: 10, Node: &Node{ID: "n1", HTTPAddr: "127.0.0.1:8500", RPCAddr: "127.0.0.1:8300", GossipAddr: "127.0.0.1:8301"}},
		{Type: TypeNodeDeregister, Now: 11, NodeID: "n1"},
		{Type: TypeProviders, Now: 12, NodeID: "n1", Providers: []Provider{
			{Name: "builtin", CacheTTL: 5e9},
			{Name: "grep", Replicas: 2, Nodes: []string{"ignored"}},
		}},
		{Type: TypeCatalogPut, Now: 13, Provider: "builtin", Tools: []Tool{
			{Name: "echo", Spec: json.RawMessage(`{"name":"echo","inputSchema":{"type":"object"}}`), CacheTTL: 5e9},
			{Name: "sha", Provider: "builtin"},
		}},
		{Type: TypeAssign, Now: 14, Assignment: &Assignment{Provider: "grep", Holders: []string{"n2", "n1"}}},
		{Type: TypeSessionOpen, Now: 15, Session: &Session{ID: "s1", Principal: "alice", ProtocolVersion: "2025-11-25", Node: "n1"}},
		{Type: TypeSessionTouch, Now: 16, SessionID: "s1"},
		{Type: TypeSessionDelete, Now: 17, SessionID: "s1"},
		{Type: TypeSessionExpire, Now: 18, IdleTTL: 30e9, Limit: 10},
		{Type: TypeCacheSet, RequestID: "r2", Now: 19, Key: "tool/echo/{}", Value: []byte("hello"), ExpiresAt: 100, CAS: u64(0)},
		{Type: TypeCacheDelete, Now: 20, Key: "tool/echo/{}", CAS: u64(10)},
		{Type: TypeCacheExpire, Now: 21, Limit: 500},
	}
}

func TestEncodeDecodeRoundTrip(t *testing.T) {
	for _, c := range sampleCommands() {
		t.Run(c.Type.String(), func(t *testing.T) {
			b := mustEncode(t, c)
			if b[0] != EncodingVersion || Type(b[1]) != c.Type {
				t.Fatalf("header = %v, want [%d %d]", b[:2], EncodingVersion, c.Type)
			}
			got, err := Decode(b)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, c) {
				t.Fatalf("round trip mismatch:\n got %+v\nwant %+v", got, c)
			}
		})
	}
}

func TestDecodeNormalizes(t *testing.T) {
	b := append([]byte{EncodingVersion, byte(TypeCatalogPut)},
		`{"now":1,"value":"","provider":"p","providers":[],"tools":[{"name":"a","spec":{ "x" : "<y>" }}]}`...)
	c, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if c.Value != nil || c.Providers != nil {
		t.Errorf("empty slices not normalised to nil: %+v", c)
	}
	if got, want := string(c.Tools[0].Spec), `{"x":"\u003cy\u003e"}`; got != want {
		t.Errorf("spec = %s, want %s", got, want)
	}
}

func TestDecodeErrors(t *testing.T) {
	hdr := func(t Type, js string) []byte { return append([]byte{EncodingVersion, byte(t)}, js...) }
	cases := []struct {
		name string
		in   []byte
		want string
	}{
		{"nil", nil, "short input"},
		{"one byte", []byte{EncodingVersion}, "short input"},
		{"wrong version", []byte{2, byte(TypeCacheExpire), '{', '}'}, "encoding version"},
		{"type zero", hdr(0, `{}`), "unknown command type 0"},
		{"type too large", hdr(TypeSessionUses+1, `{}`), "unknown command type 15"},
		{"empty payload", hdr(TypeCacheExpire, ``), "not a json object"},
		{"null payload", hdr(TypeCacheExpire, `null`), "not a json object"},
		{"array payload", hdr(TypeCacheExpire, `[]`), "not a json object"},
		{"invalid json", hdr(TypeCacheExpire, `{"now":`), "unexpected end"},
		{"wrong field type", hdr(TypeCacheExpire, `{"now":"x"}`), "cannot unmarshal"},
		{"trailing garbage", hdr(TypeCacheExpire, `{"now":1} x`), "after top-level value"},
		{"second object", hdr(TypeCacheExpire, `{"now":1}{}`), "after top-level value"},
		{"negative limit", hdr(TypeCacheExpire, `{"limit":-1}`), "negative limit"},
		{"negative expires_at", hdr(TypeCacheSet, `{"key":"k","expires_at":-1}`), "negative expires_at"},
		{"negative idle_ttl", hdr(TypeSessionExpire, `{"idle_ttl":-1}`), "negative idle_ttl"},
		{"zero idle_ttl", hdr(TypeSessionExpire, `{}`), "idle_ttl must be positive"},
		{"register no node", hdr(TypeNodeRegister, `{}`), "missing node id"},
		{"register empty id", hdr(TypeNodeRegister, `{"node":{"id":""}}`), "missing node id"},
		{"deregister no id", hdr(TypeNodeDeregister, `{}`), "missing node_id"},
		{"catalog put no provider", hdr(TypeCatalogPut, `{"tools":[]}`), "missing provider"},
		{"catalog put unnamed", hdr(TypeCatalogPut, `{"provider":"p","tools":[{"name":"a"},{"provider":"p"}]}`), "tool 1: missing name"},
		{"catalog put negative ttl", hdr(TypeCatalogPut, `{"provider":"p","tools":[{"name":"a","cache_ttl":-1}]}`), "negative cache_ttl"},
		{"providers no node", hdr(TypeProviders, `{"providers":[{"name":"p"}]}`), "missing node_id"},
		{"providers negative replicas", hdr(TypeProviders, `{"node_id":"n","providers":[{"name":"p","replicas":-1}]}`), "negative replicas"},
		{"providers unnamed", hdr(TypeProviders, `{"node_id":"n","providers":[{"replicas":1}]}`), "provider 0: missing name"},
		{"assign no provider", hdr(TypeAssign, `{"assignment":{"holders":["a"]}}`), "missing assignment provider"},
		{"session open no id", hdr(TypeSessionOpen, `{"session":{}}`), "missing session id"},
		{"session touch no id", hdr(TypeSessionTouch, `{}`), "missing session_id"},
		{"session delete no id", hdr(TypeSessionDelete, `{}`), "want session_id or sessions"},
		{"session delete both", hdr(TypeSessionDelete, `{"session_id":"a","sessions":[{"id":"b","deleted_until":1}]}`), "want session_id or sessions"},
		{"session delete tombstone without end", hdr(TypeSessionDelete, `{"sessions":[{"id":"b"}]}`), "missing id or deleted_until"},
		{"cache set no key", hdr(TypeCacheSet, `{"value":"AA=="}`), "missing key"},
		{"cache delete no key", hdr(TypeCacheDelete, `{}`), "missing key"},
		{"bad base64", hdr(TypeCacheSet, `{"key":"k","value":"!"}`), "illegal base64"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Decode(tc.in)
			if err == nil {
				t.Fatalf("Decode succeeded: %+v", c)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
}

func TestEncodeErrors(t *testing.T) {
	for _, c := range []*Command{
		nil,
		{Type: 0},
		{Type: 200},
		{Type: TypeCacheSet},
		{Type: TypeCacheExpire, Limit: -1},
		{Type: TypeCatalogPut, Provider: "p", Tools: []Tool{{Name: "a", Spec: json.RawMessage(`{`)}}},
	} {
		if b, err := Encode(c); err == nil {
			t.Errorf("Encode(%+v) = %q, want error", c, b)
		}
	}
}

func TestTypeString(t *testing.T) {
	if got := TypeCacheSet.String(); got != "cache_set" {
		t.Errorf("TypeCacheSet.String() = %q", got)
	}
	if got := Type(99).String(); got != "Type(99)" {
		t.Errorf("Type(99).String() = %q", got)
	}
	seen := map[string]bool{}
	for typ := TypeNodeRegister; typ <= TypeCacheExpire; typ++ {
		s := typ.String()
		if s == "" || strings.HasPrefix(s, "Type(") || seen[s] {
			t.Errorf("bad or duplicate name %q for %d", s, typ)
		}
		seen[s] = true
	}
}

func TestResultErr(t *testing.T) {
	if err := (*Result)(nil).Err(); err != nil {
		t.Errorf("nil result: %v", err)
	}
	if err := (&Result{}).Err(); err != nil {
		t.Errorf("ok result: %v", err)
	}
	if err := (&Result{Code: CodeCASMismatch, Version: 7}).Err(); !errors.Is(err, ErrCASMismatch) || !strings.Contains(err.Error(), "7") {
		t.Errorf("cas mismatch: %v", err)
	}
	if err := (&Result{Code: CodeNotFound}).Err(); !errors.Is(err, ErrNotFound) {
		t.Errorf("not found: %v", err)
	}
	if err := (&Result{Code: "weird"}).Err(); err == nil {
		t.Error("unknown code: nil error")
	}
}

func FuzzDecode(f *testing.F) {
	for _, c := range sampleCommands() {
		f.Add(mustEncode(f, c))
	}
	f.Add([]byte{EncodingVersion, byte(TypeCatalogPut), '{', '}'})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Decode(b)
		if err != nil {
			return
		}
		b2, err := Encode(c)
		if err != nil {
			t.Fatalf("Encode(Decode(%q)): %v", b, err)
		}
		c2, err := Decode(b2)
		if err != nil {
			t.Fatalf("Decode(Encode(Decode(%q))) = %q: %v", b, b2, err)
		}
		if !reflect.DeepEqual(c, c2) {
			t.Fatalf("round trip mismatch for %q:\n got %+v\nwant %+v", b, c2, c)
		}
	})
}

func TestCheck(t *testing.T) {
	for _, c := range sampleCommands() {
		got, err := Check(mustEncode(t, c))
		if err != nil {
			t.Fatalf("Check(%s): %v", c.Type, err)
		}
		if !reflect.DeepEqual(got, c) {
			t.Fatalf("Check(%s) = %+v, want %+v", c.Type, got, c)
		}
	}
	hdr := func(t Type, js string) []byte { return append([]byte{EncodingVersion, byte(t)}, js...) }
	cases := []struct {
		name string
		in   []byte
		want string
	}{
		{"short", []byte{EncodingVersion}, "short input"},
		{"wrong version", []byte{9, byte(TypeCacheExpire), '{', '}'}, "unsupported encoding version 9"},
		{"unknown type", hdr(200, `{}`), "unknown command type 200"},
		{"not an object", hdr(TypeCacheExpire, `[]`), "not a json object"},
		{"invalid json", hdr(TypeCacheExpire, `{"now":`), "unexpected EOF"},
		{"unknown field", hdr(TypeCacheSet, `{"key":"k","ttl_ms":5}`), `cache_set: json: unknown field "ttl_ms"`},
		{"unknown nested field", hdr(TypeNodeRegister, `{"node":{"id":"n1","zone":"a"}}`), `unknown field "zone"`},
		{"type is not a field", hdr(TypeCacheExpire, `{"-":1}`), `unknown field "-"`},
		{"trailing garbage", hdr(TypeCacheExpire, `{"now":1} x`), "trailing data"},
		{"second object", hdr(TypeCacheExpire, `{"now":1}{}`), "trailing data"},
		{"missing key", hdr(TypeCacheSet, `{"value":"AA=="}`), "cache_set: missing key"},
		{"negative limit", hdr(TypeCacheExpire, `{"limit":-1}`), "negative limit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Check(tc.in)
			if err == nil {
				t.Fatalf("Check accepted %q: %+v", tc.in, c)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not contain %q", err, tc.want)
			}
		})
	}
	// Decode stays lenient: a log entry with a field from a newer version
	// applies.
	if _, err := Decode(hdr(TypeCacheSet, `{"key":"k","ttl_ms":5}`)); err != nil {
		t.Fatalf("Decode of an unknown field: %v", err)
	}
	// Whitespace around the object is not trailing data.
	if _, err := Check(hdr(TypeCacheExpire, " {\"now\":1}\r\n\t ")); err != nil {
		t.Fatalf("whitespace refused: %v", err)
	}
}

// FuzzCheck holds Check to its promise: what it accepts a fresh FSM
// applies without panicking, and re-encodes to something it accepts again.
func FuzzCheck(f *testing.F) {
	for _, c := range sampleCommands() {
		f.Add(mustEncode(f, c))
	}
	for _, b := range []string{
		"", "\x01", "\x01\x0a{}", "\x01\x0a{\"key\":\"k\"}", "\x01\x0a{\"key\":\"k\",\"x\":1}",
		"\x01\xc8{}", "\x02\x01{}", "\x01\x01{\"node\":{\"id\":\"a\",\"id\":\"\"}}",
		"\x01\x0c{\"now\":1} ", "\x01\x0c{\"now\":1}x", "\x01\x04{\"provider\":\"p\",\"tools\":[{\"name\":\"t\",\"spec\":{\"a\":[1,{}]}}]}",
	} {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := Check(b)
		if err != nil {
			return
		}
		d, err := Decode(b)
		if err != nil {
			t.Fatalf("Check accepted %q, Decode refused it: %v", b, err)
		}
		if !reflect.DeepEqual(c, d) {
			t.Fatalf("Check and Decode disagree on %q:\n check %+v\ndecode %+v", b, c, d)
		}
		New().Apply(&raft.Log{Index: 1, Data: b, Type: raft.LogCommand})
		b2, err := Encode(c)
		if err != nil {
			t.Fatalf("Encode(Check(%q)): %v", b, err)
		}
		if _, err := Check(b2); err != nil {
			t.Fatalf("Check(Encode(Check(%q))) = %q: %v", b, b2, err)
		}
	})
}
