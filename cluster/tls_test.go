package cluster

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/gob"
	"errors"
	"fmt"
	"io"
	"net"
	"net/rpc"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testCA is a cluster CA in a temp dir that issues node certificates.
type testCA struct {
	t            testing.TB
	dir          string
	certPEM, key []byte
	caFile       string
	pool         *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	cert, key, err := CreateCA("mcpcluster test CA", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ca := &testCA{t: t, dir: dir, certPEM: cert, key: key, caFile: filepath.Join(dir, "ca.pem"), pool: x509.NewCertPool()}
	if err := os.WriteFile(ca.caFile, cert, 0o644); err != nil {
		t.Fatal(err)
	}
	ca.pool.AppendCertsFromPEM(cert)
	return ca
}

// issue writes a certificate and key for node id and returns their paths.
func (ca *testCA) issue(id string) (certFile, keyFile string) { return ca.issueIn(ca.dir, id) }

// issueIn is issue into dir.
func (ca *testCA) issueIn(dir, id string) (certFile, keyFile string) {
	ca.t.Helper()
	cert, key, err := CreateNodeCert(ca.certPEM, ca.key, id, []net.IP{net.ParseIP("127.0.0.1")}, nil, time.Hour)
	if err != nil {
		ca.t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, id+".pem"), filepath.Join(dir, id+"-key.pem")
	if err := os.WriteFile(certFile, cert, 0o644); err != nil {
		ca.t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, key, 0o600); err != nil {
		ca.t.Fatal(err)
	}
	return certFile, keyFile
}

func (ca *testCA) config(t testing.TB, id string, expect int, join ...string) Config {
	cfg := testConfig(t, id, expect, join...)
	cfg.TLSCAFile = ca.caFile
	cfg.TLSCertFile, cfg.TLSKeyFile = ca.issue(id)
	return cfg
}

func newTLSTestCluster(t *testing.T, ca *testCA, n int) []*Node {
	t.Helper()
	first, err := New(ca.config(t, "n1", n))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { first.Shutdown() })
	nodes := []*Node{first}
	for i := 2; i <= n; i++ {
		nd, err := New(ca.config(t, fmt.Sprintf("n%d", i), n, first.GossipAddr()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nd.Shutdown() })
		nodes = append(nodes, nd)
	}
	waitStable(t, nodes, n)
	return nodes
}

// dialAs opens a TLS connection to addr with the certificate of id issued
// by ca and sends a hello of kind claiming to be claim.
func dialAs(t *testing.T, ca *testCA, addr, id, claim string, kind byte) (net.Conn, error) {
	t.Helper()
	certFile, keyFile := ca.issueIn(t.TempDir(), id)
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{
		Certificates: []tls.Certificate{pair}, RootCAs: ca.pool, ServerName: "ignored", InsecureSkipVerify: true,
		MinVersion: tls.VersionTLS13,
	})
	if err != nil {
		return nil, err
	}
	if err := writeHello(conn, kind, claim); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// closedByPeer reports whether the server closes conn within a few seconds
// without answering.
func closedByPeer(conn net.Conn) error {
	_ = conn.SetReadDeadline(time.Now().Add(4 * time.Second))
	b := make([]byte, 1)
	n, err := conn.Read(b)
	if n > 0 {
		return fmt.Errorf("server answered %q", b[:n])
	}
	if ne, ok := err.(net.Error); ok && ne.Timeout() {
		return errors.New("server kept the connection open")
	}
	return nil
}

func TestTLSClusterRefusesStrangers(t *testing.T) {
	ca := newTestCA(t)
	nodes := newTLSTestCluster(t, ca, 3)
	leader := waitStable(t, nodes, 3)
	var follower *Node
	for _, nd := range nodes {
		if nd != leader {
			follower = nd
		}
	}
	set(t, follower, "k", "v") // forwarded over TLS RPC, replicated over TLS raft
	addr := leader.RPCAddr()

	// Plain TCP with every first byte but a TLS record is refused.
	for b := 0; b < 256; b++ {
		if byte(b) == tlsRecordHandshake {
			continue
		}
		conn, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = conn.Write([]byte{byte(b), 0, 0, 0, 4, 'x', 'y'})
		if err := closedByPeer(conn); err != nil {
			t.Errorf("first byte 0x%02x: %v", b, err)
		}
		conn.Close()
	}

	// A certificate of another CA fails the handshake.
	other := newTestCA(t)
	if conn, err := dialAs(t, other, addr, "n2", "n2", connRPC); err == nil {
		if err := closedByPeer(conn); err != nil {
			t.Errorf("certificate of another CA: %v", err)
		}
		conn.Close()
	}

	// The right CA, but a node claiming another node's identity.
	conn, err := dialAs(t, ca, addr, "intruder", "n2", connRPC)
	if err == nil {
		if err := closedByPeer(conn); err != nil {
			t.Errorf("identity mismatch: %v", err)
		}
		conn.Close()
	}

	// The right CA and an honest id, but not a member of the cluster.
	conn, err = dialAs(t, ca, addr, "intruder", "intruder", connRPC)
	if err == nil {
		if err := closedByPeer(conn); err != nil {
			t.Errorf("non-member: %v", err)
		}
		conn.Close()
	}

	set(t, follower, "k", "v2")
	var hash string
	for _, nd := range nodes {
		if v, _ := readAt(t, nd, Linearizable, "k"); v != "v2" {
			t.Errorf("%s reads %q", nd.ID(), v)
		}
		if c := nd.FSM().Counts(); c.CacheEntries != 1 {
			t.Errorf("%s holds %d cache entries, want 1", nd.ID(), c.CacheEntries)
		}
	}
	waitFor(t, 5*time.Second, func() error {
		hash = ""
		for _, nd := range nodes {
			h, err := nd.FSM().Hash()
			if err != nil {
				return err
			}
			if hash != "" && h != hash {
				return fmt.Errorf("%s has fsm hash %s, another %s", nd.ID(), h, hash)
			}
			hash = h
		}
		return nil
	})
}

func TestTLSMemberMayNotActForAnother(t *testing.T) {
	ca := newTestCA(t)
	nodes := newTLSTestCluster(t, ca, 3)
	leader := waitStable(t, nodes, 3)
	var follower *Node
	for _, nd := range nodes {
		if nd != leader {
			follower = nd
		}
	}
	var victim string
	for _, nd := range nodes {
		if nd != leader && nd != follower {
			victim = nd.ID()
		}
	}
	conn, err := dialAs(t, ca, leader.RPCAddr(), follower.ID(), follower.ID(), connRPC)
	if err != nil {
		t.Fatal(err)
	}
	c := rpc.NewClient(conn)
	defer c.Close()
	var reply RemovePeerReply
	err = c.Call("Cluster.RemovePeer", RemovePeerArgs{ID: victim}, &reply)
	if err == nil || !strings.Contains(err.Error(), "may not act for") {
		t.Fatalf("remove-peer in another node's name: %v", err)
	}
	servers, _ := leader.Servers()
	if !hasServer(servers, victim) {
		t.Fatalf("%s was removed", victim)
	}
	// In its own name the same connection works.
	var peers PeersReply
	if err := c.Call("Cluster.Peers", PeersArgs{}, &peers); err != nil || peers.ID != leader.ID() {
		t.Fatalf("peers: %+v %v", peers, err)
	}
}

func TestTLSCertificateReload(t *testing.T) {
	ca := newTestCA(t)
	cfg := ca.config(t, "n1", 1)
	nd, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nd.Shutdown() })
	waitStable(t, []*Node{nd}, 1)

	serial := func() string {
		conn, err := dialAs(t, ca, nd.RPCAddr(), "n1", "n1", connRPC)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.(*tls.Conn).ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	old := serial()
	// A half-written pair (a new key, the old certificate) does not load:
	// the node keeps serving the loaded certificate.
	_, strayKey, err := CreateNodeCert(ca.certPEM, ca.key, "n1", nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.TLSKeyFile, strayKey, 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(reloadCheck + 100*time.Millisecond) // past the next reload check
	if got := serial(); got != old {
		t.Fatalf("a mismatched key and certificate replaced the loaded pair: serial %s, was %s", got, old)
	}
	// New files from the same CA, written over the old ones.
	cert, key, err := CreateNodeCert(ca.certPEM, ca.key, "n1", nil, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.TLSKeyFile, key, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.TLSCertFile, cert, 0o644); err != nil {
		t.Fatal(err)
	}
	block, _ := pemDecode(cert)
	want := block.SerialNumber.String()
	if want == old {
		t.Fatal("new certificate has the old serial")
	}
	waitFor(t, 10*time.Second, func() error {
		if got := serial(); got != want {
			return fmt.Errorf("node presents serial %s, want %s", got, want)
		}
		return nil
	})
	// And the node still works with it.
	set(t, nd, "after-reload", "ok")
}

func pemDecode(certPEM []byte) (*x509.Certificate, error) { return parseCertPEM(certPEM) }

func TestTLSRequiredRefusesPlainNode(t *testing.T) {
	// A node without TLS gossips with the cluster (no gossip key here) but
	// cannot prove its identity on the cluster port: it never becomes a
	// raft server, and cannot talk raft or RPC to the others.
	ca := newTestCA(t)
	nodes := newTLSTestCluster(t, ca, 3)
	leader := waitStable(t, nodes, 3)
	plain, err := New(testConfig(t, "plain", 0, nodes[0].GossipAddr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Shutdown() })
	waitFor(t, 10*time.Second, func() error {
		if _, ok := leader.members.Member("plain"); !ok {
			return errors.New("plain node not in gossip yet")
		}
		return nil
	})
	// Give the leader several reconcile passes.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		servers, _ := leader.Servers()
		if hasServer(servers, "plain") {
			t.Fatal("plain node admitted as a raft server")
		}
		time.Sleep(100 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var reply PeersReply
	if err := plain.pool.call(ctx, leader.RPCAddr(), "Peers", PeersArgs{}, &reply); err == nil {
		t.Fatal("plain RPC to a TLS node succeeded")
	}
}

func TestPerIPConnectionLimit(t *testing.T) {
	cfg := testConfig(t, "n1", 1)
	cfg.MaxConnsPerIP = 3
	nd, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nd.Shutdown() })
	var open []net.Conn
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	// Connections that say nothing stay open until the handshake timeout.
	for range 3 {
		c, err := net.Dial("tcp", nd.RPCAddr())
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	waitFor(t, 5*time.Second, func() error {
		c, err := net.Dial("tcp", nd.RPCAddr())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("fourth connection not closed at once: %v", err)
		}
		return nil
	})
}

func TestFrameLimitReader(t *testing.T) {
	var buf bytes.Buffer
	enc := gob.NewEncoder(&buf)
	for _, n := range []int{10, 100, 300, 70000} {
		if err := enc.Encode(bytes.Repeat([]byte("x"), n)); err != nil {
			t.Fatal(err)
		}
	}
	stream := buf.Bytes()

	read := func(limit uint64) (int, error) {
		dec := gob.NewDecoder(&frameLimitReader{r: bufioReader(stream), max: limit})
		got := 0
		for {
			var b []byte
			if err := dec.Decode(&b); err != nil {
				if errors.Is(err, io.EOF) {
					return got, nil
				}
				return got, err
			}
			got++
		}
	}
	if n, err := read(1 << 20); err != nil || n != 4 {
		t.Fatalf("within the limit: %d messages, %v", n, err)
	}
	n, err := read(1000)
	if err == nil || !strings.Contains(err.Error(), "exceeds the maximum") {
		t.Fatalf("over the limit: %d messages, %v", n, err)
	}
	if n != 3 {
		t.Fatalf("messages before the oversized one: %d, want 3", n)
	}
}

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }
