package integration

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/mark3labs/mcp-go/client/transport"
)

// bearerTransport adds a bearer token to every request.
type bearerTransport struct {
	token string
	base  http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.base.RoundTrip(r)
}

// auditSink is where a node writes its audit records: a file, or its log
// (JSON lines, message "audit").
type auditSink struct {
	n    *node
	file string
}

// records returns the audit records written so far.
func (s auditSink) records(t testing.TB) []map[string]any {
	t.Helper()
	var r io.Reader
	if s.file != "" {
		f, err := os.Open(s.file)
		if os.IsNotExist(err) {
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		r = f
	} else {
		r = strings.NewReader(s.n.log())
	}
	var out []map[string]any
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			if s.file != "" {
				t.Fatalf("%s: audit line %q: %v", s.n.id, sc.Text(), err)
			}
			continue // the log's other lines
		}
		if s.file != "" || rec["msg"] == "audit" {
			out = append(out, rec)
		}
	}
	return out
}

// find waits for the want records whose arguments contain marker.
func (s auditSink) find(t testing.TB, marker string, want int) []map[string]any {
	t.Helper()
	var hits []map[string]any
	waitFor(t, 10*time.Second, func() error {
		hits = nil
		for _, rec := range s.records(t) {
			if args, _ := rec["arguments"].(string); strings.Contains(args, marker) {
				hits = append(hits, rec)
			}
		}
		if len(hits) != want {
			return fmt.Errorf("%s: %d audit records for %q, want %d", s.n.id, len(hits), marker, want)
		}
		return nil
	})
	return hits
}

// TestAuditCluster: three OAuth nodes with an audit log each (a file named
// by the environment, a file named by the flag, the node's JSON log),
// per-tool rate limits, and a tool pinned to one node. A call through the
// holder and one through another node (go-sdk's client) are audited on the
// node that took them with the node that ran them; a principal past its
// bucket gets 429 with Retry-After on every node, each with its own
// buckets.
func TestAuditCluster(t *testing.T) {
	p := startIdP(t)
	p.addKey("rsa-1", jose.RS256, true)
	cfg := filepath.Join(t.TempDir(), "audit.yaml")
	yaml := fmt.Sprintf(`oauth:
  issuer: %s
  audience: %s
  jwks_url: %s
audit_arguments: true
rate_limits:
  principal: {rate: 100/s, burst: 100}
  tools:
    pinned_sha256: {rate: 1/m, burst: 2}
providers:
  - name: pinned
    type: builtin
    prefix: pinned_
    replicas: 1
`, oauthIssuer, oauthAudience, p.url)
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	c := &testCluster{t: t}
	for i := range 3 {
		c.nodes = append(c.nodes, newNode(t, fmt.Sprintf("node%d", i+1)))
	}
	sinks := map[string]auditSink{}
	for i, nd := range c.nodes {
		nd.extra = append(nd.extra, "--config", cfg, "--bootstrap-expect", "3")
		nd.extra = append(nd.extra, c.joinFlags()...)
		file := filepath.Join(filepath.Dir(nd.logPath), "audit.jsonl")
		switch i {
		case 0:
			nd.env = []string{"MCPCLUSTER_AUDIT_LOG=" + file}
		case 1:
			nd.extra = append(nd.extra, "--audit-log", file)
		default:
			nd.extra = append(nd.extra, "--log-format", "json")
			file = ""
		}
		sinks[nd.id] = auditSink{n: nd, file: file}
	}
	c.startAll()
	c.waitStable(60*time.Second, c.nodes, c.ids()...)
	holder := c.nodes[0].holders(t, "pinned_echo", 1)[0]
	var other *node
	for _, nd := range c.nodes {
		if nd.id != holder {
			other = nd
			break
		}
	}
	alice := p.token("rsa-1", "alice", nil)
	bob := p.token("rsa-1", "bob", nil)
	auth := transport.WithHTTPHeaders(map[string]string{"Authorization": "Bearer " + alice})

	t.Run("audit of a local and a forwarded call", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		localMark := fmt.Sprintf("local-%d", time.Now().UnixNano())
		cl := mcpgoClient(t, c.node(holder).mcpURL(), legacy, auth)
		if text, ranOn, err := callTool(ctx, cl, "pinned_echo", map[string]any{"text": localMark}); err != nil || text != localMark || ranOn != holder {
			t.Fatalf("local call on %s: %q on %q, %v", holder, text, ranOn, err)
		}

		// go-sdk's client, with alice's bearer token, through a node that
		// forwards to the holder.
		hc := matrixHTTPClient(t)
		hc.Transport = bearerTransport{token: alice, base: hc.Transport}
		cs := sdkConnect(t, hc, other.mcpURL(), legacy, nil)
		fwdMark := fmt.Sprintf("forwarded-%d", time.Now().UnixNano())
		res, err := sdkSession{cs}.call(ctx, "pinned_echo", map[string]any{"text": fwdMark})
		if err != nil || res.isError || res.text != fwdMark || res.ranOn != holder {
			t.Fatalf("go-sdk call through %s: %+v %v", other.id, res, err)
		}

		check := func(rec map[string]any, took, route string) {
			t.Helper()
			id, hasID := rec["id"]
			_, tErr := time.Parse(time.RFC3339Nano, fmt.Sprint(rec["time"]))
			if rec["principal"] != "alice" || rec["tool"] != "pinned_echo" || rec["node"] != took || rec["ran_on"] != holder ||
				rec["route"] != route || rec["outcome"] != "ok" || rec["session"] == "" || rec["session"] == nil ||
				!hasID || id == nil || tErr != nil {
				t.Fatalf("audit record on %s: %v", took, rec)
			}
			if d, ok := rec["duration_ms"].(float64); !ok || d <= 0 {
				t.Fatalf("audit record on %s: duration %v", took, rec["duration_ms"])
			}
		}
		local, fwd := sinks[holder].find(t, localMark, 1)[0], sinks[other.id].find(t, fwdMark, 1)[0]
		t.Logf("local: %v", local)
		t.Logf("forwarded: %v", fwd)
		check(local, holder, "local")
		check(fwd, other.id, "forwarded")
		for _, s := range sinks {
			if s.file == "" {
				continue
			}
			if st, err := os.Stat(s.file); err == nil && st.Mode().Perm() != 0o600 {
				t.Fatalf("%s: audit file mode %v, want 0600", s.n.id, st.Mode().Perm())
			}
		}
		// One record per call, on the node that took it: the holder ran
		// the forwarded call and has no record of it.
		for _, rec := range sinks[holder].records(t) {
			if args, _ := rec["arguments"].(string); strings.Contains(args, fwdMark) {
				t.Fatalf("the holder audited a call it did not take: %v", rec)
			}
		}
	})

	t.Run("rate limit 429 on every node", func(t *testing.T) {
		for i, n := range c.nodes {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			cl := mcpgoClient(t, n.mcpURL(), legacy, auth)
			for j := range 2 { // the bucket's burst, on this node
				if _, _, err := callTool(ctx, cl, "pinned_sha256", map[string]any{"text": fmt.Sprint(j)}); err != nil {
					t.Fatalf("%s: call %d within the burst: %v", n.id, j+1, err)
				}
			}
			cancel()
			id := 700 + i
			mark := fmt.Sprintf("limited-%s-%d", n.id, time.Now().UnixNano())
			call := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"pinned_sha256","arguments":{"text":%q}}}`, id, mark)
			status, hdr, body := mcpPost(t, n.mcpURL(), map[string]string{"Authorization": "Bearer " + alice}, call)
			var msg struct {
				ID    int `json:"id"`
				Error struct {
					Code int `json:"code"`
					Data struct {
						Reason string `json:"reason"`
					} `json:"data"`
				} `json:"error"`
			}
			json.Unmarshal([]byte(body), &msg)
			secs, err := strconv.Atoi(hdr.Get("Retry-After"))
			if status != http.StatusTooManyRequests || err != nil || secs < 1 || secs > 60 || msg.ID != id ||
				msg.Error.Code != -32000 || msg.Error.Data.Reason != "rate_limit" {
				t.Fatalf("%s: third call: %d Retry-After %q %s", n.id, status, hdr.Get("Retry-After"), body)
			}
			// Bob has buckets of his own.
			status, _, body = mcpPost(t, n.mcpURL(), map[string]string{"Authorization": "Bearer " + bob}, call)
			if status == http.StatusTooManyRequests {
				t.Fatalf("%s: bob limited by alice's calls: %s", n.id, body)
			}
			var rec map[string]any // alice's refused call, besides bob's
			for _, r := range sinks[n.id].find(t, mark, 2) {
				if r["principal"] == "alice" {
					rec = r
				}
			}
			if rec["principal"] != "alice" || rec["outcome"] != "refused" || rec["reason"] != "rate_limit" || rec["id"] != float64(id) || rec["node"] != n.id {
				t.Fatalf("%s: audit of the refused call: %v", n.id, rec)
			}
			resp, err := http.Get("http://" + n.http + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if !strings.Contains(string(b), `mcpcluster_rejections_total{reason="rate_limit"} 1`) {
				t.Fatalf("%s: rate_limit rejection not counted", n.id)
			}
		}
	})
}
