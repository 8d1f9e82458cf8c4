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
	"time"

	"github.com/mcpcluster/mcpcluster/fsm"
)

// Status is what /v1/status reports about a node and its view of the cluster.
type Status struct {
	Node       string         `json:"node"`
	Leader     LeaderInfo     `json:"leader"`
	Raft       RaftStats      `json:"raft"`
	Servers    []ServerInfo   `json:"servers"`
	Members    []MemberStatus `json:"members"`
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
}

// Status returns the node's view of the cluster.
func (n *Node) Status() Status {
	st := Status{Node: n.id, Raft: n.RaftStats(), FSM: n.fsm.Counts()}
	st.Leader.ID, st.Leader.RPCAddr = n.Leader()
	if servers, err := n.Servers(); err == nil {
		for _, s := range servers {
			st.Servers = append(st.Servers, ServerInfo{ID: string(s.ID), Address: string(s.Address), Suffrage: s.Suffrage.String()})
		}
	}
	for _, m := range n.members.Members() {
		st.Members = append(st.Members, MemberStatus{
			ID: m.ID, HTTPAddr: m.HTTPAddr, RPCAddr: m.RPCAddr, Gossip: m.GossipAddr,
			State: string(m.State), Status: string(m.Status), InFlight: m.InFlight, Capacity: m.Capacity,
		})
		if m.ID == st.Leader.ID {
			st.Leader.HTTPAddr = m.HTTPAddr
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
	// MaxKeyBytes bounds cache keys; MaxValueBytes bounds cache values.
	MaxKeyBytes   int
	MaxValueBytes int64
	// OnLeave runs after a successful POST /v1/agent/leave (the agent exits).
	OnLeave func()
	// Ready, if set, must also return nil for the node to be ready (the
	// MCP front door's catalog is in sync).
	Ready  func() error
	Logger *slog.Logger
}

// DefaultAPIConfig returns the API defaults.
func DefaultAPIConfig() APIConfig {
	return APIConfig{MaxKeyBytes: 512, MaxValueBytes: 1 << 20}
}

// API serves the node's admin endpoints: /healthz, /readyz, /v1/status,
// /v1/fsm/hash, /v1/cache/{key} and /v1/agent/leave.
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
	a.mux.HandleFunc("GET /healthz", a.healthz)
	a.mux.HandleFunc("GET /readyz", a.readyz)
	a.mux.HandleFunc("GET /v1/status", a.status)
	a.mux.HandleFunc("GET /v1/fsm/hash", a.hash)
	a.mux.HandleFunc("GET /v1/catalog", a.catalog)
	a.mux.HandleFunc("GET /v1/cache/{key...}", a.cacheGet)
	a.mux.HandleFunc("PUT /v1/cache/{key...}", a.cacheSet)
	a.mux.HandleFunc("DELETE /v1/cache/{key...}", a.cacheDelete)
	a.mux.HandleFunc("POST /v1/agent/leave", a.leave)
	return a
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

func (a *API) key(w http.ResponseWriter, r *http.Request) (string, bool) {
	key := r.PathValue("key")
	switch {
	case key == "":
		writeError(w, http.StatusBadRequest, errors.New("empty cache key"))
		return "", false
	case len(key) > a.cfg.MaxKeyBytes:
		writeError(w, http.StatusBadRequest, fmt.Errorf("cache key is %d bytes, the maximum is %d", len(key), a.cfg.MaxKeyBytes))
		return "", false
	}
	return key, true
}

func setReadHeaders(w http.ResponseWriter, info ReadInfo) {
	w.Header().Set("X-Mcpcluster-Consistency", string(info.Level))
	w.Header().Set("X-Mcpcluster-Node", info.Node)
	w.Header().Set("X-Mcpcluster-Index", strconv.FormatUint(info.Index, 10))
}

func (a *API) cacheGet(w http.ResponseWriter, r *http.Request) {
	key, ok := a.key(w, r)
	if !ok {
		return
	}
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
	e, found := a.n.fsm.CacheGet(key, time.Now().UnixNano())
	if !found {
		writeError(w, http.StatusNotFound, fmt.Errorf("cache key %q not found", key))
		return
	}
	w.Header().Set("X-Mcpcluster-Version", strconv.FormatUint(e.Version, 10))
	if e.ExpiresAt != 0 {
		w.Header().Set("X-Mcpcluster-Expires", time.Unix(0, e.ExpiresAt).UTC().Format(time.RFC3339Nano))
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	_, _ = w.Write(e.Value)
}

// writeTarget validates the key and ?cas= (absent → nil) of a cache write,
// answering 400 itself when they are bad.
func (a *API) writeTarget(w http.ResponseWriter, r *http.Request) (string, *uint64, bool) {
	key, ok := a.key(w, r)
	if !ok {
		return "", nil, false
	}
	s := r.URL.Query().Get("cas")
	if s == "" {
		return key, nil, true
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Errorf("cas %q is not a version number", s))
		return "", nil, false
	}
	return key, &v, true
}

// writeResult answers a cache write from its fsm.Result.
func writeResult(w http.ResponseWriter, res *fsm.Result) {
	switch {
	case errors.Is(res.Err(), fsm.ErrCASMismatch):
		writeJSON(w, http.StatusConflict, map[string]any{"error": "cas mismatch", "version": res.Version})
	case errors.Is(res.Err(), fsm.ErrNotFound):
		writeJSON(w, http.StatusNotFound, map[string]any{"error": "not found"})
	default:
		writeJSON(w, http.StatusOK, map[string]any{"version": res.Version, "index": res.Index})
	}
}

func (a *API) cacheSet(w http.ResponseWriter, r *http.Request) {
	key, cas, ok := a.writeTarget(w, r)
	if !ok {
		return
	}
	now := time.Now()
	cmd := &fsm.Command{Type: fsm.TypeCacheSet, Key: key, CAS: cas, Now: now.UnixNano()}
	if s := r.URL.Query().Get("ttl"); s != "" {
		ttl, err := time.ParseDuration(s)
		if err != nil || ttl <= 0 {
			writeError(w, http.StatusBadRequest, fmt.Errorf("ttl %q must be a positive duration such as 30s", s))
			return
		}
		cmd.ExpiresAt = now.Add(ttl).UnixNano()
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, a.cfg.MaxValueBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			writeError(w, http.StatusRequestEntityTooLarge, fmt.Errorf("cache value exceeds the maximum of %d bytes", a.cfg.MaxValueBytes))
			return
		}
		writeError(w, http.StatusBadRequest, fmt.Errorf("read body: %w", err))
		return
	}
	cmd.Value = body
	res, err := a.n.Apply(r.Context(), cmd)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	writeResult(w, res)
}

func (a *API) cacheDelete(w http.ResponseWriter, r *http.Request) {
	key, cas, ok := a.writeTarget(w, r)
	if !ok {
		return
	}
	res, err := a.n.Apply(r.Context(), &fsm.Command{Type: fsm.TypeCacheDelete, Key: key, CAS: cas})
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, err)
		return
	}
	writeResult(w, res)
}

func (a *API) leave(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), 30*time.Second)
	defer cancel()
	if err := a.n.Leave(ctx); err != nil {
		writeError(w, http.StatusInternalServerError, fmt.Errorf("leave: %w", err))
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "left", "node": a.n.id})
	if a.cfg.OnLeave != nil {
		a.cfg.OnLeave()
	}
}
