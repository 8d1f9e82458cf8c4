package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
	"github.com/mcpcluster/mcpcluster/cmd/mcpcluster/ui"
	"github.com/mcpcluster/mcpcluster/mcp"
	"github.com/mcpcluster/mcpcluster/membership"
)

// Agent wires one node: the cluster node and the HTTP server in front of it.
// Tests run it in-process with :0 ports and a temp dir.
type Agent struct {
	cfg    AgentConfig
	logger *slog.Logger

	node    *cluster.Node
	mcp     *mcp.Server
	httpSrv *http.Server
	httpLn  net.Listener

	tracing   *tracing // nil when tracing is off
	tempDir   string   // dev mode's data dir, removed on Close
	leaveOnce sync.Once
	left      chan struct{} // closed when the node left on request (POST /v1/agent/leave)
	stopped   chan struct{} // closed by Close
}

// NewAgent starts the node and its HTTP server.
func NewAgent(cfg AgentConfig, logger *slog.Logger) (_ *Agent, err error) {
	a := &Agent{cfg: cfg, logger: logger, left: make(chan struct{}), stopped: make(chan struct{})}
	// If a step fails, undo the ones before it, in reverse order.
	defer func() {
		if err == nil {
			return
		}
		if a.node != nil {
			a.node.Shutdown()
		}
		_ = a.tracing.shutdown(context.Background())
		if a.httpLn != nil {
			a.httpLn.Close()
		}
		if a.tempDir != "" {
			os.RemoveAll(a.tempDir)
		}
	}()
	if where, missing := a.cfg.insecurity(); where != "" {
		logger.Warn("--insecure: running on a non-loopback address without "+missing, "address", where)
	}
	if cfg.Dev && cfg.DataDir == "" {
		dir, err := os.MkdirTemp("", "mcpcluster-dev-")
		if err != nil {
			return nil, fmt.Errorf("create dev data dir: %w", err)
		}
		a.cfg.DataDir, a.tempDir = dir, dir
		logger.Info("dev mode: data is kept in a temporary directory", "data_dir", dir)
	}

	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on http address %s: %w", cfg.HTTPAddr, err)
	}
	a.httpLn = ln
	httpAdvertise := cfg.HTTPAdvertise
	if httpAdvertise == "" {
		httpAdvertise = ln.Addr().String()
	}

	level, _ := parseLevel(cfg.LogLevel)
	nc := cluster.DefaultConfig()
	nc.NodeID = cfg.NodeID
	nc.DataDir = a.cfg.DataDir
	nc.RPCBindAddr = cfg.RPCAddr
	nc.RPCAdvertiseAddr = cfg.RPCAdvertise
	nc.GossipBindAddr = cfg.GossipAddr
	nc.GossipAdvertiseAddr = cfg.GossipAdvertise
	nc.HTTPAdvertiseAddr = httpAdvertise
	nc.Join = cfg.Join
	nc.BootstrapExpect = cfg.BootstrapExpect
	nc.GossipProfile = cfg.GossipProfile
	nc.DeadServerTimeout = cfg.DeadServerTime
	nc.ServerStabilizationTime = cfg.Stabilization
	nc.MaxVoters = cfg.MaxVoters
	nc.NonVoter = !cfg.Voter
	nc.Zone = cfg.Zone
	nc.ReconcileInterval = cfg.ReconcileEvery
	nc.RaftHeartbeatTimeout = cfg.RaftHeartbeat
	nc.RaftElectionTimeout = cfg.RaftElection
	nc.RaftLeaderLeaseTimeout = min(cfg.RaftHeartbeat/2, 500*time.Millisecond)
	nc.SnapshotThreshold = cfg.SnapshotEvery
	nc.SessionIdleTTL = cfg.SessionIdleTTL
	nc.SessionMaxLifetime = cfg.SessionMaxLifetime
	nc.Capacity = cfg.MaxConcurrent
	nc.TLSCAFile = cfg.TLSCAFile
	nc.TLSCertFile = cfg.TLSCertFile
	nc.TLSKeyFile = cfg.TLSKeyFile
	nc.GossipKey = a.cfg.gossipKey()
	nc.MaxConnsPerIP = cfg.RPCMaxConnsPerIP
	nc.Cache = cluster.CacheConfig{MaxEntries: cfg.CacheMaxEntries, MaxBytes: cfg.CacheMaxBytes, MaxKeyBytes: cfg.CacheMaxKey, MaxValueBytes: cfg.CacheMaxValue}
	nc.Logger = logger
	nc.LogLevel = level
	if a.node, err = cluster.New(nc); err != nil {
		return nil, fmt.Errorf("start node: %w", err)
	}

	if a.tracing, err = setupTracing(context.Background(), os.Getenv, a.node.ID()); err != nil {
		return nil, fmt.Errorf("tracing: %w", err)
	}
	mc := mcp.DefaultConfig()
	mc.Cluster = a.node
	if a.tracing != nil {
		mc.TracerProvider = a.tracing.provider
		logger.Info("tracing on: spans go to the OTLP endpoint of the OTEL_* environment", "exporter", a.tracing.exporter)
	}
	mc.Logger = logger
	mc.CallTimeout = cfg.CallTimeout
	mc.SessionIdleTTL = cfg.SessionIdleTTL
	mc.SessionMaxLifetime = cfg.SessionMaxLifetime
	mc.MaxBodyBytes = cfg.MaxBodyBytes
	mc.Tokens = cfg.AuthTokens
	mc.MaxConcurrent = cfg.MaxConcurrent
	mc.MaxQueue = cfg.MaxQueue
	mc.ToolTimeouts = cfg.ToolTimeouts
	mc.OAuth = cfg.OAuth.mcp()
	mc.AllowedOrigins = cfg.AllowedOrigins
	mc.AllowLoopbackOrigins = len(cfg.AllowedOrigins) == 0 && isLoopback(cfg.HTTPAddr)
	mc.ToolPolicy = cfg.ToolPolicy
	mc.AuditLog = cfg.AuditLog
	mc.AuditArguments = cfg.AuditArguments
	if mc.RateLimits, err = cfg.RateLimits.mcp(); err != nil {
		return nil, fmt.Errorf("rate limits: %w", err)
	}
	met := newMetrics(a.node)
	mc.Observer = met
	node := a.node
	status := func() any { return node.Status() }
	mc.Providers, err = buildProviders(cfg.Providers, status, node, logger)
	if err == nil {
		a.mcp, err = mcp.New(mc)
	}
	if err != nil {
		return nil, fmt.Errorf("start mcp server: %w", err)
	}
	a.node.ServeInternal(a.mcp.InternalHandler())
	met.watchFront(a.mcp)
	met.watchBounds(a.cfg)

	apiCfg := cluster.DefaultAPIConfig()
	apiCfg.OnLeave = func() { a.leaveOnce.Do(func() { close(a.left) }) }
	apiCfg.Logger = logger
	apiCfg.Ready = a.mcp.ReadyErr
	apiCfg.Tokens = cfg.AdminTokens
	api := cluster.NewAPI(a.node, apiCfg)
	mux := http.NewServeMux()
	mux.Handle("/mcp", a.mcp.Handler())
	if h := a.mcp.MetadataHandler(); h != nil {
		for _, p := range mcp.MetadataPaths() {
			mux.Handle("GET "+p, h) // RFC 9728: open, on every node
		}
	}
	mux.Handle("GET /metrics", met.handler())
	if cfg.EnableDebug {
		// Profiles are an operator's: a write token when the API has tokens.
		for path, h := range map[string]http.HandlerFunc{
			"/debug/pprof/": pprof.Index, "/debug/pprof/profile": pprof.Profile,
			"/debug/pprof/symbol": pprof.Symbol, "/debug/pprof/trace": pprof.Trace,
		} {
			mux.Handle(path, api.Protect(cluster.AccessWrite, h))
		}
	}
	// The status page's files hold no data: served without a token, the
	// page sends the operator's token on its API requests.
	mux.Handle("GET /ui/", ui.Handler())
	mux.Handle("GET /ui", http.RedirectHandler("/ui/", http.StatusMovedPermanently))
	mux.Handle("/", api)
	a.httpSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	go func() {
		if err := a.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("http server stopped", "error", err)
		}
	}()
	// Running (and so eligible for providers) once clients see the catalog.
	go func() {
		select {
		case <-a.mcp.Ready():
		case <-a.stopped:
			return
		}
		if err := a.node.SetStatus(membership.StatusRunning); err != nil {
			logger.Warn("gossip status update failed", "error", err)
		}
	}()
	logger.Info("agent running", "node", a.node.ID(), "http", httpAdvertise, "rpc", a.node.RPCAddr(), "gossip", a.node.GossipAddr(),
		"admin_tokens", cfg.AdminTokens.Len())
	return a, nil
}

// Node returns the agent's cluster node.
func (a *Agent) Node() *cluster.Node { return a.node }

// HTTPAddr returns the address the HTTP server listens on.
func (a *Agent) HTTPAddr() string { return a.httpLn.Addr().String() }

// Run blocks until ctx is cancelled (a signal) or the node was told to
// leave, then stops the agent. With leave-on-terminate, a signal makes the
// node leave the cluster first; otherwise it only shuts down, so a restart
// is not a membership change.
func (a *Agent) Run(ctx context.Context) error {
	select {
	case <-ctx.Done():
		a.drain(a.cfg.DrainGrace)
		if a.cfg.LeaveOnTerminate {
			lctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			err := a.node.Leave(lctx)
			cancel()
			if err != nil {
				a.logger.Error("leave failed", "error", err)
			}
		}
	case <-a.left:
	}
	return a.Close()
}

// drain hands this node's work over before it stops: it gossips that it
// is stopping (the leader moves its providers, other nodes stop sending it
// calls), refuses new requests, waits until it holds no provider and its
// in-flight calls are done, and hands raft leadership over. Everything
// within grace.
func (a *Agent) drain(grace time.Duration) {
	start := time.Now()
	deadline := start.Add(grace)
	a.logger.Info("draining", "grace", grace)
	if err := a.node.SetStatus(membership.StatusStopping); err != nil {
		a.logger.Warn("gossip status update failed", "error", err)
	}
	a.mcp.StartDrain()
	for time.Now().Before(deadline) {
		st := a.mcp.Stats()
		handedOver := !a.node.Holds() || !a.canHandOver()
		if handedOver && st.InFlight == 0 && st.Admitted == 0 && st.Queued == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st := a.mcp.Stats(); (a.node.Holds() && a.canHandOver()) || st.InFlight > 0 || st.Admitted > 0 {
		a.logger.Warn("grace period over with work left", "holds_providers", a.node.Holds(), "inflight", st.InFlight, "admitted", st.Admitted)
	}
	if err := a.node.TransferLeadership(); err != nil {
		a.logger.Warn("leadership not handed over", "error", err)
	}
	a.logger.Info("drained", "took", time.Since(start).Round(time.Millisecond))
}

// canHandOver reports whether another node could take this one's
// providers: one is alive and running, and a leader is there to assign.
func (a *Agent) canHandOver() bool {
	if id, _ := a.node.Leader(); id == "" {
		return false
	}
	for _, m := range a.node.Members() {
		if m.ID != a.node.ID() && m.State == membership.StateAlive && m.Status == membership.StatusRunning {
			return true
		}
	}
	return false
}

// Close stops the HTTP server and the node (without leaving).
func (a *Agent) Close() error {
	close(a.stopped)
	_ = a.node.SetStatus(membership.StatusStopping)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	a.mcp.CloseStreams(ctx)
	var herr error
	if err := a.httpSrv.Shutdown(ctx); err != nil {
		// Streams that outlive the grace (2026-07-28 listen streams) are cut.
		herr = a.httpSrv.Close()
	}
	if herr != nil {
		herr = fmt.Errorf("stop http server: %w", herr)
	}
	err := errors.Join(herr, a.mcp.Close(), a.node.Shutdown())
	// The last spans go out, within the same grace.
	tctx, tcancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer tcancel()
	err = errors.Join(err, a.tracing.shutdown(tctx))
	if a.tempDir != "" {
		os.RemoveAll(a.tempDir)
	}
	return err
}

// buildProviders turns the providers section into providers, the built-in
// tools first.
func buildProviders(cfgs []ProviderConfig, status mcp.StatusFunc, cache mcp.Cache, logger *slog.Logger) ([]mcp.ProviderSpec, error) {
	out := []mcp.ProviderSpec{{Provider: mcp.NewStatic(mcp.BuiltinName, append(mcp.BuiltinTools(status), mcp.CacheTools(cache)...)...)}}
	for _, pc := range cfgs {
		var (
			p   mcp.Provider
			err error
		)
		switch pc.Type {
		case "builtin":
			p = mcp.NewBuiltin(pc.Name, status)
		case "stdio":
			p, err = mcp.NewStdio(pc.Name, pc.Command, pc.Env, logger)
		case "http":
			p, err = mcp.NewHTTP(pc.Name, pc.URL, pc.Headers, logger)
		}
		if err != nil {
			return nil, err
		}
		out = append(out, mcp.ProviderSpec{
			Provider: mcp.WithPrefix(p, pc.Prefix),
			Placement: mcp.Placement{Replicas: pc.Replicas, CacheTTL: pc.CacheTTL, ToolCacheTTL: pc.ToolCacheTTL,
				SharedCache: pc.SharedCache, ToolSharedCache: pc.ToolSharedCache},
		})
	}
	return out, nil
}
