package integration

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/rpc"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mcpcluster/mcpcluster/cluster"
)

// stranger is a TLS client of a cluster port: a certificate (of some CA)
// for one node id, and the id it claims in its hello.
type stranger struct {
	certFile, keyFile string
}

// foreignCert makes a certificate for id from a CA other than the cluster's.
func foreignCert(t *testing.T, id string) stranger {
	t.Helper()
	dir := t.TempDir()
	if out, err := exec.Command(binary, "tls", "ca", "create", "--dir", dir).CombinedOutput(); err != nil {
		t.Fatalf("tls ca create: %v: %s", err, out)
	}
	if out, err := exec.Command(binary, "tls", "cert", "create", "--node", id, "--dir", dir,
		"--ca", filepath.Join(dir, "mcpcluster-ca.pem"), "--ca-key", filepath.Join(dir, "mcpcluster-ca-key.pem")).CombinedOutput(); err != nil {
		t.Fatalf("tls cert create: %v: %s", err, out)
	}
	return stranger{certFile: filepath.Join(dir, id+".pem"), keyFile: filepath.Join(dir, id+"-key.pem")}
}

// clusterCert is the cluster CA's certificate for id (a member's own, or
// one the CA issued to a machine that is no member).
func clusterCert(t *testing.T, id string) stranger {
	certFile, keyFile := sec.cert(t, id)
	return stranger{certFile: certFile, keyFile: keyFile}
}

// dial connects to a cluster port over TLS and sends the hello: the
// protocol byte and the claimed node id.
func (s stranger) dial(t *testing.T, addr string, kind byte, claim string) (*tls.Conn, error) {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(s.certFile, s.keyFile)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 2 * time.Second}, "tcp", addr, &tls.Config{
		Certificates: []tls.Certificate{pair}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13,
	})
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(append([]byte{kind, byte(len(claim))}, claim...)); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// refused reports nil when the server closes conn without answering.
func refused(conn net.Conn) error {
	_ = conn.SetReadDeadline(time.Now().Add(4 * time.Second))
	b := make([]byte, 64)
	n, err := conn.Read(b)
	switch {
	case n > 0:
		return fmt.Errorf("server answered %q", b[:n])
	case errors.Is(err, os.ErrDeadlineExceeded):
		return errors.New("server kept the connection open")
	}
	return nil
}

// fsmHashes waits until every node reports the same FSM hash.
func (c *testCluster) sameState(timeout time.Duration) {
	c.t.Helper()
	waitFor(c.t, timeout, func() error {
		var first string
		for _, nd := range c.nodes {
			resp, err := httpClient.Get("http://" + nd.http + "/v1/fsm/hash")
			if err != nil {
				return err
			}
			var h struct{ Hash string }
			err = json.NewDecoder(resp.Body).Decode(&h)
			resp.Body.Close()
			if err != nil {
				return err
			}
			if first == "" {
				first = h.Hash
			} else if h.Hash != first {
				return fmt.Errorf("%s has fsm hash %s, node1 %s", nd.id, h.Hash, first)
			}
		}
		return nil
	})
}

// Acceptance 1: plain TCP with any first byte, a certificate of another
// CA, a certificate of the cluster CA for another node id claiming to be a
// member, and one for a machine that is no member: each is refused on
// every node; no tool runs, nothing is committed, no node exits.
func TestStrangersRefused(t *testing.T) {
	c := newCluster(t, 3)
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	c.nodes[0].mustPut("before", "v")

	for _, nd := range c.nodes {
		for b := 0; b < 256; b++ {
			if b == 0x16 { // a TLS handshake record: the cases below
				continue
			}
			conn, err := net.DialTimeout("tcp", nd.rpc, 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = conn.Write([]byte{byte(b), 'P', 'O', 'S', 'T', ' ', '/'})
			if err := refused(conn); err != nil {
				t.Errorf("%s, first byte 0x%02x: %v", nd.id, b, err)
			}
			conn.Close()
		}
	}

	// A forwarded tool call that would write a cache key if it ran.
	call := func(conn net.Conn) error {
		body := `{"params":{"name":"cache_set","arguments":{"key":"stranger","value":"x"}},"from":"node2"}`
		req := fmt.Sprintf("POST /v1/internal/call HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
		_, _ = io.WriteString(conn, req)
		return refused(conn)
	}
	cases := []struct {
		name  string
		who   stranger
		claim string
	}{
		{"certificate of another CA", foreignCert(t, "node2"), "node2"},
		{"cluster CA, another node's identity", clusterCert(t, "intruder"), "node2"},
		{"cluster CA, not a member", clusterCert(t, "intruder"), "intruder"},
	}
	for _, tc := range cases {
		for _, nd := range c.nodes {
			for _, kind := range []byte{'R', 'C', 'H'} {
				conn, err := tc.who.dial(t, nd.rpc, kind, tc.claim)
				if err != nil {
					continue // refused in the handshake
				}
				var rerr error
				if kind == 'H' {
					rerr = call(conn)
				} else {
					_, _ = conn.Write([]byte("garbage"))
					rerr = refused(conn)
				}
				conn.Close()
				if rerr != nil {
					t.Errorf("%s, %s, kind %c: %v", tc.name, nd.id, kind, rerr)
				}
			}
		}
	}

	for _, nd := range c.nodes {
		if !nd.running() {
			t.Fatalf("%s exited", nd.id)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		code, _, err := nd.get(ctx, "stranger", "linearizable")
		cancel()
		if err != nil || code != http.StatusNotFound {
			t.Fatalf("key written by a stranger's call on %s: %d %v", nd.id, code, err)
		}
	}
	c.nodes[1].mustPut("after", "v")
	c.sameState(15 * time.Second)
	for _, nd := range c.nodes {
		if strings.Contains(nd.log(), "panic") {
			t.Fatalf("%s logged a panic", nd.id)
		}
	}
}

// Acceptance 2: a peer that proved its identity (it holds a member's
// certificate) feeds the leader's node RPC undecodable, unknown-type and
// invalid commands: each is refused with an error and none is committed
// (a committed one would stop every node in Apply).
func TestBadCommandsRefused(t *testing.T) {
	c := newCluster(t, 3)
	leaderID := c.waitStable(30*time.Second, c.nodes, c.ids()...)
	leader := c.node(leaderID)
	peer := c.except(leaderID)[0]
	conn, err := clusterCert(t, peer.id).dial(t, leader.rpc, 'C', peer.id)
	if err != nil {
		t.Fatal(err)
	}
	cl := rpc.NewClient(conn)
	defer cl.Close()

	valid := append([]byte{1, 10}, `{"now":1,"key":"valid","value":"dg=="}`...)
	batch := [][]byte{
		{},                                    // empty
		[]byte("\x01"),                        // short
		[]byte("\x07\x0a{}"),                  // unknown encoding version
		append([]byte{1, 200}, "{}"...),       // unknown command type
		append([]byte{1, 10}, "not json"...),  // undecodable payload
		append([]byte{1, 10}, `{"now":1}`...), // cache set without a key
		append([]byte{1, 10}, `{"now":1,"key":"k","future_field":1}`...),            // a field this version does not know
		append([]byte{1, 10}, `{"now":1,"key":"`+strings.Repeat("k", 1000)+`"}`...), // key over the maximum
		valid,
	}
	var reply cluster.ApplyBatchReply
	if err := cl.Call("Cluster.ApplyBatch", cluster.ApplyBatchArgs{Data: batch}, &reply); err != nil {
		t.Fatal(err)
	}
	if len(reply.Results) != len(batch) {
		t.Fatalf("%d results for %d commands", len(reply.Results), len(batch))
	}
	for i, r := range reply.Results[:len(batch)-1] {
		if r.Err == "" || !strings.Contains(r.Err, "refused") {
			t.Errorf("command %d (%q): not refused: %+v", i, batch[i], r)
		}
	}
	if r := reply.Results[len(batch)-1]; r.Err != "" || r.NotLeader {
		t.Fatalf("valid command: %+v", r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, nd := range c.nodes {
		if code, body, err := nd.get(ctx, "valid", "linearizable"); err != nil || code != 200 || body != "v" {
			t.Fatalf("valid command on %s: %d %q %v", nd.id, code, body, err)
		}
	}
	c.nodes[0].mustPut("after", "v")
	c.sameState(15 * time.Second)
	for _, nd := range c.nodes {
		if !nd.running() {
			t.Fatalf("%s exited", nd.id)
		}
	}
}

// Acceptance 3: a node without the gossip key, or with another key, is
// never seen and never becomes a voter; rotating the key on a running
// cluster loses no member, and a node restarted with its old --encrypt
// flag keeps the rotated keyring.
func TestGossipKeyAdmissionAndRotation(t *testing.T) {
	c := newCluster(t, 3)
	c.waitStable(30*time.Second, c.nodes, c.ids()...)

	_, other, _ := runCLI(t, "keygen")
	wrongKey := newNode(t, "wrongkey", append([]string{"--encrypt", strings.TrimSpace(other)}, c.joinFlags()...)...)
	noKey := newNode(t, "nokey", c.joinFlags()...)
	wrongKey.start()
	noKey.plain = true // no gossip key, no TLS: a plain loopback node
	noKey.start()
	waitFor(t, 20*time.Second, func() error {
		for _, nd := range []*node{wrongKey, noKey} {
			if !strings.Contains(nd.log(), "join failed") && !strings.Contains(nd.log(), "rejoin failed") {
				return fmt.Errorf("%s has not tried to join yet", nd.id)
			}
		}
		return nil
	})
	// Several gossip rounds and reconcile passes later, still unseen.
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, nd := range c.nodes {
			st, err := nd.status()
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range st.Members {
				if m.ID == "wrongkey" || m.ID == "nokey" {
					t.Fatalf("%s sees %s in gossip (%s)", nd.id, m.ID, m.State)
				}
			}
			if v := voters(st); len(v) != 3 {
				t.Fatalf("%s sees voters %v", nd.id, v)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	wrongKey.stop(10 * time.Second)
	noKey.stop(10 * time.Second)

	// Rotation: install everywhere, use everywhere, remove the old.
	_, newKey, _ := runCLI(t, "keygen")
	newKey = strings.TrimSpace(newKey)
	env := []string{"MCPCLUSTER_ADMIN_TOKEN=" + sec.writeToken}
	addr := c.nodes[1].http
	for _, step := range [][]string{
		{"keyring", "install", "--http-addr", addr, newKey},
		{"keyring", "use", "--http-addr", addr, newKey},
		{"keyring", "remove", "--http-addr", addr, sec.gossipKey},
	} {
		code, stdout, stderr := runCLIEnv(t, env, step...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s %s", step[:2], code, stdout, stderr)
		}
	}
	code, stdout, stderr := runCLIEnv(t, env, "keyring", "list", "--http-addr", addr, "--json")
	if code != 0 {
		t.Fatalf("keyring list: exit %d: %s", code, stderr)
	}
	var list cluster.KeyringResponse
	if err := json.Unmarshal([]byte(stdout), &list); err != nil {
		t.Fatalf("keyring list: %v: %s", err, stdout)
	}
	if len(list.Nodes) != 3 {
		t.Fatalf("keyring list answers from %d nodes: %+v", len(list.Nodes), list)
	}
	for _, n := range list.Nodes {
		if n.Error != "" || n.Primary != newKey || len(n.Keys) != 1 {
			t.Fatalf("keyring of %s after rotation: %+v", n.Node, n)
		}
	}
	// No member lost over several gossip rounds with the new key only.
	deadline = time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		for _, nd := range c.nodes {
			st, err := nd.status()
			if err != nil {
				t.Fatal(err)
			}
			alive := 0
			for _, m := range st.Members {
				if m.State == "alive" {
					alive++
				}
			}
			if alive != 3 {
				t.Fatalf("%s sees %d alive members after rotation: %+v", nd.id, alive, st.Members)
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	// A restart with the old --encrypt flag keeps the persisted keyring.
	restarted := c.nodes[2]
	restarted.stop(10 * time.Second)
	restarted.start()
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	restarted.mustPut("after-rotation", "v")
}

// Acceptance 4: without a token every /v1/ endpoint answers 401; a read
// token reads and gets 403 on writes; a write token does everything; the
// CLI takes the token from the environment.
func TestAdminTokenLevels(t *testing.T) {
	c := newCluster(t, 3)
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	nd := c.nodes[0]
	nd.mustPut("k", "v")
	do := func(token, method, path, body string) (int, string) {
		req, err := http.NewRequest(method, "http://"+nd.http+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		} else {
			req.Header.Set("Authorization", "") // the test transport adds none
		}
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	reads := [][2]string{{"GET", "/v1/status"}, {"GET", "/v1/catalog"}, {"GET", "/v1/cache"}, {"GET", "/v1/cache/k"}, {"GET", "/v1/fsm/hash"}}
	writes := [][2]string{{"PUT", "/v1/cache/k"}, {"DELETE", "/v1/cache/gone"}, {"POST", "/v1/agent/snapshot"},
		{"POST", "/v1/agent/transfer-leadership?to=nobody"}, {"POST", "/v1/agent/leave"}, {"GET", "/v1/operator/keyring"}}
	for _, ep := range append(append([][2]string{}, reads...), writes...) {
		code, body := do("", ep[0], ep[1], "v")
		if code != http.StatusUnauthorized || !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s without a token: %d %s", ep[0], ep[1], code, body)
		}
		if code, _ := do("not-a-token-of-this-cluster", ep[0], ep[1], "v"); code != http.StatusUnauthorized {
			t.Errorf("%s %s with an unknown token: %d", ep[0], ep[1], code)
		}
	}
	for _, ep := range reads {
		if code, body := do(sec.readToken, ep[0], ep[1], ""); code != http.StatusOK {
			t.Errorf("%s %s with the read token: %d %s", ep[0], ep[1], code, body)
		}
	}
	for _, ep := range writes {
		if code, body := do(sec.readToken, ep[0], ep[1], "v"); code != http.StatusForbidden || !strings.Contains(body, `"error"`) {
			t.Errorf("%s %s with the read token: %d %s", ep[0], ep[1], code, body)
		}
	}
	for _, ep := range writes[:3] {
		if code, body := do(sec.writeToken, ep[0], ep[1], "v"); code != http.StatusOK && code != http.StatusNotFound {
			t.Errorf("%s %s with the write token: %d %s", ep[0], ep[1], code, body)
		}
	}
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if code, _ := do("", "GET", path, ""); code != http.StatusOK {
			t.Errorf("GET %s without a token: %d", path, code)
		}
	}
	// The CLI: the token from the environment, or refused in one line.
	if code, out, stderr := runCLIEnv(t, []string{"MCPCLUSTER_ADMIN_TOKEN=" + sec.readToken}, "status", "--http-addr", nd.http); code != 0 || !strings.Contains(out, "Leader:") {
		t.Fatalf("status with the token in the environment: exit %d: %s %s", code, out, stderr)
	}
	code, _, stderr := runCLIEnv(t, []string{"MCPCLUSTER_ADMIN_TOKEN="}, "status", "--http-addr", nd.http)
	if code != 1 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || !strings.Contains(stderr, "token") {
		t.Fatalf("status without a token: exit %d, stderr %q", code, stderr)
	}
	if code, _, stderr := runCLIEnv(t, []string{"MCPCLUSTER_ADMIN_TOKEN=" + sec.readToken}, "cache", "--http-addr", nd.http, "set", "k", "x"); code != 1 || !strings.Contains(stderr, "write") {
		t.Fatalf("cache set with the read token: exit %d, stderr %q", code, stderr)
	}
	for _, nd := range c.nodes {
		if strings.Contains(nd.log(), sec.writeToken) || strings.Contains(nd.log(), sec.readToken) {
			t.Fatalf("%s logged a token", nd.id)
		}
	}
}

// Acceptance 6: off loopback, no security means no start (exit 2, one
// line naming what is missing); --insecure starts with a warning.
func TestSecureByDefault(t *testing.T) {
	dir := t.TempDir()
	base := []string{"agent", "--data-dir", dir, "--http-addr", "0.0.0.0:0", "--rpc-addr", "127.0.0.1:0",
		"--gossip-addr", "127.0.0.1:0", "--bootstrap-expect", "1"}
	noToken := []string{"MCPCLUSTER_ADMIN_TOKEN="}
	code, _, stderr := runCLIEnv(t, noToken, base...)
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if code != 2 || len(lines) != 1 {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"0.0.0.0", "--tls-ca-file", "--encrypt", "--admin-token-file", "--insecure"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("message does not name %s: %q", want, stderr)
		}
	}
	// Only what is missing is named.
	code, _, stderr = runCLIEnv(t, noToken, append(base, "--encrypt", sec.gossipKey, "--admin-token-file", sec.tokenFile)...)
	if code != 2 || strings.Contains(stderr, "--encrypt") || !strings.Contains(stderr, "--tls-ca-file") {
		t.Fatalf("with key and token: exit %d, stderr %q", code, stderr)
	}

	n := newNode(t, "insecure", "--bootstrap-expect", "1", "--insecure")
	n.plain = true
	n.http = "0.0.0.0:" + strings.Split(n.http, ":")[1]
	n.start()
	n.waitLog(20*time.Second, "running on a non-loopback address without")
	waitFor(t, 20*time.Second, func() error {
		resp, err := http.Get("http://127.0.0.1:" + strings.Split(n.http, ":")[1] + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return fmt.Errorf("readyz: %s", resp.Status)
		}
		return nil
	})
	if !strings.Contains(n.log(), "level=WARN") {
		t.Fatal("no warning logged")
	}
}

// Acceptance 8 (the plaintext half): plain nodes on loopback with no
// security flags keep working, for quick experiments.
func TestPlainLoopbackCluster(t *testing.T) {
	c := &testCluster{t: t}
	for i := range 3 {
		nd := newNode(t, fmt.Sprintf("node%d", i+1))
		nd.plain = true
		c.nodes = append(c.nodes, nd)
	}
	for _, nd := range c.nodes {
		nd.extra = append(append(nd.extra, "--bootstrap-expect", "3"), c.joinFlags()...)
	}
	c.startAll()
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	// No token needed anywhere.
	resp, err := http.Get("http://" + c.nodes[1].http + "/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status without a token on a plain node: %s", resp.Status)
	}
	c.nodes[1].mustPut("plain", "v")
	cl := mcpgoClient(t, c.nodes[2].mcpURL(), legacy)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if text, _, err := callTool(ctx, cl, "echo", map[string]any{"text": "hi"}); err != nil || text != "hi" {
		t.Fatalf("echo on a plain cluster: %q %v", text, err)
	}
}

// Acceptance 7: new certificate files from the same CA are used for new
// connections without a restart.
func TestCertificateRotation(t *testing.T) {
	c := newCluster(t, 3)
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	nd := c.nodes[0]
	serial := func() string {
		conn, err := clusterCert(t, "node2").dial(t, nd.rpc, 'C', "node2")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	old := serial()
	// New files for node1, from the same CA, written where the old ones are.
	dir := t.TempDir()
	if out, err := exec.Command(binary, "tls", "cert", "create", "--node", nd.id, "--dir", dir, "--ip", "127.0.0.1",
		"--ca", sec.caFile(), "--ca-key", filepath.Join(sec.dir, "mcpcluster-ca-key.pem")).CombinedOutput(); err != nil {
		t.Fatalf("tls cert create: %v: %s", err, out)
	}
	certFile, keyFile := sec.cert(t, nd.id)
	for _, f := range [][2]string{{nd.id + "-key.pem", keyFile}, {nd.id + ".pem", certFile}} {
		b, err := os.ReadFile(filepath.Join(dir, f[0]))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(f[1]+".tmp", b, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(f[1]+".tmp", f[1]); err != nil {
			t.Fatal(err)
		}
	}
	pemBytes, _ := os.ReadFile(certFile)
	want := serialOf(t, pemBytes)
	if want == old {
		t.Fatal("the new certificate has the old serial")
	}
	waitFor(t, 15*time.Second, func() error {
		if got := serial(); got != want {
			return fmt.Errorf("node1 presents serial %s, want %s", got, want)
		}
		return nil
	})
	nd.waitLog(5*time.Second, "tls certificate reloaded")
	// The cluster keeps working: new connections from peers verify it.
	nd.mustPut("after-rotation", "v")
	c.nodes[2].mustPut("after-rotation-2", "v")
}

func serialOf(t *testing.T, pemBytes []byte) string {
	t.Helper()
	block, _ := pem.Decode(pemBytes)
	if block == nil {
		t.Fatal("no PEM block in the certificate file")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert.SerialNumber.String()
}

// Acceptance 5: a stdio upstream's environment holds no MCPCLUSTER_*
// secret of its node; the upstream itself is asked.
func TestStdioUpstreamHasNoSecrets(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "providers.yaml")
	providers := fmt.Sprintf(`providers:
  - name: files
    type: stdio
    command: [%q]
    env: ["DECLARED_BY_OPERATOR=1"]
    prefix: files_
    replicas: 1
`, stdioServer)
	if err := os.WriteFile(cfg, []byte(providers), 0o644); err != nil {
		t.Fatal(err)
	}
	nd := newNode(t, "solo", "--bootstrap-expect", "1", "--config", cfg)
	nd.env = []string{"MCPCLUSTER_ADMIN_TOKEN=" + sec.writeToken, "MCPCLUSTER_AUTH_TOKENS=" + sec.readToken + "=alice"}
	nd.start()
	c := &testCluster{t: t, nodes: []*node{nd}}
	c.waitStable(30*time.Second, c.nodes, "solo")
	nd.holders(t, "files_env", 1)
	cl := mcpgoClient(t, nd.mcpURL(), legacy, transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + sec.readToken}))
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	text, _, err := callTool(ctx, cl, "files_env", nil)
	if err != nil {
		t.Fatal(err)
	}
	names := strings.Fields(text)
	if len(names) == 0 || !strings.Contains(text, "DECLARED_BY_OPERATOR") {
		t.Fatalf("upstream environment lacks the declared entry: %q", text)
	}
	for _, name := range names {
		if strings.HasPrefix(name, "MCPCLUSTER_") {
			t.Errorf("upstream inherited %s", name)
		}
	}
}
