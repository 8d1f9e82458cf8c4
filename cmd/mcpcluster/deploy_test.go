package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestHealth(t *testing.T) {
	ready := newFakeNode(t, 200, `{"status":"ready","node":"n1"}`)
	var out, errOut bytes.Buffer
	if code := run([]string{"health", "--http-addr", ready.addr()}, &out, &errOut); code != 0 || strings.TrimSpace(out.String()) != "ready" {
		t.Fatalf("ready node: exit %d, out %q, err %q", code, out.String(), errOut.String())
	}
	busy := newFakeNode(t, 503, `{"error":"no known leader"}`)
	out.Reset()
	errOut.Reset()
	code := run([]string{"health", "--http-addr", busy.addr()}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "no known leader") || strings.Count(errOut.String(), "\n") != 1 {
		t.Fatalf("unready node: exit %d, err %q", code, errOut.String())
	}
	if code := run([]string{"health", "--http-addr", "nowhere"}, &out, &errOut); code != 2 {
		t.Fatalf("bad address: exit %d", code)
	}
}

func TestSecretsInit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "secrets")
	var out, errOut bytes.Buffer
	args := []string{"secrets", "init", "--dir", dir, "--node", "node1", "--node", "node2"}
	if code := run(args, &out, &errOut); code != 0 || !strings.Contains(out.String(), "8 files created") {
		t.Fatalf("first init: exit %d, out %q, err %q", code, out.String(), errOut.String())
	}
	token, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"tls/mcpcluster-ca.pem", "tls/node1.pem", "tls/node2-key.pem", "gossip.key"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Fatalf("missing %s: %v", f, err)
		}
	}
	// A second run keeps everything (an init container runs on every start).
	out.Reset()
	if code := run(args, &out, &errOut); code != 0 || !strings.Contains(out.String(), "0 files created") {
		t.Fatalf("second init: exit %d, out %q", code, out.String())
	}
	out.Reset()
	if code := run([]string{"secrets", "show-token", "--dir", dir}, &out, &errOut); code != 0 || out.String() != strings.TrimSpace(string(token))+"\n" {
		t.Fatalf("show-token: exit %d, out %q", code, out.String())
	}
	for _, bad := range [][]string{
		{"secrets"},
		{"secrets", "init", "--node", "node1"},
		{"secrets", "init", "--dir", dir},
		{"secrets", "init", "--dir", dir, "--node", "no/slash"},
	} {
		errOut.Reset()
		if code := run(bad, &out, &errOut); code == 0 {
			t.Errorf("%v: exit 0", bad)
		}
	}
}

func TestJoinNamesResolvedLater(t *testing.T) {
	// Peers started together get their DNS names as they come up.
	cfg, err := parseAgentConfig([]string{"--data-dir", t.TempDir(), "--join", "node2.not-yet-there.invalid:8702"}, func(string) string { return "" }, &bytes.Buffer{})
	if err != nil || len(cfg.Join) != 1 {
		t.Fatalf("join by a name that does not resolve yet: %v", err)
	}
	for _, bad := range []string{"node2", "node2:0", ":8702", "no spaces:8702"} {
		if _, err := parseAgentConfig([]string{"--data-dir", t.TempDir(), "--join", bad}, func(string) string { return "" }, &bytes.Buffer{}); err == nil {
			t.Errorf("--join %q accepted", bad)
		}
	}
}
