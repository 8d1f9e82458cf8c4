package mcp

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mcpcluster/mcpcluster/cluster"
)

func newTestAuthenticator(t *testing.T, cfg *OAuthConfig) *authenticator {
	t.Helper()
	a, err := newAuthenticator(*cfg, discard)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestOAuthVerify(t *testing.T) {
	idp := newTestIdP(t)
	rs := idp.newKey("rs", jose.RS256)
	es := idp.newKey("es", jose.ES256)
	ed := idp.newKey("ed", jose.EdDSA)
	forger := idp.newKey("forger", jose.RS256)
	idp.unpublish(forger)
	a := newTestAuthenticator(t, idp.oauthConfig())

	with := func(edit func(map[string]any)) map[string]any {
		c := claims("alice", "mcp:tools")
		edit(c)
		return c
	}
	now := time.Now()
	forged := idp.sign(forger, claims("alice", ""))
	// A token naming a published kid but signed by another key.
	forgedKid := idp.signAs(forger, rs, claims("alice", ""))
	cases := []struct {
		name, token string
		ok          bool
	}{
		{"RS256", idp.sign(rs, claims("alice", "")), true},
		{"ES256", idp.sign(es, claims("bob", "")), true},
		{"EdDSA", idp.sign(ed, claims("carol", "")), true},
		{"audience among several", idp.sign(rs, with(func(c map[string]any) { c["aud"] = []string{"https://other.test", testAudience} })), true},
		{"expired within leeway", idp.sign(rs, with(func(c map[string]any) { c["exp"] = now.Add(-30 * time.Second).Unix() })), true},
		{"expired", idp.sign(rs, with(func(c map[string]any) { c["exp"] = now.Add(-2 * time.Minute).Unix() })), false},
		{"not yet valid", idp.sign(rs, with(func(c map[string]any) { c["nbf"] = now.Add(5 * time.Minute).Unix() })), false},
		{"no expiry", idp.sign(rs, with(func(c map[string]any) { delete(c, "exp") })), false},
		{"other issuer", idp.sign(rs, with(func(c map[string]any) { c["iss"] = "https://evil.test" })), false},
		{"other audience", idp.sign(rs, with(func(c map[string]any) { c["aud"] = "https://other.test/mcp" })), false},
		{"no audience", idp.sign(rs, with(func(c map[string]any) { delete(c, "aud") })), false},
		{"no subject", idp.sign(rs, with(func(c map[string]any) { delete(c, "sub") })), false},
		{"unknown key", forged, false},
		{"published kid, other key", forgedKid, false},
		{"garbage", "not.a.jwt", false},
		{"alg none", unsignedToken(claims("alice", "")), false},
	}
	for _, c := range cases {
		id, err := a.verify(context.Background(), c.token)
		if c.ok && err != nil {
			t.Errorf("%s: refused: %v", c.name, err)
		}
		if !c.ok && (err == nil || !errors.Is(err, errInvalidToken)) {
			t.Errorf("%s: accepted as %+v (err %v)", c.name, id, err)
		}
	}
	id, err := a.verify(context.Background(), idp.sign(ed, claims("carol", "mcp:tools extra")))
	if err != nil || id.Principal != "carol" || id.Claims["sub"] != "carol" {
		t.Fatalf("identity: %+v %v", id, err)
	}
}

func unsignedToken(c map[string]any) string {
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	b, _ := json.Marshal(c)
	return h + "." + base64.RawURLEncoding.EncodeToString(b) + "."
}

func TestOAuthPrincipalClaimAndScopes(t *testing.T) {
	idp := newTestIdP(t)
	kid := idp.newKey("k", jose.ES256)
	cfg := idp.oauthConfig()
	cfg.PrincipalClaim = "email"
	cfg.RequiredScopes = []string{"mcp:tools", "mcp:call"}
	a := newTestAuthenticator(t, cfg)
	c := claims("u1", "mcp:tools")
	c["email"] = "dana@example.test"
	id, err := a.verify(context.Background(), idp.sign(kid, c))
	if err != nil || id.Principal != "dana@example.test" {
		t.Fatalf("%+v %v", id, err)
	}
	if got := a.missingScopes(id.Claims); len(got) != 1 || got[0] != "mcp:call" {
		t.Fatalf("missing scopes %v", got)
	}
	c["scp"] = []any{"mcp:call"}
	id, _ = a.verify(context.Background(), idp.sign(kid, c))
	if got := a.missingScopes(id.Claims); len(got) != 0 {
		t.Fatalf("missing scopes with scp %v", got)
	}
}

// TestOAuthKeyRotation: a token with a new kid makes the keys be fetched
// again, at most once per MinRefreshInterval; from a URL and from a file.
func TestOAuthKeyRotation(t *testing.T) {
	for _, source := range []string{"url", "file"} {
		t.Run(source, func(t *testing.T) {
			idp := newTestIdP(t)
			old := idp.newKey("old", jose.RS256)
			cfg := idp.oauthConfig()
			if source == "file" {
				cfg.JWKSURL, cfg.JWKSFile = "", idp.file
			}
			cfg.MinRefreshInterval = time.Hour
			a := newTestAuthenticator(t, cfg)
			clock := time.Now()
			a.now = func() time.Time { return clock }
			if _, err := a.verify(context.Background(), idp.sign(old, claims("alice", ""))); err != nil {
				t.Fatal(err)
			}
			fresh := idp.newKey("new", jose.EdDSA)
			idp.unpublish(old)
			tok := idp.sign(fresh, claims("alice", ""))
			// Refreshed at start less than MinRefreshInterval ago: the
			// unknown kid does not make the node fetch again.
			if _, err := a.verify(context.Background(), tok); err == nil {
				t.Fatal("new kid accepted before a refresh was allowed")
			}
			hits := idp.hits.Load()
			for range 5 {
				a.verify(context.Background(), idp.sign(fresh, claims("x", "")))
			}
			if idp.hits.Load() != hits {
				t.Fatalf("unknown kids fetched the keys %d times inside the interval", idp.hits.Load()-hits)
			}
			clock = clock.Add(time.Hour + time.Second)
			a.now = func() time.Time { return clock }
			if _, err := a.verify(context.Background(), tok); err != nil && !strings.Contains(err.Error(), "expired") {
				t.Fatalf("new kid after the interval: %v", err)
			}
			if _, err := a.verify(context.Background(), idp.sign(old, claims("alice", ""))); err == nil {
				t.Fatal("a key removed from the jwks still verifies")
			}
		})
	}
}

// TestOAuthPeriodicRefresh: the refresh loop picks a rotation up by
// itself, and ends when its server stops.
func TestOAuthPeriodicRefresh(t *testing.T) {
	idp := newTestIdP(t)
	idp.newKey("a", jose.RS256)
	cfg := idp.oauthConfig()
	cfg.RefreshInterval = 20 * time.Millisecond
	cfg.MinRefreshInterval = time.Hour
	a := newTestAuthenticator(t, cfg)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() { a.run(stop); close(done) }()
	b := idp.newKey("b", jose.ES256)
	deadline := time.Now().Add(10 * time.Second)
	for len(a.candidates(b)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("key b never loaded by the refresh loop")
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stop)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("refresh loop did not stop")
	}
}

func TestOAuthConfigErrors(t *testing.T) {
	for _, cfg := range []OAuthConfig{
		{Audience: testAudience, JWKSURL: "http://127.0.0.1:1/"},
		{Issuer: testIssuer, JWKSURL: "http://127.0.0.1:1/"},
		{Issuer: testIssuer, Audience: testAudience},
		{Issuer: testIssuer, Audience: testAudience, JWKSURL: "http://127.0.0.1:1/", JWKSFile: "x"},
		{Issuer: testIssuer, Audience: testAudience, JWKSFile: "/nonexistent/jwks.json"},
	} {
		if _, err := newAuthenticator(cfg, discard); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

// oauthNode is a solo node whose /mcp takes the IdP's tokens and the
// static token static-token-0123456789 of "ops".
func oauthNode(t *testing.T, idp *testIdP, edit func(*Config)) (*cluster.Node, *Server, string) {
	n, s := newSoloNodeConfig(t, func(n *cluster.Node) []ProviderSpec {
		return []ProviderSpec{{Provider: NewBuiltin(BuiltinName, func() any { return n.Status() })}}
	}, func(c *Config) {
		c.OAuth = idp.oauthConfig()
		c.Tokens = map[string]string{"static-token-0123456789": "ops"}
		if edit != nil {
			edit(c)
		}
	})
	mux := http.NewServeMux()
	mux.Handle("/mcp", s.Handler())
	for _, p := range MetadataPaths() {
		mux.Handle("GET "+p, s.MetadataHandler())
	}
	url := serve(t, mux)
	return n, s, url
}

func post(t *testing.T, url string, headers map[string]string, body string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Accept", "application/json, text/event-stream")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

const initBody = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}`

func TestOAuthRefusals(t *testing.T) {
	idp := newTestIdP(t)
	kid := idp.newKey("k", jose.RS256)
	forger := idp.newKey("forger", jose.RS256)
	idp.unpublish(forger)
	_, _, url := oauthNode(t, idp, func(c *Config) { c.OAuth.RequiredScopes = []string{"mcp:tools"} })
	host := strings.TrimSuffix(strings.TrimPrefix(url, "http://"), "/mcp")
	meta := `Bearer resource_metadata="http://` + host + `/.well-known/oauth-protected-resource/mcp", scope="mcp:tools"`
	expired := claims("alice", "mcp:tools")
	expired["exp"] = time.Now().Add(-time.Hour).Unix()
	otherAud := claims("alice", "mcp:tools")
	otherAud["aud"] = "https://other.test/mcp"
	cases := []struct {
		name, auth string
		status     int
		challenge  string // prefix of WWW-Authenticate
	}{
		{"missing", "", 401, meta},
		{"not bearer", "Basic YWxpY2U6eA==", 401, meta},
		{"garbage", "Bearer nonsense", 401, meta + `, error="invalid_token"`},
		{"expired", "Bearer " + idp.sign(kid, expired), 401, meta + `, error="invalid_token"`},
		{"forged", "Bearer " + idp.sign(forger, claims("alice", "mcp:tools")), 401, meta + `, error="invalid_token"`},
		{"other audience", "Bearer " + idp.sign(kid, otherAud), 401, meta + `, error="invalid_token"`},
		{"no scope", "Bearer " + idp.sign(kid, claims("alice", "")), 403, meta + `, error="insufficient_scope"`},
		{"valid", "Bearer " + idp.sign(kid, claims("alice", "mcp:tools")), 200, ""},
		{"lowercase scheme", "bearer " + idp.sign(kid, claims("alice", "mcp:tools")), 200, ""},
		{"static token", "Bearer static-token-0123456789", 200, ""},
	}
	for _, c := range cases {
		h := map[string]string{}
		if c.auth != "" {
			h["Authorization"] = c.auth
		}
		resp, body := post(t, url, h, initBody)
		if resp.StatusCode != c.status {
			t.Errorf("%s: status %d, want %d: %s", c.name, resp.StatusCode, c.status, body)
			continue
		}
		got := resp.Header.Get("WWW-Authenticate")
		if c.challenge == "" && got != "" || !strings.HasPrefix(got, c.challenge) {
			t.Errorf("%s: WWW-Authenticate %q, want prefix %q", c.name, got, c.challenge)
		}
		if c.name == "missing" && got != meta {
			t.Errorf("missing token: WWW-Authenticate %q, want exactly %q", got, meta)
		}
	}

	resp, err := http.Get("http://" + host + "/.well-known/oauth-protected-resource/mcp")
	if err != nil {
		t.Fatal(err)
	}
	var doc map[string]any
	json.NewDecoder(resp.Body).Decode(&doc)
	resp.Body.Close()
	want := `{"authorization_servers":["https://idp.test"],"bearer_methods_supported":["header"],"resource":"https://mcp.test/mcp","scopes_supported":["mcp:tools"]}`
	if b, _ := json.Marshal(doc); resp.StatusCode != 200 || string(b) != want {
		t.Fatalf("metadata %d %s", resp.StatusCode, b)
	}
}

// TestSessionBoundToPrincipal: a session opened by alice is not found (404)
// when bob presents its id, token valid or not.
func TestSessionBoundToPrincipal(t *testing.T) {
	idp := newTestIdP(t)
	kid := idp.newKey("k", jose.ES256)
	_, _, url := oauthNode(t, idp, nil)
	alice := map[string]string{"Authorization": "Bearer " + idp.sign(kid, claims("alice", "")), "Mcp-Protocol-Version": "2025-11-25"}
	resp, body := post(t, url, alice, initBody)
	sid := resp.Header.Get("Mcp-Session-Id")
	if resp.StatusCode != 200 || sid == "" {
		t.Fatalf("initialize: %d %q %s", resp.StatusCode, sid, body)
	}
	list := `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`
	alice["Mcp-Session-Id"] = sid
	if resp, body := post(t, url, alice, list); resp.StatusCode != 200 {
		t.Fatalf("owner: %d %s", resp.StatusCode, body)
	}
	for name, auth := range map[string]string{
		"bob":    "Bearer " + idp.sign(kid, claims("bob", "")),
		"static": "Bearer static-token-0123456789",
	} {
		h := map[string]string{"Authorization": auth, "Mcp-Session-Id": sid, "Mcp-Protocol-Version": "2025-11-25"}
		if resp, body := post(t, url, h, list); resp.StatusCode != http.StatusNotFound {
			t.Fatalf("%s with alice's session: %d %s", name, resp.StatusCode, body)
		}
	}
}

func TestOriginCheck(t *testing.T) {
	_, s := newSoloNode(t)
	cases := []struct {
		origins  []string
		loopback bool
		origin   string
		ok       bool
	}{
		{nil, false, "", true},
		{nil, false, "http://localhost:3000", false},
		{nil, true, "http://localhost:3000", true},
		{nil, true, "http://127.0.0.1:9", true},
		{nil, true, "http://[::1]:9", true},
		{nil, true, "https://evil.test", false},
		{nil, true, "null", false},
		{[]string{"https://app.example.test"}, false, "https://APP.example.test", true},
		{[]string{"https://app.example.test"}, false, "https://app.example.test:8443", false},
		{[]string{"https://app.example.test"}, false, "http://localhost", false},
	}
	for _, c := range cases {
		s.origins = newOriginPolicy(c.origins, c.loopback)
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(initBody))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if c.origin != "" {
			req.Header.Set("Origin", c.origin)
		}
		s.Handler().ServeHTTP(rec, req)
		if c.ok != (rec.Code != http.StatusForbidden) {
			t.Errorf("origins %v loopback %v, Origin %q: %d %s", c.origins, c.loopback, c.origin, rec.Code, rec.Body)
			continue
		}
		if !c.ok {
			var msg map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &msg); err != nil || msg["jsonrpc"] != "2.0" || msg["error"] == nil {
				t.Errorf("refusal body %s", rec.Body)
			}
			if _, has := msg["id"]; has {
				t.Errorf("refusal body has an id: %s", rec.Body)
			}
		}
	}
}

// recorder is an Observer that keeps what it is told.
type recorder struct {
	nopObserver
	methods chan string
}

func (r *recorder) Request(method, tool string, failed bool) {
	select {
	case r.methods <- method:
	default:
	}
}

// TestAdmissionReadsTheBody: the limit counts a tools/call whatever the
// Mcp-Method header says; a 2026-07-28 header that contradicts the body is
// 400 (-32020); method labels are bounded.
func TestAdmissionReadsTheBody(t *testing.T) {
	rec := &recorder{methods: make(chan string, 100)}
	_, s := newSoloNodeConfig(t, func(n *cluster.Node) []ProviderSpec {
		return []ProviderSpec{{Provider: NewBuiltin(BuiltinName, func() any { return n.Status() })}}
	}, func(c *Config) {
		c.MaxConcurrent, c.MaxQueue = 1, 0
		c.Observer = rec
	})
	call := `{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}`
	serveReq := func(headers map[string]string, body string) *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		s.Handler().ServeHTTP(w, req)
		return w
	}
	release, err := s.front.acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// An older client's header is not believed: the body is a call.
	if w := serveReq(map[string]string{"Mcp-Method": "ping"}, call); w.Code != http.StatusTooManyRequests {
		t.Fatalf("call disguised as ping while full: %d %s", w.Code, w.Body)
	}
	release()

	modern := map[string]string{"Mcp-Protocol-Version": mcplib.ProtocolVersion20260728, "Mcp-Method": "tools/list"}
	w := serveReq(modern, call)
	var msg struct {
		ID    any `json:"id"`
		Error struct {
			Code int `json:"code"`
		} `json:"error"`
	}
	json.Unmarshal(w.Body.Bytes(), &msg)
	if w.Code != http.StatusBadRequest || msg.Error.Code != mcplib.HEADER_MISMATCH || msg.ID != float64(7) {
		t.Fatalf("method header mismatch: %d %s", w.Code, w.Body)
	}
	modern["Mcp-Method"] = "tools/call"
	modern["Mcp-Name"] = "status"
	if w := serveReq(modern, call); w.Code != http.StatusBadRequest {
		t.Fatalf("name header mismatch: %d %s", w.Code, w.Body)
	}

	drain := func() {
		for {
			select {
			case <-rec.methods:
			default:
				return
			}
		}
	}
	drain()
	serveReq(nil, `{"jsonrpc":"2.0","id":8,"method":"random/`+strings.Repeat("x", 40)+`"}`)
	select {
	case m := <-rec.methods:
		if m != "other" {
			t.Fatalf("unknown method labelled %q", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no request observed")
	}
}
