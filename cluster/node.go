// Package cluster is an mcpcluster node: raft with boltdb storage and file
// snapshots, memberlist gossip, safe bootstrap, a leader loop that turns
// gossip into raft membership, writes forwarded to the leader and reads at
// three consistency levels.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/mcpcluster/mcpcluster/fsm"
	"github.com/mcpcluster/mcpcluster/membership"
	"go.etcd.io/bbolt"
)

// KeyringFile is the gossip keyring's file in the data dir: it persists
// key rotations and encrypts gossip even when no key is given at start.
const KeyringFile = "gossip-keyring.json"

// logCacheSize is how many recent raft entries are kept in memory.
const logCacheSize = 4096

// ErrShutdown is returned by operations on a node that has shut down.
var ErrShutdown = errors.New("node is shut down")

// Node is one mcpcluster server.
type Node struct {
	cfg    Config
	id     string
	logger *slog.Logger

	fsm       *fsm.FSM
	raft      *raft.Raft
	store     *raftboltdb.BoltStore
	transport *raft.NetworkTransport
	mux       *mux
	tls       *tlsConfigurator // nil: plaintext cluster port
	pool      *rpcPool
	probe     *http.Client // leader's liveness pings
	members   *membership.Membership

	internal        *http.Server // internal HTTP on the cluster port
	internalHandler atomic.Value // http.Handler set by ServeInternal

	// unreachable holds nodes the leader confirmed refusing connections,
	// left out of placement until a dial succeeds again.
	unreachMu   sync.Mutex
	unreachable map[string]bool

	hadState      bool
	notifyCh      chan bool
	reconcileCh   chan struct{}
	bootstrapCh   chan struct{}
	boot          bootstrapState
	forwardCh     chan *forwardReq // writes waiting to be batched to the leader
	leaderTerm    atomic.Uint64    // the term whose leader loop passed its barrier; 0: none
	leaderChanges atomic.Uint64    // leader changes this node observed
	events        eventLog         // recent leader changes and placement moves

	shutdownCh   chan struct{}
	shutdownOnce sync.Once
	shutdownErr  error
	wg           sync.WaitGroup
}

// New starts a node: it opens storage, starts raft and gossip, and begins
// joining and (when configured) bootstrapping in the background.
func New(cfg Config) (_ *Node, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n := &Node{
		cfg:         cfg,
		fsm:         fsm.New(),
		notifyCh:    make(chan bool, 16),
		reconcileCh: make(chan struct{}, 1),
		bootstrapCh: make(chan struct{}, 1),
		forwardCh:   make(chan *forwardReq, maxForwardBatch),
		unreachable: make(map[string]bool),
		shutdownCh:  make(chan struct{}),
	}
	// Undo whatever was started if a later step fails.
	defer func() {
		if err != nil {
			n.Shutdown()
		}
	}()

	if err := os.MkdirAll(filepath.Join(cfg.DataDir, "raft"), 0o700); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	if n.id, err = resolveNodeID(cfg.DataDir, cfg.NodeID); err != nil {
		return nil, err
	}
	n.logger = cfg.Logger.With("node", n.id)

	// Storage first: it is what everything else stands on, and closed last.
	// Every commit is fsynced; the freelist is not written with it (it is
	// rebuilt when the file is opened), which halves the pages each commit
	// writes.
	n.store, err = raftboltdb.New(raftboltdb.Options{
		Path: filepath.Join(cfg.DataDir, "raft", "raft.db"),
		BoltOptions: &bbolt.Options{
			Timeout:        time.Second,
			NoFreelistSync: true,
			FreelistType:   bbolt.FreelistMapType,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("open raft store: %w", err)
	}
	// Recent entries stay in memory: replication and commit read them
	// back without a bolt read and a decode each.
	logs, err := raft.NewLogCache(logCacheSize, n.store)
	if err != nil {
		return nil, fmt.Errorf("create log cache: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(filepath.Join(cfg.DataDir, "raft"), cfg.SnapshotRetain, newHclog(cfg.Logger, "raft-snapshot", cfg.LogLevel))
	if err != nil {
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}

	// Cluster port.
	ln, err := net.Listen("tcp", cfg.RPCBindAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on cluster port %s: %w", cfg.RPCBindAddr, err)
	}
	advertise := cfg.RPCAdvertiseAddr
	if advertise == "" || strings.HasSuffix(advertise, ":0") {
		advertise = ln.Addr().String()
	}
	if err := checkAdvertise("rpc advertise", advertise); err != nil {
		ln.Close()
		return nil, err
	}
	n.cfg.RPCAdvertiseAddr = advertise
	advAddr, err := net.ResolveTCPAddr("tcp", advertise)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("resolve rpc advertise address: %w", err)
	}
	if cfg.TLSCAFile != "" || cfg.TLSCertFile != "" || cfg.TLSKeyFile != "" {
		if n.tls, err = newTLSConfigurator(cfg.TLSCAFile, cfg.TLSCertFile, cfg.TLSKeyFile, n.id, n.logger); err != nil {
			ln.Close()
			return nil, err
		}
	}
	n.mux = newMux(muxConfig{
		ln: ln, advertise: advAddr, logger: n.logger, tls: n.tls,
		authorize: n.authorizePeer, rpc: n.serveRPC, maxPerIP: cfg.MaxConnsPerIP,
	})
	n.pool = newRPCPool(2*time.Second, func(addr string, timeout time.Duration) (net.Conn, error) {
		return n.dial(addr, connRPC, "", timeout)
	})
	n.probe = n.newProbeClient()
	n.goFunc(n.mux.serve)
	n.serveInternalHTTP()

	n.transport = raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  raftLayer{m: n.mux, dial: n.dial},
		MaxPool: 3,
		Timeout: 10 * time.Second,
		Logger:  newHclog(cfg.Logger, "raft-net", cfg.LogLevel),
	})

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(n.id)
	rc.Logger = newHclog(n.logger, "raft", cfg.LogLevel)
	rc.HeartbeatTimeout = cfg.RaftHeartbeatTimeout
	rc.ElectionTimeout = cfg.RaftElectionTimeout
	rc.LeaderLeaseTimeout = cfg.RaftLeaderLeaseTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.SnapshotInterval = cfg.SnapshotInterval
	rc.NotifyCh = n.notifyCh
	rc.BatchApplyCh = true
	rc.MaxAppendEntries = 512
	rc.ShutdownOnRemove = false

	n.hadState, err = raft.HasExistingState(n.store, n.store, snaps)
	if err != nil {
		return nil, fmt.Errorf("check existing raft state: %w", err)
	}
	n.raft, err = raft.NewRaft(rc, n.fsm, logs, n.store, snaps, n.transport)
	if err != nil {
		return nil, fmt.Errorf("start raft: %w", err)
	}

	mc := membership.DefaultConfig()
	mc.NodeID = n.id
	mc.BindAddr = cfg.GossipBindAddr
	mc.AdvertiseAddr = cfg.GossipAdvertiseAddr
	mc.Join = cfg.Join
	mc.Profile = cfg.GossipProfile
	mc.SecretKey = cfg.GossipKey
	mc.KeyringFile = filepath.Join(cfg.DataDir, KeyringFile)
	mc.Logger = n.logger.With("component", "gossip")
	mc.Meta = membership.Meta{
		ID:       n.id,
		HTTPAddr: cfg.HTTPAdvertiseAddr,
		RPCAddr:  advertise,
		Status:   membership.StatusStarting,
		Expect:   cfg.BootstrapExpect,
		Capacity: cfg.Capacity,
		Zone:     cfg.Zone,
		NoVote:   cfg.NonVoter,
	}
	if n.members, err = membership.New(mc); err != nil {
		return nil, fmt.Errorf("start gossip: %w", err)
	}

	n.goFunc(n.monitorLeadership)
	n.goFunc(n.watchMembers)
	n.goFunc(n.countLeaderChanges)
	n.goFunc(n.watchPlacement)
	n.goFunc(n.runForwarder)
	if cfg.BootstrapExpect > 0 && !n.hadState {
		n.goFunc(n.bootstrapLoop)
	}
	n.logger.Info("node started", "rpc", advertise, "gossip", n.members.GossipAddr(),
		"existing_state", n.hadState, "bootstrap_expect", cfg.BootstrapExpect,
		"cluster_tls", n.tls != nil, "gossip_encrypted", n.members.Encrypted())
	return n, nil
}

func (n *Node) goFunc(f func()) {
	n.wg.Add(1)
	go func() {
		defer n.wg.Done()
		f()
	}()
}

// resolveNodeID returns the node's stable id: the configured one, checked
// against the one persisted in the data dir, or a new random id persisted there.
func resolveNodeID(dataDir, configured string) (string, error) {
	path := filepath.Join(dataDir, "node-id")
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		stored := strings.TrimSpace(string(b))
		if configured != "" && configured != stored {
			return "", fmt.Errorf("data dir %s belongs to node %q, not %q", dataDir, stored, configured)
		}
		return stored, nil
	case !errors.Is(err, os.ErrNotExist):
		return "", fmt.Errorf("read node id: %w", err)
	}
	id := configured
	if id == "" {
		var r [6]byte
		if _, err := rand.Read(r[:]); err != nil {
			return "", fmt.Errorf("generate node id: %w", err)
		}
		id = "node-" + hex.EncodeToString(r[:])
	}
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("persist node id: %w", err)
	}
	return id, nil
}

// pingPath answers on the cluster port's HTTP while the process runs: the
// leader's check that a node is alive (a paused process still accepts TCP
// connections, but does not answer).
const pingPath = "/v1/internal/ping"

// serveInternalHTTP starts the cluster port's HTTP server: the ping, and
// whatever ServeInternal adds.
func (n *Node) serveInternalHTTP() {
	n.internal = &http.Server{
		ConnContext: connContext,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == pingPath {
				w.WriteHeader(http.StatusOK)
				return
			}
			if h, ok := n.internalHandler.Load().(http.Handler); ok {
				h.ServeHTTP(w, r)
				return
			}
			http.NotFound(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          slog.NewLogLogger(n.logger.Handler(), slog.LevelDebug),
	}
	srv := n.internal
	n.goFunc(func() {
		if err := srv.Serve(httpListener{m: n.mux}); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, errMuxClosed) {
			n.logger.Error("internal http server stopped", "error", err)
		}
	})
}

// ServeInternal serves h as HTTP on the cluster port, for node-to-node
// requests that are not raft or RPC (forwarded tool calls).
func (n *Node) ServeInternal(h http.Handler) { n.internalHandler.Store(h) }

// ID returns the node's stable id.
func (n *Node) ID() string { return n.id }

// FSM returns the node's local replica of the state. Reads on it are stale
// unless preceded by ReadBarrier.
func (n *Node) FSM() *fsm.FSM { return n.fsm }

// Members returns the gossip view of the cluster.
func (n *Node) Members() []membership.Member { return n.members.Members() }

// RPCAddr returns the advertised cluster address.
func (n *Node) RPCAddr() string { return n.cfg.RPCAdvertiseAddr }

// GossipAddr returns the advertised gossip address.
func (n *Node) GossipAddr() string { return n.members.GossipAddr() }

// IsLeader reports whether this node is the raft leader.
func (n *Node) IsLeader() bool { return n.raft.State() == raft.Leader }

// Leader returns the id and cluster address of the current leader, if known.
func (n *Node) Leader() (id, addr string) {
	a, i := n.raft.LeaderWithID()
	return string(i), string(a)
}

// Holds reports whether any provider is assigned to this node.
func (n *Node) Holds() bool {
	for _, a := range n.fsm.Assignments() {
		for _, h := range a.Holders {
			if h == n.id {
				return true
			}
		}
	}
	return false
}

// TransferLeadership hands raft leadership to another voter, if this node
// leads and has one.
func (n *Node) TransferLeadership() error { return n.TransferLeadershipTo("") }

// TransferLeadershipTo hands raft leadership to voter id ("" lets raft
// pick), if this node leads.
func (n *Node) TransferLeadershipTo(id string) error {
	if !n.IsLeader() {
		if id != "" {
			return errors.New("this node does not lead")
		}
		return nil
	}
	var addr raft.ServerAddress
	if id != "" {
		servers, err := n.Servers()
		if err != nil {
			return err
		}
		for _, s := range servers {
			if string(s.ID) == id && s.Suffrage == raft.Voter {
				addr = s.Address
			}
		}
		if addr == "" {
			return fmt.Errorf("no voter %q: leadership goes only to voters", id)
		}
	}
	// raft hands the request to its leader loop without waiting and
	// answers ErrEnqueueTimeout when the loop is busy at that instant:
	// try again for a little while.
	deadline := time.Now().Add(2 * time.Second)
	for {
		var f raft.Future
		if id == "" {
			f = n.raft.LeadershipTransfer()
		} else {
			f = n.raft.LeadershipTransferToServer(raft.ServerID(id), addr)
		}
		err := f.Error()
		if err == nil {
			return nil
		}
		if !errors.Is(err, raft.ErrEnqueueTimeout) || time.Now().After(deadline) {
			return fmt.Errorf("transfer leadership: %w", err)
		}
		select {
		case <-n.shutdownCh:
			return ErrShutdown
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// leaderReady reports whether this node leads in a term whose barrier it
// has passed: its FSM holds every entry of earlier terms.
func (n *Node) leaderReady() bool {
	t := n.leaderTerm.Load()
	return t != 0 && t == n.raft.CurrentTerm() && n.raft.State() == raft.Leader
}

// LeaderChanges is how many times this node saw the leader change.
func (n *Node) LeaderChanges() uint64 { return n.leaderChanges.Load() }

// countLeaderChanges counts raft's leader observations until shutdown.
func (n *Node) countLeaderChanges() {
	ch := make(chan raft.Observation, 16)
	obs := raft.NewObserver(ch, false, func(o *raft.Observation) bool {
		_, ok := o.Data.(raft.LeaderObservation)
		return ok
	})
	n.raft.RegisterObserver(obs)
	defer n.raft.DeregisterObserver(obs)
	for {
		select {
		case o := <-ch:
			n.leaderChanges.Add(1)
			n.leaderEvent(o)
		case <-n.shutdownCh:
			return
		}
	}
}

// SetLoad gossips how many calls are running on this node.
func (n *Node) SetLoad(inflight int) error {
	return n.members.UpdateMeta(func(m *membership.Meta) { m.InFlight = inflight })
}

// SetStatus gossips the node's lifecycle status.
func (n *Node) SetStatus(s membership.Status) error {
	return n.members.UpdateMeta(func(m *membership.Meta) { m.Status = s })
}

// Servers returns the raft configuration.
func (n *Node) Servers() ([]raft.Server, error) {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return nil, fmt.Errorf("read raft configuration: %w", err)
	}
	return f.Configuration().Servers, nil
}

// RaftStats is a summary of the local raft state.
type RaftStats struct {
	State        string `json:"state"`
	Term         uint64 `json:"term"`
	LastIndex    uint64 `json:"last_index"`
	CommitIndex  uint64 `json:"commit_index"`
	AppliedIndex uint64 `json:"applied_index"`
	LastContact  string `json:"last_contact,omitempty"`
}

// RaftStats returns the local raft state.
func (n *Node) RaftStats() RaftStats {
	return RaftStats{
		State:        n.raft.State().String(),
		Term:         n.raft.CurrentTerm(),
		LastIndex:    n.raft.LastIndex(),
		CommitIndex:  n.raft.CommitIndex(),
		AppliedIndex: n.raft.AppliedIndex(),
		LastContact:  n.raft.Stats()["last_contact"],
	}
}

// Ready reports whether the node can serve: it has joined, knows a leader,
// is in the raft configuration, and its FSM is caught up with the commit index.
func (n *Node) Ready() error {
	if !n.members.Joined() {
		return errors.New("not joined to any peer yet")
	}
	if id, _ := n.Leader(); id == "" {
		return errors.New("no known leader")
	}
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	if !hasServer(servers, n.id) {
		return errors.New("not in the raft configuration")
	}
	if applied, commit := n.raft.AppliedIndex(), n.raft.CommitIndex(); applied+readyLag < commit {
		return fmt.Errorf("fsm catching up: applied %d of %d", applied, commit)
	}
	return nil
}

// readyLag is how far the FSM may trail the commit index and still be ready.
const readyLag = 128

func hasServer(servers []raft.Server, id string) bool {
	for _, s := range servers {
		if string(s.ID) == id {
			return true
		}
	}
	return false
}

// watchMembers turns gossip events into reconcile and bootstrap wake-ups.
func (n *Node) watchMembers() {
	for {
		select {
		case ev, ok := <-n.members.Events():
			if !ok {
				return
			}
			n.logger.Debug("member event", "type", ev.Type.String(), "member", ev.Member.ID, "state", ev.Member.State)
			kick(n.reconcileCh)
			kick(n.bootstrapCh)
		case <-n.shutdownCh:
			return
		}
	}
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// SnapshotInfo describes a snapshot the node took.
type SnapshotInfo struct {
	Index    uint64        `json:"index"`
	Size     int64         `json:"size"`
	Duration time.Duration `json:"duration_ns"`
}

// Snapshot takes a raft snapshot now and compacts the log behind it.
func (n *Node) Snapshot() (SnapshotInfo, error) {
	start := time.Now()
	f := n.raft.Snapshot()
	if err := f.Error(); err != nil {
		return SnapshotInfo{}, fmt.Errorf("snapshot: %w", err)
	}
	meta, rc, err := f.Open()
	if err != nil {
		return SnapshotInfo{}, fmt.Errorf("open snapshot: %w", err)
	}
	rc.Close()
	return SnapshotInfo{Index: meta.Index, Size: meta.Size, Duration: time.Since(start)}, nil
}

// ReportUnreachable tells the leader that node id refused a connection
// from this node (a forwarded call could not be sent). The leader checks
// it and moves the node's providers without waiting for gossip to declare
// it failed. Best effort: it returns at once and never fails the caller.
func (n *Node) ReportUnreachable(id string) {
	if n.IsLeader() {
		go n.suspect(id, n.id)
		return
	}
	_, addr := n.Leader()
	if addr == "" {
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		var reply UnreachableReply
		if err := n.pool.call(ctx, addr, "Unreachable", UnreachableArgs{ID: id, From: n.id}, &reply); err != nil {
			n.logger.Debug("unreachable report not delivered", "peer", id, "error", err)
		}
	}()
}

// probeTimeout bounds the leader's check of a node reported unreachable.
const probeTimeout = 500 * time.Millisecond

// suspect runs on the leader: it dials the reported node's cluster port and
// marks the node unreachable if that fails too.
func (n *Node) suspect(id, from string) {
	m, ok := n.members.Member(id)
	if !ok || m.RPCAddr == "" || id == n.id {
		return
	}
	n.unreachMu.Lock()
	already := n.unreachable[id]
	n.unreachMu.Unlock()
	if already || n.reachable(m.RPCAddr) {
		return
	}
	n.unreachMu.Lock()
	n.unreachable[id] = true
	n.unreachMu.Unlock()
	n.logger.Warn("node refuses connections; moving its providers", "peer", id, "reported_by", from)
	kick(n.reconcileCh)
}

// probeMembers dials every other alive member's cluster port at once and
// marks those that refuse as unreachable.
func (n *Node) probeMembers() {
	var wg sync.WaitGroup
	for _, m := range n.members.Members() {
		if m.ID == n.id || m.RPCAddr == "" || m.State != membership.StateAlive {
			continue
		}
		wg.Add(1)
		go func(m membership.Member) {
			defer wg.Done()
			n.suspect(m.ID, n.id)
		}(m)
	}
	wg.Wait()
}

// isUnreachable reports a confirmed unreachable node, clearing the mark
// once the node answers a dial again.
func (n *Node) isUnreachable(id, rpcAddr string) bool {
	n.unreachMu.Lock()
	marked := n.unreachable[id]
	n.unreachMu.Unlock()
	if !marked {
		return false
	}
	if n.reachable(rpcAddr) {
		n.unreachMu.Lock()
		delete(n.unreachable, id)
		n.unreachMu.Unlock()
		n.logger.Info("node reachable again", "peer", id)
		return false
	}
	return true
}

// reachable reports whether the node at addr answers its ping in time.
func (n *Node) reachable(addr string) bool {
	resp, err := n.probe.Get("http://" + addr + pingPath)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Leave removes the node from the cluster gracefully: it hands leadership
// over, leaves gossip and has the leader remove it from the raft
// configuration. Shutdown must still be called afterwards.
func (n *Node) Leave(ctx context.Context) error {
	n.logger.Info("leaving the cluster")
	servers, err := n.Servers()
	if err != nil {
		return err
	}
	others := 0
	for _, s := range servers {
		if string(s.ID) != n.id && s.Suffrage == raft.Voter {
			others++
		}
	}
	// Ask the leader before anything changes: a node that left gossip and
	// was then refused would be stranded, and a removal that leaves the
	// healthy voters short of a majority stops every write.
	if others > 0 && hasServer(servers, n.id) {
		if err := n.RemovePeer(ctx, n.id, true); err != nil {
			return fmt.Errorf("leave refused: %w", err)
		}
	}
	_ = n.SetStatus(membership.StatusStopping)
	if n.IsLeader() && others > 0 {
		if err := n.TransferLeadership(); err != nil {
			n.logger.Warn("leadership transfer failed; removing self as leader", "error", err)
			if err := n.removeServer(ctx, n.id); err != nil {
				return fmt.Errorf("remove self from raft: %w", err)
			}
		}
	}
	// Leave gossip first, so the leader's reconcile sees "left" and does not
	// add this node back while the removal is in flight.
	if err := n.members.Leave(5 * time.Second); err != nil {
		n.logger.Warn("gossip leave failed", "error", err)
	}
	if others == 0 {
		return nil
	}
	for {
		servers, err := n.Servers()
		if err == nil && !hasServer(servers, n.id) {
			n.logger.Info("left the raft configuration")
			return nil
		}
		_, addr := n.Leader()
		if addr != "" && addr != n.cfg.RPCAdvertiseAddr {
			var reply RemovePeerReply
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			err = n.pool.call(cctx, addr, "RemovePeer", RemovePeerArgs{ID: n.id}, &reply)
			cancel()
			if err != nil {
				n.logger.Debug("remove-peer request failed", "error", err)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for removal from raft: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Shutdown stops the node without leaving the cluster: a restart on the same
// data dir is not a membership change. It is idempotent and undoes start-up
// in reverse order, storage last.
func (n *Node) Shutdown() error {
	n.shutdownOnce.Do(func() {
		if n.logger != nil {
			n.logger.Info("shutting down")
		}
		close(n.shutdownCh)
		var errs []error
		if n.members != nil {
			errs = append(errs, n.members.Shutdown())
		}
		if n.raft != nil {
			errs = append(errs, n.raft.Shutdown().Error())
		}
		if n.transport != nil {
			errs = append(errs, n.transport.Close())
		}
		if n.internal != nil {
			n.internal.Close()
		}
		if n.mux != nil {
			n.mux.close()
		}
		if n.pool != nil {
			n.pool.close()
		}
		n.wg.Wait()
		if n.mux != nil {
			n.mux.wg.Wait()
		}
		if n.store != nil {
			errs = append(errs, n.store.Close())
		}
		n.shutdownErr = errors.Join(errs...)
	})
	return n.shutdownErr
}
