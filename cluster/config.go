package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"
)

// Config configures a Node. Start from DefaultConfig.
type Config struct {
	// NodeID is the stable identity of the node. Empty means: the id stored
	// in DataDir, or a new random one persisted there.
	NodeID string
	// DataDir holds the raft log, stable store, snapshots and the node id.
	DataDir string

	// RPCBindAddr is the host:port of the cluster port (raft and node RPC).
	RPCBindAddr string
	// RPCAdvertiseAddr is the host:port peers dial; defaults to RPCBindAddr.
	RPCAdvertiseAddr string
	// GossipBindAddr is the host:port for memberlist (TCP and UDP).
	GossipBindAddr string
	// GossipAdvertiseAddr is the gossip host:port peers use; defaults to GossipBindAddr.
	GossipAdvertiseAddr string
	// HTTPAdvertiseAddr is the node's HTTP address, gossiped so that any
	// node can tell clients where the others are.
	HTTPAdvertiseAddr string

	// Join lists gossip addresses of peers; joining is retried in the background.
	Join []string
	// BootstrapExpect is the number of servers to wait for before
	// bootstrapping a new cluster; 0 means never bootstrap (join only).
	BootstrapExpect int

	// GossipProfile is "lan" (default) or "local" (faster failure detection on loopback).
	GossipProfile string
	// GossipKey optionally encrypts gossip (16, 24 or 32 bytes). A keyring
	// persisted in DataDir by an earlier rotation takes precedence.
	GossipKey []byte

	// TLSCAFile, TLSCertFile and TLSKeyFile turn on mutual TLS on the
	// cluster port (all three or none): every connection, in and out, is
	// TLS 1.3 with a certificate of the cluster CA naming the node's id.
	// Changed files are picked up without a restart.
	TLSCAFile   string
	TLSCertFile string
	TLSKeyFile  string
	// MaxConnsPerIP bounds the open connections one remote IP may hold on
	// the cluster port; 0 means no limit.
	MaxConnsPerIP int

	// DeadServerTimeout is how long a failed server stays in the raft
	// configuration before the leader removes it (never below quorum).
	DeadServerTimeout time.Duration
	// ReconcileInterval is how often the leader reconciles gossip into raft
	// even without membership events.
	ReconcileInterval time.Duration
	// MaxVoters bounds the raft voters the leader keeps (odd, at most this
	// many); every further server is a non-voter.
	MaxVoters int
	// Zone labels the node's failure domain; the leader spreads voters
	// over zones.
	Zone string
	// NonVoter pins the node to non-voting.
	NonVoter bool
	// ServerStabilizationTime is how long a non-voter must stay healthy and
	// caught up with the leader's log before the leader promotes it.
	ServerStabilizationTime time.Duration

	// RaftHeartbeatTimeout, RaftElectionTimeout and RaftLeaderLeaseTimeout
	// tune failure detection in raft (defaults: DefaultRaftTimeout, and
	// half of it for the lease).
	RaftHeartbeatTimeout   time.Duration
	RaftElectionTimeout    time.Duration
	RaftLeaderLeaseTimeout time.Duration
	// SnapshotThreshold is the number of log entries between snapshots.
	SnapshotThreshold uint64
	// SnapshotInterval is how often raft checks whether to snapshot.
	SnapshotInterval time.Duration
	// SnapshotRetain is how many snapshots are kept on disk.
	SnapshotRetain int

	// ApplyTimeout bounds a write when the caller's context has no deadline.
	ApplyTimeout time.Duration

	// Cache bounds the shared cache.
	Cache CacheConfig

	// Capacity is how many calls the node runs at once, gossiped with its
	// load so that others can tell how busy it is.
	Capacity int

	// SessionIdleTTL: the leader expires MCP sessions unused this long
	// (their last use is replicated); 0 keeps them until deleted.
	SessionIdleTTL time.Duration
	// SessionMaxLifetime: a session idle-expired by the leader stays a
	// tombstone until this long after it was opened, so that no node
	// accepts its (self-verifying) id again; 0: expired sessions are
	// removed outright.
	SessionMaxLifetime time.Duration

	// Logger receives every log line of the node, raft and memberlist included.
	Logger *slog.Logger
	// LogLevel filters raft's logs (raft's own default is DEBUG).
	LogLevel slog.Level
}

// DefaultServerStabilizationTime is the default ServerStabilizationTime:
// a few gossip probe rounds and raft heartbeats.
const DefaultServerStabilizationTime = 5 * time.Second

// DefaultMaxConnsPerIP is the default bound on cluster-port connections
// from one IP address.
const DefaultMaxConnsPerIP = 512

// SessionIdleGrace is how long past its idle TTL a session may stay: a
// node sends a session's use to the cluster at most a quarter of the TTL
// plus a second late (the MCP front door's batching), so with this grace
// neither the leader's expiry nor any node refuses a session used within
// its TTL.
func SessionIdleGrace(ttl time.Duration) time.Duration { return ttl/4 + time.Second }

// DefaultRaftTimeout is the default raft heartbeat and election timeout:
// a follower starts an election after 0.4-0.8 s without the leader, so a
// dead leader is replaced within a second on a LAN. Raft's own default
// (1 s) takes 1-2 s. Raise it (--raft-heartbeat-timeout and
// --raft-election-timeout) on links with long or jittery round trips.
const DefaultRaftTimeout = 400 * time.Millisecond

// DefaultConfig returns production defaults; addresses and DataDir must still be set.
func DefaultConfig() Config {
	return Config{
		RPCBindAddr:             "127.0.0.1:8701",
		GossipBindAddr:          "127.0.0.1:8702",
		GossipProfile:           "lan",
		DeadServerTimeout:       30 * time.Second,
		ReconcileInterval:       5 * time.Second,
		ServerStabilizationTime: DefaultServerStabilizationTime,
		MaxVoters:               DefaultMaxVoters,
		RaftHeartbeatTimeout:    DefaultRaftTimeout,
		RaftElectionTimeout:     DefaultRaftTimeout,
		RaftLeaderLeaseTimeout:  DefaultRaftTimeout / 2,
		SnapshotThreshold:       8192,
		SnapshotInterval:        30 * time.Second,
		SnapshotRetain:          2,
		ApplyTimeout:            10 * time.Second,
		Cache:                   DefaultCacheConfig(),
		LogLevel:                slog.LevelInfo,
		MaxConnsPerIP:           DefaultMaxConnsPerIP,
	}
}

func (c *Config) validate() error {
	if c.DataDir == "" {
		return errors.New("data dir is required")
	}
	if c.BootstrapExpect < 0 {
		return fmt.Errorf("bootstrap-expect must be >= 0, got %d", c.BootstrapExpect)
	}
	for name, addr := range map[string]string{"rpc bind": c.RPCBindAddr, "gossip bind": c.GossipBindAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return fmt.Errorf("%s address %q: %w", name, addr, err)
		}
	}
	if c.RaftHeartbeatTimeout <= 0 || c.RaftElectionTimeout <= 0 || c.RaftLeaderLeaseTimeout <= 0 {
		return errors.New("raft timeouts must be positive")
	}
	if c.RaftLeaderLeaseTimeout > c.RaftHeartbeatTimeout {
		return errors.New("raft leader lease timeout must not exceed the heartbeat timeout")
	}
	if c.DeadServerTimeout <= 0 || c.ReconcileInterval <= 0 || c.ApplyTimeout <= 0 {
		return errors.New("dead server timeout, reconcile interval and apply timeout must be positive")
	}
	if c.MaxVoters < 1 {
		return fmt.Errorf("max voters must be at least 1, got %d", c.MaxVoters)
	}
	if c.ServerStabilizationTime < 0 {
		return errors.New("server stabilization time must not be negative")
	}
	if c.Cache.MaxEntries < 0 || c.Cache.MaxBytes < 0 || c.Cache.MaxKeyBytes <= 0 || c.Cache.MaxValueBytes <= 0 {
		return errors.New("cache bounds: entries and bytes must be >= 0, key and value maximums positive")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// checkAdvertise requires a concrete host and port: peers cannot dial 0.0.0.0.
func checkAdvertise(name, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%s address %q: %w", name, addr, err)
	}
	ip := net.ParseIP(host)
	if ip == nil || ip.IsUnspecified() {
		return fmt.Errorf("%s address %q: need a concrete IP address to advertise", name, addr)
	}
	if port == "0" {
		return fmt.Errorf("%s address %q: need a concrete port to advertise", name, addr)
	}
	return nil
}
