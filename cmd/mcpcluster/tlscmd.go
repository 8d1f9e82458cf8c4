package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// File names written by `mcpcluster tls ca create`, and read by default by
// `mcpcluster tls cert create`.
const (
	caCertFile = "mcpcluster-ca.pem"
	caKeyFile  = "mcpcluster-ca-key.pem"
)

// Default lifetimes, in days, of what `mcpcluster tls` creates.
var (
	defaultCADays   = int(cluster.DefaultCAValidity / (24 * time.Hour))
	defaultCertDays = int(cluster.DefaultCertValidity / (24 * time.Hour))
)

// gossipKeySize is the size of a key made by `mcpcluster keygen`: AES-256.
const gossipKeySize = 32

// File modes of what the tooling writes.
const (
	certFileMode = 0o644
	keyFileMode  = 0o600
)

// runKeygen prints a new random gossip encryption key, base64-encoded.
func runKeygen(args []string, stdout, stderr io.Writer) error {
	fs := newToolFlagSet("keygen")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	key, err := newGossipKey()
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, key)
	return err
}

// newGossipKey returns gossipKeySize random bytes, std base64-encoded.
func newGossipKey() (string, error) {
	var b [gossipKeySize]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate key: %w", err)
	}
	return base64.StdEncoding.EncodeToString(b[:]), nil
}

// runTLS dispatches `mcpcluster tls ca create` and `mcpcluster tls cert create`.
func runTLS(args []string, stdout, stderr io.Writer) error {
	const want = `want "tls ca create" or "tls cert create"`
	if len(args) < 2 {
		return usagef("missing subcommand: %s", want)
	}
	switch args[0] + " " + args[1] {
	case "ca create":
		return runTLSCACreate(args[2:], stdout, stderr)
	case "cert create":
		return runTLSCertCreate(args[2:], stdout, stderr)
	default:
		return usagef("unknown subcommand %q: %s", strings.Join(args[:2], " "), want)
	}
}

// runTLSCACreate writes a new cluster CA: mcpcluster-ca.pem and
// mcpcluster-ca-key.pem.
func runTLSCACreate(args []string, stdout, stderr io.Writer) error {
	fs := newToolFlagSet("tls ca create")
	dir := fs.String("dir", ".", "directory to write "+caCertFile+" and "+caKeyFile+" into")
	days := fs.Int("days", defaultCADays, "days the CA is valid")
	commonName := fs.String("common-name", "mcpcluster CA", "the CA's subject common name")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *days < 1 {
		return usagef("-days %d: want at least 1", *days)
	}
	if *commonName == "" {
		return usagef("-common-name: empty")
	}
	certPath, keyPath := filepath.Join(*dir, caCertFile), filepath.Join(*dir, caKeyFile)
	if err := refuseExisting(certPath, keyPath); err != nil {
		return err
	}
	certPEM, keyPEM, err := cluster.CreateCA(*commonName, time.Duration(*days)*24*time.Hour)
	if err != nil {
		return err
	}
	return writeKeyPair(stdout, certPath, certPEM, keyPath, keyPEM)
}

// runTLSCertCreate writes a node certificate signed by the cluster CA:
// <id>.pem and <id>-key.pem.
func runTLSCertCreate(args []string, stdout, stderr io.Writer) error {
	fs := newToolFlagSet("tls cert create")
	node := fs.String("node", "", "node id the certificate names (required)")
	var ips, dnsNames listFlag
	fs.Var(&ips, "ip", "IP address SAN (repeatable)")
	fs.Var(&dnsNames, "dns", "DNS name SAN (repeatable)")
	caPath := fs.String("ca", caCertFile, "CA certificate")
	caKeyPath := fs.String("ca-key", caKeyFile, "CA private key")
	dir := fs.String("dir", ".", "directory to write <node>.pem and <node>-key.pem into")
	days := fs.Int("days", defaultCertDays, "days the certificate is valid (at most the CA's lifetime)")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *node == "" {
		return usagef("-node is required")
	}
	if err := cluster.ValidNodeID(*node); err != nil {
		return usagef("-node: %v", err)
	}
	if *days < 1 {
		return usagef("-days %d: want at least 1", *days)
	}
	var parsed []net.IP
	for _, s := range ips {
		ip := net.ParseIP(s)
		if ip == nil {
			return usagef("-ip %q: not an IP address", s)
		}
		if v4 := ip.To4(); v4 != nil {
			ip = v4
		}
		parsed = append(parsed, ip)
	}
	for _, name := range dnsNames {
		if name == "" || strings.ContainsAny(name, " /:") {
			return usagef("-dns %q: not a DNS name", name)
		}
	}

	certPath, keyPath := filepath.Join(*dir, *node+".pem"), filepath.Join(*dir, *node+"-key.pem")
	if err := refuseExisting(certPath, keyPath); err != nil {
		return err
	}
	caPEM, err := os.ReadFile(*caPath)
	if err != nil {
		return fmt.Errorf("read CA certificate: %w (create one with mcpcluster tls ca create)", err)
	}
	caKeyPEM, err := os.ReadFile(*caKeyPath)
	if err != nil {
		return fmt.Errorf("read CA key: %w", err)
	}
	certPEM, keyPEM, err := cluster.CreateNodeCert(caPEM, caKeyPEM, *node, parsed, dnsNames, time.Duration(*days)*24*time.Hour)
	if err != nil {
		return err
	}
	return writeKeyPair(stdout, certPath, certPEM, keyPath, keyPEM)
}

func newToolFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// refuseExisting fails if any of paths exists: the tooling never overwrites.
func refuseExisting(paths ...string) error {
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			return fmt.Errorf("%s already exists; not overwriting it", p)
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// writeKeyPair writes the private key (0600), then the certificate
// (0644), neither over an existing file, and prints one line per file. If
// the certificate cannot be written, the key just written is removed.
func writeKeyPair(stdout io.Writer, certPath string, certPEM []byte, keyPath string, keyPEM []byte) error {
	if err := writeNewFile(keyPath, keyPEM, keyFileMode); err != nil {
		return err
	}
	if err := writeNewFile(certPath, certPEM, certFileMode); err != nil {
		_ = os.Remove(keyPath)
		return err
	}
	fmt.Fprintf(stdout, "wrote %s\n", displayPath(certPath))
	fmt.Fprintf(stdout, "wrote %s\n", displayPath(keyPath))
	return nil
}

// writeNewFile creates path with exactly mode (whatever the umask) and
// writes data to it; it fails if path exists. A partly written file is
// removed.
func writeNewFile(path string, data []byte, mode os.FileMode) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return fmt.Errorf("%s already exists; not overwriting it", path)
		}
		return err
	}
	defer func() {
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			_ = os.Remove(path)
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return err
	}
	_, err = f.Write(data)
	return err
}

// displayPath shows a bare file name as ./name.
func displayPath(p string) string {
	if !strings.ContainsRune(p, filepath.Separator) {
		return "." + string(filepath.Separator) + p
	}
	return p
}
