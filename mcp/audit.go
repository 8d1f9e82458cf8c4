package mcp

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel/trace"
)

// AuditRecord is one line of the audit log: one per tools/call taken by
// this node's /mcp, run, failed or refused.
type AuditRecord struct {
	Time      time.Time       `json:"time"`      // when the call ended or was refused
	Principal string          `json:"principal"` // "" without auth
	Tool      string          `json:"tool"`
	Session   string          `json:"session,omitempty"` // Mcp-Session-Id (2025-11-25 clients)
	ID        json.RawMessage `json:"id"`                // the JSON-RPC request id
	Node      string          `json:"node"`              // the node that took the call
	// TraceID and SpanID are the call's server span when tracing is on.
	TraceID string `json:"trace_id,omitempty"`
	SpanID  string `json:"span_id,omitempty"`
	// Route is local, forwarded or cache; RanOn is the node that ran the
	// tool (empty when answered from the cache or not run).
	Route      string  `json:"route,omitempty"`
	RanOn      string  `json:"ran_on,omitempty"`
	DurationMS float64 `json:"duration_ms"`
	// Outcome is ok, error (the tool failed or the call could not be
	// routed) or refused (Reason: policy, rate_limit, busy, draining,
	// queue_timeout, header_mismatch).
	Outcome string `json:"outcome"`
	Reason  string `json:"reason,omitempty"`
	Error   string `json:"error,omitempty"`
	// Arguments is the call's arguments as compact JSON text, only with
	// AuditArguments, cut at MaxAuditArguments bytes (then Truncated).
	Arguments string `json:"arguments,omitempty"`
	Truncated bool   `json:"arguments_truncated,omitempty"`
}

// MaxAuditArguments bounds the arguments kept in an audit record.
const MaxAuditArguments = 1024

// maxAuditError bounds the error text of an audit record.
const maxAuditError = 256

// Audit outcomes.
const (
	auditOK      = "ok"
	auditError   = "error"
	auditRefused = "refused"
)

// auditor writes audit records to a file, one JSON object a line, or
// without a file to the node's log at info with the message "audit".
type auditor struct {
	logger    *slog.Logger
	arguments bool

	mu   sync.Mutex // serializes writes to file
	file io.WriteCloser
}

// newAuditor opens path for appending (created 0600) when it is set.
func newAuditor(path string, arguments bool, logger *slog.Logger) (*auditor, error) {
	a := &auditor{logger: logger, arguments: arguments}
	if path == "" {
		return a, nil
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open audit log: %w", err)
	}
	a.file = f
	return a, nil
}

// write records rec.
func (a *auditor) write(rec *AuditRecord) {
	if a.file == nil {
		a.log(rec)
		return
	}
	b, err := json.Marshal(rec)
	if err != nil {
		a.logger.Warn("audit record not encoded", "error", err)
		return
	}
	a.mu.Lock()
	_, err = a.file.Write(append(b, '\n'))
	a.mu.Unlock()
	if err != nil {
		a.logger.Warn("audit record not written", "error", err, "tool", rec.Tool, "principal", rec.Principal)
	}
}

// log writes rec to the node's log; with --log-format json it is one JSON
// line whose time is the log record's.
func (a *auditor) log(rec *AuditRecord) {
	if !a.logger.Enabled(context.Background(), slog.LevelInfo) {
		return
	}
	var id any
	if json.Unmarshal(rec.ID, &id) != nil {
		id = nil
	}
	attrs := []slog.Attr{
		slog.String("principal", rec.Principal), slog.String("tool", rec.Tool),
		slog.String("session", rec.Session), slog.Any("id", id), slog.String("node", rec.Node),
		slog.String("route", rec.Route), slog.String("ran_on", rec.RanOn),
		slog.Float64("duration_ms", rec.DurationMS), slog.String("outcome", rec.Outcome),
	}
	if rec.TraceID != "" {
		attrs = append(attrs, slog.String("trace_id", rec.TraceID), slog.String("span_id", rec.SpanID))
	}
	if rec.Reason != "" {
		attrs = append(attrs, slog.String("reason", rec.Reason))
	}
	if rec.Error != "" {
		attrs = append(attrs, slog.String("error", rec.Error))
	}
	if a.arguments {
		attrs = append(attrs, slog.String("arguments", rec.Arguments), slog.Bool("arguments_truncated", rec.Truncated))
	}
	a.logger.LogAttrs(context.Background(), slog.LevelInfo, "audit", attrs...)
}

// close closes the file, if any.
func (a *auditor) close() error {
	if a == nil || a.file == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.file.Close(); err != nil {
		return fmt.Errorf("close audit log: %w", err)
	}
	return nil
}

// callAudit follows one tools/call through the front door to its record.
type callAudit struct {
	a     *auditor
	start time.Time
	rec   AuditRecord
	trace *callTrace
	done  bool
}

// startAudit begins the record of a tools/call request.
func (s *Server) startAudit(r *http.Request, msg message) *callAudit {
	c := &callAudit{a: s.audit, start: time.Now(), trace: &callTrace{}}
	c.rec = AuditRecord{
		Principal: principalFrom(r.Context()),
		Tool:      msg.Params.Name,
		Session:   r.Header.Get("Mcp-Session-Id"),
		ID:        msg.ID,
		Node:      s.node,
	}
	if len(c.rec.ID) == 0 {
		c.rec.ID = json.RawMessage("null")
	}
	if sc := trace.SpanContextFromContext(r.Context()); sc.IsValid() {
		c.rec.TraceID, c.rec.SpanID = sc.TraceID().String(), sc.SpanID().String()
	}
	if s.audit.arguments && len(msg.Params.Arguments) > 0 {
		c.rec.Arguments, c.rec.Truncated = auditArguments(msg.Params.Arguments)
	}
	return c
}

// auditArguments returns raw as compact JSON text of at most
// MaxAuditArguments bytes (cut on a UTF-8 boundary), and whether it was cut.
func auditArguments(raw json.RawMessage) (string, bool) {
	var buf bytes.Buffer
	b := []byte(raw)
	if json.Compact(&buf, raw) == nil {
		b = buf.Bytes()
	}
	if len(b) <= MaxAuditArguments {
		return string(b), false
	}
	n := MaxAuditArguments
	for n > 0 && !utf8.RuneStart(b[n]) {
		n--
	}
	return string(b[:n]), true
}

// refused records a call refused before it ran.
func (c *callAudit) refused(reason string) {
	if c == nil || c.done {
		return
	}
	c.rec.Outcome, c.rec.Reason = auditRefused, reason
	c.finish()
}

// served records a call mcp-go answered (with HTTP status).
func (c *callAudit) served(status int) {
	if c == nil || c.done {
		return
	}
	t := c.trace.snapshot()
	c.rec.Route, c.rec.RanOn = t.where, t.ranOn
	switch {
	case !t.ran:
		// mcp-go answered without running it: an unknown tool, invalid
		// parameters, a session it refused.
		c.rec.Outcome = auditError
		c.rec.Error = fmt.Sprintf("not run: the MCP server answered with HTTP %d", status)
	case t.failed:
		c.rec.Outcome, c.rec.Error = auditError, t.err
	default:
		c.rec.Outcome = auditOK
	}
	c.finish()
}

func (c *callAudit) finish() {
	c.done = true
	now := time.Now()
	c.rec.Time = now.UTC()
	c.rec.DurationMS = float64(now.Sub(c.start).Microseconds()) / 1000
	c.a.write(&c.rec)
}

// callTrace is what routing tells the audit and the metrics about a
// tools/call: where it ran and how it ended. mcp-go may run the handler in
// another goroutine, hence the lock.
type callTrace struct {
	mu     sync.Mutex
	ran    bool   // the router handled the call
	where  string // local, forwarded or cache
	ranOn  string // the node that ran the tool
	failed bool
	err    string
}

type traceKey struct{}

// withTrace returns ctx carrying t.
func withTrace(ctx context.Context, t *callTrace) context.Context {
	return context.WithValue(ctx, traceKey{}, t)
}

func traceFrom(ctx context.Context) *callTrace {
	t, _ := ctx.Value(traceKey{}).(*callTrace)
	return t
}

// setRoute records where the call under ctx runs now.
func setRoute(ctx context.Context, where, node string) {
	if t := traceFrom(ctx); t != nil {
		t.mu.Lock()
		t.where, t.ranOn = where, node
		t.mu.Unlock()
	}
}

// end records how the call ended.
func (t *callTrace) end(failed bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ran, t.failed = true, failed
	switch {
	case err != nil:
		t.err = truncate(err.Error(), maxAuditError)
	case failed:
		t.err = "the tool returned an error result"
	}
}

// traceView is a copy of a callTrace's fields.
type traceView struct {
	ran, failed       bool
	where, ranOn, err string
}

func (t *callTrace) snapshot() traceView {
	t.mu.Lock()
	defer t.mu.Unlock()
	return traceView{ran: t.ran, failed: t.failed, where: t.where, ranOn: t.ranOn, err: t.err}
}

func (t *callTrace) route() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.where
}

// truncate cuts s to at most n bytes on a UTF-8 boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}
