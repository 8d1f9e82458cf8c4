package main

import (
	"bytes"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/mcpcluster/mcpcluster/cluster"
	"github.com/mcpcluster/mcpcluster/mcp"
)

// AgentConfig is everything `mcpcluster agent` can be told, from (lowest to
// highest precedence) defaults, a YAML config file, MCPCLUSTER_* environment
// variables and flags.
type AgentConfig struct {
	NodeID           string        `yaml:"node_id"`
	DataDir          string        `yaml:"data_dir"`
	HTTPAddr         string        `yaml:"http_addr"`
	HTTPAdvertise    string        `yaml:"http_advertise"`
	RPCAddr          string        `yaml:"rpc_addr"`
	RPCAdvertise     string        `yaml:"rpc_advertise"`
	GossipAddr       string        `yaml:"gossip_addr"`
	GossipAdvertise  string        `yaml:"gossip_advertise"`
	GossipProfile    string        `yaml:"gossip_profile"`
	Join             []string      `yaml:"join"`
	BootstrapExpect  int           `yaml:"bootstrap_expect"`
	LogLevel         string        `yaml:"log_level"`
	LogFormat        string        `yaml:"log_format"`
	Dev              bool          `yaml:"dev"`
	LeaveOnTerminate bool          `yaml:"leave_on_terminate"`
	EnableDebug      bool          `yaml:"enable_debug"`
	DeadServerTime   time.Duration `yaml:"dead_server_timeout"`
	Stabilization    time.Duration `yaml:"server_stabilization_time"`
	MaxVoters        int           `yaml:"max_voters"`
	Voter            bool          `yaml:"voter"`
	Zone             string        `yaml:"zone"`
	ReconcileEvery   time.Duration `yaml:"reconcile_interval"`
	RaftHeartbeat    time.Duration `yaml:"raft_heartbeat_timeout"`
	RaftElection     time.Duration `yaml:"raft_election_timeout"`
	SnapshotEvery    uint64        `yaml:"snapshot_threshold"`
	CallTimeout      time.Duration `yaml:"call_timeout"`
	SessionIdleTTL   time.Duration `yaml:"session_idle_ttl"`
	// SessionMaxLifetime bounds a session's life however much it is used.
	SessionMaxLifetime time.Duration `yaml:"session_max_lifetime"`
	MaxBodyBytes       int64         `yaml:"max_body_bytes"`
	MaxConcurrent      int           `yaml:"max_concurrent"`
	MaxQueue           int           `yaml:"max_queue"`
	DrainGrace         time.Duration `yaml:"drain_grace"`
	// ToolTimeouts overrides call_timeout per tool (config file only).
	ToolTimeouts    map[string]time.Duration `yaml:"tool_timeouts"`
	CacheMaxEntries int                      `yaml:"cache_max_entries"`
	CacheMaxBytes   int64                    `yaml:"cache_max_bytes"`
	CacheMaxKey     int                      `yaml:"cache_max_key_bytes"`
	CacheMaxValue   int                      `yaml:"cache_max_value_bytes"`
	// AuthTokens maps bearer tokens to principals; when set, /mcp requires
	// one and sessions are bound to the principal that opened them. Config
	// file or MCPCLUSTER_AUTH_TOKENS=token=principal,... (never a flag, so
	// tokens stay out of process listings).
	AuthTokens map[string]string `yaml:"auth_tokens"`
	// OAuth makes /mcp an OAuth 2.1 resource server taking JWT access
	// tokens, beside AuthTokens (config file only).
	OAuth *OAuthConfig `yaml:"oauth"`
	// AllowedOrigins are the browser origins (scheme://host[:port]) that
	// may call /mcp; a request with another Origin gets 403. Empty: only
	// loopback origins, and only when http_addr is loopback.
	AllowedOrigins []string `yaml:"allowed_origins"`
	// ToolPolicy are CEL rules over jwt, principal, mcp.method,
	// mcp.tool.name and mcp.tool.annotations; a tools/call is allowed when
	// any is true, and tools/list shows only such tools (config file only).
	ToolPolicy []string `yaml:"tool_policy"`
	// RateLimits are token buckets per principal (and per principal and
	// tool) on this node (config file only).
	RateLimits *RateLimitsConfig `yaml:"rate_limits"`
	// AuditLog is a file the audit records (one JSON line per tools/call)
	// are appended to; empty: they go to the node's log at info ("audit").
	AuditLog string `yaml:"audit_log"`
	// AuditArguments puts each call's arguments, cut at 1 KiB, in its
	// audit record.
	AuditArguments bool `yaml:"audit_arguments"`
	// Providers are the tool sources this node can run (config file only).
	// The built-in tools are always there, as provider "builtin".
	Providers []ProviderConfig `yaml:"providers"`

	// AdminTokenFile names the admin API's token file (see
	// cluster.ParseTokenFile); read while the configuration is parsed.
	AdminTokenFile string `yaml:"admin_token_file"`
	// AdminToken is one more write-level admin token, from the environment
	// variable MCPCLUSTER_ADMIN_TOKEN only (out of process listings).
	AdminToken cluster.Token `yaml:"-"`
	// AdminTokens is the admin token set built from AdminTokenFile and
	// AdminToken; empty leaves the admin API open.
	AdminTokens *cluster.Tokens `yaml:"-"`
	// TLSCAFile, TLSCertFile and TLSKeyFile turn on mutual TLS on the
	// cluster port: all three or none.
	TLSCAFile   string `yaml:"tls_ca_file"`
	TLSCertFile string `yaml:"tls_cert_file"`
	TLSKeyFile  string `yaml:"tls_key_file"`
	// Encrypt is the gossip encryption key, base64 of 16, 24 or 32 bytes.
	Encrypt secret `yaml:"encrypt"`
	// EncryptFile names a file holding the gossip key (as Encrypt), so it
	// stays out of process listings and config files; Encrypt wins.
	EncryptFile string `yaml:"encrypt_file"`
	// Insecure allows non-loopback addresses without TLS, a gossip key and
	// an admin token (a warning is logged at start).
	Insecure bool `yaml:"insecure"`
	// RPCMaxConnsPerIP bounds cluster-port connections per remote IP; 0: no limit.
	RPCMaxConnsPerIP int `yaml:"rpc_max_conns_per_ip"`
}

// secret is a configured secret value; it prints as [redacted].
type secret string

func (secret) String() string       { return "[redacted]" }
func (secret) GoString() string     { return "[redacted]" }
func (secret) LogValue() slog.Value { return slog.StringValue("[redacted]") }

// gossipKey returns the decoded --encrypt key (validated), or nil.
func (c *AgentConfig) gossipKey() []byte {
	if c.Encrypt == "" {
		return nil
	}
	key, _ := base64.StdEncoding.DecodeString(string(c.Encrypt))
	return key
}

// OAuthConfig is the oauth: block: the identity provider whose access
// tokens /mcp takes.
type OAuthConfig struct {
	Issuer string `yaml:"issuer"`
	// Audience is the cluster's canonical resource URI, the same on every
	// node: a token must name it in aud (RFC 8707).
	Audience             string   `yaml:"audience"`
	JWKSFile             string   `yaml:"jwks_file"`
	JWKSURL              string   `yaml:"jwks_url"`
	AuthorizationServers []string `yaml:"authorization_servers"`
	ScopesSupported      []string `yaml:"scopes_supported"`
	RequiredScopes       []string `yaml:"required_scopes"`
	// PrincipalClaim names the claim that identifies the caller (sub).
	PrincipalClaim string `yaml:"principal_claim"`
	// ClockSkew is the leeway on exp, nbf and iat (60s).
	ClockSkew time.Duration `yaml:"clock_skew"`
	// JWKSRefresh is how often the keys are loaded again (5m);
	// JWKSMinRefresh bounds reloads caused by unknown key ids (10s).
	JWKSRefresh    time.Duration `yaml:"jwks_refresh_interval"`
	JWKSMinRefresh time.Duration `yaml:"jwks_min_refresh_interval"`
}

// mcp returns the front door's form of the block, nil when absent.
func (o *OAuthConfig) mcp() *mcp.OAuthConfig {
	if o == nil {
		return nil
	}
	return &mcp.OAuthConfig{
		Issuer: o.Issuer, Audience: o.Audience, JWKSFile: o.JWKSFile, JWKSURL: o.JWKSURL,
		AuthorizationServers: o.AuthorizationServers, ScopesSupported: o.ScopesSupported,
		RequiredScopes: o.RequiredScopes, PrincipalClaim: o.PrincipalClaim, Leeway: o.ClockSkew,
		RefreshInterval: o.JWKSRefresh, MinRefreshInterval: o.JWKSMinRefresh,
	}
}

// validate checks the block; the key file must be readable, a key URL is
// fetched only when the node starts.
func (o *OAuthConfig) validate() error {
	if err := checkURL(o.Issuer, false); err != nil {
		return fmt.Errorf("oauth.issuer %q: %v", o.Issuer, err)
	}
	if err := checkURL(o.Audience, false); err != nil {
		return fmt.Errorf("oauth.audience %q: %v (the cluster's canonical resource URI, such as https://mcp.example.com/mcp)", o.Audience, err)
	}
	switch {
	case o.JWKSFile == "" && o.JWKSURL == "":
		return errors.New("oauth: one of jwks_file and jwks_url is required")
	case o.JWKSFile != "" && o.JWKSURL != "":
		return errors.New("oauth: jwks_file and jwks_url exclude each other")
	case o.JWKSFile != "":
		if _, err := os.ReadFile(o.JWKSFile); err != nil {
			return fmt.Errorf("oauth.jwks_file %q: %v", o.JWKSFile, pathError(err))
		}
	default:
		if err := checkURL(o.JWKSURL, true); err != nil {
			return fmt.Errorf("oauth.jwks_url %q: %v", o.JWKSURL, err)
		}
	}
	for _, as := range o.AuthorizationServers {
		if err := checkURL(as, false); err != nil {
			return fmt.Errorf("oauth.authorization_servers %q: %v", as, err)
		}
	}
	if o.PrincipalClaim != "" && strings.TrimSpace(o.PrincipalClaim) != o.PrincipalClaim {
		return fmt.Errorf("oauth.principal_claim %q: no spaces", o.PrincipalClaim)
	}
	for name, d := range map[string]time.Duration{"clock_skew": o.ClockSkew, "jwks_refresh_interval": o.JWKSRefresh, "jwks_min_refresh_interval": o.JWKSMinRefresh} {
		if d < 0 {
			return fmt.Errorf("oauth.%s: must be >= 0", name)
		}
	}
	return nil
}

// RateLimitsConfig is the rate_limits: block. Limits are per node: the
// node that takes a tools/call checks them before running or forwarding it.
//
//	rate_limits:
//	  principal: {rate: 10/s, burst: 20}  # each principal, all tools together
//	  tools:                              # each principal, per tool, besides
//	    search: {rate: 30/m, burst: 5}
//	  max_buckets: 10000                  # buckets kept in memory
type RateLimitsConfig struct {
	Principal  *LimitConfig           `yaml:"principal"`
	Tools      map[string]LimitConfig `yaml:"tools"`
	MaxBuckets int                    `yaml:"max_buckets"`
}

// LimitConfig is one token bucket: Rate is calls per second, minute or
// hour ("10/s", "600/m", "100/h"; a bare number is per second), Burst the
// calls allowed at once (default: one second's worth, at least 1).
type LimitConfig struct {
	Rate  string `yaml:"rate"`
	Burst int    `yaml:"burst"`
}

// limit parses the bucket; where names it in errors.
func (l LimitConfig) limit(where string) (mcp.Limit, error) {
	if strings.TrimSpace(l.Rate) == "" {
		return mcp.Limit{}, fmt.Errorf("%s.rate: missing (calls per unit, such as 10/s, 600/m or 100/h)", where)
	}
	num, unit, hasUnit := strings.Cut(strings.TrimSpace(l.Rate), "/")
	per := time.Second
	if hasUnit {
		switch strings.TrimSpace(unit) {
		case "s":
		case "m":
			per = time.Minute
		case "h":
			per = time.Hour
		default:
			return mcp.Limit{}, fmt.Errorf("%s.rate %q: the unit is s, m or h", where, l.Rate)
		}
	}
	n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || !(n > 0) || n > 1e9 {
		return mcp.Limit{}, fmt.Errorf("%s.rate %q: want a positive number of calls per unit, such as 10/s, 600/m or 100/h", where, l.Rate)
	}
	perSecond := n / per.Seconds()
	burst := l.Burst
	switch {
	case burst < 0:
		return mcp.Limit{}, fmt.Errorf("%s.burst %d: must be at least 1", where, burst)
	case burst == 0:
		burst = max(1, int(math.Ceil(perSecond)))
	}
	return mcp.Limit{Rate: perSecond, Burst: burst}, nil
}

// mcp returns the front door's form of the block, nil when absent.
func (r *RateLimitsConfig) mcp() (*mcp.RateLimits, error) {
	if r == nil {
		return nil, nil
	}
	if r.Principal == nil && len(r.Tools) == 0 {
		return nil, errors.New("rate_limits: set principal, tools or both")
	}
	out := &mcp.RateLimits{MaxBuckets: r.MaxBuckets}
	if r.Principal != nil {
		l, err := r.Principal.limit("rate_limits.principal")
		if err != nil {
			return nil, err
		}
		out.Principal = l
	}
	if len(r.Tools) > 0 {
		out.Tools = map[string]mcp.Limit{}
	}
	for tool, lc := range r.Tools {
		if strings.TrimSpace(tool) == "" {
			return nil, errors.New("rate_limits.tools: a tool name is empty")
		}
		l, err := lc.limit("rate_limits.tools." + tool)
		if err != nil {
			return nil, err
		}
		out.Tools[tool] = l
	}
	if err := out.Validate(); err != nil {
		return nil, err
	}
	return out, nil
}

// checkAuditLog wants a file (existing or not) in an existing directory.
func checkAuditLog(path string) error {
	if st, err := os.Stat(path); err == nil && st.IsDir() {
		return errors.New("is a directory")
	}
	st, err := os.Stat(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("directory: %v", pathError(err))
	}
	if !st.IsDir() {
		return fmt.Errorf("%s is not a directory", filepath.Dir(path))
	}
	return nil
}

// checkURL wants an absolute http(s) URL without a fragment; with fetch
// (a URL the node fetches keys from), plain http only on a loopback host.
func checkURL(s string, fetch bool) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Fragment != "" {
		return errors.New("want an absolute http(s) URL without a fragment")
	}
	if fetch && u.Scheme == "http" {
		host := u.Hostname()
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return errors.New("keys are fetched over https only (plain http on loopback)")
		}
	}
	return nil
}

// checkOrigin wants scheme://host[:port] and nothing more.
func checkOrigin(o string) error {
	u, err := url.Parse(o)
	if err != nil || u.Scheme == "" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return errors.New("want scheme://host[:port], such as https://app.example.com")
	}
	return nil
}

// ProviderConfig declares one provider of tools.
type ProviderConfig struct {
	Name string `yaml:"name"`
	// Type is builtin (the demo tools again, usually with a prefix),
	// stdio (Command is an MCP server on stdio) or http (URL).
	Type    string            `yaml:"type"`
	Command []string          `yaml:"command"`
	Env     []string          `yaml:"env"`
	URL     string            `yaml:"url"`
	Headers map[string]string `yaml:"headers"`
	// Prefix is put before every tool name of the provider.
	Prefix string `yaml:"prefix"`
	// Placement is "everywhere" (every node that declares the provider
	// serves it) or "replicas" with Replicas nodes; replicas alone implies it.
	Placement string        `yaml:"placement"`
	Replicas  int           `yaml:"replicas"`
	CacheTTL  time.Duration `yaml:"cache_ttl"`
	// ToolCacheTTL sets the cache TTL of single tools (by cluster name,
	// prefix included), overriding CacheTTL.
	ToolCacheTTL map[string]time.Duration `yaml:"tool_cache_ttl"`
	// SharedCache answers every principal from one cached result; results
	// are cached per principal otherwise. ToolSharedCache sets it per tool
	// (by cluster name), overriding SharedCache.
	SharedCache     bool            `yaml:"shared_cache"`
	ToolSharedCache map[string]bool `yaml:"tool_shared_cache"`
}

func defaultAgentConfig() AgentConfig {
	return AgentConfig{
		HTTPAddr:           "127.0.0.1:8700",
		RPCAddr:            "127.0.0.1:8701",
		GossipAddr:         "127.0.0.1:8702",
		GossipProfile:      "lan",
		LogLevel:           "info",
		LogFormat:          "text",
		DeadServerTime:     30 * time.Second,
		Stabilization:      cluster.DefaultServerStabilizationTime,
		MaxVoters:          cluster.DefaultMaxVoters,
		MaxConcurrent:      mcp.DefaultConfig().MaxConcurrent,
		MaxQueue:           mcp.DefaultConfig().MaxQueue,
		Voter:              true,
		ReconcileEvery:     5 * time.Second,
		RaftHeartbeat:      cluster.DefaultRaftTimeout,
		RaftElection:       cluster.DefaultRaftTimeout,
		SnapshotEvery:      8192,
		CallTimeout:        5 * time.Second,
		SessionIdleTTL:     30 * time.Minute,
		SessionMaxLifetime: mcp.DefaultSessionMaxLifetime,
		MaxBodyBytes:       1 << 20,
		CacheMaxEntries:    1_000_000,
		CacheMaxBytes:      256 << 20,
		CacheMaxKey:        512,
		CacheMaxValue:      1 << 20,

		RPCMaxConnsPerIP: cluster.DefaultMaxConnsPerIP,
	}
}

// positive returns an option setter for a positive integer field.
func positive[T int | int64](p func(*AgentConfig) *T) func(*AgentConfig, string) error {
	return func(c *AgentConfig, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return fmt.Errorf("%q is not a positive number", v)
		}
		*p(c) = T(n)
		return nil
	}
}

// usageError is a bad flag, config file or value: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// option is one setting, reachable as --name and MCPCLUSTER_NAME.
type option struct {
	name  string
	usage string
	set   func(c *AgentConfig, v string) error
	bool  bool
}

func str(p func(*AgentConfig) *string) func(*AgentConfig, string) error {
	return func(c *AgentConfig, v string) error { *p(c) = v; return nil }
}

func dur(p func(*AgentConfig) *time.Duration) func(*AgentConfig, string) error {
	return func(c *AgentConfig, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return fmt.Errorf("%q is not a positive duration such as 5s", v)
		}
		*p(c) = d
		return nil
	}
}

func boolean(p func(*AgentConfig) *bool) func(*AgentConfig, string) error {
	return func(c *AgentConfig, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q is not true or false", v)
		}
		*p(c) = b
		return nil
	}
}

var agentOptions = []option{
	{name: "node-id", usage: "stable node id (default: the id stored in the data dir, or a new one)", set: str(func(c *AgentConfig) *string { return &c.NodeID })},
	{name: "data-dir", usage: "directory for raft data and the node id", set: str(func(c *AgentConfig) *string { return &c.DataDir })},
	{name: "http-addr", usage: "HTTP bind address host:port (MCP, admin API)", set: str(func(c *AgentConfig) *string { return &c.HTTPAddr })},
	{name: "http-advertise", usage: "HTTP address other nodes and clients use (default: http-addr)", set: str(func(c *AgentConfig) *string { return &c.HTTPAdvertise })},
	{name: "rpc-addr", usage: "cluster RPC bind address host:port (raft, forwarding)", set: str(func(c *AgentConfig) *string { return &c.RPCAddr })},
	{name: "rpc-advertise", usage: "cluster RPC address peers dial (default: rpc-addr)", set: str(func(c *AgentConfig) *string { return &c.RPCAdvertise })},
	{name: "gossip-addr", usage: "gossip bind address host:port (TCP and UDP)", set: str(func(c *AgentConfig) *string { return &c.GossipAddr })},
	{name: "gossip-advertise", usage: "gossip address peers use (default: gossip-addr)", set: str(func(c *AgentConfig) *string { return &c.GossipAdvertise })},
	{name: "gossip-profile", usage: "gossip timing: lan, or local for fast failure detection on one host", set: str(func(c *AgentConfig) *string { return &c.GossipProfile })},
	{name: "join", usage: "gossip address of a peer to join, retried in the background (repeatable; comma-separated in env)", set: func(c *AgentConfig, v string) error {
		for _, a := range strings.Split(v, ",") {
			if a = strings.TrimSpace(a); a != "" {
				c.Join = append(c.Join, a)
			}
		}
		return nil
	}},
	{name: "bootstrap-expect", usage: "number of servers to wait for before bootstrapping a new cluster", set: func(c *AgentConfig, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("%q is not a non-negative number", v)
		}
		c.BootstrapExpect = n
		return nil
	}},
	{name: "log-level", usage: "debug, info, warn or error", set: str(func(c *AgentConfig) *string { return &c.LogLevel })},
	{name: "log-format", usage: "text or json", set: str(func(c *AgentConfig) *string { return &c.LogFormat })},
	{name: "dev", usage: "run a single self-bootstrapping node that needs nothing else", bool: true, set: boolean(func(c *AgentConfig) *bool { return &c.Dev })},
	{name: "leave-on-terminate", usage: "leave the cluster on SIGTERM/SIGINT instead of just stopping", bool: true, set: boolean(func(c *AgentConfig) *bool { return &c.LeaveOnTerminate })},
	{name: "enable-debug", usage: "serve Go profiles at /debug/pprof/ on the HTTP port", bool: true, set: boolean(func(c *AgentConfig) *bool { return &c.EnableDebug })},
	{name: "dead-server-timeout", usage: "how long a failed server stays a voter before the leader removes it", set: dur(func(c *AgentConfig) *time.Duration { return &c.DeadServerTime })},
	{name: "max-voters", usage: "most raft voters the cluster keeps (odd); further nodes serve as non-voters", set: positive(func(c *AgentConfig) *int { return &c.MaxVoters })},
	{name: "voter", usage: "may be a raft voter; --voter=false keeps this node non-voting", bool: true, set: boolean(func(c *AgentConfig) *bool { return &c.Voter })},
	{name: "zone", usage: "failure-domain label (rack, zone); the leader spreads voters over zones", set: str(func(c *AgentConfig) *string { return &c.Zone })},
	{name: "server-stabilization-time", usage: "how long a new server must stay healthy and caught up before it becomes a voter", set: dur(func(c *AgentConfig) *time.Duration { return &c.Stabilization })},
	{name: "reconcile-interval", usage: "how often the leader reconciles gossip into raft", set: dur(func(c *AgentConfig) *time.Duration { return &c.ReconcileEvery })},
	{name: "raft-heartbeat-timeout", usage: "raft heartbeat timeout (failure detection of the leader)", set: dur(func(c *AgentConfig) *time.Duration { return &c.RaftHeartbeat })},
	{name: "raft-election-timeout", usage: "raft election timeout", set: dur(func(c *AgentConfig) *time.Duration { return &c.RaftElection })},
	{name: "call-timeout", usage: "how long a tools/call may take, forwarding included", set: dur(func(c *AgentConfig) *time.Duration { return &c.CallTimeout })},
	{name: "session-idle-ttl", usage: "MCP sessions unused this long expire on every node", set: dur(func(c *AgentConfig) *time.Duration { return &c.SessionIdleTTL })},
	{name: "session-max-lifetime", usage: "MCP sessions end this long after they were opened, however much they are used (a client then opens a new one)", set: dur(func(c *AgentConfig) *time.Duration { return &c.SessionMaxLifetime })},
	{name: "max-body-bytes", usage: "largest MCP request body accepted", set: positive(func(c *AgentConfig) *int64 { return &c.MaxBodyBytes })},
	{name: "max-concurrent", usage: "tools/call requests run at once through this node (and forwarded calls run here)", set: positive(func(c *AgentConfig) *int { return &c.MaxConcurrent })},
	{name: "max-queue", usage: "tools/call requests that may wait for a slot; beyond it HTTP 429", set: func(c *AgentConfig, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("%q is not a non-negative number", v)
		}
		c.MaxQueue = n
		return nil
	}},
	{name: "drain-grace", usage: "on SIGTERM/SIGINT, how long to hand over and finish in-flight calls before stopping", set: dur(func(c *AgentConfig) *time.Duration { return &c.DrainGrace })},
	{name: "cache-max-entries", usage: "shared cache bound in entries; the oldest writes are evicted past it", set: positive(func(c *AgentConfig) *int { return &c.CacheMaxEntries })},
	{name: "cache-max-bytes", usage: "shared cache bound in bytes of keys and values", set: positive(func(c *AgentConfig) *int64 { return &c.CacheMaxBytes })},
	{name: "cache-max-key-bytes", usage: "longest cache key accepted", set: positive(func(c *AgentConfig) *int { return &c.CacheMaxKey })},
	{name: "cache-max-value-bytes", usage: "largest cache value accepted", set: positive(func(c *AgentConfig) *int { return &c.CacheMaxValue })},
	{name: "snapshot-threshold", usage: "raft log entries between snapshots", set: func(c *AgentConfig, v string) error {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			return fmt.Errorf("%q is not a positive number", v)
		}
		c.SnapshotEvery = n
		return nil
	}},
	{name: "admin-token-file", usage: "file of admin API tokens, one per line: TOKEN (write) or read|write TOKEN; MCPCLUSTER_ADMIN_TOKEN adds a write token", set: str(func(c *AgentConfig) *string { return &c.AdminTokenFile })},
	{name: "tls-ca-file", usage: "CA certificate (PEM) of the cluster; with --tls-cert-file and --tls-key-file turns on mutual TLS on the cluster port", set: str(func(c *AgentConfig) *string { return &c.TLSCAFile })},
	{name: "tls-cert-file", usage: "this node's certificate (PEM), signed by the cluster CA", set: str(func(c *AgentConfig) *string { return &c.TLSCertFile })},
	{name: "tls-key-file", usage: "this node's private key (PEM)", set: str(func(c *AgentConfig) *string { return &c.TLSKeyFile })},
	{name: "encrypt", usage: "gossip encryption key: base64 of 16, 24 or 32 random bytes", set: func(c *AgentConfig, v string) error { c.Encrypt = secret(v); return nil }},
	{name: "encrypt-file", usage: "file holding the gossip encryption key (as --encrypt, which wins)", set: str(func(c *AgentConfig) *string { return &c.EncryptFile })},
	{name: "insecure", usage: "allow non-loopback addresses without TLS, a gossip key and an admin token", bool: true, set: boolean(func(c *AgentConfig) *bool { return &c.Insecure })},
	{name: "allowed-origins", usage: "browser origins (scheme://host[:port], comma-separated) that may call /mcp; default: loopback origins when http-addr is loopback", set: func(c *AgentConfig, v string) error {
		c.AllowedOrigins = nil
		for _, o := range strings.Split(v, ",") {
			if o = strings.TrimSpace(o); o != "" {
				c.AllowedOrigins = append(c.AllowedOrigins, o)
			}
		}
		return nil
	}},
	{name: "audit-log", usage: "file the audit records (one JSON line per tools/call) are appended to (default: the node's log)", set: str(func(c *AgentConfig) *string { return &c.AuditLog })},
	{name: "audit-arguments", usage: "put each call's arguments, cut at 1 KiB, in its audit record", bool: true, set: boolean(func(c *AgentConfig) *bool { return &c.AuditArguments })},
	{name: "rpc-max-conns-per-ip", usage: "most cluster-port connections one remote IP may hold (0: no limit)", set: func(c *AgentConfig, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("%q is not a non-negative number", v)
		}
		c.RPCMaxConnsPerIP = n
		return nil
	}},
}

func envName(flagName string) string {
	return "MCPCLUSTER_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseAgentConfig builds the agent's configuration from args, env and the
// config file named by --config or MCPCLUSTER_CONFIG.
func parseAgentConfig(args []string, getenv func(string) string, stderr io.Writer) (AgentConfig, error) {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	type setting struct{ name, value string }
	var flags []setting
	configFile := getenv("MCPCLUSTER_CONFIG")
	fs.Func("config", "YAML config file (env MCPCLUSTER_CONFIG)", func(v string) error { configFile = v; return nil })
	for _, o := range agentOptions {
		name := o.name
		record := func(v string) error { flags = append(flags, setting{name, v}); return nil }
		if o.bool {
			fs.BoolFunc(name, o.usage, func(v string) error { return record(v) })
		} else {
			fs.Func(name, o.usage, record)
		}
	}
	fs.Usage = func() {} // errors are reported in one line by the caller
	printUsage := func() {
		fmt.Fprintf(stderr, "Usage: mcpcluster agent [flags]\n\nEvery flag can also be set as MCPCLUSTER_<NAME> (e.g. MCPCLUSTER_DATA_DIR) or in the YAML file given by --config.\n\n")
		fs.SetOutput(stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage()
			return AgentConfig{}, err
		}
		return AgentConfig{}, usageError{err}
	}
	if fs.NArg() > 0 {
		return AgentConfig{}, usagef("unexpected argument %q", fs.Arg(0))
	}

	cfg := defaultAgentConfig()
	if configFile != "" {
		if err := loadConfigFile(configFile, &cfg); err != nil {
			return AgentConfig{}, err
		}
	}
	joinFromEnv := false
	for _, o := range agentOptions {
		if v := getenv(envName(o.name)); v != "" {
			if o.name == "join" && !joinFromEnv {
				cfg.Join, joinFromEnv = nil, true
			}
			if err := o.set(&cfg, v); err != nil {
				return AgentConfig{}, usagef("environment %s: %v", envName(o.name), err)
			}
		}
	}
	if v := getenv("MCPCLUSTER_AUTH_TOKENS"); v != "" {
		cfg.AuthTokens = map[string]string{}
		for _, pair := range strings.Split(v, ",") {
			tok, principal, ok := strings.Cut(strings.TrimSpace(pair), "=")
			if !ok || tok == "" || principal == "" {
				return AgentConfig{}, usagef("environment MCPCLUSTER_AUTH_TOKENS: want token=principal pairs separated by commas")
			}
			cfg.AuthTokens[tok] = principal
		}
	}
	cfg.AdminToken = cluster.Token(getenv("MCPCLUSTER_ADMIN_TOKEN"))
	joinFromFlags := false
	for _, s := range flags {
		if s.name == "join" && !joinFromFlags {
			cfg.Join, joinFromFlags = nil, true
		}
		for _, o := range agentOptions {
			if o.name == s.name {
				if err := o.set(&cfg, s.value); err != nil {
					return AgentConfig{}, usagef("flag -%s: %v", s.name, err)
				}
			}
		}
	}
	if err := cfg.validate(); err != nil {
		return AgentConfig{}, usageError{err}
	}
	return cfg, nil
}

func loadConfigFile(path string, cfg *AgentConfig) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return usagef("config file: %v", err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(cfg); err != nil && !errors.Is(err, io.EOF) {
		return usagef("config file %s: %s", path, strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	return nil
}

func (c *AgentConfig) validate() error {
	if c.Dev && c.BootstrapExpect == 0 {
		c.BootstrapExpect = 1
	}
	if !c.Dev && c.DataDir == "" {
		return errors.New("a data dir is required (--data-dir), or run --dev")
	}
	for _, a := range []struct{ name, value string }{
		{"http-addr", c.HTTPAddr}, {"rpc-addr", c.RPCAddr}, {"gossip-addr", c.GossipAddr},
	} {
		if err := checkHostPort(a.value, false); err != nil {
			return fmt.Errorf("-%s %q: %v", a.name, a.value, err)
		}
	}
	for _, a := range []struct{ name, value string }{
		{"http-advertise", c.HTTPAdvertise}, {"rpc-advertise", c.RPCAdvertise}, {"gossip-advertise", c.GossipAdvertise},
	} {
		if a.value == "" {
			continue
		}
		if err := checkHostPort(a.value, true); err != nil {
			return fmt.Errorf("-%s %q: %v", a.name, a.value, err)
		}
	}
	for _, j := range c.Join {
		if err := checkJoinAddr(j); err != nil {
			return fmt.Errorf("-join %q: %v", j, err)
		}
	}
	if _, err := parseLevel(c.LogLevel); err != nil {
		return err
	}
	if c.LogFormat != "text" && c.LogFormat != "json" {
		return fmt.Errorf("-log-format %q: want text or json", c.LogFormat)
	}
	if c.GossipProfile != "lan" && c.GossipProfile != "local" {
		return fmt.Errorf("-gossip-profile %q: want lan or local", c.GossipProfile)
	}
	if c.SessionMaxLifetime <= 0 {
		return fmt.Errorf("-session-max-lifetime %s: want a positive duration", c.SessionMaxLifetime)
	}
	for tool, d := range c.ToolTimeouts {
		if d <= 0 {
			return fmt.Errorf("tool_timeouts: %s needs a positive duration", tool)
		}
	}
	for tok, principal := range c.AuthTokens {
		if len(tok) < 16 || principal == "" {
			return errors.New("auth_tokens: every token needs at least 16 characters and a principal")
		}
	}
	if c.OAuth != nil {
		if err := c.OAuth.validate(); err != nil {
			return err
		}
	}
	if len(c.ToolPolicy) > 0 {
		if _, err := mcp.CompilePolicy(c.ToolPolicy); err != nil {
			return err
		}
	}
	if _, err := c.RateLimits.mcp(); err != nil {
		return err
	}
	if c.AuditLog != "" {
		if err := checkAuditLog(c.AuditLog); err != nil {
			return fmt.Errorf("-audit-log %q: %v", c.AuditLog, err)
		}
	}
	for _, o := range c.AllowedOrigins {
		if err := checkOrigin(o); err != nil {
			return fmt.Errorf("allowed_origins %q: %v", o, err)
		}
	}
	if err := validateProviders(c.Providers); err != nil {
		return err
	}
	if c.BootstrapExpect > 1 && len(c.Join) == 0 {
		return fmt.Errorf("-bootstrap-expect %d needs at least one -join address to find the other servers", c.BootstrapExpect)
	}
	if err := c.validateSecurity(); err != nil {
		return err
	}
	if where, missing := c.insecurity(); where != "" && !c.Insecure {
		return fmt.Errorf("%s is not loopback: refusing to start without %s; --insecure overrides", where, missing)
	}
	return nil
}

var nodeIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// validateSecurity checks the node id, the TLS files, the gossip key and
// the connection bound, and reads the admin tokens.
func (c *AgentConfig) validateSecurity() error {
	if c.NodeID != "" && !nodeIDPattern.MatchString(c.NodeID) {
		return fmt.Errorf("-node-id %q: want 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", c.NodeID)
	}
	tls := []struct{ name, value string }{{"tls-ca-file", c.TLSCAFile}, {"tls-cert-file", c.TLSCertFile}, {"tls-key-file", c.TLSKeyFile}}
	var set, unset []string
	for _, f := range tls {
		if f.value == "" {
			unset = append(unset, "-"+f.name)
		} else {
			set = append(set, "-"+f.name)
		}
	}
	if len(set) > 0 && len(unset) > 0 {
		return fmt.Errorf("%s given without %s: TLS needs all three of -tls-ca-file, -tls-cert-file and -tls-key-file", joinAnd(set), joinAnd(unset))
	}
	for _, f := range tls {
		if f.value == "" {
			continue
		}
		if st, err := os.Stat(f.value); err != nil {
			return fmt.Errorf("-%s %q: %v", f.name, f.value, pathError(err))
		} else if st.IsDir() {
			return fmt.Errorf("-%s %q: is a directory", f.name, f.value)
		}
	}
	if c.Encrypt == "" && c.EncryptFile != "" {
		b, err := os.ReadFile(c.EncryptFile)
		if err != nil {
			return fmt.Errorf("-encrypt-file %q: %v", c.EncryptFile, pathError(err))
		}
		c.Encrypt = secret(strings.TrimSpace(string(b)))
		if c.Encrypt == "" {
			return fmt.Errorf("-encrypt-file %q: the file is empty", c.EncryptFile)
		}
	}
	if c.Encrypt != "" {
		key, err := base64.StdEncoding.DecodeString(string(c.Encrypt))
		if err != nil {
			return errors.New("-encrypt: the key is not valid base64 (make one with: mcpcluster keygen)")
		}
		if n := len(key); n != 16 && n != 24 && n != 32 {
			return fmt.Errorf("-encrypt: the key decodes to %d bytes; want 16, 24 or 32", n)
		}
	}
	if c.RPCMaxConnsPerIP < 0 {
		return fmt.Errorf("-rpc-max-conns-per-ip %d: want 0 (no limit) or more", c.RPCMaxConnsPerIP)
	}
	c.AdminTokens = cluster.NewTokens()
	if c.AdminTokenFile != "" {
		b, err := os.ReadFile(c.AdminTokenFile)
		if err != nil {
			return fmt.Errorf("-admin-token-file %q: %v", c.AdminTokenFile, pathError(err))
		}
		if c.AdminTokens, err = cluster.ParseTokenFile(b); err != nil {
			return fmt.Errorf("-admin-token-file %q: %v", c.AdminTokenFile, err)
		}
	}
	if c.AdminToken != "" {
		if err := c.AdminTokens.Add(c.AdminToken, cluster.AccessWrite); err != nil && !errors.Is(err, cluster.ErrDuplicateToken) {
			return fmt.Errorf("environment MCPCLUSTER_ADMIN_TOKEN: %v", err)
		}
	}
	return nil
}

// pathError drops the operation and path of a file error (the message names them).
func pathError(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// hasKeyring reports whether the data dir holds a gossip keyring from an
// earlier start or rotation: it encrypts gossip even without --encrypt.
func (c *AgentConfig) hasKeyring() bool {
	if c.DataDir == "" {
		return false
	}
	_, err := os.Stat(filepath.Join(c.DataDir, cluster.KeyringFile))
	return err == nil
}

// insecurity returns the first non-loopback address (as "-flag host:port")
// and what it lacks of TLS, a gossip key and an admin token; "" when every
// address is loopback or nothing is missing.
func (c *AgentConfig) insecurity() (where, missing string) {
	for _, a := range []struct{ name, value string }{
		{"http-addr", c.HTTPAddr}, {"rpc-addr", c.RPCAddr}, {"gossip-addr", c.GossipAddr},
		{"http-advertise", c.HTTPAdvertise}, {"rpc-advertise", c.RPCAdvertise}, {"gossip-advertise", c.GossipAdvertise},
	} {
		if a.value != "" && !isLoopback(a.value) {
			where = "-" + a.name + " " + a.value
			break
		}
	}
	if where == "" {
		return "", ""
	}
	var lack []string
	if c.TLSCAFile == "" {
		lack = append(lack, "TLS (--tls-ca-file, --tls-cert-file, --tls-key-file)")
	}
	if c.Encrypt == "" && !c.hasKeyring() {
		lack = append(lack, "a gossip key (--encrypt)")
	}
	if c.AdminTokens.Len() == 0 {
		lack = append(lack, "an admin token (--admin-token-file or MCPCLUSTER_ADMIN_TOKEN)")
	}
	if len(lack) == 0 {
		return "", ""
	}
	return where, joinAnd(lack)
}

// isLoopback reports whether host:port binds or points to loopback only:
// an IP in 127.0.0.0/8, ::1, or the name localhost. An empty host or
// 0.0.0.0 (every interface) is not.
func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// joinAnd joins "a", "a and b", "a, b and c".
func joinAnd(items []string) string {
	if len(items) <= 1 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " and " + items[len(items)-1]
}

// checkJoinAddr validates a join address, host:port. A host name is not
// resolved here: peers started together (compose services, pods of a
// StatefulSet) get their DNS names as they come up, and joining is retried.
func checkJoinAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	if p, err := strconv.Atoi(port); err != nil || p <= 0 || p > 65535 {
		return fmt.Errorf("port %q is not a number from 1 to 65535", port)
	}
	if host == "" || strings.ContainsAny(host, " /\\") {
		return fmt.Errorf("host %q is not an IP address or DNS name", host)
	}
	return nil
}

// checkHostPort validates host:port; an advertised address needs a concrete IP.
func checkHostPort(addr string, advertise bool) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return errors.New("want host:port")
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	if advertise {
		ip := net.ParseIP(host)
		if ip == nil || ip.IsUnspecified() || p == 0 {
			return errors.New("an advertised address needs a concrete IP and port")
		}
		return nil
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		if _, err := net.LookupHost(host); err != nil {
			return fmt.Errorf("host %q does not resolve", host)
		}
	}
	return nil
}

func parseLevel(s string) (slog.Level, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return 0, fmt.Errorf("-log-level %q: want debug, info, warn or error", s)
	}
	return l, nil
}

// validateProviders checks the providers section; the first problem found
// is the error.
func validateProviders(ps []ProviderConfig) error {
	seen := map[string]bool{"builtin": true}
	for i, p := range ps {
		where := fmt.Sprintf("providers[%d]", i)
		if p.Name == "" {
			return fmt.Errorf("%s: missing name", where)
		}
		where = fmt.Sprintf("provider %q", p.Name)
		if seen[p.Name] {
			return fmt.Errorf("%s: name used twice (builtin is reserved)", where)
		}
		seen[p.Name] = true
		switch p.Type {
		case "builtin":
		case "stdio":
			if len(p.Command) == 0 || p.Command[0] == "" {
				return fmt.Errorf("%s: type stdio needs a command", where)
			}
		case "http":
			if !strings.HasPrefix(p.URL, "http://") && !strings.HasPrefix(p.URL, "https://") {
				return fmt.Errorf("%s: type http needs an http(s) url, got %q", where, p.URL)
			}
		default:
			return fmt.Errorf("%s: type %q is not builtin, stdio or http", where, p.Type)
		}
		switch {
		case p.Replicas < 0:
			return fmt.Errorf("%s: replicas must be >= 0", where)
		case p.Placement == "everywhere" && p.Replicas > 0:
			return fmt.Errorf("%s: placement everywhere takes no replicas", where)
		case p.Placement == "replicas" && p.Replicas == 0:
			return fmt.Errorf("%s: placement replicas needs replicas >= 1", where)
		case p.Placement != "" && p.Placement != "everywhere" && p.Placement != "replicas":
			return fmt.Errorf("%s: placement %q is not everywhere or replicas", where, p.Placement)
		case p.CacheTTL < 0:
			return fmt.Errorf("%s: cache_ttl must be >= 0", where)
		}
		for tool, ttl := range p.ToolCacheTTL {
			if ttl < 0 {
				return fmt.Errorf("%s: tool_cache_ttl of %s must be >= 0", where, tool)
			}
		}
	}
	return nil
}
