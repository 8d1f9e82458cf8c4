package main

import (
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
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

// secFiles writes a token file and TLS files and returns their paths.
func secFiles(t *testing.T) (tokens, ca, cert, key string) {
	t.Helper()
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("tokens", "# admin\nwrite-token-0123456789\nread read-token-0123456789\n"),
		write("ca.pem", "ca"), write("cert.pem", "cert"), write("key.pem", "key")
}

func TestSecurityConfig(t *testing.T) {
	tokens, ca, cert, key := secFiles(t)
	key16 := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef"))
	key32 := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef"))
	key20 := base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123"))
	badTokens := filepath.Join(t.TempDir(), "bad")
	if err := os.WriteFile(badTokens, []byte("write-token-0123456789\nadmin write-token-9876543210\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	all := []string{"--admin-token-file", tokens, "--tls-ca-file", ca, "--tls-cert-file", cert, "--tls-key-file", key, "--encrypt", key32}
	const (
		tlsMissing   = "TLS (--tls-ca-file, --tls-cert-file, --tls-key-file)"
		keyMissing   = "a gossip key (--encrypt)"
		tokenMissing = "an admin token (--admin-token-file or MCPCLUSTER_ADMIN_TOKEN)"
	)
	refusal := func(where string, missing string) string {
		return where + " is not loopback: refusing to start without " + missing + "; --insecure overrides"
	}
	cases := []struct {
		name  string
		args  []string
		env   map[string]string
		yaml  string
		err   string // exact message when it starts with "=", else a substring
		check func(t *testing.T, c AgentConfig)
	}{
		{name: "token file flag", args: []string{"--admin-token-file", tokens}, check: func(t *testing.T, c AgentConfig) {
			if c.AdminTokens.Len() != 2 {
				t.Errorf("%d tokens", c.AdminTokens.Len())
			}
			if l, ok := c.AdminTokens.Check("read-token-0123456789"); !ok || l != cluster.AccessRead {
				t.Errorf("read token: %v %v", l, ok)
			}
		}},
		{name: "token file env", env: map[string]string{"MCPCLUSTER_ADMIN_TOKEN_FILE": tokens}, check: func(t *testing.T, c AgentConfig) {
			if c.AdminTokens.Len() != 2 {
				t.Errorf("%d tokens", c.AdminTokens.Len())
			}
		}},
		{name: "token file yaml", yaml: "admin_token_file: " + tokens, check: func(t *testing.T, c AgentConfig) {
			if c.AdminTokens.Len() != 2 {
				t.Errorf("%d tokens", c.AdminTokens.Len())
			}
		}},
		{name: "token env", env: map[string]string{"MCPCLUSTER_ADMIN_TOKEN": "env-token-0123456789"}, check: func(t *testing.T, c AgentConfig) {
			if l, ok := c.AdminTokens.Check("env-token-0123456789"); !ok || l != cluster.AccessWrite || c.AdminTokens.Len() != 1 {
				t.Errorf("env token: %v %v", l, ok)
			}
		}},
		{name: "token env and file", args: []string{"--admin-token-file", tokens}, env: map[string]string{"MCPCLUSTER_ADMIN_TOKEN": "env-token-0123456789"}, check: func(t *testing.T, c AgentConfig) {
			if c.AdminTokens.Len() != 3 {
				t.Errorf("%d tokens, want 3", c.AdminTokens.Len())
			}
		}},
		{name: "token env short", env: map[string]string{"MCPCLUSTER_ADMIN_TOKEN": "short"}, err: "environment MCPCLUSTER_ADMIN_TOKEN: token is shorter than 16"},
		{name: "token file bad line", args: []string{"--admin-token-file", badTokens}, err: `-admin-token-file "` + badTokens + `": line 2: access level "admin" is not read or write`},
		{name: "token file missing", args: []string{"--admin-token-file", "/nonexistent/tokens"}, err: `-admin-token-file "/nonexistent/tokens": no such file or directory`},
		{name: "no tokens without a file", check: func(t *testing.T, c AgentConfig) {
			if c.AdminTokens.Len() != 0 {
				t.Errorf("%d tokens", c.AdminTokens.Len())
			}
		}},

		{name: "tls flags", args: []string{"--tls-ca-file", ca, "--tls-cert-file", cert, "--tls-key-file", key}, check: func(t *testing.T, c AgentConfig) {
			if c.TLSCAFile != ca || c.TLSCertFile != cert || c.TLSKeyFile != key {
				t.Errorf("tls files %q %q %q", c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile)
			}
		}},
		{name: "tls env", env: map[string]string{"MCPCLUSTER_TLS_CA_FILE": ca, "MCPCLUSTER_TLS_CERT_FILE": cert, "MCPCLUSTER_TLS_KEY_FILE": key}, check: func(t *testing.T, c AgentConfig) {
			if c.TLSCAFile != ca || c.TLSCertFile != cert || c.TLSKeyFile != key {
				t.Errorf("tls files %q %q %q", c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile)
			}
		}},
		{name: "tls yaml", yaml: "tls_ca_file: " + ca + "\ntls_cert_file: " + cert + "\ntls_key_file: " + key, check: func(t *testing.T, c AgentConfig) {
			if c.TLSCAFile != ca || c.TLSCertFile != cert || c.TLSKeyFile != key {
				t.Errorf("tls files %q %q %q", c.TLSCAFile, c.TLSCertFile, c.TLSKeyFile)
			}
		}},
		{name: "tls partial", args: []string{"--tls-ca-file", ca}, err: "=-tls-ca-file given without -tls-cert-file and -tls-key-file: TLS needs all three of -tls-ca-file, -tls-cert-file and -tls-key-file"},
		{name: "tls missing file", args: []string{"--tls-ca-file", ca, "--tls-cert-file", cert, "--tls-key-file", key + ".gone"}, err: `-tls-key-file "` + key + `.gone": no such file or directory`},

		{name: "encrypt flag", args: []string{"--encrypt", key32}, check: func(t *testing.T, c AgentConfig) {
			if len(c.gossipKey()) != 32 {
				t.Errorf("gossip key %d bytes", len(c.gossipKey()))
			}
		}},
		{name: "encrypt env", env: map[string]string{"MCPCLUSTER_ENCRYPT": key16}, check: func(t *testing.T, c AgentConfig) {
			if string(c.gossipKey()) != "0123456789abcdef" {
				t.Errorf("gossip key %d bytes", len(c.gossipKey()))
			}
		}},
		{name: "encrypt yaml", yaml: "encrypt: " + key32, check: func(t *testing.T, c AgentConfig) {
			if len(c.gossipKey()) != 32 {
				t.Errorf("gossip key %d bytes", len(c.gossipKey()))
			}
		}},
		{name: "encrypt wrong length", args: []string{"--encrypt", key20}, err: "=-encrypt: the key decodes to 20 bytes; want 16, 24 or 32"},
		{name: "encrypt not base64", args: []string{"--encrypt", "not*base64!"}, err: "-encrypt: the key is not valid base64"},

		{name: "insecure flag", args: []string{"--insecure"}, check: func(t *testing.T, c AgentConfig) {
			if !c.Insecure {
				t.Error("not insecure")
			}
		}},
		{name: "insecure env", env: map[string]string{"MCPCLUSTER_INSECURE": "true"}, check: func(t *testing.T, c AgentConfig) {
			if !c.Insecure {
				t.Error("not insecure")
			}
		}},
		{name: "insecure yaml", yaml: "insecure: true", check: func(t *testing.T, c AgentConfig) {
			if !c.Insecure {
				t.Error("not insecure")
			}
		}},

		{name: "conns per ip default", check: func(t *testing.T, c AgentConfig) {
			if c.RPCMaxConnsPerIP != cluster.DefaultMaxConnsPerIP {
				t.Errorf("default %d", c.RPCMaxConnsPerIP)
			}
		}},
		{name: "conns per ip flag 0", args: []string{"--rpc-max-conns-per-ip", "0"}, check: func(t *testing.T, c AgentConfig) {
			if c.RPCMaxConnsPerIP != 0 {
				t.Errorf("got %d", c.RPCMaxConnsPerIP)
			}
		}},
		{name: "conns per ip env", env: map[string]string{"MCPCLUSTER_RPC_MAX_CONNS_PER_IP": "10"}, check: func(t *testing.T, c AgentConfig) {
			if c.RPCMaxConnsPerIP != 10 {
				t.Errorf("got %d", c.RPCMaxConnsPerIP)
			}
		}},
		{name: "conns per ip yaml", yaml: "rpc_max_conns_per_ip: 7", check: func(t *testing.T, c AgentConfig) {
			if c.RPCMaxConnsPerIP != 7 {
				t.Errorf("got %d", c.RPCMaxConnsPerIP)
			}
		}},
		{name: "conns per ip negative", args: []string{"--rpc-max-conns-per-ip", "-1"}, err: "flag -rpc-max-conns-per-ip"},
		{name: "conns per ip yaml negative", yaml: "rpc_max_conns_per_ip: -1", err: "-rpc-max-conns-per-ip -1"},

		{name: "node id ok", args: []string{"--node-id", "node-1.a_B"}},
		{name: "node id leading dash", args: []string{"--node-id", "-n1"}, err: `-node-id "-n1"`},
		{name: "node id space", args: []string{"--node-id", "n 1"}, err: `-node-id "n 1"`},
		{name: "node id slash", yaml: "node_id: a/b", err: `-node-id "a/b"`},
		{name: "node id too long", args: []string{"--node-id", strings.Repeat("a", 65)}, err: "-node-id"},
		{name: "node id 64", args: []string{"--node-id", strings.Repeat("a", 64)}},

		{name: "loopback with nothing", args: []string{"--http-addr", "localhost:8700", "--rpc-addr", "127.0.0.2:8701", "--gossip-addr", "[::1]:8702", "--rpc-advertise", "127.0.0.1:8701"}},
		{name: "refused with nothing", args: []string{"--rpc-addr", "10.0.0.5:8701"},
			err: "=" + refusal("-rpc-addr 10.0.0.5:8701", tlsMissing+", "+keyMissing+" and "+tokenMissing)},
		{name: "refused names only what is missing", args: []string{"--gossip-addr", "10.0.0.5:8702", "--admin-token-file", tokens},
			err: "=" + refusal("-gossip-addr 10.0.0.5:8702", tlsMissing+" and "+keyMissing)},
		{name: "refused without a key", args: []string{"--http-addr", "0.0.0.0:8700", "--tls-ca-file", ca, "--tls-cert-file", cert, "--tls-key-file", key},
			env: map[string]string{"MCPCLUSTER_ADMIN_TOKEN": "env-token-0123456789"},
			err: "=" + refusal("-http-addr 0.0.0.0:8700", keyMissing)},
		{name: "refused empty host", args: []string{"--http-addr", ":8700", "--encrypt", key16},
			err: "=" + refusal("-http-addr :8700", tlsMissing+" and "+tokenMissing)},
		{name: "refused advertise", args: []string{"--http-advertise", "192.168.1.9:8700"},
			err: "=" + refusal("-http-advertise 192.168.1.9:8700", tlsMissing+", "+keyMissing+" and "+tokenMissing)},
		{name: "refused from yaml", yaml: "rpc_addr: 10.0.0.5:8701\nencrypt: " + key32,
			err: "=" + refusal("-rpc-addr 10.0.0.5:8701", tlsMissing+" and "+tokenMissing)},
		{name: "non-loopback secured", args: append([]string{"--rpc-addr", "10.0.0.5:8701", "--http-addr", "0.0.0.0:8700"}, all...)},
		{name: "non-loopback insecure", args: []string{"--rpc-addr", "10.0.0.5:8701", "--insecure"}, check: func(t *testing.T, c AgentConfig) {
			where, missing := c.insecurity()
			if where != "-rpc-addr 10.0.0.5:8701" || missing != tlsMissing+", "+keyMissing+" and "+tokenMissing {
				t.Errorf("insecurity() = %q, %q", where, missing)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range tc.env {
				env[k] = v
			}
			if tc.yaml != "" {
				file := filepath.Join(t.TempDir(), "node.yaml")
				if err := os.WriteFile(file, []byte(tc.yaml+"\n"), 0o600); err != nil {
					t.Fatal(err)
				}
				env["MCPCLUSTER_CONFIG"] = file
			}
			cfg, err := parseAgentConfig(append([]string{"--dev"}, tc.args...), func(k string) string { return env[k] }, io.Discard)
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if tc.check != nil {
					tc.check(t, cfg)
				}
				return
			}
			var ue usageError
			if !errors.As(err, &ue) {
				t.Fatalf("got %v, want a usage error", err)
			}
			if exact, ok := strings.CutPrefix(tc.err, "="); ok {
				if err.Error() != exact {
					t.Fatalf("got  %s\nwant %s", err, exact)
				}
			} else if !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want %q in it", err, tc.err)
			}
			for _, k := range []string{key16, key20, key32, "write-token-0123456789", "env-token-0123456789"} {
				if strings.Contains(err.Error(), k) {
					t.Fatalf("error shows a secret: %v", err)
				}
			}
		})
	}
}

// The refusal is one line on stderr and exit status 2.
func TestSecureByDefaultExit(t *testing.T) {
	var stdout, stderr strings.Builder
	code := run([]string{"agent", "--dev", "--rpc-addr", "10.0.0.5:8701"}, &stdout, &stderr)
	if code != 2 {
		t.Fatalf("exit %d, want 2; stderr %s", code, stderr.String())
	}
	want := "mcpcluster agent: -rpc-addr 10.0.0.5:8701 is not loopback: refusing to start without TLS (--tls-ca-file, --tls-cert-file, --tls-key-file), a gossip key (--encrypt) and an admin token (--admin-token-file or MCPCLUSTER_ADMIN_TOKEN); --insecure overrides\n"
	if stderr.String() != want {
		t.Fatalf("stderr %q\nwant   %q", stderr.String(), want)
	}
}

func TestSecretsRedacted(t *testing.T) {
	cfg := AgentConfig{Encrypt: secret("c2VjcmV0LWtleS0wMTIzNDU2Nw=="), AdminToken: cluster.Token("env-token-0123456789")}
	var b strings.Builder
	fmt.Fprintf(&b, "%v %+v %#v", cfg, cfg, cfg)
	slog.New(slog.NewTextHandler(&b, nil)).Info("cfg", "encrypt", cfg.Encrypt, "token", cfg.AdminToken)
	if strings.Contains(b.String(), "c2VjcmV0") || strings.Contains(b.String(), "env-token") {
		t.Fatalf("secret printed: %s", b.String())
	}
}

// parseFile parses a config file holding yaml, with --dev.
func parseFile(t *testing.T, yaml string, args ...string) (AgentConfig, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "node.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	return parseAgentConfig(append([]string{"--dev", "--config", file}, args...), func(string) string { return "" }, io.Discard)
}

func TestOAuthConfig(t *testing.T) {
	jwks := filepath.Join(t.TempDir(), "jwks.json")
	if err := os.WriteFile(jwks, []byte(`{"keys":[]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := parseFile(t, `
oauth:
  issuer: https://idp.example.test
  audience: https://mcp.example.test/mcp
  jwks_file: `+jwks+`
  authorization_servers: [https://idp.example.test]
  scopes_supported: [mcp:tools]
  required_scopes: [mcp:tools]
  principal_claim: email
  clock_skew: 30s
  jwks_min_refresh_interval: 1s
allowed_origins: [https://app.example.test]
providers:
  - name: weather
    type: http
    url: https://weather.example.test/mcp
    cache_ttl: 1m
    shared_cache: true
    tool_shared_cache: {forecast_private: false}
`)
	if err != nil {
		t.Fatal(err)
	}
	m := cfg.OAuth.mcp()
	if m.Issuer != "https://idp.example.test" || m.Audience != "https://mcp.example.test/mcp" || m.JWKSFile != jwks ||
		m.PrincipalClaim != "email" || m.Leeway != 30*time.Second || m.MinRefreshInterval != time.Second ||
		!slices.Equal(m.RequiredScopes, []string{"mcp:tools"}) || !slices.Equal(m.AuthorizationServers, []string{"https://idp.example.test"}) {
		t.Fatalf("oauth block: %+v", m)
	}
	if !slices.Equal(cfg.AllowedOrigins, []string{"https://app.example.test"}) {
		t.Fatalf("allowed origins %v", cfg.AllowedOrigins)
	}
	if p := cfg.Providers[0]; !p.SharedCache || p.ToolSharedCache["forecast_private"] {
		t.Fatalf("shared cache: %+v", p)
	}
	if cfg, err := parseFile(t, "", "--allowed-origins", "http://a.test, https://b.test:8443"); err != nil || len(cfg.AllowedOrigins) != 2 {
		t.Fatalf("--allowed-origins: %v %v", cfg.AllowedOrigins, err)
	}
	var none *OAuthConfig
	if none.mcp() != nil {
		t.Fatal("no oauth block but an mcp oauth config")
	}

	base := "oauth:\n  issuer: https://idp.test\n  audience: https://mcp.test/mcp\n"
	for _, c := range []struct{ yaml, want string }{
		{"oauth:\n  audience: https://mcp.test/mcp\n  jwks_url: https://idp.test/jwks\n", "oauth.issuer"},
		{"oauth:\n  issuer: https://idp.test\n  audience: mcp\n  jwks_url: https://idp.test/jwks\n", "oauth.audience \"mcp\""},
		{base, "one of jwks_file and jwks_url is required"},
		{base + "  jwks_url: https://idp.test/jwks\n  jwks_file: " + jwks + "\n", "exclude each other"},
		{base + "  jwks_file: /nonexistent/jwks.json\n", "oauth.jwks_file \"/nonexistent/jwks.json\": no such file"},
		{base + "  jwks_url: http://idp.test/jwks\n", "https only"},
		{base + "  jwks_url: https://idp.test/jwks\n  clock_skew: -1s\n", "clock_skew"},
		{base + "  jwks_url: https://idp.test/jwks\n  audiences: [x]\n", "field audiences not found"},
		{"allowed_origins: [https://app.test/path]\n", "allowed_origins \"https://app.test/path\""},
		{"allowed_origins: ['*']\n", "allowed_origins \"*\""},
	} {
		_, err := parseFile(t, c.yaml)
		var ue usageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want a usage error containing %q", c.yaml, err, c.want)
		}
	}
	if _, err := parseFile(t, base+"  jwks_url: http://127.0.0.1:9999/jwks\n"); err != nil {
		t.Errorf("http jwks url on loopback: %v", err)
	}
}

func TestOAuthExampleParses(t *testing.T) {
	cfg, err := parseAgentConfig([]string{"--config", "../../examples/oauth.yaml", "--data-dir", t.TempDir()}, func(string) string { return "" }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OAuth == nil || cfg.OAuth.Audience != "https://mcp.example.test/mcp" || !cfg.Providers[0].SharedCache {
		t.Fatalf("%+v", cfg.OAuth)
	}
	if rl, err := cfg.RateLimits.mcp(); err != nil || rl.Principal.Rate != 10 || rl.Tools["forecast"].Burst != 5 {
		t.Fatalf("rate limits: %+v %v", rl, err)
	}
}

func TestToolPolicyConfig(t *testing.T) {
	cfg, err := parseFile(t, "tool_policy:\n  - 'principal == \"ops\"'\n  - 'jwt.sub == \"alice\" && mcp.tool.name == \"echo\"'\n")
	if err != nil || len(cfg.ToolPolicy) != 2 {
		t.Fatalf("%v %v", cfg.ToolPolicy, err)
	}
	_, err = parseFile(t, "tool_policy:\n  - 'jwt.sub == '\n")
	var ue usageError
	if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), "tool_policy[0]") || !strings.Contains(err.Error(), "Syntax error") {
		t.Fatalf("bad rule: %v", err)
	}
}

func TestRateLimitsConfig(t *testing.T) {
	cfg, err := parseFile(t, `
rate_limits:
  principal: {rate: 10/s, burst: 20}
  tools:
    search: {rate: 30/m}
    slow: {rate: 0.5, burst: 2}
    hourly: {rate: 100/h}
  max_buckets: 500
`)
	if err != nil {
		t.Fatal(err)
	}
	rl, err := cfg.RateLimits.mcp()
	if err != nil {
		t.Fatal(err)
	}
	if rl.Principal.Rate != 10 || rl.Principal.Burst != 20 || rl.MaxBuckets != 500 {
		t.Fatalf("principal: %+v", rl)
	}
	if l := rl.Tools["search"]; l.Rate != 0.5 || l.Burst != 1 {
		t.Fatalf("search (30/m, default burst): %+v", l)
	}
	if l := rl.Tools["slow"]; l.Rate != 0.5 || l.Burst != 2 {
		t.Fatalf("slow (bare number is per second): %+v", l)
	}
	if l := rl.Tools["hourly"]; l.Rate != 100.0/3600 || l.Burst != 1 {
		t.Fatalf("hourly: %+v", l)
	}
	if none, err := (*RateLimitsConfig)(nil).mcp(); none != nil || err != nil {
		t.Fatalf("no block: %v %v", none, err)
	}

	for _, c := range []struct{ yaml, want string }{
		{"rate_limits: {}\n", "rate_limits: set principal, tools or both"},
		{"rate_limits:\n  principal: {burst: 3}\n", "rate_limits.principal.rate: missing"},
		{"rate_limits:\n  principal: {rate: fast}\n", `rate_limits.principal.rate "fast": want a positive number`},
		{"rate_limits:\n  principal: {rate: 0/s}\n", `rate_limits.principal.rate "0/s": want a positive number`},
		{"rate_limits:\n  principal: {rate: 10/d}\n", `rate_limits.principal.rate "10/d": the unit is s, m or h`},
		{"rate_limits:\n  principal: {rate: 10/s, burst: -1}\n", "rate_limits.principal.burst -1: must be at least 1"},
		{"rate_limits:\n  tools: {search: {rate: -3/m}}\n", `rate_limits.tools.search.rate "-3/m"`},
		{"rate_limits:\n  tools: {'': {rate: 1/s}}\n", "rate_limits.tools: a tool name is empty"},
		{"rate_limits:\n  principal: {rate: 1/s}\n  max_buckets: -5\n", "rate_limits.max_buckets"},
		{"rate_limits:\n  principal: {rate: 1/s, brust: 3}\n", "field brust not found"},
	} {
		_, err := parseFile(t, c.yaml)
		var ue usageError
		if err == nil || !errors.As(err, &ue) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: %v, want %q", c.yaml, err, c.want)
		}
	}
}

func TestAuditConfig(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	cfg, err := parseFile(t, "audit_log: "+path+"\naudit_arguments: true\n")
	if err != nil || cfg.AuditLog != path || !cfg.AuditArguments {
		t.Fatalf("file: %+v %v", cfg.AuditLog, err)
	}
	env := map[string]string{"MCPCLUSTER_AUDIT_LOG": path}
	cfg, err = parseAgentConfig([]string{"--dev"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil || cfg.AuditLog != path || cfg.AuditArguments {
		t.Fatalf("env: %q %v %v", cfg.AuditLog, cfg.AuditArguments, err)
	}
	flagPath := filepath.Join(dir, "flag.jsonl")
	cfg, err = parseAgentConfig([]string{"--dev", "--audit-log", flagPath, "--audit-arguments"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil || cfg.AuditLog != flagPath || !cfg.AuditArguments {
		t.Fatalf("flag: %q %v %v", cfg.AuditLog, cfg.AuditArguments, err)
	}
	for _, bad := range []struct{ path, want string }{
		{dir, "is a directory"},
		{filepath.Join(dir, "missing", "audit.jsonl"), "directory: no such file or directory"},
	} {
		_, err := parseAgentConfig([]string{"--dev", "--audit-log", bad.path}, func(string) string { return "" }, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "-audit-log") || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want %q", bad.path, err, bad.want)
		}
	}
}
