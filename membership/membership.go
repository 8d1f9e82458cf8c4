package membership

import (
	"cmp"
	"errors"
	"fmt"
	"log"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/memberlist"
)

const (
	// deadNodeReclaimTime lets a node come back under the same name on a
	// new address a few seconds after it was declared dead or left.
	deadNodeReclaimTime = 3 * time.Second
	// broadcastTimeout bounds how long UpdateMeta waits for its broadcast.
	broadcastTimeout = 5 * time.Second
)

var errShutdown = errors.New("membership is shut down")

// Membership is this node's view of the gossip cluster.
type Membership struct {
	cfg    Config
	logger *slog.Logger
	ml     *memberlist.Memberlist
	addr   string // advertised host:port
	seeds  []string

	joined atomic.Bool
	left   atomic.Bool

	keyMu   sync.Mutex          // serialises keyring changes
	keyring *memberlist.Keyring // nil: gossip is not encrypted

	updateMu sync.Mutex   // serialises UpdateMeta
	lifeMu   sync.RWMutex // Leave/Shutdown exclusive; UpdateMeta shared
	shutdown bool         // guarded by lifeMu

	mu       sync.Mutex // guards everything below
	meta     Meta
	metaWire []byte
	members  map[string]*member
	events   chan Event
	closed   bool

	bcast  *memberlist.TransmitLimitedQueue // leave intents
	stopCh chan struct{}
	wg     sync.WaitGroup
}

// member is a tracked member plus whether it announced that it is leaving.
type member struct {
	Member
	leaving bool
}

// New validates cfg, creates the memberlist (binding the gossip ports) and
// starts the background join loop. memberlist's log lines are forwarded to
// cfg.Logger at the matching level.
// Gossip tuning floors for small clusters (see New).
const (
	minRetransmitMult = 4
	maxPushPull       = 10 * time.Second
)

func New(cfg Config) (*Membership, error) {
	def := DefaultConfig()
	if cfg.NodeID == "" {
		return nil, errors.New("membership: node id is required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	// Zero or negative values take the defaults.
	cfg.BindAddr = cmp.Or(cfg.BindAddr, def.BindAddr)
	cfg.RetryJoinInterval = cmp.Or(max(cfg.RetryJoinInterval, 0), def.RetryJoinInterval)
	cfg.RejoinInterval = cmp.Or(max(cfg.RejoinInterval, 0), def.RejoinInterval)
	cfg.ReapInterval = cmp.Or(max(cfg.ReapInterval, 0), def.ReapInterval)
	cfg.EventBuffer = cmp.Or(max(cfg.EventBuffer, 0), def.EventBuffer)
	var mc *memberlist.Config
	switch cfg.Profile {
	case "", "lan":
		mc = memberlist.DefaultLANConfig()
	case "local":
		mc = memberlist.DefaultLocalConfig()
	default:
		return nil, fmt.Errorf("membership: unknown profile %q (want \"lan\" or \"local\")", cfg.Profile)
	}
	// Clusters of a few nodes: with memberlist's own numbers an update (a
	// node's status) reaches every peer only with luck, and a missed one
	// waits for the next push/pull. Send updates more often and sync state
	// at least every 10 s, a small cost at this size.
	mc.RetransmitMult = max(mc.RetransmitMult, minRetransmitMult)
	mc.PushPullInterval = min(mc.PushPullInterval, maxPushPull)
	if n := len(cfg.SecretKey); n != 0 && n != 16 && n != 24 && n != 32 {
		return nil, fmt.Errorf("membership: secret key is %d bytes, want 16, 24 or 32", n)
	}
	bindHost, bindPort, err := splitIPPort(cfg.BindAddr, false)
	if err != nil {
		return nil, fmt.Errorf("membership: bind address: %w", err)
	}
	advHost, advPort := bindHost, 0
	if cfg.AdvertiseAddr != "" {
		if advHost, advPort, err = splitIPPort(cfg.AdvertiseAddr, true); err != nil {
			return nil, fmt.Errorf("membership: advertise address: %w", err)
		}
	} else if net.ParseIP(bindHost).IsUnspecified() {
		return nil, fmt.Errorf("membership: advertise address is required when binding to %s", bindHost)
	}
	cfg.Meta.ID = cfg.NodeID
	wire, err := encodeMeta(cfg.Meta)
	if err != nil {
		return nil, fmt.Errorf("membership: %w", err)
	}

	m := &Membership{
		cfg:      cfg,
		logger:   cfg.Logger,
		seeds:    slices.Clone(cfg.Join),
		meta:     cfg.Meta,
		metaWire: wire,
		members:  make(map[string]*member),
		events:   make(chan Event, cfg.EventBuffer),
		stopCh:   make(chan struct{}),
	}
	m.bcast = &memberlist.TransmitLimitedQueue{NumNodes: m.numAlive, RetransmitMult: mc.RetransmitMult}
	logw := &logWriter{logger: cfg.Logger.With("component", "memberlist")}
	nt, err := newTransport(bindHost, bindPort, log.New(logw, "", 0))
	if err != nil {
		return nil, fmt.Errorf("membership: bind %s: %w", cfg.BindAddr, err)
	}
	actual := nt.GetAutoBindPort()
	if advPort == 0 {
		advPort = actual
	}
	m.addr = net.JoinHostPort(advHost, strconv.Itoa(advPort))

	d := &delegate{m: m}
	mc.Name = cfg.NodeID
	mc.Transport = nt
	mc.BindAddr, mc.BindPort = bindHost, actual
	mc.AdvertiseAddr, mc.AdvertisePort = advHost, advPort
	mc.Delegate, mc.Events = d, d
	mc.LogOutput = logw
	mc.DeadNodeReclaimTime = deadNodeReclaimTime
	if m.keyring, err = loadKeyring(cfg.KeyringFile, cfg.SecretKey, m.logger.Info); err != nil {
		_ = nt.Shutdown()
		return nil, fmt.Errorf("membership: %w", err)
	}
	if m.keyring != nil {
		mc.Keyring = m.keyring
		mc.GossipVerifyIncoming, mc.GossipVerifyOutgoing = true, true
	}
	if m.ml, err = memberlist.Create(mc); err != nil {
		_ = nt.Shutdown()
		return nil, fmt.Errorf("membership: create memberlist: %w", err)
	}
	if len(m.seeds) == 0 {
		m.joined.Store(true)
	}
	m.logger.Info("gossip started", "node", cfg.NodeID, "addr", m.addr, "seeds", m.seeds)
	m.wg.Add(1)
	go m.run()
	return m, nil
}

// newTransport binds TCP and UDP; with port 0 it retries the inherently racy
// "same free port for both protocols" dance a few times, as memberlist does.
func newTransport(host string, port int, logger *log.Logger) (*memberlist.NetTransport, error) {
	var err error
	for range 10 {
		var nt *memberlist.NetTransport
		nt, err = memberlist.NewNetTransport(&memberlist.NetTransportConfig{
			BindAddrs: []string{host}, BindPort: port, Logger: logger,
		})
		if err == nil {
			return nt, nil
		}
		if port != 0 || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	return nil, err
}

// splitIPPort parses "ip:port". concrete rejects unspecified IPs.
func splitIPPort(addr string, concrete bool) (string, int, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("parse %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, fmt.Errorf("parse %q: bad port", addr)
	}
	if host == "" && !concrete {
		host = "0.0.0.0"
	}
	ip := net.ParseIP(host)
	switch {
	case ip == nil:
		return "", 0, fmt.Errorf("%q: host must be an IP address", addr)
	case concrete && ip.IsUnspecified():
		return "", 0, fmt.Errorf("%q: host must be a concrete IP, not %s", addr, host)
	}
	return ip.String(), port, nil
}

// LocalID returns this node's id.
func (m *Membership) LocalID() string { return m.cfg.NodeID }

// GossipAddr returns the advertised gossip host:port, with the actual port.
func (m *Membership) GossipAddr() string { return m.addr }

// Events returns the member event channel. It is closed after Shutdown.
// When the buffer is full an event is dropped with a warning, so consumers
// should also reconcile from Members periodically.
func (m *Membership) Events() <-chan Event { return m.events }

// Members returns every known member, self included, in any state, sorted by
// ID. Failed and left members are forgotten after Config.ReapInterval.
func (m *Membership) Members() []Member {
	m.mu.Lock()
	out := make([]Member, 0, len(m.members))
	for _, mem := range m.members {
		out = append(out, mem.Member)
	}
	m.mu.Unlock()
	slices.SortFunc(out, func(a, b Member) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Member returns the member with the given id, if known.
func (m *Membership) Member(id string) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if mem, ok := m.members[id]; ok {
		return mem.Member, true
	}
	return Member{}, false
}

// LocalMeta returns this node's current metadata.
func (m *Membership) LocalMeta() Meta {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.meta
}

// UpdateMeta applies fn to a copy of the local metadata and gossips the
// result, waiting up to a few seconds for the broadcast to go out. The ID
// cannot be changed. After Leave the change is kept locally but no longer
// gossiped; after Shutdown it is an error.
func (m *Membership) UpdateMeta(fn func(*Meta)) error {
	m.updateMu.Lock()
	defer m.updateMu.Unlock()
	m.lifeMu.RLock()
	defer m.lifeMu.RUnlock()
	if m.shutdown {
		return fmt.Errorf("membership: update meta: %w", errShutdown)
	}
	meta := m.LocalMeta()
	fn(&meta)
	meta.ID = m.cfg.NodeID
	wire, err := encodeMeta(meta)
	if err != nil {
		return fmt.Errorf("membership: update meta: %w", err)
	}
	m.mu.Lock()
	m.meta, m.metaWire = meta, wire
	m.mu.Unlock()
	if m.left.Load() {
		return nil
	}
	if err := m.ml.UpdateNode(broadcastTimeout); err != nil {
		return fmt.Errorf("membership: update meta: %w", err)
	}
	return nil
}

// Joined reports whether no seeds were configured or a join succeeded at
// least once. It is false after Leave.
func (m *Membership) Joined() bool { return m.joined.Load() && !m.left.Load() }

// Leave announces that this node is leaving and broadcasts memberlist's
// leave, waiting up to timeout in total (0 waits without limit), and stops
// (re-)joining seeds. The node keeps answering gossip until Shutdown. Leave
// is idempotent.
//
// memberlist v0.6.0 does not tell NotifyLeave whether a node left or failed
// (hashicorp/memberlist#293), so the leaving node first gossips
// a leave intent of its own; members that saw it report StateLeft.
func (m *Membership) Leave(timeout time.Duration) error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.shutdown {
		return fmt.Errorf("membership: leave: %w", errShutdown)
	}
	var deadline <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		deadline = t.C
	}
	start := time.Now()
	var intentErr error
	if !m.left.Swap(true) && m.numAlive() > 1 {
		sent := make(chan struct{})
		m.bcast.QueueBroadcast(&leaveBroadcast{msg: leaveIntent(m.cfg.NodeID), sent: sent})
		select {
		case <-sent:
		case <-deadline:
			intentErr = errors.New("timeout waiting for leave intent broadcast")
		}
	}
	if timeout > 0 {
		timeout = max(timeout-time.Since(start), time.Millisecond)
	}
	if err := errors.Join(intentErr, m.ml.Leave(timeout)); err != nil {
		return fmt.Errorf("membership: leave: %w", err)
	}
	return nil
}

// Shutdown stops the join loop, shuts memberlist down without leaving (the
// others will see this node fail) and closes Events. It is idempotent.
func (m *Membership) Shutdown() error {
	m.lifeMu.Lock()
	defer m.lifeMu.Unlock()
	if m.shutdown {
		return nil
	}
	m.shutdown = true
	close(m.stopCh)
	err := m.ml.Shutdown()
	m.wg.Wait()
	m.mu.Lock()
	m.closed = true
	close(m.events)
	m.mu.Unlock()
	if err != nil {
		return fmt.Errorf("membership: shutdown: %w", err)
	}
	return nil
}

// run joins seeds (retry until the first success, then re-join missing
// seeds periodically) and reaps old dead members. It exits when stopCh is
// closed.
func (m *Membership) run() {
	defer m.wg.Done()
	tick := min(time.Second, m.cfg.RetryJoinInterval, m.cfg.RejoinInterval, m.cfg.ReapInterval)
	ticker := time.NewTicker(max(tick, 10*time.Millisecond))
	defer ticker.Stop()
	var nextJoin time.Time
	for {
		if now := time.Now(); len(m.seeds) > 0 && !m.left.Load() && !now.Before(nextJoin) {
			if m.joined.Load() {
				m.rejoin()
				nextJoin = now.Add(m.cfg.RejoinInterval)
			} else if n, err := m.ml.Join(m.seeds); err != nil {
				m.logger.Warn("join failed, will retry", "seeds", m.seeds, "retry", m.cfg.RetryJoinInterval, "error", err)
				nextJoin = now.Add(m.cfg.RetryJoinInterval)
			} else {
				m.logger.Info("joined cluster", "contacted", n)
				m.joined.Store(true)
				nextJoin = now.Add(m.cfg.RejoinInterval)
			}
		}
		m.reap(time.Now())
		select {
		case <-m.stopCh:
			return
		case <-ticker.C:
		}
	}
}

// rejoin joins every seed that is neither this node nor an alive member.
func (m *Membership) rejoin() {
	alive := map[string]bool{m.addr: true}
	for _, mem := range m.Members() {
		if mem.State == StateAlive || mem.State == StateSuspect {
			alive[mem.GossipAddr] = true
		}
	}
	var missing []string
	for _, s := range m.seeds {
		if !alive[normalizeAddr(s)] {
			missing = append(missing, s)
		}
	}
	if len(missing) == 0 {
		return
	}
	if n, err := m.ml.Join(missing); err != nil {
		m.logger.Debug("rejoin failed", "seeds", missing, "error", err)
	} else {
		m.logger.Info("rejoined seeds", "seeds", missing, "contacted", n)
	}
}

// normalizeAddr canonicalises "ip:port"; other forms are returned as is.
func normalizeAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err == nil && ip != nil {
		return net.JoinHostPort(ip.String(), port)
	}
	return addr
}

// numAlive counts alive members, self included.
func (m *Membership) numAlive() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, mem := range m.members {
		if mem.State == StateAlive || mem.State == StateSuspect {
			n++
		}
	}
	return n
}

// reap forgets failed or left members older than ReapInterval.
func (m *Membership) reap(now time.Time) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for id, mem := range m.members {
		if (mem.State == StateFailed || mem.State == StateLeft) &&
			id != m.cfg.NodeID && now.Sub(mem.Since) >= m.cfg.ReapInterval {
			delete(m.members, id)
			m.logger.Debug("reaped member", "member", id, "state", mem.State)
		}
	}
}
