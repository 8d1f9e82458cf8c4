package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"
)

func mustCA(t *testing.T) (certPEM, keyPEM []byte) {
	t.Helper()
	certPEM, keyPEM, err := CreateCA("test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return certPEM, keyPEM
}

func mustParseCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	c, err := parseCertPEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func verifyNode(cert, ca *x509.Certificate, usage x509.ExtKeyUsage) error {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	_, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}

func TestCertsCA(t *testing.T) {
	certPEM, keyPEM := mustCA(t)
	ca := mustParseCert(t, certPEM)
	if !ca.IsCA || !ca.BasicConstraintsValid || !ca.MaxPathLenZero || ca.MaxPathLen != 0 {
		t.Errorf("CA constraints: IsCA %v valid %v maxPathLenZero %v", ca.IsCA, ca.BasicConstraintsValid, ca.MaxPathLenZero)
	}
	if want := x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature; ca.KeyUsage != want {
		t.Errorf("CA key usage %v, want %v", ca.KeyUsage, want)
	}
	if ca.PublicKeyAlgorithm != x509.ECDSA || len(ca.SubjectKeyId) == 0 || ca.SerialNumber.Sign() <= 0 {
		t.Errorf("CA: algorithm %v, subject key id %x, serial %v", ca.PublicKeyAlgorithm, ca.SubjectKeyId, ca.SerialNumber)
	}
	if !ca.NotBefore.Before(time.Now()) {
		t.Errorf("CA not yet valid: NotBefore %v", ca.NotBefore)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || b.Type != "PRIVATE KEY" {
		t.Fatalf("CA key is not a PEM PRIVATE KEY:\n%s", keyPEM)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatalf("CA key pair: %v", err)
	}
	if _, _, err := CreateCA("", time.Hour); err == nil {
		t.Error("CA with empty name created")
	}
	if _, _, err := CreateCA("x", 0); err == nil {
		t.Error("CA with zero validity created")
	}
}

func TestCertsNodeCert(t *testing.T) {
	caPEM, caKeyPEM := mustCA(t)
	ca := mustParseCert(t, caPEM)
	ips := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	certPEM, keyPEM, err := CreateNodeCert(caPEM, caKeyPEM, "node-1.a_b", ips, []string{"node1.example"}, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cert := mustParseCert(t, certPEM)
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if err := verifyNode(cert, ca, usage); err != nil {
			t.Errorf("verify with usage %v: %v", usage, err)
		}
	}
	id, err := NodeIDFromCert(cert)
	if err != nil || id != "node-1.a_b" {
		t.Errorf("NodeIDFromCert = %q, %v", id, err)
	}
	if cert.Subject.CommonName != "node-1.a_b" {
		t.Errorf("CommonName %q", cert.Subject.CommonName)
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "mcpcluster://node/node-1.a_b" {
		t.Errorf("URIs %v", cert.URIs)
	}
	if len(cert.IPAddresses) != 2 || !cert.IPAddresses[0].Equal(ips[0]) || !cert.IPAddresses[1].Equal(ips[1]) {
		t.Errorf("IPs %v", cert.IPAddresses)
	}
	if err := cert.VerifyHostname("node1.example"); err != nil {
		t.Error(err)
	}
	if cert.IsCA || cert.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("leaf: IsCA %v, key usage %v", cert.IsCA, cert.KeyUsage)
	}
	if string(cert.AuthorityKeyId) != string(ca.SubjectKeyId) {
		t.Errorf("AuthorityKeyId %x, CA SubjectKeyId %x", cert.AuthorityKeyId, ca.SubjectKeyId)
	}
	if cert.NotAfter.After(time.Now().Add(25 * time.Hour)) {
		t.Errorf("NotAfter %v, asked for a day", cert.NotAfter)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatalf("tls.X509KeyPair: %v", err)
	}

	// Longer than the CA: cut to the CA's lifetime.
	longPEM, _, err := CreateNodeCert(caPEM, caKeyPEM, "n2", nil, nil, 1000*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if long := mustParseCert(t, longPEM); !long.NotAfter.Equal(ca.NotAfter) {
		t.Errorf("NotAfter %v, CA's %v", long.NotAfter, ca.NotAfter)
	}
}

func TestCertsOtherCA(t *testing.T) {
	caPEM, _ := mustCA(t)
	otherPEM, otherKeyPEM := mustCA(t)
	certPEM, _, err := CreateNodeCert(otherPEM, otherKeyPEM, "node1", nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifyNode(mustParseCert(t, certPEM), mustParseCert(t, caPEM), x509.ExtKeyUsageClientAuth); err == nil {
		t.Fatal("certificate of another CA verified")
	}

	// A CA certificate with another CA's key.
	if _, _, err := CreateNodeCert(caPEM, otherKeyPEM, "node1", nil, nil, time.Hour); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("mismatched CA key: %v", err)
	}
}

func TestCertsRefusals(t *testing.T) {
	caPEM, caKeyPEM := mustCA(t)
	nodePEM, nodeKeyPEM, err := CreateNodeCert(caPEM, caKeyPEM, "node1", nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, id    string
		cert, key   []byte
		ips         []net.IP
		wantInError string
	}{
		{"empty id", "", caPEM, caKeyPEM, nil, "invalid node id"},
		{"slash", "a/b", caPEM, caKeyPEM, nil, "invalid node id"},
		{"leading dot", ".a", caPEM, caKeyPEM, nil, "invalid node id"},
		{"too long", strings.Repeat("a", 65), caPEM, caKeyPEM, nil, "invalid node id"},
		{"not a CA", "node2", nodePEM, nodeKeyPEM, nil, "not a CA"},
		{"no cert", "node2", nil, caKeyPEM, nil, "no PEM CERTIFICATE"},
		{"no key", "node2", caPEM, []byte("junk"), nil, "no PEM PRIVATE KEY"},
		{"bad ip", "node2", caPEM, caKeyPEM, []net.IP{{1, 2, 3}}, "invalid IP"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := CreateNodeCert(tc.cert, tc.key, tc.id, tc.ips, nil, time.Hour)
			if err == nil || !strings.Contains(err.Error(), tc.wantInError) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantInError)
			}
		})
	}
}

func TestCertsValidNodeID(t *testing.T) {
	for _, id := range []string{"node1", "a", "N-1.b_c", strings.Repeat("x", 64), "9"} {
		if err := ValidNodeID(id); err != nil {
			t.Errorf("ValidNodeID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", "-a", "_a", "a b", "a/b", "a:b", "é", strings.Repeat("x", 65), "a\n"} {
		if err := ValidNodeID(id); err == nil {
			t.Errorf("ValidNodeID(%q) accepted", id)
		}
	}
}

func TestCertsNodeIDFromCert(t *testing.T) {
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	if got := NodeCertURI("node1").String(); got != "mcpcluster://node/node1" {
		t.Fatalf("NodeCertURI = %q", got)
	}
	for _, tc := range []struct {
		name string
		uris []*url.URL
		want string // "" means an error
	}{
		{"one", []*url.URL{NodeCertURI("node1")}, "node1"},
		{"with other schemes", []*url.URL{u("spiffe://x/y"), NodeCertURI("n")}, "n"},
		{"none", nil, ""},
		{"other scheme only", []*url.URL{u("spiffe://node/node1")}, ""},
		{"two", []*url.URL{NodeCertURI("a"), NodeCertURI("b")}, ""},
		{"wrong host", []*url.URL{u("mcpcluster://server/node1")}, ""},
		{"invalid id", []*url.URL{u("mcpcluster://node/a/b")}, ""},
		{"empty id", []*url.URL{u("mcpcluster://node/")}, ""},
		{"query", []*url.URL{u("mcpcluster://node/a?x=1")}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := NodeIDFromCert(&x509.Certificate{URIs: tc.uris})
			if tc.want == "" {
				if err == nil {
					t.Fatalf("got %q, want an error", got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
