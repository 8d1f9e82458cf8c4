package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/fsm"
	"github.com/mcpcluster/mcpcluster/membership"
)

// Status is what /v1/status reports about a node and its view of the cluster.
type Status struct {
	Node       string         `json:"node"`
	Leader     LeaderInfo     `json:"leader"`
	Raft       RaftStats      `json:"raft"`
	Servers    []ServerInfo   `json:"servers"`
	Members    []MemberStatus `json:"members"`
	Voters     VoterStatus    `json:"voters"`
	FSM        fsm.Counts     `json:"fsm"`
	Ready      bool           `json:"ready"`
	ReadyError string         `json:"ready_error,omitempty"`
}

// LeaderInfo names the current leader.
type LeaderInfo struct {
	ID       string `json:"id"`
	RPCAddr  string `json:"rpc_addr"`
	HTTPAddr string `json:"http_addr,omitempty"`
}

// ServerInfo is one entry of the raft configuration.
type ServerInfo struct {
	ID       string `json:"id"`
	Address  string `json:"address"`
	Suffrage string `json:"suffrage"`
	Healthy  bool   `json:"healthy"` // alive in gossip and reachable, as this node sees it
	Zone     string `json:"zone,omitempty"`
}

// VoterStatus sums up the voter set: how many voters and non-voters there
// are, how many voters the cluster would have if every alive member could
// vote (odd, at most max_voters), and a warning when it has fewer.
type VoterStatus struct {
	Voters        int      `json:"voters"`
	HealthyVoters int      `json:"healthy_voters"`
	Nonvoters     int      `json:"nonvoters"`
	MaxVoters     int      `json:"max_voters"`
	Wanted        int      `json:"wanted"`
	Pinned        []string `json:"pinned_nonvoting,omitempty"` // alive members started with --voter=false
	Warning       string   `json:"warning,omitempty"`
}

// MemberStatus is one gossip member with its status and load.
type MemberStatus struct {
	ID       string `json:"id"`
	HTTPAddr string `json:"http_addr"`
	RPCAddr  string `json:"rpc_addr"`
	Gossip   string `json:"gossip_addr"`
	State    string `json:"state"`
	Status   string `json:"status"`
	InFlight int    `json:"inflight"`
	Capacity int    `json:"capacity"`
	Zone     string `json:"zone,omitempty"`
	NoVote   bool   `json:"nonvoting,omitempty"` // started with --voter=false
}

// Status returns the node's view of the cluster.
func (n *Node) Status() Status {
	st := Status{Node: n.id, Raft: n.RaftStats(), FSM: n.fsm.Counts()}
	st.Leader.ID, st.Leader.RPCAddr = n.Leader()
	members := n.members.Members()
	zones := make(map[string]string, len(members))
	alive := 0
	for _, m := range members {
		st.Members = append(st.Members, MemberStatus{
			ID: m.ID, HTTPAddr: m.HTTPAddr, RPCAddr: m.RPCAddr, Gossip: m.GossipAddr,
			State: string(m.State), Status: string(m.Status), InFlight: m.InFlight, Capacity: m.Capacity,
			Zone: m.Zone, NoVote: m.NoVote,
		})
		zones[m.ID] = m.Zone
		if m.ID == st.Leader.ID {
			st.Leader.HTTPAddr = m.HTTPAddr
		}
		if m.State == membership.StateAlive {
			alive++
			if m.NoVote {
				st.Voters.Pinned = append(st.Voters.Pinned, m.ID)
			}
		}
	}
	if servers, err := n.Servers(); err == nil {
		for _, s := range servers {
			info := ServerInfo{ID: string(s.ID), Address: string(s.Address), Suffrage: s.Suffrage.String(),
				Healthy: n.voterHealthy(string(s.ID)), Zone: zones[string(s.ID)]}
			st.Servers = append(st.Servers, info)
			if s.Suffrage == raft.Voter {
				st.Voters.Voters++
				if info.Healthy {
					st.Voters.HealthyVoters++
				}
			} else {
				st.Voters.Nonvoters++
			}
		}
	}
	st.Voters.MaxVoters = n.cfg.MaxVoters
	st.Voters.Wanted = oddVoters(min(alive, n.cfg.MaxVoters))
	if st.Voters.HealthyVoters < st.Voters.Wanted {
		st.Voters.Warning = fmt.Sprintf("%d healthy voters, fewer than the %d wanted for %d alive members", st.Voters.HealthyVoters, st.Voters.Wanted, alive)
		if len(st.Voters.Pinned) > 0 {
			st.Voters.Warning += "; pinned non-voting (--voter=false): " + strings.Join(st.Voters.Pinned, ", ")
		}
	}
	if err := n.Ready(); err != nil {
		st.ReadyError = err.Error()
	} else {
		st.Ready = true
	}
	return st
}

// APIConfig configures the admin HTTP API.
type APIConfig struct {
	// OnLeave runs after a successful POST /v1/agent/leave (the agent exits).
	OnLeave func()
	// Ready, if set, must also return nil for the node to be ready (the
	// MCP front door's catalog is in sync).
	Ready func() error
	// Tokens, if not empty, guard every /v1/ endpoint: a request needs
	// "Authorization: Bearer <token>" with a token of the endpoint's level
	// (401 without a known token, 403 with a read token on a write
	// endpoint). Nil or empty leaves the API open (loopback experiments).
	// /healthz and /readyz are always open.
	Tokens *Tokens
	Logger *slog.Logger
}

// DefaultAPIConfig returns the API defaults.
func DefaultAPIConfig() APIConfig { return APIConfig{} }

// API serves the node's admin endpoints: /healthz and /readyz (open), the
// reads /v1/status, /v1/fsm/hash, /v1/catalog, /v1/cache (list) and
// /v1/cache/{key}, and the writes PUT and DELETE /v1/cache/{key},
// /v1/agent/leave, /v1/agent/snapshot, /v1/agent/transfer-leadership,
// the keyring operations under /v1/operator/keyring, GET
// /v1/operator/raft/peers and POST /v1/operator/raft/remove-peer, GET (save) and
// PUT (restore) /v1/snapshot, and GET /v1/events.
type API struct {
	n   *Node
	cfg APIConfig
	mux *http.ServeMux
}

// NewAPI returns the admin API of n.
func NewAPI(n *Node, cfg APIConfig) *API {
	if cfg.Logger == nil {
		cfg.Logger = n.logger
	}
	a := &API{n: n, cfg: cfg, mux: http.NewServeMux()}
	// Probes stay open: load balancers and orchestrators hold no token.
	a.mux.HandleFunc("GET /healthz", a.healthz)
	a.mux.HandleFunc("GET /readyz", a.readyz)

	a.handle("GET /v1/status", AccessRead, a.status)
	a.handle("GET /v1/fsm/hash", AccessRead, a.hash)
	a.handle("GET /v1/catalog", AccessRead, a.catalog)
	a.handle("GET /v1/cache", AccessRead, a.cacheList)
	a.handle("GET /v1/cache/{key...}", AccessRead, a.cacheGet)

	a.handle("PUT /v1/cache/{key...}", AccessWrite, a.cacheSet)
	a.handle("DELETE /v1/cache/{key...}", AccessWrite, a.cacheDelete)
	a.handle("POST /v1/agent/leave", AccessWrite, a.leave)
	a.handle("POST /v1/agent/snapshot", AccessWrite, a.snapshot)
	a.handle("POST /v1/agent/transfer-leadership", AccessWrite, a.transferLeadership)
	a.keyringRoutes()
	a.snapshotRoutes()
	a.raftRoutes()
	a.eventRoutes()
	return a
}

// Handle registers an admin endpoint under pattern (an http.ServeMux
// pattern with a method, under /v1/) that needs a token of level when the
// API has tokens. Every /v1/ endpoint goes through here, so none can be
// added without a level.
func (a *API) Handle(pattern string, level AccessLevel, h http.Handler) {
	method, path, ok := strings.Cut(pattern, " ")
	if !ok || method == "" || !strings.HasPrefix(strings.TrimSpace(path), "/v1/") {
		panic(fmt.Sprintf("cluster: admin route %q needs a method and a /v1/ path", pattern))
	}
	a.mux.Handle(pattern, a.Protect(level, h))
}

func (a *API) handle(pattern string, level AccessLevel, h http.HandlerFunc) {
	a.Handle(pattern, level, h)
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) { a.mux.ServeHTTP(w, r) }

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, map[string]string{"error": err.Error()})
}

func (a *API) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok", "node": a.n.id})
}

// ready is the node's readiness with the API's own condition.
func (a *API) ready() error {
	if err := a.n.Ready(); err != nil {
		return err
	}
	if a.cfg.Ready != nil {
		return a.cfg.Ready()
	}
	return nil
}

func (a *API) readyz(w http.ResponseWriter, _ *http.Request) {
	if err := a.ready(); err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready", "node": a.n.id})
}

func (a *API) status(w http.ResponseWriter, _ *http.Request) {
	st := a.n.Status()
	if err := a.ready(); err != nil {
		st.Ready, st.ReadyError = false, err.Error()
	}
	writeJSON(w, http.StatusOK, st)
}

func (a *API) hash(w http.ResponseWriter, _ *http.Request) {
	h, err := a.n.fsm.Hash()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"hash": h, "applied_index": a.n.raft.AppliedIndex(), "fsm_index": a.n.fsm.LastIndex()})
}

// Catalog is what /v1/catalog reports: every tool with its provider,
// placement and current holders.
type Catalog struct {
	Tools     []CatalogTool  `json:"tools"`
	Providers []fsm.Provider `json:"providers"`
}

// CatalogTool is one tool of the catalog.
type CatalogTool struct {
	Name     string   `json:"name"`
	Provider string   `json:"provider"`
	Replicas int      `json:"replicas"` // 0: everywhere
	Holders  []string `json:"holders"`
}

func (a *API) catalog(w http.ResponseWriter, r *http.Request) {
	level, err := ParseConsistency(r.URL.Query().Get("consistency"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	info, err := a.n.ReadBarrier(r.Context(), level)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	setReadHeaders(w, info)
	f := a.n.fsm
	c := Catalog{Providers: f.Providers(), Tools: []CatalogTool{}}
	for _, t := range f.Tools() {
		ct := CatalogTool{Name: t.Name, Provider: t.Provider, Holders: []string{}}
		if p, ok := f.Provider(t.Provider); ok {
			ct.Replicas = p.Replicas
		}
		if as, ok := f.Assignment(t.Provider); ok && as.Holders != nil {
			ct.Holders = as.Holders
		}
		c.Tools = append(c.Tools, ct)
	}
	writeJSON(w, http.StatusOK, c)
}

// writeCacheError answers a failed cache request: 400 for bad input,
// 503 when the cluster could not answer.
func writeCacheError(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrInvalid) {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	writeError(w, http.StatusServiceUnavailable, err)
}

func setReadHeaders(w http.ResponseWriter, info ReadInfo) {
	w.Header().Set("X-Mcpcluster-Consistency", string(info.Level))
	w.Header().Set("X-Mcpcluster-Node", info.Node)
	w.Header().Set("X-Mcpcluster-Index", strconv.FormatUint(info.Index, 10))
}

func consistencyParam(w http.ResponseWriter, r *http.Request) (Consistency, bool) {
	level, err := ParseConsistency(r.URL.Query().Get("consistency"))
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return "", false
	}
	return level, true
}

func (a *API) cacheGet(w http.ResponseWriter, r *http.Request) {
	level, ok := consistencyParam(w, r)
	if !ok {
		return
	}
	e, info, err := a.n.CacheGet(r.Context(), r.PathValue("key"), level)
	switch {
	case errors.Is(err, fsm.ErrNotFound):
		setReadHeaders(w, info)
		writeError(w, http.StatusNotFound, err)
		return
	case err != nil:
		writeCacheError(w, err)
		return
	}
	setReadHeaders(w, info)
	w.Header().Set("X-Mcpcluster-Version", strconv.FormatUint(e.Version, 10))
	if e.ExpiresAt != 0 {
		w.Header().Set("X-Mcpcluster-Expires", time.Unix(0, e.ExpiresAt).UTC().Format(time.RFC3339Nano))
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write(e.Value)
}

// CacheListEntry is one entry of GET /v1/cache (Value is base64 in JSON).
type CacheListEntry struct {
	Key       string `json:"key"`
	Value     []byte `json:"value"`
	Version   uint64 `json:"version"`
	ExpiresAt int64  `json:"expires_at,omitempty"`
}

func (a *API) cacheList(w http.ResponseWriter, r *http.Request) {
	level, ok := consistencyParam(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	limit := 100
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("limit %q is not a number", s))
			return
		}
		limit = n
	}
	entries, info, err := a.n.CacheList(r.Context(), q.Get("prefix"), q.Get("after"), limit, level)
	if err != nil {
		writeCacheError(w, err)
		return
	}
	setReadHeaders(w, info)
	out := make([]CacheListEntry, len(entries))
	for i, e := range entries {
		out[i] = CacheListEntry{Key: e.Key, Value: e.Value, Version: e.Version, ExpiresAt: e.ExpiresAt}
	}
	writeJSON(w, http.StatusOK, map[string]any{"entries": out})
}

// writeOptions parses ?ttl=, ?cas= and ?old= of a cache write.
func writeOptions(r *http.Request) (SetOptions, error) {
	q := r.URL.Query()
	var opt SetOptions
	if s := q.Get("ttl"); s != "" {
		ttl, err := time.ParseDuration(s)
		if err != nil || ttl <= 0 {
			return opt, fmt.Errorf("%w: ttl %q must be a positive duration such as 30s", ErrInvalid, s)
		}
		opt.TTL = ttl
	}
	if s := q.Get("cas"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return opt, fmt.Errorf("%w: cas %q is not a version number", ErrInvalid, s)
		}
		opt.CAS = &v
	}
	if q.Has("old") {
		opt.CompareValue, opt.OldValue = true, []byte(q.Get("old"))
	}
	return opt, nil
}

// writeResult answers a cache write from its fsm.Result.
func writeResult(w http.ResponseWriter, res *fsm.Result) {
	switch {
	case errors.Is(res.Err(), fsm.ErrCASMismatch):
		writeJSON(w, http.StatusConflict, map[string]any{"error": "cas mismatch", "version": res.Version})
	case errors.Is(res.Err(), fsm.ErrNotFound):
		writeJSON(w, http.StatusNotFound, map[string]any{"error": "not found"})
	default:
		writeJSON(w, http.StatusOK, map[string]any{"version": res.Version, "index": res.Index, "evicted": res.Removed})
	}
}

func (a *API) cacheSet(w http.ResponseWriter, r *http.Request) {
	opt, err := writeOptions(r)
	if err != nil {
		writeCacheError(w, err)
		return
	}
	limit := int64(a.n.cfg.Cache.MaxValueBytes)
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("cache value exceeds the maximum of %d bytes", limit))
			return
		}
		writeError(w, http.StatusBadRequest, fmt.Errorf("read body: %w", err))
		return
	}
	res, err := a.n.CacheSet(r.Context(), r.PathValue("key"), body, opt)
	if err != nil {
		writeCacheError(w, err)
		return
	}
	writeResult(w, res)
}

func (a *API) cacheDelete(w http.ResponseWriter, r *http.Request) {
	opt, err := writeOptions(r)
	if err != nil {
		writeCacheError(w, err)
		return
	}
	res, err := a.n.CacheDelete(r.Context(), r.PathValue("key"), opt)
	if err != nil {
		writeCacheError(w, err)
		return
	}
	writeResult(w, res)
}

func (a *API) snapshot(w http.ResponseWriter, _ *http.Request) {
	info, err := a.n.Snapshot()
	if err != nil {
		writeError(w, http.StatusInternalServerError, err)
		return
	}
	writeJSON(w, http.StatusOK, info)
}

// transferLeadership moves raft leadership away from this node (?to=ID
// picks the voter), e.g. before maintenance.
func (a *API) transferLeadership(w http.ResponseWriter, r *http.Request) {
	if err := a.n.TransferLeadershipTo(r.URL.Query().Get("to")); err != nil {
		writeError(w, http.StatusConflict, err)
		return
	}
	id, _ := a.n.Leader()
	writeJSON(w, http.StatusOK, map[string]string{"leader": id})
}

func (a *API) leave(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := a.n.Leave(ctx); err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, ErrQuorum) {
			code = http.StatusConflict
		}
		writeError(w, code, fmt.Errorf("leave: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "left", "node": a.n.id})
	if a.cfg.OnLeave != nil {
		a.cfg.OnLeave()
	}
}
