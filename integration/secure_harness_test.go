package integration

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// security is what every test node runs with unless it opts out (node.plain):
// a cluster CA, a certificate per node id, a gossip key and admin tokens,
// all made by the binary under test (`mcpcluster tls ...`, `keygen`).
type security struct {
	dir        string
	gossipKey  string
	writeToken string
	readToken  string
	tokenFile  string

	mu    sync.Mutex
	certs map[string]bool
}

// sec is set up once by TestMain.
var sec *security

func newSecurity(dir string) (*security, error) {
	s := &security{dir: dir, certs: map[string]bool{}}
	if out, err := exec.Command(binary, "tls", "ca", "create", "--dir", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("tls ca create: %v: %s", err, out)
	}
	out, err := exec.Command(binary, "keygen").Output()
	if err != nil {
		return nil, fmt.Errorf("keygen: %w", err)
	}
	s.gossipKey = strings.TrimSpace(string(out))
	s.writeToken, s.readToken = randomToken(), randomToken()
	s.tokenFile = filepath.Join(dir, "admin.tokens")
	body := fmt.Sprintf("# test tokens\n%s\nread %s\n", s.writeToken, s.readToken)
	if err := os.WriteFile(s.tokenFile, []byte(body), 0o600); err != nil {
		return nil, err
	}
	return s, nil
}

func randomToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func (s *security) caFile() string { return filepath.Join(s.dir, "mcpcluster-ca.pem") }

// cert returns the certificate and key files of node id, made on first use
// (with the extra IP SANs given, for containers).
func (s *security) cert(t testing.TB, id string, ips ...string) (certFile, keyFile string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	certFile, keyFile = filepath.Join(s.dir, id+".pem"), filepath.Join(s.dir, id+"-key.pem")
	if s.certs[id] {
		return certFile, keyFile
	}
	args := []string{"tls", "cert", "create", "--node", id, "--dir", s.dir,
		"--ca", s.caFile(), "--ca-key", filepath.Join(s.dir, "mcpcluster-ca-key.pem"), "--ip", "127.0.0.1"}
	for _, ip := range ips {
		args = append(args, "--ip", ip)
	}
	if out, err := exec.Command(binary, args...).CombinedOutput(); err != nil {
		t.Fatalf("tls cert create %s: %v: %s", id, err, out)
	}
	s.certs[id] = true
	return certFile, keyFile
}

// flags are the agent flags that secure node id.
func (s *security) flags(t testing.TB, id string) []string {
	certFile, keyFile := s.cert(t, id)
	return []string{"--tls-ca-file", s.caFile(), "--tls-cert-file", certFile, "--tls-key-file", keyFile,
		"--encrypt", s.gossipKey, "--admin-token-file", s.tokenFile}
}

// tokenTransport sends the write token with every request that has no
// Authorization header of its own.
type tokenTransport struct{ base http.RoundTripper }

func (t tokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.Header.Get("Authorization") != "" || sec == nil {
		return t.base.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+sec.writeToken)
	return t.base.RoundTrip(r)
}

// withToken wraps a transport (nil: http.DefaultTransport) so admin API
// requests carry the write token.
func withToken(base http.RoundTripper) http.RoundTripper {
	if base == nil {
		base = http.DefaultTransport
	}
	return tokenTransport{base: base}
}
