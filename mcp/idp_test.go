package mcp

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// testIssuer and testAudience are the identity provider and resource of
// the tests.
const (
	testIssuer   = "https://idp.test"
	testAudience = "https://mcp.test/mcp"
)

// testIdP is a small identity provider: signing keys, a JWKS served on
// loopback and written to a file, and tokens signed with go-jose.
type testIdP struct {
	t     testing.TB
	mu    sync.Mutex
	keys  map[string]testKey // kid → key
	order []string
	file  string
	srv   *httptest.Server
	hits  atomic.Int64 // JWKS fetches over HTTP
}

type testKey struct {
	alg  jose.SignatureAlgorithm
	priv crypto.Signer
}

func newTestIdP(t testing.TB) *testIdP {
	t.Helper()
	idp := &testIdP{t: t, keys: map[string]testKey{}, file: filepath.Join(t.TempDir(), "jwks.json")}
	idp.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		idp.hits.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.Write(idp.jwks())
	}))
	t.Cleanup(idp.srv.Close)
	return idp
}

// newKey makes a key of alg, publishes it under kid and returns kid.
func (idp *testIdP) newKey(kid string, alg jose.SignatureAlgorithm) string {
	idp.t.Helper()
	var (
		priv crypto.Signer
		err  error
	)
	switch alg {
	case jose.RS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case jose.EdDSA:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	}
	if err != nil {
		idp.t.Fatal(err)
	}
	idp.mu.Lock()
	idp.keys[kid] = testKey{alg: alg, priv: priv}
	idp.order = append(idp.order, kid)
	idp.mu.Unlock()
	idp.writeFile()
	return kid
}

// unpublish removes kid from the JWKS (it can still sign: a forger's key).
func (idp *testIdP) unpublish(kid string) {
	idp.mu.Lock()
	for i, k := range idp.order {
		if k == kid {
			idp.order = append(idp.order[:i], idp.order[i+1:]...)
			break
		}
	}
	idp.mu.Unlock()
	idp.writeFile()
}

func (idp *testIdP) jwks() []byte {
	idp.mu.Lock()
	defer idp.mu.Unlock()
	set := jose.JSONWebKeySet{}
	for _, kid := range idp.order {
		k := idp.keys[kid]
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: k.priv.Public(), KeyID: kid, Algorithm: string(k.alg), Use: "sig"})
	}
	b, err := json.Marshal(set)
	if err != nil {
		panic(err)
	}
	return b
}

func (idp *testIdP) writeFile() {
	tmp := idp.file + ".tmp"
	if err := os.WriteFile(tmp, idp.jwks(), 0o644); err != nil {
		idp.t.Fatal(err)
	}
	if err := os.Rename(tmp, idp.file); err != nil {
		idp.t.Fatal(err)
	}
}

func (idp *testIdP) url() string { return idp.srv.URL + "/jwks.json" }

// claims are a valid token's claims for subject, for an hour.
func claims(subject string, scopes string) map[string]any {
	now := time.Now()
	c := map[string]any{
		"iss": testIssuer, "aud": testAudience, "sub": subject,
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	}
	if scopes != "" {
		c["scope"] = scopes
	}
	return c
}

// sign signs c with the key kid (which names it in the header).
func (idp *testIdP) sign(kid string, c map[string]any) string {
	idp.t.Helper()
	return idp.signAs(kid, kid, c)
}

// signAs signs c with the key kid, naming headerKid in the header.
func (idp *testIdP) signAs(kid, headerKid string, c map[string]any) string {
	idp.t.Helper()
	idp.mu.Lock()
	k, ok := idp.keys[kid]
	idp.mu.Unlock()
	if !ok {
		idp.t.Fatalf("no key %s", kid)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: k.alg, Key: jose.JSONWebKey{Key: k.priv, KeyID: headerKid}},
		(&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		idp.t.Fatal(err)
	}
	tok, err := jwt.Signed(signer).Claims(c).Serialize()
	if err != nil {
		idp.t.Fatal(err)
	}
	return tok
}

// oauthConfig is the resource server's config for this IdP, keys by URL.
func (idp *testIdP) oauthConfig() *OAuthConfig {
	return &OAuthConfig{
		Issuer: testIssuer, Audience: testAudience, JWKSURL: idp.url(),
		ScopesSupported: []string{"mcp:tools"}, MinRefreshInterval: time.Millisecond,
	}
}
