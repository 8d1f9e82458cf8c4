package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "node.yaml")
	if err := os.WriteFile(file, []byte(`
node_id: from-file
data_dir: /var/lib/file
join: [10.0.0.1:8702, 10.0.0.2:8702]
bootstrap_expect: 3
dead_server_timeout: 45s
log_level: warn
`), 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{
		"MCPCLUSTER_CONFIG":    file,
		"MCPCLUSTER_DATA_DIR":  "/var/lib/env",
		"MCPCLUSTER_JOIN":      "127.0.0.1:1,127.0.0.1:2",
		"MCPCLUSTER_LOG_LEVEL": "error",
	}
	cfg, err := parseAgentConfig([]string{"--log-level", "debug", "--join", "127.0.0.1:9", "--join", "127.0.0.1:10"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.NodeID != "from-file" {
		t.Errorf("node id %q: the file's value should stand", cfg.NodeID)
	}
	if cfg.DataDir != "/var/lib/env" {
		t.Errorf("data dir %q: env should win over the file", cfg.DataDir)
	}
	if cfg.LogLevel != "debug" {
		t.Errorf("log level %q: the flag should win", cfg.LogLevel)
	}
	if !slices.Equal(cfg.Join, []string{"127.0.0.1:9", "127.0.0.1:10"}) {
		t.Errorf("join %v: flags should replace the env list", cfg.Join)
	}
	if cfg.DeadServerTime != 45*time.Second || cfg.BootstrapExpect != 3 {
		t.Errorf("file values lost: %+v", cfg)
	}
	if cfg.HTTPAddr != "127.0.0.1:8700" {
		t.Errorf("default http addr lost: %q", cfg.HTTPAddr)
	}
}

func TestConfigErrors(t *testing.T) {
	cases := map[string][]string{
		"flag provided but not defined": {"--bogus"},
		"needs at least one -join":      {"--data-dir", "d", "--bootstrap-expect", "3"},
		"-log-format":                   {"--dev", "--log-format", "xml"},
		"-gossip-profile":               {"--dev", "--gossip-profile", "wan"},
		"-join":                         {"--dev", "--join", "no-port"},
		"unexpected argument":           {"--dev", "extra"},
		"-bootstrap-expect":             {"--dev", "--bootstrap-expect", "-1"},
	}
	for want, args := range cases {
		_, err := parseAgentConfig(args, func(string) string { return "" }, io.Discard)
		var ue usageError
		if !errors.As(err, &ue) || !strings.Contains(err.Error(), want) {
			t.Errorf("%v: got %v, want a usage error naming %q", args, err, want)
		}
	}
	_, err := parseAgentConfig(nil, func(k string) string {
		if k == "MCPCLUSTER_RAFT_ELECTION_TIMEOUT" {
			return "fast"
		}
		return ""
	}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "MCPCLUSTER_RAFT_ELECTION_TIMEOUT") {
		t.Errorf("bad env value: %v", err)
	}
}

func TestDevDefaults(t *testing.T) {
	cfg, err := parseAgentConfig([]string{"--dev"}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.BootstrapExpect != 1 {
		t.Fatalf("dev bootstrap-expect = %d, want 1", cfg.BootstrapExpect)
	}
}
