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
	"strconv"
	"sync"
	"time"

	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mcpcluster/mcpcluster/cluster"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// A forwarded call travels as HTTP on the peer's cluster port (never the
// MCP port): POST internalCallPath with a callRequest body. The holder
// answers 200 with newline-delimited frames, progress first and one final
// result or error, or a status before running anything (503: not a holder,
// 429: full; both safe to send elsewhere). Closing the request cancels the
// call on the holder.
const internalCallPath = "/v1/internal/call"

// maxForwardBody bounds a forwarded call's request and result frames.
const maxForwardBody = 16 << 20

type callRequest struct {
	Params    json.RawMessage `json:"params"`     // mcp CallToolParams
	TimeoutMS int64           `json:"timeout_ms"` // the caller's remaining time
	From      string          `json:"from"`
}

type callFrame struct {
	Progress *progressFrame  `json:"progress,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
	Error    *frameError     `json:"error,omitempty"`
}

type progressFrame struct {
	Progress float64 `json:"progress"`
	Total    float64 `json:"total,omitempty"`
	Message  string  `json:"message,omitempty"`
}

type frameError struct {
	Kind    string `json:"kind"` // errKind*
	Message string `json:"message"`
}

const (
	errKindFailed    = "failed"    // the tool's handler returned an error
	errKindTimeout   = "timeout"   // the caller's deadline passed on the holder
	errKindCancelled = "cancelled" // the caller went away
)

// Errors of routing a call.
var (
	ErrUnknownTool = errors.New("unknown tool")
	ErrNoHolder    = errors.New("no live holder")
	ErrNotHolder   = errors.New("node does not hold the tool's provider")
	ErrBusy        = errors.New("holder is busy")
)

// localRunner runs a call forwarded by another node, if this node holds
// the provider and has a free slot (else ErrNotHolder or ErrBusy).
type localRunner interface {
	runForwarded(ctx context.Context, params mcplib.CallToolParams) (*mcplib.CallToolResult, error)
}

// internalHandler serves forwarded calls on the cluster port.
type internalHandler struct {
	node   string
	run    localRunner
	logger *slog.Logger
	tracer trace.Tracer // nil without tracing
}

// startSpan opens the holder's server span of a forwarded call, a child
// of the forwarding node's client span (its context is in the headers).
func (h *internalHandler) startSpan(r *http.Request, from, tool string) (context.Context, trace.Span) {
	ctx := propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	attrs := append(networkAttrs(r),
		attribute.String(attrMethod, string(mcplib.MethodToolsCall)),
		attribute.String(attrToolName, tool),
		attribute.String(attrOperation, opExecuteTool),
		attribute.String(attrNode, h.node),
		attribute.String(attrForwardedFrom, from),
	)
	return h.tracer.Start(ctx, spanName(string(mcplib.MethodToolsCall), tool),
		trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(attrs...))
}

func (h *internalHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var errType, errDesc string // how the call ended, for its span
	if r.Method != http.MethodPost || r.URL.Path != internalCallPath {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	var req callRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxForwardBody)).Decode(&req); err != nil {
		http.Error(w, "bad forwarded call: "+err.Error(), http.StatusBadRequest)
		return
	}
	if peer, ok := cluster.PeerFromContext(r.Context()); ok && req.From != peer {
		http.Error(w, fmt.Sprintf("forwarded call from node %q claims to come from %q", peer, req.From), http.StatusForbidden)
		return
	}
	var params mcplib.CallToolParams
	if err := json.Unmarshal(req.Params, &params); err != nil {
		http.Error(w, "bad forwarded call params: "+err.Error(), http.StatusBadRequest)
		return
	}
	params.RawArguments = rawArguments(req.Params)
	ctx := r.Context()
	if h.tracer != nil {
		var span trace.Span
		ctx, span = h.startSpan(r, req.From, params.Name)
		defer func() { endSpan(span, errType, errDesc) }()
	}
	if req.TimeoutMS > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.TimeoutMS)*time.Millisecond)
		defer cancel()
	}

	// Progress frames stream (chunked, flushed each); a call without
	// progress is answered in one plain response.
	var (
		mu      sync.Mutex
		started bool
	)
	flusher, _ := w.(http.Flusher)
	write := func(f callFrame) {
		mu.Lock()
		defer mu.Unlock()
		b := encodeFrame(f)
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			if f.Progress == nil {
				w.Header().Set("Content-Length", strconv.Itoa(len(b)))
				w.WriteHeader(http.StatusOK)
				started = true
				_, _ = w.Write(b)
				return
			}
			w.WriteHeader(http.StatusOK)
			started = true
		}
		if _, err := w.Write(b); err == nil && f.Progress != nil && flusher != nil {
			flusher.Flush()
		}
	}
	ctx = withProgress(ctx, func(progress, total float64, message string) {
		write(callFrame{Progress: &progressFrame{Progress: progress, Total: total, Message: message}})
	})
	res, err := h.run.runForwarded(ctx, params)
	if errType = callErrorType(res, err); err != nil {
		errDesc = err.Error()
		h.logger.DebugContext(ctx, "forwarded call ended with an error", "tool", params.Name, "from", req.From, "error", err)
	}
	switch {
	case errors.Is(err, ErrNotHolder) || errors.Is(err, ErrUnknownTool):
		mu.Lock()
		sent := started
		mu.Unlock()
		if !sent {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		write(callFrame{Error: &frameError{Kind: errKindFailed, Message: err.Error()}})
	case errors.Is(err, ErrBusy):
		w.Header().Set("Retry-After", "1")
		http.Error(w, err.Error(), http.StatusTooManyRequests)
		return
	case err != nil && errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		write(callFrame{Error: &frameError{Kind: errKindTimeout, Message: err.Error()}})
	case err != nil && r.Context().Err() != nil:
		write(callFrame{Error: &frameError{Kind: errKindCancelled, Message: err.Error()}})
	case err != nil:
		write(callFrame{Error: &frameError{Kind: errKindFailed, Message: err.Error()}})
	default:
		b, merr := json.Marshal(res)
		if merr != nil {
			write(callFrame{Error: &frameError{Kind: errKindFailed, Message: "encode result: " + merr.Error()}})
			return
		}
		write(callFrame{Result: b})
	}
}

// encodeFrame is f as one line of JSON. A result frame is put together
// around the result's JSON as it is (it comes from json.Marshal): encoding
// it as a json.RawMessage would scan it all again.
func encodeFrame(f callFrame) []byte {
	if f.Result != nil && f.Progress == nil && f.Error == nil {
		b := make([]byte, 0, len(f.Result)+len(`{"result":}`)+1)
		b = append(b, `{"result":`...)
		b = append(b, f.Result...)
		return append(b, '}', '\n')
	}
	b, err := json.Marshal(f)
	if err != nil {
		b, _ = json.Marshal(callFrame{Error: &frameError{Kind: errKindFailed, Message: "encode frame: " + err.Error()}})
	}
	return append(b, '\n')
}

// rawArguments returns the "arguments" member of CallToolParams JSON, so
// large integers keep their precision across the hop.
func rawArguments(params json.RawMessage) json.RawMessage {
	var p struct {
		Arguments json.RawMessage `json:"arguments"`
	}
	if json.Unmarshal(params, &p) != nil {
		return nil
	}
	return p.Arguments
}

// forwarder sends calls to holders over pooled HTTP connections to their
// cluster ports.
type forwarder struct {
	node     string
	fromJSON []byte // node as a JSON string
	client   *http.Client
}

func newForwarder(node string, dial func(ctx context.Context, addr string) (net.Conn, error)) *forwarder {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return dial(ctx, addr)
		},
		MaxIdleConns:        1024,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     90 * time.Second,
		DisableCompression:  true,
	}
	from, _ := json.Marshal(node)
	return &forwarder{node: node, fromJSON: from, client: &http.Client{Transport: tr}}
}

// sendError says whether a failed forward may have run the call.
type sendError struct {
	err  error
	sent bool // the request reached the holder: it may have run
}

func (e *sendError) Error() string { return e.err.Error() }
func (e *sendError) Unwrap() error { return e.err }

// call forwards params to the holder at rpcAddr and relays its progress.
func (f *forwarder) call(ctx context.Context, rpcAddr string, params mcplib.CallToolParams) (*mcplib.CallToolResult, error) {
	pb, err := json.Marshal(params)
	if err != nil {
		return nil, fmt.Errorf("encode call: %w", err)
	}
	var timeoutMS int64
	if dl, ok := ctx.Deadline(); ok {
		timeoutMS = max(1, time.Until(dl).Milliseconds())
	}
	// A callRequest, put together around the params' JSON as it is (a
	// json.RawMessage field would be scanned all again).
	body := make([]byte, 0, len(pb)+len(f.fromJSON)+64)
	body = append(body, `{"params":`...)
	body = append(body, pb...)
	body = append(body, `,"timeout_ms":`...)
	body = strconv.AppendInt(body, timeoutMS, 10)
	body = append(body, `,"from":`...)
	body = append(body, f.fromJSON...)
	body = append(body, '}')
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+rpcAddr+internalCallPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hreq.Header.Set("Content-Type", "application/json")
	if trace.SpanContextFromContext(ctx).IsValid() {
		propagator.Inject(ctx, propagation.HeaderCarrier(hreq.Header))
	}
	resp, err := f.client.Do(hreq)
	if err != nil {
		// A refused or failed dial never reached the holder.
		var op *net.OpError
		sent := !(errors.As(err, &op) && op.Op == "dial")
		return nil, &sendError{err: fmt.Errorf("forward to %s: %w", rpcAddr, err), sent: sent}
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusServiceUnavailable:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, &sendError{err: fmt.Errorf("%w: %s: %s", ErrNotHolder, rpcAddr, bytes.TrimSpace(msg))}
	case http.StatusTooManyRequests:
		return nil, &sendError{err: fmt.Errorf("%w: %s", ErrBusy, rpcAddr)}
	default:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
		return nil, fmt.Errorf("forward to %s: %s: %s", rpcAddr, resp.Status, bytes.TrimSpace(msg))
	}
	dec := json.NewDecoder(io.LimitReader(resp.Body, maxForwardBody))
	for {
		// The result is decoded with its frame, in one pass.
		var fr struct {
			Progress *progressFrame         `json:"progress,omitempty"`
			Result   *mcplib.CallToolResult `json:"result,omitempty"`
			Error    *frameError            `json:"error,omitempty"`
		}
		if err := dec.Decode(&fr); err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			if ctx.Err() != nil {
				err = ctx.Err()
			}
			return nil, &sendError{err: fmt.Errorf("forward to %s: %w", rpcAddr, err), sent: true}
		}
		switch {
		case fr.Progress != nil:
			ReportProgress(ctx, fr.Progress.Progress, fr.Progress.Total, fr.Progress.Message)
		case fr.Error != nil:
			return nil, remoteError(fr.Error)
		case fr.Result != nil:
			return fr.Result, nil
		}
	}
}

func remoteError(e *frameError) error {
	switch e.Kind {
	case errKindTimeout:
		return fmt.Errorf("%w (on the holder): %s", context.DeadlineExceeded, e.Message)
	case errKindCancelled:
		return fmt.Errorf("%w (on the holder): %s", context.Canceled, e.Message)
	default:
		return errors.New(e.Message)
	}
}

func (f *forwarder) close() { f.client.CloseIdleConnections() }
