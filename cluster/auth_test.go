package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const (
	readTok  = "read-token-0123456789"
	writeTok = "write-token-0123456789"
	otherTok = "write-token-0123456780" // same length, one character off
)

func TestParseTokenFile(t *testing.T) {
	tokens, err := ParseTokenFile([]byte("# operators\n" + writeTok + "\r\n\n  read " + readTok + "  \nwrite " + otherTok + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if tokens.Len() != 3 {
		t.Fatalf("%d tokens, want 3", tokens.Len())
	}
	for tok, want := range map[string]AccessLevel{writeTok: AccessWrite, readTok: AccessRead, otherTok: AccessWrite} {
		if got, ok := tokens.Check(tok); !ok || got != want {
			t.Errorf("Check(%q) = %v %v, want %v", tok, got, ok, want)
		}
	}

	bad := map[string]string{
		"":                                     "no tokens",
		"# only a comment\n\n":                 "no tokens",
		"short":                                "line 1: token is shorter than 16",
		"\n\nadmin " + writeTok:                `line 3: access level "admin" is not read or write`,
		"read " + readTok + " extra":           "line 1: want <token> or <level> <token>, got 3 fields",
		writeTok + "\nread " + writeTok:        "line 2: token is already configured",
		"read " + "tok\x01en-0123456789abcdef": "line 1: token has a character other than printable ASCII",
		readTok + "\n# fine\nwrite 0123456789abcde\n": "line 3: token is shorter than 16",
	}
	for in, want := range bad {
		_, err := ParseTokenFile([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: got %v, want an error with %q", in, err, want)
		}
		if err != nil && strings.Contains(in, writeTok) && strings.Contains(err.Error(), writeTok) {
			t.Errorf("%q: error shows the token: %v", in, err)
		}
	}
}

func TestTokensCheck(t *testing.T) {
	var none *Tokens
	if none.Len() != 0 {
		t.Fatal("nil Tokens not empty")
	}
	if _, ok := none.Check(writeTok); ok {
		t.Fatal("nil Tokens accepted a token")
	}
	tokens := NewTokens()
	if err := tokens.Add(readTok, AccessRead); err != nil {
		t.Fatal(err)
	}
	if err := tokens.Add(writeTok, AccessWrite); err != nil {
		t.Fatal(err)
	}
	if err := tokens.Add(writeTok, AccessRead); !errors.Is(err, ErrDuplicateToken) {
		t.Fatalf("duplicate Add: %v", err)
	}
	if err := tokens.Add("0123456789abcdef", 0); err == nil {
		t.Fatal("Add with no level succeeded")
	}
	if err := tokens.Add("short", AccessWrite); err == nil {
		t.Fatal("Add of a short token succeeded")
	}
	cases := []struct {
		tok  string
		want AccessLevel
		ok   bool
	}{
		{readTok, AccessRead, true},
		{writeTok, AccessWrite, true},
		{otherTok, 0, false},
		{writeTok[:len(writeTok)-1], 0, false},
		{writeTok + "x", 0, false},
		{strings.ToUpper(writeTok), 0, false},
		{"", 0, false},
	}
	for _, c := range cases {
		if got, ok := tokens.Check(c.tok); got != c.want || ok != c.ok {
			t.Errorf("Check(%q) = %v %v, want %v %v", c.tok, got, ok, c.want, c.ok)
		}
	}
	// The match does not depend on the token's position in the set.
	rev := NewTokens()
	_ = rev.Add(writeTok, AccessWrite)
	_ = rev.Add(readTok, AccessRead)
	if l, ok := rev.Check(readTok); !ok || l != AccessRead {
		t.Errorf("reversed set: Check(read) = %v %v", l, ok)
	}
}

func TestTokenRedacted(t *testing.T) {
	tok := Token(writeTok)
	var buf bytes.Buffer
	logger := slog.New(slog.NewJSONHandler(&buf, nil))
	logger.Info("x", "token", tok)
	slog.New(slog.NewTextHandler(&buf, nil)).Info("x", "token", tok)
	fmt.Fprintf(&buf, "%v %s %+v %#v %q %x", tok, tok, tok, tok, tok, tok)
	b, _ := json.Marshal(map[string]Token{"t": tok})
	buf.Write(b)
	if strings.Contains(buf.String(), writeTok) {
		t.Fatalf("token printed: %s", buf.String())
	}
	if !strings.Contains(buf.String(), "[redacted]") {
		t.Fatalf("no [redacted] in %s", buf.String())
	}
}

type route struct {
	method, path string
	write        bool
}

// adminRoutes is every /v1/ endpoint; leave comes last (it makes the node leave).
var adminRoutes = []route{
	{"GET", "/v1/status", false},
	{"GET", "/v1/catalog", false},
	{"GET", "/v1/cache", false},
	{"GET", "/v1/cache/seeded", false},
	{"GET", "/v1/fsm/hash", false},
	{"PUT", "/v1/cache/k", true},
	{"DELETE", "/v1/cache/k", true},
	{"POST", "/v1/agent/snapshot", true},
	{"POST", "/v1/agent/transfer-leadership", true},
	{"GET", "/v1/operator/keyring", true},
	{"POST", "/v1/operator/keyring/install", true},
	{"POST", "/v1/agent/leave", true},
}

func do(t *testing.T, srv *httptest.Server, method, path, token string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+path, strings.NewReader("v"))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, string(body)
}

func TestAPIAuthMatrix(t *testing.T) {
	node := newTestCluster(t, 1)[0]
	set(t, node, "seeded", "v")
	tokens, err := ParseTokenFile([]byte("read " + readTok + "\n" + writeTok + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	api := NewAPI(node, APIConfig{Tokens: tokens, Logger: logger})
	srv := httptest.NewServer(api)
	defer srv.Close()

	for _, p := range []string{"/healthz", "/readyz"} {
		if resp, body := do(t, srv, "GET", p, ""); resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s without a token: %s %s", p, resp.Status, body)
		}
	}

	for _, r := range adminRoutes {
		name := r.method + " " + r.path
		for _, tok := range []string{"", otherTok, "not-a-token"} {
			resp, body := do(t, srv, r.method, r.path, tok)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("%s with token %q: %s, want 401", name, tok, resp.Status)
			}
			if got := resp.Header.Get("WWW-Authenticate"); got != `Bearer realm="mcpcluster"` {
				t.Errorf("%s: WWW-Authenticate %q", name, got)
			}
			var e struct{ Error string }
			if json.Unmarshal([]byte(body), &e) != nil || e.Error == "" {
				t.Errorf("%s: 401 body is not a JSON error: %s", name, body)
			}
		}
		resp, body := do(t, srv, r.method, r.path, readTok)
		switch {
		case r.write && resp.StatusCode != http.StatusForbidden:
			t.Errorf("%s with a read token: %s, want 403", name, resp.Status)
		case r.write && !strings.Contains(body, `"error"`):
			t.Errorf("%s: 403 body is not a JSON error: %s", name, body)
		case !r.write && resp.StatusCode != http.StatusOK:
			t.Errorf("%s with a read token: %s %s, want 200", name, resp.Status, body)
		}
	}
	// Other schemes and a lower-case scheme.
	req, _ := http.NewRequest("GET", srv.URL+"/v1/status", nil)
	req.Header.Set("Authorization", "Basic "+readTok)
	if resp, _ := srv.Client().Do(req); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("Basic scheme: %s, want 401", resp.Status)
	}
	req.Header.Set("Authorization", "bearer "+readTok)
	if resp, _ := srv.Client().Do(req); resp.StatusCode != http.StatusOK {
		t.Errorf("lower-case bearer: %s, want 200", resp.Status)
	}

	for _, r := range adminRoutes {
		resp, body := do(t, srv, r.method, r.path, writeTok)
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			t.Errorf("%s %s with a write token: %s %s", r.method, r.path, resp.Status, body)
		}
		if r.path == "/v1/agent/leave" && resp.StatusCode != http.StatusOK {
			t.Errorf("leave with a write token: %s %s", resp.Status, body)
		}
	}

	for _, secret := range []string{readTok, writeTok, otherTok} {
		if strings.Contains(logs.String(), secret) {
			t.Fatalf("a token was logged:\n%s", logs.String())
		}
	}
}

func TestAPIOpenWithoutTokens(t *testing.T) {
	node := newTestCluster(t, 1)[0]
	srv := httptest.NewServer(NewAPI(node, APIConfig{Tokens: NewTokens()}))
	defer srv.Close()
	if resp, body := do(t, srv, "GET", "/v1/status", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("empty token set: %s %s", resp.Status, body)
	}
	if resp, body := do(t, srv, "PUT", "/v1/cache/k", ""); resp.StatusCode != http.StatusOK {
		t.Fatalf("empty token set: %s %s", resp.Status, body)
	}
}

func TestAPIHandleAndProtect(t *testing.T) {
	tokens := NewTokens()
	_ = tokens.Add(readTok, AccessRead)
	_ = tokens.Add(writeTok, AccessWrite)
	api := &API{cfg: APIConfig{Tokens: tokens, Logger: slog.New(slog.DiscardHandler)}, mux: http.NewServeMux()}
	ok := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	api.Handle("GET /v1/operator/keyring", AccessWrite, ok)
	mux := http.NewServeMux()
	mux.Handle("/", api)
	mux.Handle("/debug/pprof/", api.Protect(AccessWrite, ok))
	srv := httptest.NewServer(mux)
	defer srv.Close()
	for _, p := range []string{"/v1/operator/keyring", "/debug/pprof/"} {
		for tok, want := range map[string]int{"": 401, readTok: 403, writeTok: 204} {
			if resp, _ := do(t, srv, "GET", p, tok); resp.StatusCode != want {
				t.Errorf("GET %s with %q: %s, want %d", p, tok, resp.Status, want)
			}
		}
	}
	for _, bad := range []func(){
		func() { api.Handle("/v1/x", AccessRead, ok) },
		func() { api.Handle("GET /healthz2", AccessRead, ok) },
		func() { api.Handle("GET /v1/y", 0, ok) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Error("bad registration did not panic")
				}
			}()
			bad()
		}()
	}
}
