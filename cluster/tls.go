package cluster

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// tlsConfigurator builds every tls.Config of the cluster port from the
// configured CA, certificate and key files, and picks up changed files
// without a restart: each handshake checks the files' modification time
// and size (at most once per reloadCheck) and reloads them when they
// changed. A reload that fails (files half-written, a certificate that no
// longer names this node) keeps the last good material and logs why.
//
// Incoming connections must present a certificate of the cluster CA; the
// node id it names is the connection's identity. Outgoing connections
// verify the peer's certificate against the CA and, when the dialer knows
// which node it is calling, that the certificate names that node.
type tlsConfigurator struct {
	caFile, certFile, keyFile string
	nodeID                    string
	logger                    *slog.Logger

	mu      sync.Mutex
	stamp   [3]fileStamp
	checked time.Time
	cert    *tls.Certificate
	pool    *x509.CertPool
}

// reloadCheck bounds how often handshakes look at the files.
const reloadCheck = time.Second

// tlsHandshakeTimeout bounds a TLS handshake on the cluster port.
const tlsHandshakeTimeout = 5 * time.Second

type fileStamp struct {
	mod  time.Time
	size int64
}

func newTLSConfigurator(caFile, certFile, keyFile, nodeID string, logger *slog.Logger) (*tlsConfigurator, error) {
	c := &tlsConfigurator{caFile: caFile, certFile: certFile, keyFile: keyFile, nodeID: nodeID, logger: logger}
	stamp, err := c.stat()
	if err != nil {
		return nil, err
	}
	cert, pool, err := c.load()
	if err != nil {
		return nil, err
	}
	c.stamp, c.cert, c.pool, c.checked = stamp, cert, pool, time.Now()
	return c, nil
}

func (c *tlsConfigurator) stat() ([3]fileStamp, error) {
	var s [3]fileStamp
	for i, f := range []string{c.caFile, c.certFile, c.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return s, fmt.Errorf("tls: %w", err)
		}
		s[i] = fileStamp{mod: fi.ModTime(), size: fi.Size()}
	}
	return s, nil
}

// load reads and checks the three files: the key pair, the CA, and that
// the certificate is signed by the CA and names this node.
func (c *tlsConfigurator) load() (*tls.Certificate, *x509.CertPool, error) {
	caPEM, err := os.ReadFile(c.caFile)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, nil, fmt.Errorf("tls: %s holds no PEM certificate", c.caFile)
	}
	pair, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: load certificate %s and key %s: %w", c.certFile, c.keyFile, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, nil, fmt.Errorf("tls: parse certificate %s: %w", c.certFile, err)
		}
	}
	if _, err := verifyNodeCert(leaf, intermediates(pair.Certificate[1:]), pool, ""); err != nil {
		return nil, nil, fmt.Errorf("tls: certificate %s: %w", c.certFile, err)
	}
	id, err := NodeIDFromCert(leaf)
	if err != nil {
		return nil, nil, fmt.Errorf("tls: certificate %s: %w", c.certFile, err)
	}
	if id != c.nodeID {
		return nil, nil, fmt.Errorf("tls: certificate %s names node %q, this node is %q", c.certFile, id, c.nodeID)
	}
	return &pair, pool, nil
}

// current returns the certificate and CA pool to use now, reloading the
// files if they changed.
func (c *tlsConfigurator) current() (*tls.Certificate, *x509.CertPool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.checked) < reloadCheck {
		return c.cert, c.pool
	}
	c.checked = time.Now()
	stamp, err := c.stat()
	if err != nil {
		c.logger.Warn("tls files unreadable; keeping the loaded certificate", "error", err)
		return c.cert, c.pool
	}
	if stamp == c.stamp {
		return c.cert, c.pool
	}
	cert, pool, err := c.load()
	if err != nil {
		c.logger.Warn("tls files changed but do not load; keeping the loaded certificate", "error", err)
		return c.cert, c.pool
	}
	c.stamp, c.cert, c.pool = stamp, cert, pool
	c.logger.Info("tls certificate reloaded", "cert", c.certFile, "serial", cert.Leaf.SerialNumber.String(), "not_after", cert.Leaf.NotAfter)
	return c.cert, c.pool
}

// serverConfig is the listener side: TLS 1.3, a client certificate of the
// cluster CA required. The peer's node id is read after the handshake.
func (c *tlsConfigurator) serverConfig() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			cert, pool := c.current()
			return &tls.Config{
				MinVersion:   tls.VersionTLS13,
				Certificates: []tls.Certificate{*cert},
				ClientCAs:    pool,
				ClientAuth:   tls.RequireAndVerifyClientCert,
				VerifyConnection: func(cs tls.ConnectionState) error {
					if len(cs.PeerCertificates) == 0 {
						return errors.New("no client certificate")
					}
					// Chain verified by crypto/tls; the identity must parse.
					_, err := NodeIDFromCert(cs.PeerCertificates[0])
					return err
				},
			}, nil
		},
	}
}

// clientConfig is the dialer side: TLS 1.3 with this node's certificate;
// the server must hold a certificate of the cluster CA, naming expectID
// when it is not empty. Host names play no part: node ids do.
func (c *tlsConfigurator) clientConfig(expectID string) *tls.Config {
	cert, pool := c.current()
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       []tls.Certificate{*cert},
		InsecureSkipVerify: true, // verified below against the cluster CA and node id
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server presented no certificate")
			}
			var inter [][]byte
			for _, ic := range cs.PeerCertificates[1:] {
				inter = append(inter, ic.Raw)
			}
			_, err := verifyNodeCert(cs.PeerCertificates[0], intermediates(inter), pool, expectID)
			return err
		},
	}
}

// verifyNodeCert checks leaf against the CA pool for use on the cluster
// port (server and client authentication) and, when want is set, that it
// names node want. It returns the node id the certificate names.
func verifyNodeCert(leaf *x509.Certificate, inter *x509.CertPool, roots *x509.CertPool, want string) (string, error) {
	if _, err := leaf.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inter,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}); err != nil {
		return "", fmt.Errorf("not a certificate of the cluster CA: %w", err)
	}
	id, err := NodeIDFromCert(leaf)
	if err != nil {
		return "", err
	}
	if want != "" && id != want {
		return "", fmt.Errorf("certificate names node %q, expected %q", id, want)
	}
	return id, nil
}

func intermediates(ders [][]byte) *x509.CertPool {
	if len(ders) == 0 {
		return nil
	}
	p := x509.NewCertPool()
	for _, d := range ders {
		if c, err := x509.ParseCertificate(d); err == nil {
			p.AddCert(c)
		}
	}
	return p
}
