package cluster

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
)

// AccessLevel is what an admin token may do on the admin API.
type AccessLevel int

const (
	// AccessRead may read: status, catalog, cache entries, the FSM hash.
	AccessRead AccessLevel = iota + 1
	// AccessWrite is an operator: everything, writes and agent operations
	// (leave, snapshot, leadership transfer) included.
	AccessWrite
)

func (l AccessLevel) String() string {
	switch l {
	case AccessRead:
		return "read"
	case AccessWrite:
		return "write"
	}
	return fmt.Sprintf("AccessLevel(%d)", int(l))
}

func (l AccessLevel) valid() bool { return l == AccessRead || l == AccessWrite }

// ParseAccessLevel parses "read" or "write".
func ParseAccessLevel(s string) (AccessLevel, error) {
	switch s {
	case "read":
		return AccessRead, nil
	case "write":
		return AccessWrite, nil
	}
	return 0, fmt.Errorf("access level %q is not read or write", s)
}

// Token is a secret bearer token. It prints as [redacted] in logs and
// formatted output; convert it to a string only to send it.
type Token string

const redacted = "[redacted]"

func (Token) String() string               { return redacted }
func (Token) GoString() string             { return redacted }
func (Token) LogValue() slog.Value         { return slog.StringValue(redacted) }
func (Token) MarshalText() ([]byte, error) { return []byte(redacted), nil }

// MinTokenLength is the shortest admin token accepted.
const MinTokenLength = 16

// checkToken validates a token's shape without saying what it is.
func checkToken(t Token) error {
	if len(t) < MinTokenLength {
		return fmt.Errorf("token is shorter than %d characters", MinTokenLength)
	}
	for i := 0; i < len(t); i++ {
		if t[i] <= ' ' || t[i] > '~' {
			return errors.New("token has a character other than printable ASCII (no spaces)")
		}
	}
	return nil
}

// Tokens is a set of admin tokens, each with its access level. Only
// SHA-256 digests are kept. The zero value and nil are empty: an empty set
// leaves the admin API open. Safe for concurrent use.
type Tokens struct {
	mu      sync.RWMutex
	entries []tokenEntry
}

type tokenEntry struct {
	digest [sha256.Size]byte
	level  AccessLevel
}

// NewTokens returns an empty set.
func NewTokens() *Tokens { return &Tokens{} }

// ParseTokenFile parses a token file: one token per line, either
// "<token>" (write level) or "<level> <token>" with level read or write.
// Empty lines and lines starting with # are skipped. Tokens need at least
// MinTokenLength printable ASCII characters and may not repeat; a file
// without tokens is an error (it would leave the API open).
func ParseTokenFile(b []byte) (*Tokens, error) {
	t := NewTokens()
	for i, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		n := i + 1
		level, tok := AccessWrite, ""
		switch f := strings.Fields(line); len(f) {
		case 1:
			tok = f[0]
		case 2:
			l, err := ParseAccessLevel(f[0])
			if err != nil {
				return nil, fmt.Errorf("line %d: %w", n, err)
			}
			level, tok = l, f[1]
		default:
			return nil, fmt.Errorf("line %d: want <token> or <level> <token>, got %d fields", n, len(f))
		}
		if err := t.Add(Token(tok), level); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
	}
	if t.Len() == 0 {
		return nil, errors.New("no tokens (a token file must have at least one)")
	}
	return t, nil
}

// ErrDuplicateToken is returned by Add for a token already in the set.
var ErrDuplicateToken = errors.New("token is already configured")

// Add adds a token with its level.
func (t *Tokens) Add(tok Token, level AccessLevel) error {
	if !level.valid() {
		return fmt.Errorf("invalid access level %v", level)
	}
	if err := checkToken(tok); err != nil {
		return err
	}
	d := sha256.Sum256([]byte(tok))
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.entries {
		if e.digest == d {
			return ErrDuplicateToken
		}
	}
	t.entries = append(t.entries, tokenEntry{digest: d, level: level})
	return nil
}

// Len returns the number of tokens; 0 for nil.
func (t *Tokens) Len() int {
	if t == nil {
		return 0
	}
	t.mu.RLock()
	defer t.mu.RUnlock()
	return len(t.entries)
}

// Check returns the level of token and whether it is configured. It
// compares digests in constant time against every configured token,
// whether or not an earlier one matched.
func (t *Tokens) Check(token string) (AccessLevel, bool) {
	if t == nil || token == "" {
		return 0, false
	}
	d := sha256.Sum256([]byte(token))
	t.mu.RLock()
	defer t.mu.RUnlock()
	level := 0
	for _, e := range t.entries {
		eq := subtle.ConstantTimeCompare(e.digest[:], d[:])
		level = subtle.ConstantTimeSelect(eq, int(e.level), level)
	}
	return AccessLevel(level), level != 0
}

// bearerToken returns the token of an "Authorization: Bearer <token>" header.
func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// Protect returns next guarded by the API's tokens: when any are
// configured, a request needs "Authorization: Bearer <token>" with a token
// of at least level; missing or unknown tokens get 401, a token of a lower
// level 403, both with a JSON error. Without tokens next runs as is. The
// agent uses it for handlers it serves beside the API (/debug/pprof/).
func (a *API) Protect(level AccessLevel, next http.Handler) http.Handler {
	if !level.valid() {
		panic(fmt.Sprintf("cluster: Protect with invalid access level %v", level))
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tokens := a.cfg.Tokens
		if tokens.Len() == 0 {
			next.ServeHTTP(w, r)
			return
		}
		tok, ok := bearerToken(r)
		if !ok {
			a.deny(w, r, http.StatusUnauthorized, "missing admin token: send Authorization: Bearer <token>")
			return
		}
		have, ok := tokens.Check(tok)
		if !ok {
			a.deny(w, r, http.StatusUnauthorized, "unknown admin token")
			return
		}
		if have < level {
			a.deny(w, r, http.StatusForbidden, fmt.Sprintf("%s %s needs a %s token, this one has %s access", r.Method, r.URL.Path, level, have))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// deny answers a refused request. The token is never logged.
func (a *API) deny(w http.ResponseWriter, r *http.Request, code int, msg string) {
	challenge := `Bearer realm="mcpcluster"`
	if code == http.StatusForbidden {
		challenge += `, error="insufficient_scope"`
	}
	w.Header().Set("WWW-Authenticate", challenge)
	a.cfg.Logger.Debug("admin request refused", "method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr, "status", code, "reason", msg)
	writeError(w, code, errors.New(msg))
}
