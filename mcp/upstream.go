package mcp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	neturl "net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	"go.opentelemetry.io/otel/attribute"
)

// upstreamProtocol is the version mcpcluster speaks to upstream servers:
// the latest with sessions, which every current server understands, with
// no discovery round trip on start.
const upstreamProtocol = mcplib.ProtocolVersion20251125

// upstream is a provider backed by another MCP server: a command speaking
// MCP on stdio (started while the provider runs on this node, restarted if
// it dies) or a server at an HTTP URL.
type upstream struct {
	name    string
	dial    func() (*client.Client, error)
	logger  *slog.Logger
	nextTok atomic.Uint64

	mu     sync.Mutex
	c      *client.Client
	closed bool

	progMu   sync.Mutex
	progress map[string]ProgressFunc // upstream progress token → sink

	spanAttrs []attribute.KeyValue // where the upstream is, for its client spans
}

// NewStdio returns a provider that runs command (argv) as an MCP server on
// stdio. The command dies with the node.
//
// The command does not inherit the node's environment, which holds the
// node's secrets (MCPCLUSTER_ADMIN_TOKEN, MCPCLUSTER_ENCRYPT,
// MCPCLUSTER_AUTH_TOKENS, ...): it gets the node's values of the few
// variables in inheritedEnv, then env (KEY=VALUE entries declared for the
// provider; a declared entry wins over an inherited one). A declared
// MCPCLUSTER_* entry is passed, since the operator wrote it for this
// provider, and logged as a warning; nothing else named MCPCLUSTER_* ever
// is.
func NewStdio(name string, command []string, env []string, logger *slog.Logger) (Provider, error) {
	if len(command) == 0 || command[0] == "" {
		return nil, fmt.Errorf("provider %q: empty command", name)
	}
	childEnv, err := upstreamEnv(os.Environ(), env)
	if err != nil {
		return nil, fmt.Errorf("provider %q: %w", name, err)
	}
	u := newUpstream(name, logger)
	u.spanAttrs = append(u.spanAttrs, attribute.String(attrTransport, "pipe"))
	for _, kv := range env {
		if strings.HasPrefix(kv, nodeEnvPrefix) {
			k, _, _ := strings.Cut(kv, "=")
			u.logger.Warn("provider env declares a variable of the node's own; the upstream gets it", "name", k)
		}
	}
	u.dial = func() (*client.Client, error) {
		tr := transport.NewStdioWithOptions(command[0], childEnv, command[1:],
			transport.WithCommandFunc(func(ctx context.Context, cmd string, env []string, args []string) (*exec.Cmd, error) {
				c := exec.CommandContext(ctx, cmd, args...)
				c.Env = append([]string{}, env...) // never nil: nil would inherit the node's environment
				c.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
				return c, nil
			}),
			transport.WithCommandStderrWriter(&logWriter{logger: u.logger}),
		)
		if err := tr.Start(context.Background()); err != nil {
			return nil, fmt.Errorf("start %s: %w", command[0], err)
		}
		return client.NewClient(tr, client.WithProtocolVersion(upstreamProtocol)), nil
	}
	return u, nil
}

// inheritedEnv names the variables a stdio upstream gets from the node's
// environment, where set: what a program needs to find binaries, its home,
// its user, locale, time zone and temporary directory.
var inheritedEnv = []string{"PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR", "SHELL", "TERM"}

// nodeEnvPrefix starts the names of the node's own variables.
const nodeEnvPrefix = "MCPCLUSTER_"

// upstreamEnv returns the environment of a stdio upstream: the inheritedEnv
// variables of environ (the node's), then declared, each KEY=VALUE; a
// declared key replaces an inherited one, and a later declared entry an
// earlier one. The result is never nil.
func upstreamEnv(environ, declared []string) ([]string, error) {
	keys := map[string]bool{}
	for _, kv := range declared {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("env entry %q is not KEY=VALUE", kv)
		}
		keys[k] = true
	}
	out := []string{}
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if slices.Contains(inheritedEnv, k) && !keys[k] {
			out = append(out, kv)
		}
	}
	for i, kv := range declared {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.ContainsFunc(declared[i+1:], func(later string) bool { return strings.HasPrefix(later, k+"=") }) {
			out = append(out, kv)
		}
	}
	return out, nil
}

// NewHTTP returns a provider backed by the MCP server at url (streamable
// HTTP), sending headers with every request.
func NewHTTP(name, url string, headers map[string]string, logger *slog.Logger) (Provider, error) {
	if !strings.HasPrefix(url, "http://") && !strings.HasPrefix(url, "https://") {
		return nil, fmt.Errorf("provider %q: url %q is not http(s)", name, url)
	}
	u := newUpstream(name, logger)
	if pu, err := neturl.Parse(url); err == nil {
		host := pu.Host
		if pu.Port() == "" {
			host = net.JoinHostPort(pu.Hostname(), map[string]string{"http": "80", "https": "443"}[pu.Scheme])
		}
		u.spanAttrs = append(append(u.spanAttrs, serverAttrs(host)...), attribute.String(attrTransport, "tcp"), attribute.String(attrProtoName, "http"))
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 90 * time.Second}}
	u.dial = func() (*client.Client, error) {
		tr, err := transport.NewStreamableHTTP(url, transport.WithHTTPBasicClient(hc), transport.WithHTTPHeaders(headers))
		if err != nil {
			return nil, fmt.Errorf("connect %s: %w", url, err)
		}
		return client.NewClient(tr, client.WithProtocolVersion(upstreamProtocol)), nil
	}
	return u, nil
}

func newUpstream(name string, logger *slog.Logger) *upstream {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &upstream{name: name, logger: logger.With("provider", name), progress: map[string]ProgressFunc{},
		spanAttrs: []attribute.KeyValue{attribute.String(attrProvider, name)}}
}

func (u *upstream) Name() string { return u.name }

// Start connects (for a command: starts it) and initializes the session.
func (u *upstream) Start(ctx context.Context) error {
	u.mu.Lock()
	u.closed = false
	u.mu.Unlock()
	_, err := u.client(ctx)
	return err
}

// client returns the live client, connecting anew if there is none.
func (u *upstream) client(ctx context.Context) (*client.Client, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.closed {
		return nil, fmt.Errorf("%w: provider %s is stopped", ErrNotHolder, u.name)
	}
	if u.c != nil {
		return u.c, nil
	}
	c, err := u.dial()
	if err != nil {
		return nil, err
	}
	c.OnNotification(u.onNotification)
	if err := c.Start(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("start client: %w", err)
	}
	init := mcplib.InitializeRequest{}
	init.Params.ProtocolVersion = upstreamProtocol
	init.Params.ClientInfo = mcplib.Implementation{Name: "mcpcluster", Version: Version}
	if _, err := c.Initialize(ctx, init); err != nil {
		c.Close()
		return nil, fmt.Errorf("initialize upstream %s: %w", u.name, err)
	}
	u.c = c
	u.logger.Info("upstream connected")
	return c, nil
}

// broken drops a client whose transport failed, so the next use reconnects
// (a command that died is started again).
func (u *upstream) broken(c *client.Client, err error) {
	if !errors.Is(err, transport.ErrTransportClosed) && !isConnError(err) {
		return
	}
	u.mu.Lock()
	if u.c == c {
		u.c = nil
	}
	u.mu.Unlock()
	c.Close()
	u.logger.Warn("upstream connection lost; it will be restarted", "error", err)
}

func isConnError(err error) bool {
	s := err.Error()
	return strings.Contains(s, "connection refused") || strings.Contains(s, "broken pipe") || strings.Contains(s, "EOF")
}

func (u *upstream) Tools(ctx context.Context) ([]mcplib.Tool, error) {
	c, err := u.client(ctx)
	if err != nil {
		return nil, err
	}
	res, err := c.ListTools(ctx, mcplib.ListToolsRequest{})
	if err != nil {
		u.broken(c, err)
		return nil, fmt.Errorf("list tools of %s: %w", u.name, err)
	}
	return res.Tools, nil
}

func (u *upstream) Call(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
	c, err := u.client(ctx)
	if err != nil {
		return nil, err
	}
	req.Params.Meta = nil
	if fn, ok := ctx.Value(progressKey{}).(ProgressFunc); ok && fn != nil {
		tok := fmt.Sprintf("mcpcluster-%d", u.nextTok.Add(1))
		u.progMu.Lock()
		u.progress[tok] = fn
		u.progMu.Unlock()
		defer func() {
			u.progMu.Lock()
			delete(u.progress, tok)
			u.progMu.Unlock()
		}()
		req.Params.Meta = &mcplib.Meta{ProgressToken: tok}
	}
	// The upstream's span: its context goes to the upstream in _meta.
	ctx, span := startCallSpan(ctx, req.Params.Name, u.spanAttrs...)
	if span != nil {
		req.Params.Meta = injectMeta(ctx, req.Params.Meta)
	}
	res, err := c.CallTool(ctx, req)
	endCallSpan(span, res, err)
	if err != nil {
		u.broken(c, err)
		return nil, fmt.Errorf("upstream %s: %w", u.name, err)
	}
	return res, nil
}

// onNotification relays upstream progress to the call it belongs to.
func (u *upstream) onNotification(n mcplib.JSONRPCNotification) {
	if n.Method != "notifications/progress" {
		return
	}
	f := n.Params.AdditionalFields
	tok := fmt.Sprint(f["progressToken"])
	u.progMu.Lock()
	fn := u.progress[tok]
	u.progMu.Unlock()
	if fn == nil {
		return
	}
	num := func(k string) float64 {
		v, _ := f[k].(float64)
		return v
	}
	msg, _ := f["message"].(string)
	fn(num("progress"), num("total"), msg)
}

func (u *upstream) Close() error {
	u.mu.Lock()
	c := u.c
	u.c, u.closed = nil, true
	u.mu.Unlock()
	if c == nil {
		return nil
	}
	err := c.Close()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return nil // a stopped command exits non-zero on its signal
	}
	return err
}

// logWriter writes an upstream command's stderr lines to the node's log.
type logWriter struct{ logger *slog.Logger }

func (w *logWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		if line != "" {
			w.logger.Info("upstream stderr", "line", line)
		}
	}
	return len(p), nil
}

// prefixed exposes a provider's tools under prefix+name.
type prefixed struct {
	Provider
	prefix string
}

// WithPrefix renames every tool of p to prefix+name, so that providers
// with clashing tool names can live in one cluster.
func WithPrefix(p Provider, prefix string) Provider {
	if prefix == "" {
		return p
	}
	return &prefixed{Provider: p, prefix: prefix}
}

func (p *prefixed) Tools(ctx context.Context) ([]mcplib.Tool, error) {
	tools, err := p.Provider.Tools(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]mcplib.Tool, len(tools))
	for i, t := range tools {
		t.Name = p.prefix + t.Name
		out[i] = t
	}
	return out, nil
}

func (p *prefixed) Call(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
	name, ok := strings.CutPrefix(req.Params.Name, p.prefix)
	if !ok {
		return nil, fmt.Errorf("%w: %s", ErrUnknownTool, req.Params.Name)
	}
	req.Params.Name = name
	return p.Provider.Call(ctx, req)
}
