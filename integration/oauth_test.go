package integration

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"github.com/mark3labs/mcp-go/client/transport"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	sdk "github.com/modelcontextprotocol/go-sdk/mcp"
)

const (
	oauthIssuer   = "https://idp.mcpcluster.test"
	oauthAudience = "https://mcp.mcpcluster.test/mcp"
)

// idp is the tests' identity provider: signing keys of the three
// algorithms, a JWKS served over HTTP on loopback, tokens signed with
// go-jose.
type idp struct {
	t     testing.TB
	url   string
	mu    sync.Mutex
	keys  map[string]idpKey
	order []string // published key ids
}

type idpKey struct {
	alg  jose.SignatureAlgorithm
	priv crypto.Signer
}

func startIdP(t testing.TB) *idp {
	t.Helper()
	p := &idp{t: t, keys: map[string]idpKey{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(p.jwks())
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	p.url = "http://" + ln.Addr().String() + "/jwks.json"
	return p
}

// addKey makes a key of alg; published puts it in the JWKS.
func (p *idp) addKey(kid string, alg jose.SignatureAlgorithm, published bool) {
	p.t.Helper()
	var (
		priv crypto.Signer
		err  error
	)
	switch alg {
	case jose.RS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		p.t.Fatal(err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.keys[kid] = idpKey{alg: alg, priv: priv}
	if published {
		p.order = append(p.order, kid)
	}
}

func (p *idp) jwks() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	var set jose.JSONWebKeySet
	for _, kid := range p.order {
		k := p.keys[kid]
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.priv.Public(), KeyID: kid, Algorithm: string(k.alg), Use: "sig"})
	}
	b, _ := json.Marshal(set)
	return b
}

// token signs claims for sub (valid for an hour, scope mcp:tools) with
// kid, after edit changes them.
func (p *idp) token(kid, sub string, edit func(map[string]any)) string {
	p.t.Helper()
	now := time.Now()
	c := map[string]any{"iss": oauthIssuer, "aud": oauthAudience, "sub": sub, "scope": "mcp:tools",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	if edit != nil {
		edit(c)
	}
	p.mu.Lock()
	k := p.keys[kid]
	p.mu.Unlock()
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: jose.JSONWebKey{Key: k.priv, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		p.t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(c).Serialize()
	if err != nil {
		p.t.Fatal(err)
	}
	return tok
}

// recordingUpstream is an MCP server at an HTTP URL whose tool "forecast"
// counts its runs; it records the headers of every request.
type recordingUpstream struct {
	url   string
	calls atomic.Int64
	mu    sync.Mutex
	seen  []http.Header
}

func startRecordingUpstream(t testing.TB) *recordingUpstream {
	t.Helper()
	u := &recordingUpstream{}
	s := server.NewMCPServer("recording-upstream", "1")
	s.AddTool(mcplib.NewTool("forecast", mcplib.WithString("city", mcplib.Required()), mcplib.WithReadOnlyHintAnnotation(true)),
		func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			u.calls.Add(1)
			return mcplib.NewToolResultText("sunny in " + req.GetString("city", "?")), nil
		})
	h := server.NewStreamableHTTPServer(s)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.seen = append(u.seen, r.Header.Clone())
		u.mu.Unlock()
		h.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	u.url = "http://" + ln.Addr().String() + "/mcp"
	return u
}

func (u *recordingUpstream) headers() []http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]http.Header(nil), u.seen...)
}

// mcpPost sends one raw MCP POST (no admin token) and returns the answer.
func mcpPost(t testing.TB, url string, headers map[string]string, body string) (int, http.Header, string) {
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
	resp, err := (&http.Client{Timeout: 15 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b)
}

const oauthInit = `{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"oauth-test","version":"1"}}}`

// TestOAuthCluster: three nodes as OAuth resource servers of one canonical
// URI, with an HTTP upstream on one of them (so two nodes forward).
func TestOAuthCluster(t *testing.T) {
	p := startIdP(t)
	p.addKey("rsa-1", jose.RS256, true)
	p.addKey("ec-1", jose.ES256, true)
	p.addKey("ed-1", jose.EdDSA, true)
	p.addKey("forger", jose.RS256, false)
	up := startRecordingUpstream(t)
	const static = "static-ops-token-0123456789"

	cfg := filepath.Join(t.TempDir(), "oauth.yaml")
	yaml := fmt.Sprintf(`oauth:
  issuer: %s
  audience: %s
  jwks_url: %s
  scopes_supported: [mcp:tools]
  required_scopes: [mcp:tools]
  jwks_min_refresh_interval: 200ms
tool_policy:
  - 'principal == "ops"'
  - 'jwt.sub != "mallory" && mcp.method == "tools/call"'
auth_tokens:
  %s: ops
providers:
  - name: weather
    type: http
    url: %s
    headers: {X-Upstream-Key: the-provider-credential}
    replicas: 1
    cache_ttl: 1m
`, oauthIssuer, oauthAudience, p.url, static, up.url)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newCluster(t, 3, "--config", cfg)
	c.waitStable(60*time.Second, c.nodes, c.ids()...)
	holders := c.nodes[0].holders(t, "forecast", 1)
	t.Logf("forecast runs on %v", holders)

	// Tokens of every key type, alice's and bob's.
	alice := p.token("rsa-1", "alice", nil)
	bob := p.token("ec-1", "bob", nil)
	carol := p.token("ed-1", "carol", nil)

	t.Run("metadata", func(t *testing.T) {
		want := `{"authorization_servers":["` + oauthIssuer + `"],"bearer_methods_supported":["header"],"resource":"` + oauthAudience + `","scopes_supported":["mcp:tools"]}`
		for _, n := range c.nodes {
			for _, path := range []string{"/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"} {
				resp, err := http.Get("http://" + n.http + path)
				if err != nil {
					t.Fatal(err)
				}
				var doc map[string]any
				err = json.NewDecoder(resp.Body).Decode(&doc)
				resp.Body.Close()
				b, _ := json.Marshal(doc)
				if err != nil || resp.StatusCode != 200 || string(b) != want {
					t.Fatalf("%s %s: %d %s %v", n.id, path, resp.StatusCode, b, err)
				}
			}
		}
	})

	t.Run("refusals", func(t *testing.T) {
		expired := p.token("rsa-1", "alice", func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() })
		otherAud := p.token("rsa-1", "alice", func(c map[string]any) { c["aud"] = "https://other.mcpcluster.test/mcp" })
		forged := p.token("forger", "alice", nil)
		noScope := p.token("rsa-1", "alice", func(c map[string]any) { delete(c, "scope") })
		for _, n := range c.nodes {
			meta := `Bearer resource_metadata="http://` + n.http + `/.well-known/oauth-protected-resource/mcp", scope="mcp:tools"`
			for _, tc := range []struct {
				name, auth string
				status     int
				challenge  string
			}{
				{"missing", "", 401, meta},
				{"garbage", "Bearer not-a-token", 401, meta + `, error="invalid_token"`},
				{"expired", "Bearer " + expired, 401, meta + `, error="invalid_token"`},
				{"forged", "Bearer " + forged, 401, meta + `, error="invalid_token"`},
				{"other audience", "Bearer " + otherAud, 401, meta + `, error="invalid_token"`},
				{"no scope", "Bearer " + noScope, 403, meta + `, error="insufficient_scope"`},
			} {
				h := map[string]string{}
				if tc.auth != "" {
					h["Authorization"] = tc.auth
				}
				status, hdr, body := mcpPost(t, n.mcpURL(), h, oauthInit)
				got := hdr.Get("WWW-Authenticate")
				if status != tc.status || !strings.HasPrefix(got, tc.challenge) || (tc.name == "missing" && got != meta) {
					t.Fatalf("%s, %s: %d %q %s; want %d %q", n.id, tc.name, status, got, body, tc.status, tc.challenge)
				}
			}
			for name, tok := range map[string]string{"RS256": alice, "ES256": bob, "EdDSA": carol, "static": static} {
				if status, _, body := mcpPost(t, n.mcpURL(), map[string]string{"Authorization": "Bearer " + tok}, oauthInit); status != 200 {
					t.Fatalf("%s, %s token: %d %s", n.id, name, status, body)
				}
			}
		}
	})

	t.Run("calls through every node on both revisions, mcp-go and go-sdk", func(t *testing.T) {
		for _, n := range c.nodes {
			for _, version := range []string{legacy, modern} {
				cl := mcpgoClient(t, n.mcpURL(), version, transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + carol}))
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
				text, ranOn, err := callTool(ctx, cl, "forecast", map[string]any{"city": n.id + "-" + version})
				cancel()
				if err != nil || text != "sunny in "+n.id+"-"+version || ranOn != holders[0] {
					t.Fatalf("%s %s: %q on %q, %v", n.id, version, text, ranOn, err)
				}
				// go-sdk's client, with bob's token.
				hc := matrixHTTPClient(t)
				hc.Transport = bearerTransport{token: bob, base: hc.Transport}
				cs := sdkConnect(t, hc, n.mcpURL(), version, nil)
				ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
				res, err := sdkSession{cs}.call(ctx, "forecast", map[string]any{"city": "sdk-" + n.id + "-" + version})
				cancel()
				if err != nil || res.text != "sunny in sdk-"+n.id+"-"+version || res.ranOn != holders[0] {
					t.Fatalf("go-sdk %s %s: %+v %v", n.id, version, res, err)
				}
			}
		}
	})

	t.Run("tool policy on every node, forwarding ones included", func(t *testing.T) {
		mallory := p.token("rsa-1", "mallory", nil)
		call := `{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"forecast","arguments":{"city":"x"}}}`
		before := up.calls.Load()
		for _, n := range c.nodes {
			status, _, body := mcpPost(t, n.mcpURL(), map[string]string{"Authorization": "Bearer " + mallory}, call)
			if status != http.StatusForbidden || !strings.Contains(body, "-32003") || !strings.Contains(body, `"id":4`) {
				t.Fatalf("%s: mallory's call: %d %s", n.id, status, body)
			}
			for who, tok := range map[string]string{"mallory": mallory, "alice": alice} {
				cl := mcpgoClient(t, n.mcpURL(), legacy, transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + tok}))
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				list, err := cl.ListTools(ctx, mcplib.ListToolsRequest{})
				cancel()
				if err != nil {
					t.Fatal(err)
				}
				has := false
				for _, tl := range list.Tools {
					has = has || tl.Name == "forecast"
				}
				if has != (who == "alice") || (who == "mallory" && len(list.Tools) != 0) {
					t.Fatalf("%s: %s lists %d tools (forecast: %v)", n.id, who, len(list.Tools), has)
				}
			}
		}
		if up.calls.Load() != before {
			t.Fatal("a refused call reached the upstream")
		}
	})

	t.Run("result cache per principal", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		args := map[string]any{"city": "Porto"}
		call := func(n *node, tok string) {
			cl := mcpgoClient(t, n.mcpURL(), legacy, transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + tok}))
			if _, _, err := callTool(ctx, cl, "forecast", args); err != nil {
				t.Fatalf("%s: %v", n.id, err)
			}
		}
		before := up.calls.Load()
		call(c.nodes[0], alice)
		call(c.nodes[1], alice) // alice's cached result, on another node
		if got := up.calls.Load() - before; got != 1 {
			t.Fatalf("alice twice: %d upstream runs, want 1", got)
		}
		call(c.nodes[2], bob) // not alice's result
		if got := up.calls.Load() - before; got != 2 {
			t.Fatalf("bob after alice: %d upstream runs, want 2", got)
		}
	})

	t.Run("sessions bound to their principal", func(t *testing.T) {
		h := map[string]string{"Authorization": "Bearer " + alice, "Mcp-Protocol-Version": legacy}
		status, hdr, body := mcpPost(t, c.nodes[0].mcpURL(), h, oauthInit)
		sid := hdr.Get("Mcp-Session-Id")
		if status != 200 || sid == "" {
			t.Fatalf("initialize: %d %q %s", status, sid, body)
		}
		list := `{"jsonrpc":"2.0","id":2,"method":"tools/list"}`
		for _, n := range c.nodes {
			for who, tok := range map[string]string{"bob": bob, "static": static} {
				hb := map[string]string{"Authorization": "Bearer " + tok, "Mcp-Protocol-Version": legacy, "Mcp-Session-Id": sid}
				if status, _, body := mcpPost(t, n.mcpURL(), hb, list); status != http.StatusNotFound {
					t.Fatalf("%s with alice's session on %s: %d %s", who, n.id, status, body)
				}
			}
			h["Mcp-Session-Id"] = sid
			waitFor(t, 10*time.Second, func() error {
				if status, _, body := mcpPost(t, n.mcpURL(), h, list); status != 200 {
					return fmt.Errorf("alice's session on %s: %d %s", n.id, status, body)
				}
				return nil
			})
		}
	})

	t.Run("key rotation without restart", func(t *testing.T) {
		p.addKey("rsa-2", jose.RS256, false)
		rotated := p.token("rsa-2", "alice", nil)
		for _, n := range c.nodes {
			if status, _, _ := mcpPost(t, n.mcpURL(), map[string]string{"Authorization": "Bearer " + rotated}, oauthInit); status != 401 {
				t.Fatalf("%s: unpublished key accepted: %d", n.id, status)
			}
		}
		p.mu.Lock()
		p.order = append(p.order, "rsa-2")
		p.mu.Unlock()
		for _, n := range c.nodes {
			waitFor(t, 15*time.Second, func() error {
				if status, _, body := mcpPost(t, n.mcpURL(), map[string]string{"Authorization": "Bearer " + rotated}, oauthInit); status != 200 {
					return fmt.Errorf("%s: new kid: %d %s", n.id, status, body)
				}
				return nil
			})
		}
	})

	t.Run("origin", func(t *testing.T) {
		for _, n := range c.nodes {
			h := map[string]string{"Authorization": "Bearer " + alice, "Origin": "https://evil.example.test"}
			status, _, body := mcpPost(t, n.mcpURL(), h, oauthInit)
			var msg map[string]any
			json.Unmarshal([]byte(body), &msg)
			if _, hasID := msg["id"]; status != http.StatusForbidden || msg["error"] == nil || hasID {
				t.Fatalf("%s, foreign origin: %d %s", n.id, status, body)
			}
			h["Origin"] = "http://localhost:5173" // loopback node: loopback origins pass
			if status, _, body := mcpPost(t, n.mcpURL(), h, oauthInit); status != 200 {
				t.Fatalf("%s, loopback origin: %d %s", n.id, status, body)
			}
		}
	})

	t.Run("header and body method disagree", func(t *testing.T) {
		call := `{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"forecast","arguments":{"city":"x"},"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}`
		for _, n := range c.nodes {
			h := map[string]string{"Authorization": "Bearer " + alice, "Mcp-Protocol-Version": modern, "Mcp-Method": "tools/list"}
			status, _, body := mcpPost(t, n.mcpURL(), h, call)
			if status != http.StatusBadRequest || !strings.Contains(body, "-32020") {
				t.Fatalf("%s: %d %s", n.id, status, body)
			}
		}
	})

	t.Run("method labels bounded", func(t *testing.T) {
		n := c.nodes[0]
		odd := "made/up-" + fmt.Sprint(time.Now().UnixNano())
		mcpPost(t, n.mcpURL(), map[string]string{"Authorization": "Bearer " + alice}, `{"jsonrpc":"2.0","id":9,"method":"`+odd+`"}`)
		resp, err := http.Get("http://" + n.http + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if strings.Contains(string(b), odd) || !strings.Contains(string(b), `mcpcluster_requests_total{method="other"`) {
			t.Fatalf("metrics: unknown method not counted as other")
		}
	})

	t.Run("no token passthrough", func(t *testing.T) {
		seen := up.headers()
		if len(seen) == 0 {
			t.Fatal("the upstream saw no request")
		}
		for _, h := range seen {
			if h.Get("X-Upstream-Key") != "the-provider-credential" || h.Get("Authorization") != "" {
				t.Fatalf("upstream headers: %v", h)
			}
			for name, vs := range h {
				for _, v := range vs {
					for _, tok := range []string{alice, bob, carol, static} {
						if strings.Contains(v, tok) {
							t.Fatalf("upstream got a client token in %s", name)
						}
					}
				}
			}
		}
	})
	// Last, as it adds a node: a tool appearing in the cluster reaches an
	// allowed principal's client as notifications/tools/list_changed and
	// then in its tools/list; a denied principal's list stays without it.
	t.Run("list_changed under the policy", func(t *testing.T) {
		mallory := p.token("rsa-1", "mallory", nil)
		type watcher struct {
			who     string
			changed chan struct{}
			cs      *sdk.ClientSession
		}
		var ws []*watcher
		for who, tok := range map[string]string{"alice": alice, "mallory": mallory} {
			w := &watcher{who: who, changed: make(chan struct{}, 16)}
			hc := matrixHTTPClient(t)
			hc.Transport = bearerTransport{token: tok, base: hc.Transport}
			w.cs = sdkConnect(t, hc, c.nodes[0].mcpURL(), modern, &sdk.ClientOptions{
				ToolListChangedHandler: func(context.Context, *sdk.ToolListChangedRequest) {
					select {
					case w.changed <- struct{}{}:
					default:
					}
				},
			})
			ws = append(ws, w)
		}
		extra := filepath.Join(t.TempDir(), "extra.yaml")
		if err := os.WriteFile(extra, []byte(yaml+"  - name: extra\n    type: builtin\n    prefix: extra_\n    replicas: 1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		n4 := newNode(t, "node4", append([]string{"--config", extra, "--bootstrap-expect", "3"}, c.joinFlags()...)...)
		n4.start()
		c.waitSuffrage(60*time.Second, append(slices.Clone(c.nodes), n4), 3, 1)
		has := func(w *watcher) (bool, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			list, err := w.cs.ListTools(ctx, nil)
			if err != nil {
				return false, err
			}
			for _, tl := range list.Tools {
				if tl.Name == "extra_echo" {
					return true, nil
				}
			}
			return false, nil
		}
		alice := ws[0]
		if alice.who != "alice" {
			alice = ws[1]
		}
		deadline := time.After(60 * time.Second)
		for found := false; !found; {
			select {
			case <-alice.changed:
			case <-deadline:
				t.Fatal("alice's client: no list_changed listing extra_echo within 60s")
			}
			var err error
			if found, err = has(alice); err != nil {
				t.Fatal(err)
			}
		}
		for _, w := range ws {
			if w.who != "mallory" {
				continue
			}
			if got, err := has(w); err != nil || got {
				t.Fatalf("mallory's tools/list has extra_echo: %v %v", got, err)
			}
		}
	})
}
