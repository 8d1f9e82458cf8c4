package cluster

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// Defaults for certificates made by the mcpcluster tooling.
const (
	DefaultCAValidity   = 5 * 365 * 24 * time.Hour
	DefaultCertValidity = 365 * 24 * time.Hour
)

// nodeCertScheme and nodeCertHost form a node certificate's URI SAN,
// mcpcluster://node/<id>.
const (
	nodeCertScheme = "mcpcluster"
	nodeCertHost   = "node"
)

// backdate is how far in the past a new certificate becomes valid, so
// that peers whose clocks are slightly behind accept it at once.
const backdate = time.Minute

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// ValidNodeID reports whether id can name a node: 1 to 64 letters, digits,
// '.', '_' or '-', starting with a letter or digit.
func ValidNodeID(id string) error {
	if !nodeIDPattern.MatchString(id) {
		return fmt.Errorf("invalid node id %q: want 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", id)
	}
	return nil
}

// NodeCertURI is the URI SAN that names node id in its certificate:
// mcpcluster://node/<id>.
func NodeCertURI(id string) *url.URL {
	return &url.URL{Scheme: nodeCertScheme, Host: nodeCertHost, Path: "/" + id}
}

// NodeIDFromCert returns the node id named by cert's mcpcluster URI SAN.
// It fails unless cert has exactly one such SAN and it names a valid id.
func NodeIDFromCert(cert *x509.Certificate) (string, error) {
	var found *url.URL
	for _, u := range cert.URIs {
		if u.Scheme != nodeCertScheme {
			continue
		}
		if found != nil {
			return "", fmt.Errorf("certificate %q names more than one mcpcluster URI", cert.Subject.CommonName)
		}
		found = u
	}
	if found == nil {
		return "", fmt.Errorf("certificate %q names no node (no %s://%s/<id> URI)", cert.Subject.CommonName, nodeCertScheme, nodeCertHost)
	}
	if found.Host != nodeCertHost || found.User != nil || found.RawQuery != "" || found.Fragment != "" ||
		!strings.HasPrefix(found.Path, "/") {
		return "", fmt.Errorf("certificate %q: malformed node URI %q", cert.Subject.CommonName, found)
	}
	id := strings.TrimPrefix(found.Path, "/")
	if err := ValidNodeID(id); err != nil {
		return "", fmt.Errorf("certificate %q: %w", cert.Subject.CommonName, err)
	}
	return id, nil
}

// CreateCA makes a self-signed ECDSA P-256 certificate authority valid for
// validity. It returns the certificate and its PKCS#8 private key, both PEM.
func CreateCA(commonName string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if commonName == "" {
		return nil, nil, errors.New("create CA: empty common name")
	}
	if validity <= 0 {
		return nil, nil, fmt.Errorf("create CA: validity %s is not positive", validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("create CA: %w", err)
	}
	ski, err := subjectKeyID(&key.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		SubjectKeyId:          ski,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA: sign: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("create CA: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// CreateNodeCert makes an ECDSA P-256 certificate for node nodeID signed by
// the CA, usable both as a TLS server and client certificate. It names the
// node as CommonName and as the URI SAN NodeCertURI(nodeID), plus the given
// IP and DNS SANs. Its validity is cut to the CA's. It returns the
// certificate and its PKCS#8 private key, both PEM.
func CreateNodeCert(caCertPEM, caKeyPEM []byte, nodeID string, ips []net.IP, dnsNames []string, validity time.Duration) (certPEM, keyPEM []byte, err error) {
	if err := ValidNodeID(nodeID); err != nil {
		return nil, nil, fmt.Errorf("create node certificate: %w", err)
	}
	if validity <= 0 {
		return nil, nil, fmt.Errorf("create node certificate: validity %s is not positive", validity)
	}
	for _, ip := range ips {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, nil, fmt.Errorf("create node certificate: invalid IP address %v", ip)
		}
	}
	for _, name := range dnsNames {
		if name == "" || strings.ContainsAny(name, " /:") {
			return nil, nil, fmt.Errorf("create node certificate: invalid DNS name %q", name)
		}
	}
	caCert, caKey, err := parseCA(caCertPEM, caKeyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("create node certificate: %w", err)
	}
	now := time.Now()
	if now.After(caCert.NotAfter) {
		return nil, nil, fmt.Errorf("create node certificate: CA certificate expired on %s", caCert.NotAfter.Format(time.DateOnly))
	}
	notAfter := now.Add(validity)
	if notAfter.After(caCert.NotAfter) {
		notAfter = caCert.NotAfter
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("create node certificate: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, fmt.Errorf("create node certificate: %w", err)
	}
	ski, err := subjectKeyID(&key.PublicKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create node certificate: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: nodeID},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:                  []*url.URL{NodeCertURI(nodeID)},
		IPAddresses:           ips,
		DNSNames:              dnsNames,
		SubjectKeyId:          ski,
		AuthorityKeyId:        caCert.SubjectKeyId,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, fmt.Errorf("create node certificate: sign: %w", err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("create node certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

// parseCA decodes a CA certificate and its private key and checks that
// they belong together and that the certificate may sign certificates.
func parseCA(certPEM, keyPEM []byte) (*x509.Certificate, crypto.Signer, error) {
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !cert.BasicConstraintsValid || !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("certificate %q is not a CA", cert.Subject.CommonName)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("CA key: %w", err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("CA key does not match CA certificate %q", cert.Subject.CommonName)
	}
	return cert, key, nil
}

// parseCertPEM returns the first certificate in data.
func parseCertPEM(data []byte) (*x509.Certificate, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if b.Type == "CERTIFICATE" {
			return x509.ParseCertificate(b.Bytes)
		}
	}
}

// parseKeyPEM returns the first private key in data: PKCS#8 ("PRIVATE
// KEY"), or SEC 1 ("EC PRIVATE KEY") as written by other tools.
func parseKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return nil, errors.New("no PEM PRIVATE KEY block")
		}
		switch b.Type {
		case "PRIVATE KEY":
			k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
			if err != nil {
				return nil, err
			}
			s, ok := k.(crypto.Signer)
			if !ok {
				return nil, fmt.Errorf("unsupported key type %T", k)
			}
			return s, nil
		case "EC PRIVATE KEY":
			return x509.ParseECPrivateKey(b.Bytes)
		}
	}
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// newSerial returns a random 128-bit certificate serial number.
func newSerial() (*big.Int, error) {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("generate serial number: %w", err)
	}
	if n.Sign() == 0 { // serials must be positive
		n.SetInt64(1)
	}
	return n, nil
}

// subjectKeyID is the truncated SHA-256 of the public key's bits (RFC 7093
// section 2, method 1).
func subjectKeyID(pub *ecdsa.PublicKey) ([]byte, error) {
	k, err := pub.ECDH()
	if err != nil {
		return nil, fmt.Errorf("subject key id: %w", err)
	}
	sum := sha256.Sum256(k.Bytes())
	return sum[:20], nil
}
