package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// localCluster is a cluster of child `mcpcluster agent` processes on
// loopback: node i listens on base+10*i (HTTP), +1 (cluster), +2 (gossip).
type localCluster struct {
	self     string
	n        int
	basePort int
	dataDir  string
	extra    []string // flags every node gets
	// security, when set, gives every node TLS on the cluster port, an
	// encrypted gossip and an admin token.
	security *localSecurity
	stdout   io.Writer
	stderr   io.Writer
	// image, when set, runs each node in a container of that image (host
	// network, dataDir mounted at the same path) with dockerArgs, such as
	// --cpus, instead of as a child process.
	image      string
	dockerArgs []string

	mu    sync.Mutex
	procs []*exec.Cmd
	wg    sync.WaitGroup
}

func (lc *localCluster) addr(i, off int) string {
	return fmt.Sprintf("127.0.0.1:%d", lc.basePort+10*i+off)
}

func (lc *localCluster) id(i int) string { return fmt.Sprintf("node%d", i+1) }

// start launches every node.
func (lc *localCluster) start() error {
	lc.procs = make([]*exec.Cmd, lc.n)
	for i := range lc.n {
		if err := lc.startNode(i); err != nil {
			lc.stop(10 * time.Second)
			return err
		}
	}
	return nil
}

// startNode launches node i (again).
func (lc *localCluster) startNode(i int) error {
	args := []string{"agent",
		"--node-id", lc.id(i),
		"--data-dir", filepath.Join(lc.dataDir, lc.id(i)),
		"--http-addr", lc.addr(i, 0),
		"--rpc-addr", lc.addr(i, 1),
		"--gossip-addr", lc.addr(i, 2),
		"--bootstrap-expect", fmt.Sprint(lc.n),
	}
	for j := range lc.n {
		args = append(args, "--join", lc.addr(j, 2))
	}
	if lc.security != nil {
		args = append(args, lc.security.nodeArgs(lc.id(i))...)
	}
	bin, argv := lc.self, append(args, lc.extra...)
	if lc.image != "" {
		// The docker client passes SIGTERM on to the node (--sig-proxy);
		// stop removes the container whatever happens.
		// As the host user, who owns the security files and removes the
		// data afterwards; never pulled; a container left by a killed run
		// is removed first.
		_ = exec.Command("docker", "rm", "-f", lc.container(i)).Run()
		run := []string{"run", "--rm", "--pull", "never", "--name", lc.container(i), "--network", "host",
			"--user", fmt.Sprintf("%d:%d", os.Getuid(), os.Getgid()), "-v", lc.dataDir + ":" + lc.dataDir}
		bin, argv = "docker", append(append(append(run, lc.dockerArgs...), lc.image), argv...)
	}
	cmd := exec.Command(bin, argv...)
	cmd.Stdout = prefixWriter(lc.stdout, lc.id(i))
	cmd.Stderr = prefixWriter(lc.stderr, lc.id(i))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C reaches us, and we stop the nodes
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", lc.id(i), err)
	}
	lc.mu.Lock()
	lc.procs[i] = cmd
	lc.mu.Unlock()
	lc.wg.Add(1)
	go func() {
		defer lc.wg.Done()
		err := cmd.Wait()
		fmt.Fprintf(lc.stdout, "%s exited: %v\n", lc.id(i), exitText(err))
	}()
	return nil
}

// container is the name of node i's container (image runs).
func (lc *localCluster) container(i int) string {
	return fmt.Sprintf("mcpcluster-bench-%d-%s", lc.basePort, lc.id(i))
}

// pid returns node i's process id.
func (lc *localCluster) pid(i int) int {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.procs[i].Process.Pid
}

// waitReady waits until every node answers /readyz.
func (lc *localCluster) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for i := 0; i < lc.n; {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+lc.addr(i, 0)+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				i++
				continue
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s", lc.id(i), timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// stop sends SIGTERM to every node, then SIGKILL after timeout.
func (lc *localCluster) stop(timeout time.Duration) {
	lc.mu.Lock()
	for _, p := range lc.procs {
		if p != nil {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
	}
	lc.mu.Unlock()
	done := make(chan struct{})
	go func() { lc.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		lc.mu.Lock()
		for _, p := range lc.procs {
			if p != nil {
				_ = p.Process.Kill()
			}
		}
		lc.mu.Unlock()
		<-done
	}
	if lc.image != "" {
		for i := range lc.n {
			_ = exec.Command("docker", "rm", "-f", lc.container(i)).Run()
		}
	}
}

// runLocal starts a local cluster of child `mcpcluster agent` processes on
// loopback, prints their endpoints, and stops them all on Ctrl-C.
func runLocal(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("local", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	nodes := fs.Int("nodes", 3, "number of nodes")
	dataDir := fs.String("data-dir", "data/local", "parent directory of the nodes' data dirs (kept between runs)")
	basePort := fs.Int("base-port", 8700, "node i listens on base+10*i (HTTP), +1 (RPC), +2 (gossip)")
	logLevel := fs.String("log-level", "warn", "log level of the nodes")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *nodes < 1 || *nodes > 9 {
		return usagef("-nodes %d: want 1 to 9", *nodes)
	}
	if *basePort < 1024 || *basePort+10**nodes > 65535 {
		return usagef("-base-port %d: out of range", *basePort)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	ctx, stop := signalContext()
	defer stop()

	lc := &localCluster{self: self, n: *nodes, basePort: *basePort, dataDir: *dataDir, stdout: stdout, stderr: stderr,
		extra: []string{"--gossip-profile", "local", "--dead-server-timeout", "30s", "--log-level", *logLevel}}
	ids := make([]string, lc.n)
	for i := range ids {
		ids[i] = lc.id(i)
	}
	sec, created, err := setupLocalSecurity(*dataDir, ids)
	if err != nil {
		return err
	}
	lc.security = sec
	if created > 0 {
		fmt.Fprintf(stdout, "Created %d missing security files in %s (tls/ CA and node certificates, gossip.key, admin.token)\n", created, *dataDir)
	}
	fmt.Fprintf(stdout, "Starting %d mcpcluster nodes (data in %s):\n", *nodes, *dataDir)
	if err := lc.start(); err != nil {
		return err
	}
	for i := range lc.n {
		fmt.Fprintf(stdout, "  %s  pid %-7d http://%s  (status: mcpcluster status --http-addr %s)\n", lc.id(i), lc.pid(i), lc.addr(i, 0), lc.addr(i, 0))
	}
	cmdName := commandName(self)
	fmt.Fprintf(stdout, "Admin token (also in %s):\n", sec.tokenFile)
	fmt.Fprintf(stdout, "  export MCPCLUSTER_ADMIN_TOKEN=%s\n", sec.token)
	fmt.Fprintf(stdout, "  %s status --http-addr %s\n", cmdName, lc.addr(0, 0))
	fmt.Fprintf(stdout, "  curl -H \"Authorization: Bearer $MCPCLUSTER_ADMIN_TOKEN\" %s/v1/status\n", lc.addr(0, 0))
	fmt.Fprintln(stdout, "Press Ctrl-C to stop all nodes.")
	<-ctx.Done()
	fmt.Fprintln(stdout, "stopping nodes...")
	lc.stop(15 * time.Second)
	return nil
}

// localSecurity is what a local cluster's nodes are secured with, kept in
// its data dir so that a second run reuses it.
type localSecurity struct {
	tlsDir    string // CA and node certificates
	gossipKey string // base64
	tokenFile string
	token     string
}

// Files of a local cluster's data dir.
const (
	localTLSDir    = "tls"
	localGossipKey = "gossip.key"
	localTokenFile = "admin.token"
)

// nodeArgs are the agent flags that secure node id.
func (s *localSecurity) nodeArgs(id string) []string {
	return []string{
		"--tls-ca-file", filepath.Join(s.tlsDir, caCertFile),
		"--tls-cert-file", filepath.Join(s.tlsDir, id+".pem"),
		"--tls-key-file", filepath.Join(s.tlsDir, id+"-key.pem"),
		"--encrypt", s.gossipKey,
		"--admin-token-file", s.tokenFile,
	}
}

// setupLocalSecurity creates in dataDir whatever is absent of: a CA and a
// certificate per node (IP SAN 127.0.0.1) in tls/, a gossip key and an
// admin token; it reuses and checks what is there. It returns how many
// files it created.
func setupLocalSecurity(dataDir string, ids []string) (*localSecurity, int, error) {
	s := &localSecurity{tlsDir: filepath.Join(dataDir, localTLSDir), tokenFile: filepath.Join(dataDir, localTokenFile)}
	if err := os.MkdirAll(s.tlsDir, 0o700); err != nil {
		return nil, 0, fmt.Errorf("create TLS dir: %w", err)
	}
	created := 0

	caPath, caKeyPath := filepath.Join(s.tlsDir, caCertFile), filepath.Join(s.tlsDir, caKeyFile)
	caPEM, caKeyPEM, n, err := loadOrCreatePair(caPath, caKeyPath, func() ([]byte, []byte, error) {
		return cluster.CreateCA("mcpcluster local CA", cluster.DefaultCAValidity)
	})
	if err != nil {
		return nil, 0, err
	}
	created += n
	ca, err := parseCertFile(caPath, caPEM)
	if err != nil {
		return nil, 0, err
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)

	loopback := []net.IP{net.IPv4(127, 0, 0, 1).To4()}
	for _, id := range ids {
		certPath, keyPath := filepath.Join(s.tlsDir, id+".pem"), filepath.Join(s.tlsDir, id+"-key.pem")
		certPEM, _, n, err := loadOrCreatePair(certPath, keyPath, func() ([]byte, []byte, error) {
			return cluster.CreateNodeCert(caPEM, caKeyPEM, id, loopback, nil, cluster.DefaultCertValidity)
		})
		if err != nil {
			return nil, 0, err
		}
		created += n
		if err := checkLocalNodeCert(certPath, certPEM, roots, id); err != nil {
			return nil, 0, fmt.Errorf("%w (remove %s to make new ones)", err, s.tlsDir)
		}
	}

	s.gossipKey, n, err = loadOrCreateSecret(filepath.Join(dataDir, localGossipKey), newGossipKey, func(v string) error {
		k, err := base64.StdEncoding.DecodeString(v)
		if err != nil {
			return fmt.Errorf("not base64: %w", err)
		}
		if len(k) != 16 && len(k) != 24 && len(k) != 32 {
			return fmt.Errorf("%d bytes, want 16, 24 or 32", len(k))
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	created += n

	s.token, n, err = loadOrCreateSecret(s.tokenFile, newAdminToken, func(v string) error {
		if v == "" || strings.ContainsAny(v, " \t\r\n") {
			return errors.New("want one line holding the token")
		}
		return nil
	})
	if err != nil {
		return nil, 0, err
	}
	created += n
	return s, created, nil
}

// loadOrCreatePair reads a certificate and its key, or, if neither file
// exists, makes them with create and writes them (key 0600, certificate
// 0644). It returns the number of files written.
func loadOrCreatePair(certPath, keyPath string, create func() (certPEM, keyPEM []byte, err error)) ([]byte, []byte, int, error) {
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	switch {
	case certErr == nil && keyErr == nil:
		return certPEM, keyPEM, 0, nil
	case errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist):
	case certErr == nil && errors.Is(keyErr, os.ErrNotExist):
		return nil, nil, 0, fmt.Errorf("%s exists but %s does not (remove the certificate to make a new pair)", certPath, keyPath)
	case keyErr == nil && errors.Is(certErr, os.ErrNotExist):
		return nil, nil, 0, fmt.Errorf("%s exists but %s does not (remove the key to make a new pair)", keyPath, certPath)
	case certErr != nil:
		return nil, nil, 0, certErr
	default:
		return nil, nil, 0, keyErr
	}
	certPEM, keyPEM, err := create()
	if err != nil {
		return nil, nil, 0, err
	}
	if err := writeNewFile(keyPath, keyPEM, keyFileMode); err != nil {
		return nil, nil, 0, err
	}
	if err := writeNewFile(certPath, certPEM, certFileMode); err != nil {
		_ = os.Remove(keyPath)
		return nil, nil, 0, err
	}
	return certPEM, keyPEM, 2, nil
}

// loadOrCreateSecret reads a one-line secret and checks it, or, if the
// file does not exist, makes one with create and writes it with mode 0600.
// It returns the number of files written.
func loadOrCreateSecret(path string, create func() (string, error), check func(string) error) (string, int, error) {
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		v := strings.TrimSpace(string(b))
		if err := check(v); err != nil {
			return "", 0, fmt.Errorf("%s: %w", path, err)
		}
		return v, 0, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", 0, err
	}
	v, err := create()
	if err != nil {
		return "", 0, err
	}
	if err := writeNewFile(path, []byte(v+"\n"), keyFileMode); err != nil {
		return "", 0, err
	}
	return v, 1, nil
}

// newAdminToken returns 32 random bytes, hex-encoded.
func newAdminToken() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate admin token: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

func parseCertFile(path string, certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM CERTIFICATE block", path)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return c, nil
}

// checkLocalNodeCert checks that a reused node certificate is still valid,
// signed by the local CA and names node id.
func checkLocalNodeCert(path string, certPEM []byte, roots *x509.CertPool, id string) error {
	c, err := parseCertFile(path, certPEM)
	if err != nil {
		return err
	}
	opts := x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	if _, err := c.Verify(opts); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	got, err := cluster.NodeIDFromCert(c)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if got != id {
		return fmt.Errorf("%s names node %q, not %q", path, got, id)
	}
	return nil
}

// commandName is how to run this executable from the current directory:
// its relative path when it lies below it (bin/mcpcluster), else its name.
func commandName(self string) string {
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, self); err == nil && filepath.IsLocal(rel) {
			return displayPath(rel)
		}
	}
	return filepath.Base(self)
}

// signalContext is cancelled by SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// prefixWriter prefixes each line written to w with the node id.
func prefixWriter(w io.Writer, id string) io.Writer {
	return &linePrefixer{w: w, prefix: "[" + id + "] "}
}

type linePrefixer struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (l *linePrefixer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		if _, err := fmt.Fprintf(l.w, "%s%s\n", l.prefix, l.buf[:i]); err != nil {
			return len(p), err
		}
		l.buf = l.buf[i+1:]
	}
}
