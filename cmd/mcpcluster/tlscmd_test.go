package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// runCLI runs the command in-process and returns its exit status and output.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func checkMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != want {
		t.Errorf("%s: mode %o, want %o", path, got, want)
	}
}

func TestTLSCmdCreate(t *testing.T) {
	dir := t.TempDir()
	code, out, errOut := runCLI(t, "tls", "ca", "create", "--dir", dir, "--days", "30")
	if code != 0 {
		t.Fatalf("ca create: exit %d: %s", code, errOut)
	}
	caPath, caKeyPath := filepath.Join(dir, "mcpcluster-ca.pem"), filepath.Join(dir, "mcpcluster-ca-key.pem")
	if want := "wrote " + caPath + "\nwrote " + caKeyPath + "\n"; out != want {
		t.Errorf("ca create printed %q, want %q", out, want)
	}
	checkMode(t, caPath, 0o644)
	checkMode(t, caKeyPath, 0o600)

	code, out, errOut = runCLI(t, "tls", "cert", "create", "--node", "node1", "--ip", "127.0.0.1", "--ip", "::1",
		"--dns", "node1.local", "--ca", caPath, "--ca-key", caKeyPath, "--dir", dir)
	if code != 0 {
		t.Fatalf("cert create: exit %d: %s", code, errOut)
	}
	certPath, keyPath := filepath.Join(dir, "node1.pem"), filepath.Join(dir, "node1-key.pem")
	if want := "wrote " + certPath + "\nwrote " + keyPath + "\n"; out != want {
		t.Errorf("cert create printed %q, want %q", out, want)
	}
	checkMode(t, certPath, 0o644)
	checkMode(t, keyPath, 0o600)

	ca, cert := readCert(t, caPath), readCert(t, certPath)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Fatalf("node certificate does not verify against the CA: %v", err)
	}
	if id, err := cluster.NodeIDFromCert(cert); err != nil || id != "node1" {
		t.Errorf("node id %q, %v", id, err)
	}
	if len(cert.IPAddresses) != 2 || !cert.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) ||
		len(cert.DNSNames) != 1 || cert.DNSNames[0] != "node1.local" {
		t.Errorf("SANs: IPs %v, DNS %v", cert.IPAddresses, cert.DNSNames)
	}
	if _, err := tls.LoadX509KeyPair(certPath, keyPath); err != nil {
		t.Fatal(err)
	}

	// Nothing is overwritten.
	before, _ := os.ReadFile(caKeyPath)
	if code, _, errOut := runCLI(t, "tls", "ca", "create", "--dir", dir); code != 1 || !strings.Contains(errOut, "already exists") {
		t.Errorf("ca create over an existing CA: exit %d: %s", code, errOut)
	}
	if after, _ := os.ReadFile(caKeyPath); !bytes.Equal(before, after) {
		t.Error("CA key overwritten")
	}
	if code, _, errOut := runCLI(t, "tls", "cert", "create", "--node", "node1", "--ca", caPath, "--ca-key", caKeyPath, "--dir", dir); code != 1 || !strings.Contains(errOut, "already exists") {
		t.Errorf("cert create over an existing cert: exit %d: %s", code, errOut)
	}

	// A missing CA is a failure, not bad usage.
	if code, _, errOut := runCLI(t, "tls", "cert", "create", "--node", "node2", "--ca", filepath.Join(dir, "nope.pem"), "--ca-key", caKeyPath, "--dir", dir); code != 1 || !strings.Contains(errOut, "read CA certificate") {
		t.Errorf("cert create without CA: exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(filepath.Join(dir, "node2-key.pem")); !os.IsNotExist(err) {
		t.Errorf("key written although the certificate was not: %v", err)
	}
}

func TestTLSCmdUsage(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{"tls"},
		{"tls", "ca"},
		{"tls", "ca", "delete"},
		{"tls", "key", "create"},
		{"tls", "ca", "create", "--dir", dir, "extra"},
		{"tls", "ca", "create", "--dir", dir, "--days", "0"},
		{"tls", "ca", "create", "--bogus"},
		{"tls", "cert", "create", "--dir", dir},
		{"tls", "cert", "create", "--dir", dir, "--node", "bad/id"},
		{"tls", "cert", "create", "--dir", dir, "--node", "n1", "--ip", "300.1.1.1"},
		{"tls", "cert", "create", "--dir", dir, "--node", "n1", "--dns", "a b"},
		{"tls", "cert", "create", "--dir", dir, "--node", "n1", "extra"},
		{"keygen", "extra"},
	} {
		code, out, errOut := runCLI(t, args...)
		if code != 2 {
			t.Errorf("%q: exit %d, want 2 (stderr %q)", args, code, errOut)
			continue
		}
		if strings.Count(errOut, "\n") != 1 || out != "" {
			t.Errorf("%q: want one line on stderr and nothing on stdout, got %q / %q", args, errOut, out)
		}
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("bad usage wrote files: %v", entries)
	}
}

func TestTLSCmdKeygen(t *testing.T) {
	seen := map[string]bool{}
	for range 2 {
		code, out, errOut := runCLI(t, "keygen")
		if code != 0 {
			t.Fatalf("keygen: exit %d: %s", code, errOut)
		}
		if !strings.HasSuffix(out, "\n") || strings.Count(out, "\n") != 1 {
			t.Fatalf("keygen printed %q, want one line", out)
		}
		key, err := base64.StdEncoding.DecodeString(strings.TrimSuffix(out, "\n"))
		if err != nil || len(key) != 32 {
			t.Fatalf("keygen printed %q: %d bytes, %v", out, len(key), err)
		}
		if seen[out] {
			t.Fatal("keygen printed the same key twice")
		}
		seen[out] = true
	}
}

func TestLocalSecurity(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "local")
	ids := []string{"node1", "node2"}
	sec, created, err := setupLocalSecurity(dir, ids)
	if err != nil {
		t.Fatal(err)
	}
	if created != 2+2*len(ids)+2 {
		t.Errorf("created %d files", created)
	}
	tlsDir := filepath.Join(dir, "tls")
	checkMode(t, filepath.Join(tlsDir, "mcpcluster-ca.pem"), 0o644)
	checkMode(t, filepath.Join(tlsDir, "mcpcluster-ca-key.pem"), 0o600)
	for _, id := range ids {
		checkMode(t, filepath.Join(tlsDir, id+".pem"), 0o644)
		checkMode(t, filepath.Join(tlsDir, id+"-key.pem"), 0o600)
		cert := readCert(t, filepath.Join(tlsDir, id+".pem"))
		if len(cert.IPAddresses) != 1 || !cert.IPAddresses[0].Equal(net.IPv4(127, 0, 0, 1)) {
			t.Errorf("%s: IP SANs %v", id, cert.IPAddresses)
		}
	}
	checkMode(t, filepath.Join(dir, "gossip.key"), 0o600)
	checkMode(t, filepath.Join(dir, "admin.token"), 0o600)
	if k, err := base64.StdEncoding.DecodeString(sec.gossipKey); err != nil || len(k) != 32 {
		t.Errorf("gossip key %q: %d bytes, %v", sec.gossipKey, len(k), err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "admin.token")); string(b) != sec.token+"\n" || len(sec.token) != 64 {
		t.Errorf("admin.token holds %q, token %q", b, sec.token)
	}
	args := strings.Join(sec.nodeArgs("node2"), " ")
	for _, want := range []string{
		"--tls-ca-file " + filepath.Join(tlsDir, "mcpcluster-ca.pem"),
		"--tls-cert-file " + filepath.Join(tlsDir, "node2.pem"),
		"--tls-key-file " + filepath.Join(tlsDir, "node2-key.pem"),
		"--encrypt " + sec.gossipKey,
		"--admin-token-file " + filepath.Join(dir, "admin.token"),
	} {
		if !strings.Contains(args, want) {
			t.Errorf("node args %q lack %q", args, want)
		}
	}

	// A second run reuses everything, and adds a third node's certificate.
	caBefore, _ := os.ReadFile(filepath.Join(tlsDir, "mcpcluster-ca.pem"))
	again, created, err := setupLocalSecurity(dir, append(ids, "node3"))
	if err != nil {
		t.Fatal(err)
	}
	if created != 2 || again.gossipKey != sec.gossipKey || again.token != sec.token {
		t.Errorf("second run: created %d, key or token changed: %v %v", created, again.gossipKey != sec.gossipKey, again.token != sec.token)
	}
	if caAfter, _ := os.ReadFile(filepath.Join(tlsDir, "mcpcluster-ca.pem")); !bytes.Equal(caBefore, caAfter) {
		t.Error("CA replaced")
	}

	// A node certificate of another CA is refused, not replaced.
	other := t.TempDir()
	if code, _, errOut := runCLI(t, "tls", "ca", "create", "--dir", other); code != 0 {
		t.Fatal(errOut)
	}
	for _, f := range []string{"node1.pem", "node1-key.pem"} {
		_ = os.Remove(filepath.Join(tlsDir, f))
	}
	if code, _, errOut := runCLI(t, "tls", "cert", "create", "--node", "node1", "--dir", tlsDir,
		"--ca", filepath.Join(other, "mcpcluster-ca.pem"), "--ca-key", filepath.Join(other, "mcpcluster-ca-key.pem")); code != 0 {
		t.Fatal(errOut)
	}
	if _, _, err := setupLocalSecurity(dir, ids); err == nil || !strings.Contains(err.Error(), "node1.pem") {
		t.Errorf("node certificate of another CA: %v", err)
	}

	// A key without its certificate is refused.
	_ = os.Remove(filepath.Join(tlsDir, "node1.pem"))
	if _, _, err := setupLocalSecurity(dir, ids); err == nil || !strings.Contains(err.Error(), "exists but") {
		t.Errorf("key without certificate: %v", err)
	}
}
