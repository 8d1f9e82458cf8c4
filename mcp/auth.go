package mcp

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// OAuthConfig makes the front door an OAuth 2.1 resource server: /mcp
// takes JWT access tokens signed by the issuer's keys (RS256, ES256 or
// EdDSA) and meant for Audience, the cluster's canonical resource URI.
type OAuthConfig struct {
	// Issuer must equal the token's iss claim.
	Issuer string
	// Audience must be one of the token's aud values (RFC 8707): a token
	// meant for another resource is refused. It is the "resource" of the
	// protected resource metadata.
	Audience string
	// JWKSFile or JWKSURL (one of them) holds the issuer's public keys.
	JWKSFile string
	JWKSURL  string
	// AuthorizationServers and ScopesSupported are published in the
	// protected resource metadata (RFC 9728).
	AuthorizationServers []string
	ScopesSupported      []string
	// RequiredScopes must all be granted (scope or scp claim); a token
	// without one of them gets 403 insufficient_scope.
	RequiredScopes []string
	// PrincipalClaim names the claim that identifies the caller; "sub" by default.
	PrincipalClaim string
	// Leeway is the clock skew allowed on exp, nbf and iat (default 60s).
	Leeway time.Duration
	// RefreshInterval is how often the keys are fetched again (default 5m).
	RefreshInterval time.Duration
	// MinRefreshInterval bounds how often a token with an unknown key id
	// makes the keys be fetched again (default 10s).
	MinRefreshInterval time.Duration
	// HTTPClient fetches JWKSURL; a client with a 10s timeout by default.
	HTTPClient *http.Client
}

// signatureAlgorithms are the JWS algorithms accepted on access tokens.
var signatureAlgorithms = []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.EdDSA}

// Identity is the authenticated caller of a request.
type Identity struct {
	// Principal is the static token's principal, or the configured claim
	// of an access token.
	Principal string
	// Claims are the access token's claims; nil for a static token.
	Claims map[string]any
}

type identityKey struct{}

// withIdentity returns ctx carrying the authenticated caller.
func withIdentity(ctx context.Context, id *Identity) context.Context {
	return withPrincipal(context.WithValue(ctx, identityKey{}, id), id.Principal)
}

// identityFrom returns the caller of the request under ctx, if authenticated.
func identityFrom(ctx context.Context) *Identity {
	id, _ := ctx.Value(identityKey{}).(*Identity)
	return id
}

// errInvalidToken is a token that does not authenticate anyone: malformed,
// forged, expired, not yet valid, of another issuer or audience.
var errInvalidToken = errors.New("invalid token")

// authenticator validates access tokens against the issuer's keys, which
// it keeps fresh: periodically, and when a token names a key id it does not
// know (at most once per MinRefreshInterval).
type authenticator struct {
	cfg    OAuthConfig
	logger *slog.Logger
	now    func() time.Time

	mu   sync.RWMutex
	keys jose.JSONWebKeySet

	refreshMu   sync.Mutex
	lastRefresh time.Time // last attempt, successful or not
}

// newAuthenticator checks cfg, fills in defaults and loads the keys. A key
// file that cannot be read is an error; a key URL that cannot be reached
// is retried later (every token is refused meanwhile).
func newAuthenticator(cfg OAuthConfig, logger *slog.Logger) (*authenticator, error) {
	if cfg.Issuer == "" || cfg.Audience == "" {
		return nil, errors.New("oauth: issuer and audience are required")
	}
	if (cfg.JWKSFile == "") == (cfg.JWKSURL == "") {
		return nil, errors.New("oauth: give one of jwks_file and jwks_url")
	}
	if cfg.PrincipalClaim == "" {
		cfg.PrincipalClaim = "sub"
	}
	if cfg.Leeway <= 0 {
		cfg.Leeway = time.Minute
	}
	if cfg.RefreshInterval <= 0 {
		cfg.RefreshInterval = 5 * time.Minute
	}
	if cfg.MinRefreshInterval <= 0 {
		cfg.MinRefreshInterval = 10 * time.Second
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if len(cfg.AuthorizationServers) == 0 {
		cfg.AuthorizationServers = []string{cfg.Issuer}
	}
	a := &authenticator{cfg: cfg, logger: logger, now: time.Now}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.refresh(ctx); err != nil {
		if cfg.JWKSFile != "" {
			return nil, err
		}
		logger.Warn("oauth keys not loaded yet; access tokens are refused until they are", "error", err)
	}
	return a, nil
}

// run refreshes the keys every RefreshInterval until stop is closed.
func (a *authenticator) run(stop <-chan struct{}) {
	t := time.NewTicker(a.cfg.RefreshInterval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			go func() {
				select {
				case <-stop:
					cancel()
				case <-ctx.Done():
				}
			}()
			if err := a.refresh(ctx); err != nil {
				a.logger.Warn("oauth keys not refreshed; keeping the ones loaded", "error", err)
			}
			cancel()
		}
	}
}

// refresh loads the key set and replaces the one in use.
func (a *authenticator) refresh(ctx context.Context) error {
	a.refreshMu.Lock()
	defer a.refreshMu.Unlock()
	return a.refreshLocked(ctx)
}

func (a *authenticator) refreshLocked(ctx context.Context) error {
	a.lastRefresh = a.now()
	set, err := a.load(ctx)
	if err != nil {
		return err
	}
	a.mu.Lock()
	a.keys = set
	a.mu.Unlock()
	a.logger.Debug("oauth keys loaded", "keys", len(set.Keys))
	return nil
}

// refreshForUnknownKid loads the keys again unless that was tried less
// than MinRefreshInterval ago, and reports whether it did.
func (a *authenticator) refreshForUnknownKid(ctx context.Context) bool {
	a.refreshMu.Lock()
	defer a.refreshMu.Unlock()
	if a.now().Sub(a.lastRefresh) < a.cfg.MinRefreshInterval {
		return false
	}
	if err := a.refreshLocked(ctx); err != nil {
		a.logger.Warn("oauth keys not refreshed for an unknown key id", "error", err)
		return false
	}
	return true
}

// maxJWKSBytes bounds a key set document.
const maxJWKSBytes = 1 << 20

// load reads the key set from the file or the URL.
func (a *authenticator) load(ctx context.Context) (jose.JSONWebKeySet, error) {
	var set jose.JSONWebKeySet
	var b []byte
	if a.cfg.JWKSFile != "" {
		var err error
		if b, err = os.ReadFile(a.cfg.JWKSFile); err != nil {
			return set, fmt.Errorf("oauth: read jwks file: %w", err)
		}
	} else {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.cfg.JWKSURL, nil)
		if err != nil {
			return set, fmt.Errorf("oauth: jwks url: %w", err)
		}
		req.Header.Set("Accept", "application/json")
		resp, err := a.cfg.HTTPClient.Do(req)
		if err != nil {
			return set, fmt.Errorf("oauth: fetch jwks: %w", err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return set, fmt.Errorf("oauth: fetch jwks: %s answered %s", a.cfg.JWKSURL, resp.Status)
		}
		if b, err = io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes)); err != nil {
			return set, fmt.Errorf("oauth: read jwks: %w", err)
		}
	}
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(b, &doc); err != nil {
		return set, fmt.Errorf("oauth: decode jwks: %w", err)
	}
	var pub []jose.JSONWebKey
	for _, rk := range doc.Keys {
		var k jose.JSONWebKey
		if err := k.UnmarshalJSON(rk); err != nil {
			a.logger.Debug("oauth: jwks entry skipped", "error", err) // a key type this node does not use
			continue
		}
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		if !k.IsPublic() {
			k = k.Public() // never verify with private material someone published
		}
		if k.Valid() {
			pub = append(pub, k)
		}
	}
	set.Keys = pub
	if len(set.Keys) == 0 {
		return set, errors.New("oauth: the jwks holds no public signing key")
	}
	return set, nil
}

// candidates returns the keys that may have signed a token with key id
// kid (every key when the token names none).
func (a *authenticator) candidates(kid string) []jose.JSONWebKey {
	a.mu.RLock()
	defer a.mu.RUnlock()
	if kid == "" {
		return slices.Clone(a.keys.Keys)
	}
	return a.keys.Key(kid)
}

// verify returns the caller an access token authenticates, or an error
// wrapping errInvalidToken that says why not.
func (a *authenticator) verify(ctx context.Context, raw string) (*Identity, error) {
	tok, err := jwt.ParseSigned(raw, signatureAlgorithms)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errInvalidToken, err)
	}
	if len(tok.Headers) != 1 {
		return nil, fmt.Errorf("%w: want one signature", errInvalidToken)
	}
	h := tok.Headers[0]
	keys := a.candidates(h.KeyID)
	if len(keys) == 0 && a.refreshForUnknownKid(ctx) {
		keys = a.candidates(h.KeyID)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%w: unknown key id %q", errInvalidToken, h.KeyID)
	}
	var (
		std    jwt.Claims
		claims map[string]any
		ok     bool
	)
	for _, k := range keys {
		if k.Algorithm != "" && k.Algorithm != h.Algorithm {
			continue
		}
		if tok.Claims(k.Key, &std, &claims) == nil {
			ok = true
			break
		}
	}
	if !ok {
		return nil, fmt.Errorf("%w: signature not made by a key of the issuer", errInvalidToken)
	}
	if std.Expiry == nil {
		return nil, fmt.Errorf("%w: no expiry", errInvalidToken)
	}
	exp := jwt.Expected{Issuer: a.cfg.Issuer, AnyAudience: jwt.Audience{a.cfg.Audience}, Time: a.now()}
	if err := std.ValidateWithLeeway(exp, a.cfg.Leeway); err != nil {
		return nil, fmt.Errorf("%w: %v", errInvalidToken, err)
	}
	var principal string
	switch v := claims[a.cfg.PrincipalClaim].(type) {
	case string:
		principal = v
	case float64:
		principal = fmt.Sprint(v)
	}
	if principal == "" {
		return nil, fmt.Errorf("%w: no %s claim", errInvalidToken, a.cfg.PrincipalClaim)
	}
	return &Identity{Principal: principal, Claims: claims}, nil
}

// missingScopes returns the required scopes the claims do not grant.
func (a *authenticator) missingScopes(claims map[string]any) []string {
	granted := tokenScopes(claims)
	var missing []string
	for _, s := range a.cfg.RequiredScopes {
		if !slices.Contains(granted, s) {
			missing = append(missing, s)
		}
	}
	return missing
}

// tokenScopes reads the scope claim (space-separated, RFC 9068) or scp
// (a list or a string).
func tokenScopes(claims map[string]any) []string {
	var out []string
	for _, name := range []string{"scope", "scp"} {
		switch v := claims[name].(type) {
		case string:
			out = append(out, strings.Fields(v)...)
		case []any:
			for _, s := range v {
				if str, ok := s.(string); ok {
					out = append(out, str)
				}
			}
		}
	}
	return out
}

// metadataPath is where every node serves the protected resource metadata
// (RFC 9728) of its MCP endpoint; the bare well-known path serves it too.
const (
	metadataRoot = "/.well-known/oauth-protected-resource"
	metadataPath = metadataRoot + "/mcp"
)

// MetadataPaths are the paths MetadataHandler answers on (GET, no auth).
func MetadataPaths() []string { return []string{metadataRoot, metadataPath} }

// MetadataHandler serves the protected resource metadata; nil when OAuth
// is not configured.
func (s *Server) MetadataHandler() http.Handler {
	if s.auth == nil {
		return nil
	}
	doc, _ := json.Marshal(map[string]any{
		"resource":                 s.auth.cfg.Audience,
		"authorization_servers":    nonNil(s.auth.cfg.AuthorizationServers),
		"scopes_supported":         nonNil(s.auth.cfg.ScopesSupported),
		"bearer_methods_supported": []string{"header"},
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "max-age=300")
		w.Write(doc)
	})
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// metadataURL is the metadata address of the MCP endpoint on the host the
// client used.
func metadataURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + metadataPath
}

// authenticate finds the caller of r: a static token, else an access
// token. It answers the refusal itself and returns false when there is no
// caller; with neither kind of auth configured every request passes.
func (s *Server) authenticate(w http.ResponseWriter, r *http.Request) (*http.Request, bool) {
	if len(s.cfg.Tokens) == 0 && s.auth == nil {
		return r, true
	}
	raw, hasToken := bearerToken(r)
	if hasToken {
		if p, ok := s.staticPrincipal(raw); ok {
			return r.WithContext(withIdentity(r.Context(), &Identity{Principal: p})), true
		}
	}
	if s.auth == nil {
		w.Header().Set("WWW-Authenticate", `Bearer realm="mcpcluster"`)
		http.Error(w, "missing or unknown bearer token", http.StatusUnauthorized)
		return nil, false
	}
	if !hasToken {
		s.refuse(w, r, http.StatusUnauthorized, "", "a bearer token is required")
		return nil, false
	}
	id, err := s.auth.verify(r.Context(), raw)
	if err != nil {
		s.logger.Debug("access token refused", "error", err, "remote", r.RemoteAddr)
		s.refuse(w, r, http.StatusUnauthorized, "invalid_token", err.Error())
		return nil, false
	}
	if missing := s.auth.missingScopes(id.Claims); len(missing) > 0 {
		s.refuse(w, r, http.StatusForbidden, "insufficient_scope", "missing scope: "+strings.Join(missing, " "))
		return nil, false
	}
	return r.WithContext(withIdentity(r.Context(), id)), true
}

// staticPrincipal looks a static token up in constant time per entry.
func (s *Server) staticPrincipal(tok string) (string, bool) {
	found, principal := 0, ""
	for t, p := range s.cfg.Tokens {
		if subtle.ConstantTimeCompare([]byte(t), []byte(tok)) == 1 {
			found, principal = 1, p
		}
	}
	return principal, found == 1
}

// bearerToken returns the token of an Authorization: Bearer header (the
// scheme is case-insensitive).
func bearerToken(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// refuse answers 401 or 403 with the challenge MCP clients follow to the
// protected resource metadata (RFC 9728 §5.1, RFC 6750 §3).
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, status int, code, desc string) {
	w.Header().Set("WWW-Authenticate", s.challenge(r, code, desc))
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	body := map[string]string{"error": code, "error_description": desc}
	if code == "" {
		body["error"] = "unauthorized"
	}
	json.NewEncoder(w).Encode(body)
}

// challenge is the WWW-Authenticate value: resource_metadata first, then
// the scopes the resource wants, then the error if there is one.
func (s *Server) challenge(r *http.Request, code, desc string) string {
	c := fmt.Sprintf(`Bearer resource_metadata=%q`, metadataURL(r))
	scopes := s.auth.cfg.RequiredScopes
	if len(scopes) == 0 {
		scopes = s.auth.cfg.ScopesSupported
	}
	if len(scopes) > 0 {
		c += fmt.Sprintf(`, scope=%q`, strings.Join(scopes, " "))
	}
	if code != "" {
		c += fmt.Sprintf(`, error=%q, error_description=%q`, code, headerSafe(desc))
	}
	return c
}

// headerSafe keeps a description to the characters RFC 6750 allows in
// error_description (printable ASCII without '"' and '\').
func headerSafe(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e || r == '"' || r == '\\' {
			return ' '
		}
		return r
	}, s)
}
