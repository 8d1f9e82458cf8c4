// Package membership wraps hashicorp/memberlist: it gossips each node's
// metadata (id, addresses, status, load, capacity), joins seeds with
// retry-join and periodic re-join, tracks every known member with its
// liveness, and publishes member events on a channel.
package membership

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/hashicorp/memberlist"
)

// Status is a node's lifecycle stage, gossiped in its Meta.
type Status string

// Node lifecycle stages.
const (
	StatusStarting Status = "starting"
	StatusRunning  Status = "running"
	StatusStopping Status = "stopping"
)

// State is a member's liveness as seen by gossip.
type State string

// Member liveness states. memberlist v0.6.0 does not expose suspicion to
// its delegates, so members currently go from alive straight to failed;
// StateSuspect is reserved.
const (
	StateAlive   State = "alive"
	StateSuspect State = "suspect"
	StateFailed  State = "failed"
	StateLeft    State = "left"
)

// Meta is the node metadata gossiped by memberlist. It is encoded as JSON
// and must fit memberlist.MetaMaxSize; New and UpdateMeta return an error if
// it does not.
type Meta struct {
	ID       string `json:"id"`
	HTTPAddr string `json:"http,omitempty"`
	RPCAddr  string `json:"rpc,omitempty"`
	Status   Status `json:"status,omitempty"`
	InFlight int    `json:"inflight,omitempty"`
	Capacity int    `json:"cap,omitempty"`
	Expect   int    `json:"expect,omitempty"` // the node's --bootstrap-expect
	Zone     string `json:"zone,omitempty"`   // the node's --zone, for spreading voters
	NoVote   bool   `json:"novote,omitempty"` // --voter=false: never a raft voter
}

// encodeMeta returns the wire form of meta, or an error if it is too large.
func encodeMeta(meta Meta) ([]byte, error) {
	b, err := json.Marshal(meta)
	if err != nil {
		return nil, fmt.Errorf("encode meta: %w", err)
	}
	if len(b) > memberlist.MetaMaxSize {
		return nil, fmt.Errorf("encoded meta is %d bytes, limit is %d", len(b), memberlist.MetaMaxSize)
	}
	return b, nil
}

// Member is one known node: its metadata, address and liveness.
type Member struct {
	Meta
	GossipAddr string    // advertised host:port
	State      State     // liveness
	Since      time.Time // local time of the last State change
}

// EventType says what happened to a member.
type EventType int

// Member event types.
const (
	EventJoin EventType = iota + 1
	EventUpdate
	EventLeave
	EventFail
)

// String returns "join", "update", "leave" or "fail".
func (t EventType) String() string {
	switch t {
	case EventJoin:
		return "join"
	case EventUpdate:
		return "update"
	case EventLeave:
		return "leave"
	case EventFail:
		return "fail"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is a change to one member, delivered on Membership.Events.
// EventUpdate covers metadata, address and alive/suspect changes.
type Event struct {
	Type   EventType
	Member Member
}

// Config configures a Membership. Start from DefaultConfig.
type Config struct {
	// NodeID is required and unique in the cluster; it is the memberlist
	// node name.
	NodeID string
	// BindAddr is the "host:port" for TCP and UDP gossip; port 0 picks a
	// free one. The host must be an IP; empty means 0.0.0.0.
	BindAddr string
	// AdvertiseAddr is the "host:port" other nodes use to reach this one.
	// Empty means BindAddr with the actual port; port 0 means the actual
	// bound port. The host must be a concrete IP (not 0.0.0.0 or ::).
	AdvertiseAddr string
	// Join is the list of seed "host:port" addresses.
	Join []string
	// RetryJoinInterval is how often seeds are retried in the background
	// until one join succeeds. Default 1s.
	RetryJoinInterval time.Duration
	// RejoinInterval is how often, after the first successful join, every
	// seed address that is not currently an alive member is joined again.
	// This heals partitions: memberlist forgets dead nodes. Default 30s.
	RejoinInterval time.Duration
	// Profile selects memberlist timings: "lan" (DefaultLANConfig, the
	// default) or "local" (DefaultLocalConfig: faster failure detection,
	// for loopback and tests).
	Profile string
	// ReapInterval is how long failed and left members stay in Members.
	// Default 24h.
	ReapInterval time.Duration
	// Meta is the initial metadata; its ID is forced to NodeID.
	Meta Meta
	// SecretKey is the optional gossip encryption key (16, 24 or 32 bytes).
	// With it, gossip is encrypted (AES-GCM) and unencrypted messages are
	// refused in both directions.
	SecretKey []byte
	// KeyringFile, if set, persists the gossip keyring (JSON, mode 0600)
	// so that key rotations survive restarts; a keyring found there takes
	// precedence over SecretKey, and encrypts gossip even without it.
	KeyringFile string
	// Logger receives this package's and memberlist's logs. Nil discards.
	Logger *slog.Logger
	// EventBuffer is the capacity of the Events channel. Default 256.
	EventBuffer int
}

// DefaultConfig returns a Config with every default filled in. NodeID must
// still be set, and AdvertiseAddr too when binding to 0.0.0.0.
func DefaultConfig() Config {
	return Config{
		BindAddr:          "0.0.0.0:7946",
		RetryJoinInterval: time.Second,
		RejoinInterval:    30 * time.Second,
		Profile:           "lan",
		ReapInterval:      24 * time.Hour,
		EventBuffer:       256,
	}
}
