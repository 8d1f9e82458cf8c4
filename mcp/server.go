package mcp

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/cluster"
	"github.com/mcpcluster/mcpcluster/fsm"
	"github.com/mcpcluster/mcpcluster/membership"
	"go.opentelemetry.io/otel/trace"
)

// Cluster is what the MCP front door needs from its node.
type Cluster interface {
	ID() string
	FSM() *fsm.FSM
	Apply(ctx context.Context, cmd *fsm.Command) (*fsm.Result, error)
	ReadBarrier(ctx context.Context, level cluster.Consistency) (cluster.ReadInfo, error)
	// WaitApplied waits until this node has applied the log up to idx.
	WaitApplied(ctx context.Context, idx uint64) error
	Members() []membership.Member
	// ReportUnreachable tells the leader a node refused a connection.
	ReportUnreachable(id string)
	// SetLoad gossips the calls running on this node.
	SetLoad(inflight int) error
	// DialInternal connects to a peer's internal HTTP on its cluster
	// port (mutual TLS when the cluster has it).
	DialInternal(ctx context.Context, addr string) (net.Conn, error)
	Cache
}

// DefaultSessionMaxLifetime is how long a session lives at most.
const DefaultSessionMaxLifetime = 24 * time.Hour

// Version is reported to MCP clients as the server version.
var Version = "0.1.0"

// Config configures the MCP front door of one node.
type Config struct {
	Cluster   Cluster
	Providers []ProviderSpec
	Logger    *slog.Logger
	// SessionIdleTTL expires sessions not used for this long.
	SessionIdleTTL time.Duration
	// SessionMaxLifetime bounds a session's life however much it is used
	// (a deleted session's tombstone is kept this long at most).
	SessionMaxLifetime time.Duration
	// MaxBodyBytes bounds a request body (mcp-go reads bodies without a cap).
	MaxBodyBytes int64
	// CallTimeout bounds a tools/call, forwarding included.
	CallTimeout time.Duration
	// Tokens maps bearer tokens to principals; empty disables auth.
	Tokens map[string]string
	// SyncInterval is how often providers and the catalog are reconciled
	// besides on every replicated change.
	SyncInterval time.Duration
	// MaxConcurrent bounds the tools/call requests running at once through
	// this node's /mcp, and separately the calls other nodes forward here.
	MaxConcurrent int
	// MaxQueue bounds the tools/call requests waiting for a slot; beyond
	// it a request is refused at once (HTTP 429, Retry-After).
	MaxQueue int
	// ToolTimeouts overrides CallTimeout per tool.
	ToolTimeouts map[string]time.Duration
	// Observer, if set, is told about requests, calls and rejections.
	Observer Observer
	// OAuth, if set, makes /mcp take access tokens besides Tokens.
	OAuth *OAuthConfig
	// AllowedOrigins are the browser origins (scheme://host[:port]) that
	// may call /mcp; a request with another Origin gets 403.
	AllowedOrigins []string
	// AllowLoopbackOrigins also allows every http(s) origin on a loopback
	// host (the default when the node listens on loopback only).
	AllowLoopbackOrigins bool
	// ToolPolicy are CEL rules (see Policy); a tools/call is allowed when
	// any is true, and tools/list shows only such tools. Empty: no policy.
	ToolPolicy []string
	// RateLimits bounds the tools/call requests of each principal taken
	// by this node (HTTP 429 with Retry-After beyond). Nil: no limit.
	RateLimits *RateLimits
	// AuditLog is a file to append the audit records to, one JSON object
	// a line; empty: the records go to Logger at info ("audit").
	AuditLog string
	// AuditArguments puts each call's arguments in its audit record, cut
	// at MaxAuditArguments bytes.
	AuditArguments bool
	// Now is the clock of the rate limits; time.Now when nil.
	Now func() time.Time
	// TracerProvider, if set, traces requests, forwarded calls and calls
	// to upstream servers (see telemetry.go). Nil: no tracing, at no cost.
	TracerProvider trace.TracerProvider
}

// Observer receives what the front door does, for metrics.
type Observer interface {
	// Request is one MCP request: its JSON-RPC method, the tool for
	// tools/call, and whether it failed (an HTTP error or a failed call).
	Request(method, tool string, failed bool)
	// Call is one tools/call as routed: where is "local", "forwarded" or
	// "cache" (answered from the result cache).
	Call(tool, where string, d time.Duration, failed bool)
	// Rejected is a request refused before it ran: "busy", "draining",
	// "queue_timeout", "origin", "unauthorized", "policy" or "rate_limit".
	Rejected(reason string)
}

// OperationObserver is an Observer that also times every JSON-RPC request
// as the MCP semantic conventions' mcp.server.operation.duration: its
// method, the tool of a tools/call, and error.type ("" when it succeeded).
type OperationObserver interface {
	Operation(method, tool, errorType string, d time.Duration)
}

// Stats is the front door's load right now.
type Stats struct {
	InFlight int // calls running on this node (its clients' and forwarded ones)
	Admitted int // tools/call requests admitted through /mcp
	Queued   int // tools/call requests waiting for a slot
}

// DefaultConfig returns the defaults; Cluster must be set.
func DefaultConfig() Config {
	return Config{
		SessionIdleTTL:     30 * time.Minute,
		SessionMaxLifetime: DefaultSessionMaxLifetime,
		MaxBodyBytes:       1 << 20,
		CallTimeout:        5 * time.Second,
		SyncInterval:       2 * time.Second,
		MaxConcurrent:      100,
		MaxQueue:           100,
	}
}

// Server is a node's MCP front door.
type Server struct {
	cfg      Config
	node     string
	logger   *slog.Logger
	mcp      *server.MCPServer
	http     *server.StreamableHTTPServer
	sessions *sessionStore
	fwd      *forwarder
	local    map[string]*localProvider
	router   *router
	auth     *authenticator // nil without OAuth
	policy   *Policy        // nil without a tool policy
	limits   *rateLimiter   // nil without rate limits
	audit    *auditor
	origins  originPolicy
	tracer   trace.Tracer      // nil without tracing
	ops      OperationObserver // the Observer, if it times operations
	bg       sync.WaitGroup    // background loops besides syncLoop

	mu         sync.Mutex
	registered map[string]string // tool name → spec registered with mcp-go
	repeatable sync.Map          // tool name → bool: safe to send to another holder after a failure
	shared     sync.Map          // tool name → bool: cached results shared by all principals

	inflight atomic.Int64 // calls running on this node (local or for another node)
	front    *limiter     // tools/call requests of this node's clients
	exec     *limiter     // calls forwarded here by other nodes (no queue)
	draining atomic.Bool  // refusing new requests while handing over

	ready     chan struct{} // closed once providers are declared and the catalog registered
	readyOnce sync.Once
	declared  atomic.Bool    // this node's providers are in the replicated state
	closers   sync.WaitGroup // providers moved away, closing once their calls end

	stop chan struct{}
	done chan struct{}
}

// localProvider is a provider this node can run, and whether it runs now.
type localProvider struct {
	spec    ProviderSpec
	mu      sync.Mutex
	running bool // taking calls
	tools   map[string]bool
	// calls is how many calls are inside the provider; closing is set
	// while a provider moved away finishes them before it is closed.
	calls   int
	closing bool
	idle    chan struct{} // closed when calls reaches 0 while closing
}

// New builds the MCP front door and starts keeping its catalog in sync.
func New(cfg Config) (*Server, error) {
	if cfg.Cluster == nil {
		return nil, errors.New("mcp: no cluster")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	def := DefaultConfig()
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = def.MaxBodyBytes
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = def.CallTimeout
	}
	if cfg.SyncInterval <= 0 {
		cfg.SyncInterval = def.SyncInterval
	}
	if cfg.MaxConcurrent <= 0 {
		cfg.MaxConcurrent = def.MaxConcurrent
	}
	if cfg.MaxQueue < 0 {
		cfg.MaxQueue = def.MaxQueue
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	s := &Server{
		cfg:        cfg,
		node:       cfg.Cluster.ID(),
		logger:     cfg.Logger.With("component", "mcp"),
		local:      map[string]*localProvider{},
		registered: map[string]string{},
		ready:      make(chan struct{}),
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	for _, p := range cfg.Providers {
		if p.Provider == nil || p.Name() == "" {
			return nil, errors.New("mcp: provider without a name")
		}
		if _, dup := s.local[p.Name()]; dup {
			return nil, fmt.Errorf("mcp: provider %q declared twice", p.Name())
		}
		if p.Replicas < 0 {
			return nil, fmt.Errorf("mcp: provider %q: replicas must be >= 0", p.Name())
		}
		s.local[p.Name()] = &localProvider{spec: p}
	}
	if cfg.TracerProvider != nil {
		s.tracer = cfg.TracerProvider.Tracer(instrumentation, trace.WithInstrumentationVersion(Version))
	}
	s.ops, _ = cfg.Observer.(OperationObserver)
	s.origins = newOriginPolicy(cfg.AllowedOrigins, cfg.AllowLoopbackOrigins)
	if cfg.OAuth != nil {
		a, err := newAuthenticator(*cfg.OAuth, s.logger.With("component", "oauth"))
		if err != nil {
			return nil, err
		}
		s.auth = a
	}
	if len(cfg.ToolPolicy) > 0 {
		p, err := CompilePolicy(cfg.ToolPolicy)
		if err != nil {
			return nil, err
		}
		s.policy = p
	}
	lim, err := newRateLimiter(cfg.RateLimits, cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("mcp: %w", err)
	}
	s.limits = lim
	if s.audit, err = newAuditor(cfg.AuditLog, cfg.AuditArguments, cfg.Logger); err != nil {
		return nil, fmt.Errorf("mcp: %w", err)
	}
	s.front = newLimiter(cfg.MaxConcurrent, cfg.MaxQueue)
	s.exec = newLimiter(cfg.MaxConcurrent, 0)
	s.fwd = newForwarder(s.node, cfg.Cluster.DialInternal)
	s.router = &router{s: s}
	if cfg.SessionMaxLifetime <= 0 {
		cfg.SessionMaxLifetime = DefaultSessionMaxLifetime
		s.cfg.SessionMaxLifetime = cfg.SessionMaxLifetime
	}
	s.sessions = newSessionStore(cfg.Cluster, cfg.SessionIdleTTL, cfg.SessionMaxLifetime, s.logger, s.stop)
	opts := []server.ServerOption{server.WithToolCapabilities(true), server.WithRecovery()}
	if s.policy != nil {
		// mcp-go runs a filter on every call it serves: only with a policy.
		opts = append(opts, server.WithToolFilter(s.filterTools))
	}
	s.mcp = server.NewMCPServer("mcpcluster", Version, opts...)
	s.http = server.NewStreamableHTTPServer(s.mcp,
		server.WithEndpointPath("/mcp"),
		server.WithSessionIdManagerResolver(s.sessions),
		server.WithSessionIdleTTL(cfg.SessionIdleTTL),
		server.WithStreamableHTTPLogger(s.logger),
	)
	go s.syncLoop()
	s.bg.Add(2)
	go func() {
		defer s.bg.Done()
		s.sessions.run()
	}()
	go func() {
		defer s.bg.Done()
		s.sessions.runDeletes()
	}()
	if s.auth != nil {
		s.bg.Add(1)
		go func() {
			defer s.bg.Done()
			s.auth.run(s.stop)
		}()
	}
	return s, nil
}

// Handler serves MCP at /mcp: the Origin check, auth, the body limit, the
// check of the 2026-07-28 headers against the body, then for tools/call
// the tool policy, the principal's rate limits and admission (concurrency
// limit and bounded queue), all decided from the body, then mcp-go. Every
// tools/call gets an audit record, refused ones too.
func (s *Server) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.origins.allows(r.Header.Get("Origin")) {
			s.cfg.Observer.Rejected("origin")
			writeOriginRefusal(w)
			return
		}
		r, ok := s.authenticate(w, r)
		if !ok {
			s.cfg.Observer.Rejected("unauthorized")
			return
		}
		if r.Method != http.MethodPost || r.Body == nil {
			s.http.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, s.cfg.MaxBodyBytes+1))
		if err != nil {
			writeJSONRPCError(w, http.StatusBadRequest, mcplib.INVALID_REQUEST, "read body: "+err.Error())
			return
		}
		if int64(len(body)) > s.cfg.MaxBodyBytes {
			s.cfg.Observer.Request("", "", true)
			writeJSONRPCError(w, http.StatusRequestEntityTooLarge, mcplib.INVALID_REQUEST,
				fmt.Sprintf("request body exceeds the limit of %d bytes", s.cfg.MaxBodyBytes))
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		r.ContentLength = int64(len(body))
		msg := parseMessage(body)
		method, tool := msg.Method, msg.Params.Name
		if method == string(mcplib.MethodToolsCall) && tool != "" && !s.isRegistered(tool) {
			s.catchUpCatalog(r.Context(), tool)
		}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		w = sw
		var op *operation // a request (not a notification): timed, and traced when tracing is on
		if (s.tracer != nil || s.ops != nil) && method != "" && len(msg.ID) > 0 {
			sw.head = make([]byte, 0, 256)
			op = s.startOperation(r, msg)
			r = r.WithContext(op.ctx)
			defer op.end(sw)
		}
		var audit *callAudit // every tools/call is audited, refused ones too
		if method == string(mcplib.MethodToolsCall) {
			audit = s.startAudit(r, msg)
			r = r.WithContext(withTrace(r.Context(), audit.trace))
			if op != nil {
				op.call = audit.trace
			}
		}
		if isModern(r) {
			if err := checkHeaders(r, msg); err != nil {
				audit.refused("header_mismatch")
				s.cfg.Observer.Request(methodLabel(method), "", true)
				writeJSONRPCErrorID(w, http.StatusBadRequest, msg.ID, mcplib.HEADER_MISMATCH, err.Error())
				return
			}
		}
		// The annotations are built only when a policy will read them.
		if method == string(mcplib.MethodToolsCall) && s.policy != nil && !s.policy.allows(r.Context(), tool, s.toolAnnotations(tool)) {
			s.cfg.Observer.Rejected("policy")
			s.cfg.Observer.Request(method, "", true)
			audit.refused("policy")
			writeJSONRPCErrorID(w, http.StatusForbidden, msg.ID, policyDeniedCode,
				fmt.Sprintf("the tool policy does not allow %q to call %q", principalFrom(r.Context()), tool))
			return
		}
		if method == string(mcplib.MethodToolsCall) {
			if ok, wait := s.limits.allow(principalFrom(r.Context()), tool); !ok {
				s.cfg.Observer.Rejected("rate_limit")
				s.cfg.Observer.Request(method, "", true)
				audit.refused("rate_limit")
				writeRateLimited(w, msg.ID, principalFrom(r.Context()), tool, wait)
				return
			}
		}
		method = methodLabel(method)
		if isModern(r) && method == "notifications/cancelled" {
			// 2026-07-28 requests share one session, so mcp-go would match
			// the cancellation by JSON-RPC id alone and could cancel
			// another client's call. A modern client cancels by closing
			// its request, which cancels the call here and on the holder.
			w.WriteHeader(http.StatusAccepted)
			return
		}
		if s.draining.Load() {
			s.cfg.Observer.Rejected("draining")
			s.cfg.Observer.Request(method, tool, true)
			audit.refused("draining")
			w.Header().Set("Retry-After", "1")
			writeJSONRPCError(w, http.StatusServiceUnavailable, busyCode, "node is draining: send this request to another node")
			return
		}
		if method == string(mcplib.MethodToolsCall) {
			release, err := s.front.tryAcquire()
			if err != nil { // every slot taken: wait in the queue
				ctx, cancel := context.WithTimeout(r.Context(), s.timeout(tool))
				release, err = s.front.acquire(ctx)
				cancel()
			}
			switch {
			case errors.Is(err, ErrBusy):
				s.cfg.Observer.Rejected("busy")
				s.cfg.Observer.Request(method, tool, true)
				audit.refused("busy")
				w.Header().Set("Retry-After", "1")
				writeJSONRPCError(w, http.StatusTooManyRequests, busyCode,
					fmt.Sprintf("server busy: %d calls running and %d waiting; retry later or on another node", s.cfg.MaxConcurrent, s.cfg.MaxQueue))
				return
			case err != nil:
				s.cfg.Observer.Rejected("queue_timeout")
				s.cfg.Observer.Request(method, tool, true)
				audit.refused("queue_timeout")
				w.Header().Set("Retry-After", "1")
				writeJSONRPCError(w, http.StatusServiceUnavailable, busyCode,
					fmt.Sprintf("tool %q timed out after %s waiting for a free slot", tool, s.timeout(tool)))
				return
			}
			defer release()
		}
		s.http.ServeHTTP(sw, r)
		audit.served(sw.status)
		// The router records every call it runs; mcp-go answers calls of
		// tools it does not know before they reach it.
		if method != string(mcplib.MethodToolsCall) || !s.isRegistered(tool) {
			s.cfg.Observer.Request(method, tool, sw.status >= 400 || method == string(mcplib.MethodToolsCall))
		}
	})
}

// busyCode is the JSON-RPC error code of a refused request (the
// implementation-defined server error range).
const busyCode = -32000

// message is what the front door reads of a JSON-RPC request body: the
// method and, for tools/call, the tool. Admission, limits and policy decide
// from these, never from the client's Mcp-Method and Mcp-Name headers.
type message struct {
	ID     json.RawMessage `json:"id,omitempty"`
	Method string          `json:"method"`
	Params struct {
		Name      string          `json:"name"`
		Arguments json.RawMessage `json:"arguments"`
		// Read for spans only, and leniently: a value of another type is
		// mcp-go's to judge and must not hide the method from admission.
		URI             looseString `json:"uri"`             // resources/read
		ProtocolVersion looseString `json:"protocolVersion"` // initialize
		Meta            traceMeta   `json:"_meta"`           // the client's trace context
	} `json:"params"`
}

// parseMessage reads a body; a body that is not one JSON-RPC object (a
// response, a batch, garbage) has no method and goes to mcp-go as it is.
func parseMessage(body []byte) message {
	var msg message
	if json.Unmarshal(body, &msg) != nil {
		return message{}
	}
	return msg
}

// checkHeaders compares the 2026-07-28 Mcp-Method and Mcp-Name headers,
// where sent, with the body: a router may route by header, so a header
// the body contradicts is refused (the spec's 400, -32020). Missing
// headers are left to mcp-go, which requires them.
func checkHeaders(r *http.Request, msg message) error {
	if msg.Method == "" {
		return nil
	}
	if h := r.Header.Get(mcplib.HeaderMethod); h != "" && h != msg.Method {
		return fmt.Errorf("header %s %q does not match the body's method %q", mcplib.HeaderMethod, h, msg.Method)
	}
	if msg.Method != string(mcplib.MethodToolsCall) {
		return nil
	}
	if h := r.Header.Get(mcplib.HeaderName); h != "" {
		name, ok := mcplib.DecodeHeaderValue(h)
		if !ok || name != msg.Params.Name {
			return fmt.Errorf("header %s %q does not match the body's tool %q", mcplib.HeaderName, h, msg.Params.Name)
		}
	}
	return nil
}

// knownMethods are the JSON-RPC methods reported by name; any other is
// "other", so that clients cannot grow the metric series.
var knownMethods = map[string]bool{}

func init() {
	for _, m := range []mcplib.MCPMethod{
		mcplib.MethodInitialize, mcplib.MethodPing, mcplib.MethodToolsList, mcplib.MethodToolsCall,
		mcplib.MethodResourcesList, mcplib.MethodResourcesTemplatesList, mcplib.MethodResourcesRead,
		mcplib.MethodPromptsList, mcplib.MethodPromptsGet, mcplib.MethodSetLogLevel, mcplib.MethodCompletionComplete,
	} {
		knownMethods[string(m)] = true
	}
	for _, m := range []string{
		"server/discover", "resources/subscribe", "resources/unsubscribe",
		"notifications/initialized", "notifications/cancelled", "notifications/progress",
		"notifications/roots/list_changed", "notifications/message",
	} {
		knownMethods[m] = true
	}
}

// methodLabel bounds a method for metrics and logs: a known method, "" for
// a body without one, else "other".
func methodLabel(m string) string {
	if m == "" || knownMethods[m] {
		return m
	}
	return "other"
}

// MethodLabel is methodLabel for observers outside the package.
func MethodLabel(m string) string { return methodLabel(m) }

// statusWriter records the status mcp-go answered with, and the start of
// the body, where a JSON-RPC error shows its code.
type statusWriter struct {
	http.ResponseWriter
	status int
	head   []byte // the start of the body, kept only when not nil
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.head != nil && len(w.head) < cap(w.head) {
		w.head = append(w.head, b[:min(len(b), cap(w.head)-len(w.head))]...)
	}
	return w.ResponseWriter.Write(b)
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (s *Server) isRegistered(tool string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.registered[tool]
	return ok
}

// timeout is how long a call of tool may take.
func (s *Server) timeout(tool string) time.Duration {
	if d, ok := s.cfg.ToolTimeouts[tool]; ok && d > 0 {
		return d
	}
	return s.cfg.CallTimeout
}

// StartDrain makes the front door refuse new requests (HTTP 503 with
// Retry-After), so that clients and load balancers move on; calls already
// running, and calls other nodes forward while the handover is under way,
// still complete.
func (s *Server) StartDrain() { s.draining.Store(true) }

// Stats returns the front door's load.
func (s *Server) Stats() Stats {
	return Stats{InFlight: int(s.inflight.Load()), Admitted: s.front.inUse(), Queued: s.front.queued()}
}

type nopObserver struct{}

func (nopObserver) Request(string, string, bool)             {}
func (nopObserver) Call(string, string, time.Duration, bool) {}
func (nopObserver) Rejected(string)                          {}

// isModern reports whether r speaks protocol 2026-07-28 or later
// (stateless: no initialize, no session).
func isModern(r *http.Request) bool {
	v := r.Header.Get("Mcp-Protocol-Version")
	return v >= mcplib.ProtocolVersion20260728
}

func writeJSONRPCError(w http.ResponseWriter, status, code int, msg string) {
	writeJSONRPCErrorID(w, status, nil, code, msg)
}

// writeJSONRPCErrorID answers with a JSON-RPC error for request id (null
// when nil).
func writeJSONRPCErrorID(w http.ResponseWriter, status int, id json.RawMessage, code int, msg string) {
	if len(id) == 0 {
		id = json.RawMessage("null")
	}
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": id, "error": map[string]any{"code": code, "message": msg}})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

// InternalHandler serves forwarded calls; mount it on the cluster port only.
func (s *Server) InternalHandler() http.Handler {
	return &internalHandler{node: s.node, run: s, logger: s.logger, tracer: s.tracer}
}

// CloseStreams ends the long-lived streams of this node's clients (GET
// streams of 2025-11-25 sessions), so the HTTP server can stop. The
// sessions themselves stay in the cluster: the clients resume them on
// another node.
func (s *Server) CloseStreams(ctx context.Context) { s.http.CloseSessions(ctx) }

// Close stops the sync loop and every running provider.
func (s *Server) Close() error {
	select {
	case <-s.stop:
		return nil
	default:
	}
	close(s.stop)
	<-s.done
	s.bg.Wait()
	s.closers.Wait() // providers moved away: closed now
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.http.Shutdown(ctx)
	s.fwd.close()
	errs := []error{s.audit.close()}
	for _, lp := range s.local {
		lp.mu.Lock()
		if lp.running {
			errs = append(errs, lp.spec.Close())
			lp.running = false
		}
		lp.mu.Unlock()
	}
	return errors.Join(errs...)
}

// syncLoop keeps this node's side of the catalog in step with the
// replicated state: it declares the providers it can run, runs those
// assigned to it, publishes their tools, and registers every cluster tool
// with mcp-go (which notifies clients when the list changes).
func (s *Server) syncLoop() {
	defer close(s.done)
	changes, unsubscribe := s.cfg.Cluster.FSM().Subscribe()
	defer unsubscribe()
	ticker := time.NewTicker(s.cfg.SyncInterval)
	defer ticker.Stop()
	loadTicker := time.NewTicker(loadInterval)
	defer loadTicker.Stop()
	gossiped := int64(0)
	declared := false
	var declaredAt uint64 // the index of the declaration, once committed
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		go func() {
			select {
			case <-s.stop:
				cancel()
			case <-ctx.Done():
			}
		}()
		// Declare again whenever the replicated state lost the declaration
		// (removed by the dead-server timeout, a data wipe, a restore) once
		// this node's replica has caught up with the last one.
		if declared && s.cfg.Cluster.FSM().LastIndex() >= declaredAt && !s.declaredInFSM() {
			s.logger.Info("this node's providers are missing from the replicated state; declaring them again")
			declared = false
		}
		if !declared {
			if idx, err := s.declare(ctx); err != nil {
				s.logger.Debug("providers not declared yet", "error", err)
			} else {
				declared, declaredAt = true, idx
			}
		}
		s.declared.Store(declared)
		s.syncProviders(ctx)
		s.syncTools()
		s.sessions.forget()
		cancel()
		if declared && s.everywhereRegistered() {
			s.readyOnce.Do(func() { close(s.ready) })
		}
		for waiting := true; waiting; {
			select {
			case <-s.stop:
				return
			case <-changes:
				waiting = false
			case <-ticker.C:
				waiting = false
			case <-loadTicker.C:
				if cur := s.inflight.Load(); cur != gossiped {
					if err := s.cfg.Cluster.SetLoad(int(cur)); err == nil {
						gossiped = cur
					}
				}
			}
		}
	}
}

// loadInterval is how often a changed in-flight count is gossiped.
const loadInterval = time.Second

// Ready is closed once this node has declared its providers and registered
// the catalog with its tools in mcp-go: from then on its clients see the
// cluster's tools.
func (s *Server) Ready() <-chan struct{} { return s.ready }

// ReadyErr is nil once Ready is closed and while this node's providers
// are declared in the replicated state, else the reason.
func (s *Server) ReadyErr() error {
	select {
	case <-s.ready:
	default:
		return errors.New("mcp catalog not in sync yet")
	}
	if !s.declared.Load() {
		return errors.New("this node's providers are not declared in the replicated state yet")
	}
	return nil
}

// declaredInFSM reports whether the replicated state lists this node as
// declaring every one of its providers.
func (s *Server) declaredInFSM() bool {
	f := s.cfg.Cluster.FSM()
	for name := range s.local {
		p, ok := f.Provider(name)
		if !ok || !containsString(p.Nodes, s.node) {
			return false
		}
	}
	return true
}

// everywhereRegistered reports whether every tool of the providers that
// run on every node, this one included, is registered with mcp-go.
func (s *Server) everywhereRegistered() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, lp := range s.local {
		if lp.spec.Replicas != 0 {
			continue
		}
		lp.mu.Lock()
		running, tools := lp.running, lp.tools
		lp.mu.Unlock()
		if !running || tools == nil {
			return false
		}
		for name := range tools {
			if _, ok := s.registered[name]; !ok {
				return false
			}
		}
	}
	return true
}

// declare tells the cluster which providers this node can run, and
// returns the index of the command that did.
func (s *Server) declare(ctx context.Context) (uint64, error) {
	provs := make([]fsm.Provider, 0, len(s.local))
	for name, lp := range s.local {
		provs = append(provs, fsm.Provider{Name: name, Replicas: lp.spec.Replicas, CacheTTL: int64(lp.spec.CacheTTL)})
	}
	res, err := s.cfg.Cluster.Apply(ctx, &fsm.Command{Type: fsm.TypeProviders, NodeID: s.node, Providers: provs})
	if err != nil {
		return 0, err
	}
	return res.Index, nil
}

// assigned reports whether this node should run provider name now.
func (s *Server) assigned(name string) bool {
	lp, ok := s.local[name]
	if !ok {
		return false
	}
	if lp.spec.Replicas == 0 {
		return true
	}
	a, ok := s.cfg.Cluster.FSM().Assignment(name)
	return ok && containsString(a.Holders, s.node)
}

// syncProviders starts the providers assigned here, stops the others, and
// publishes the tools of those running.
func (s *Server) syncProviders(ctx context.Context) {
	f := s.cfg.Cluster.FSM()
	for name, lp := range s.local {
		want := s.assigned(name)
		lp.mu.Lock()
		switch {
		case want && !lp.running:
			if err := lp.spec.Start(ctx); err != nil {
				s.logger.Warn("provider failed to start", "provider", name, "error", err)
				lp.mu.Unlock()
				continue
			}
			lp.running = true
			s.logger.Info("provider running here", "provider", name)
		case want && !lp.running && lp.closing:
			// Moved back while its last calls finish: started again once closed.
		case !want && lp.running && lp.spec.Replicas > 0:
			// Moved away: take no new call (callers go to the new holder),
			// finish those inside, then close.
			lp.running, lp.tools, lp.closing = false, nil, true
			lp.idle = make(chan struct{})
			if lp.calls == 0 {
				close(lp.idle)
			}
			s.logger.Info("provider no longer assigned here; finishing its calls", "provider", name, "calls", lp.calls)
			s.closers.Add(1)
			go s.closeWhenIdle(name, lp, lp.idle)
		}
		running := lp.running
		lp.mu.Unlock()
		if !running {
			continue
		}
		if _, ok := f.Provider(name); !ok {
			continue // not declared yet
		}
		tools, err := lp.spec.Tools(ctx)
		if err != nil {
			s.logger.Warn("provider failed to list tools", "provider", name, "error", err)
			continue
		}
		if err := s.publish(ctx, name, tools, lp); err != nil {
			s.logger.Warn("publishing tools failed", "provider", name, "error", err)
		}
	}
}

// publish replicates a provider's tool list when it differs from the catalog.
func (s *Server) publish(ctx context.Context, provider string, tools []mcplib.Tool, lp *localProvider) error {
	have := map[string]fsm.Tool{}
	for _, t := range s.cfg.Cluster.FSM().Tools() {
		if t.Provider == provider {
			have[t.Name] = t
		}
	}
	names := make(map[string]bool, len(tools))
	var out []fsm.Tool
	same := len(have) == len(tools)
	for _, t := range tools {
		if lp.spec.sharedCache(t.Name) {
			t.Meta = markShared(t.Meta)
		}
		spec, err := toolJSON(t)
		if err != nil {
			return err
		}
		names[t.Name] = true
		ttl := int64(lp.spec.ToolCacheTTL[t.Name])
		out = append(out, fsm.Tool{Name: t.Name, Spec: spec, CacheTTL: ttl})
		if cur := have[t.Name]; string(cur.Spec) != string(spec) || cur.CacheTTL != ttl { // both specs are json.Marshal output
			same = false
		}
	}
	lp.mu.Lock()
	lp.tools = names
	lp.mu.Unlock()
	if same {
		return nil
	}
	res, err := s.cfg.Cluster.Apply(ctx, &fsm.Command{Type: fsm.TypeCatalogPut, Provider: provider, Tools: out})
	if err != nil {
		return err
	}
	if err := res.Err(); err != nil {
		s.logger.Warn("some tools not published", "provider", provider, "error", err)
	}
	return nil
}

// syncTools registers every catalog tool with mcp-go and removes the rest.
func (s *Server) syncTools() {
	s.mu.Lock()
	defer s.mu.Unlock()
	catalog := s.cfg.Cluster.FSM().Tools()
	var add []server.ServerTool
	seen := make(map[string]bool, len(catalog))
	for _, ct := range catalog {
		seen[ct.Name] = true
		if s.registered[ct.Name] == string(ct.Spec) {
			continue
		}
		t, err := toolFromJSON(ct.Spec)
		if err != nil {
			s.logger.Warn("catalog tool not usable", "tool", ct.Name, "error", err)
			continue
		}
		t.Name = ct.Name
		var shared bool
		t.Meta, shared = takeShared(t.Meta)
		add = append(add, server.ServerTool{Tool: t, Handler: s.router.handle})
		s.registered[ct.Name] = string(ct.Spec)
		s.repeatable.Store(ct.Name, safeToRepeat(t))
		s.shared.Store(ct.Name, shared)
	}
	var del []string
	for name := range s.registered {
		if !seen[name] {
			del = append(del, name)
			delete(s.registered, name)
			s.repeatable.Delete(name)
			s.shared.Delete(name)
		}
	}
	if len(add) > 0 {
		s.mcp.AddTools(add...)
	}
	if len(del) > 0 {
		s.mcp.DeleteTools(del...)
	}
}

// catchUpCatalog registers tool before a call of it when the catalog has
// it but the sync loop has not registered it yet, or when this node has
// not applied it yet (a client may call a tool the moment another node
// lists it). An unknown tool costs one read barrier.
func (s *Server) catchUpCatalog(ctx context.Context, tool string) {
	if _, _, ok := s.cfg.Cluster.FSM().ToolProvider(tool); !ok {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := s.cfg.Cluster.ReadBarrier(ctx, cluster.Default)
		cancel()
		if _, _, ok = s.cfg.Cluster.FSM().ToolProvider(tool); err != nil || !ok {
			return // not a catalog tool: mcp-go answers it
		}
	}
	s.syncTools()
}

// runForwarded runs a call another node forwarded here, within this
// node's limit for forwarded calls (no queue: a full node answers ErrBusy
// and the caller tries another holder).
func (s *Server) runForwarded(ctx context.Context, params mcplib.CallToolParams) (*mcplib.CallToolResult, error) {
	release, err := s.exec.acquire(ctx)
	if err != nil {
		s.cfg.Observer.Rejected("busy")
		return nil, err
	}
	defer release()
	return s.runLocal(ctx, params)
}

// runLocal runs a call here if this node runs the tool's provider.
func (s *Server) runLocal(ctx context.Context, params mcplib.CallToolParams) (*mcplib.CallToolResult, error) {
	provider, _, ok := s.cfg.Cluster.FSM().ToolProvider(params.Name)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownTool, params.Name)
	}
	lp, ok := s.local[provider]
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrNotHolder, provider)
	}
	lp.mu.Lock()
	if !lp.running {
		lp.mu.Unlock()
		return nil, fmt.Errorf("%w: %s is not running here", ErrNotHolder, provider)
	}
	lp.calls++
	lp.mu.Unlock()
	defer func() {
		lp.mu.Lock()
		if lp.calls--; lp.calls == 0 && lp.closing {
			close(lp.idle)
		}
		lp.mu.Unlock()
	}()
	s.inflight.Add(1)
	defer s.inflight.Add(-1)
	res, err := lp.spec.Call(ctx, mcplib.CallToolRequest{Request: mcplib.Request{Method: string(mcplib.MethodToolsCall)}, Params: params})
	if err != nil || res == nil {
		return res, err
	}
	return ranOn(res, s.node), nil
}

// closeWhenIdle closes a provider moved away from this node once its calls
// are done, or after the longest call timeout, or when the server stops.
func (s *Server) closeWhenIdle(name string, lp *localProvider, idle chan struct{}) {
	defer s.closers.Done()
	t := time.NewTimer(s.longestTimeout())
	defer t.Stop()
	finished := true
	select {
	case <-idle:
	case <-t.C:
		finished = false
	case <-s.stop:
		finished = false
	}
	lp.mu.Lock()
	defer lp.mu.Unlock()
	if err := lp.spec.Close(); err != nil {
		s.logger.Warn("provider failed to stop", "provider", name, "error", err)
	}
	lp.closing = false
	if finished {
		s.logger.Info("provider no longer assigned here, stopped after its calls", "provider", name)
	} else {
		s.logger.Warn("provider closed with calls still inside", "provider", name, "calls", lp.calls)
	}
}

// longestTimeout is the longest a call may take here.
func (s *Server) longestTimeout() time.Duration {
	d := s.cfg.CallTimeout
	for _, t := range s.cfg.ToolTimeouts {
		d = max(d, t)
	}
	return d
}

func containsString(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}
