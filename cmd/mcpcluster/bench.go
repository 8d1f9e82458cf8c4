package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/cluster"
	"github.com/mcpcluster/mcpcluster/mcp"
)

const benchUsage = `Usage: mcpcluster bench [flags]         one scenario against running nodes
       mcpcluster bench suite [flags]   the standard set on a local 3-node cluster it starts (make bench)
       mcpcluster bench tls-cost [flags]   the cost of security: a plain and a secured local cluster, side by side

Scenarios (--scenario): call (a tool), cache-set, cache-get, session-init,
failover (a fixed-rate stream of --op while --kill-pid is killed after --kill-after).
`

// benchConfig is one bench run.
type benchConfig struct {
	name        string
	targets     []string // node HTTP base URLs
	scenario    string
	op          string // failover: the operation streamed (call or cache-set)
	tool        string
	args        map[string]any
	protocol    string
	concurrency int
	duration    time.Duration
	calls       int
	rate        float64
	consistency string
	valueSize   int
	timeout     time.Duration
	killPID     int
	killAfter   time.Duration
	baseline    bool
	token       cluster.Token // admin API token of the cache scenarios
	progress    io.Writer     // live progress line; nil for none
}

func parseBenchFlags(args []string, stderr io.Writer) (benchConfig, bool, error) {
	var c benchConfig
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	var targets, argsJSON string
	fs.StringVar(&targets, "targets", "127.0.0.1:8700", "comma-separated node HTTP addresses; clients are spread over them")
	fs.StringVar(&c.scenario, "scenario", "call", "call, cache-set, cache-get, session-init or failover")
	fs.StringVar(&c.op, "op", "call", "failover: the operation to stream, call or cache-set")
	fs.StringVar(&c.tool, "tool", "echo", "call: the tool")
	fs.StringVar(&argsJSON, "args", `{"text":"hello"}`, "call: the tool's arguments as a JSON object")
	fs.StringVar(&c.protocol, "protocol", legacyProtocol, "MCP protocol version: 2025-11-25 or 2026-07-28")
	fs.IntVar(&c.concurrency, "concurrency", 16, "concurrent clients (closed loop) or the most in flight (fixed rate)")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "how long to run (unless --calls)")
	fs.IntVar(&c.calls, "calls", 0, "run this many operations instead of a duration")
	fs.Float64Var(&c.rate, "rate", 0, "operations per second, open loop (0: closed loop; failover defaults to 200)")
	fs.StringVar(&c.consistency, "consistency", "linearizable", "cache-get: stale, default or linearizable")
	fs.IntVar(&c.valueSize, "value-size", 100, "cache-set: bytes per value")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "limit of one operation")
	fs.IntVar(&c.killPID, "kill-pid", 0, "failover: SIGKILL this process id after --kill-after (0: kill it yourself)")
	fs.DurationVar(&c.killAfter, "kill-after", 3*time.Second, "failover: when to kill --kill-pid")
	fs.BoolVar(&c.baseline, "baseline", false, "also run against a bare mcp-go server with the built-in tools, in process, and print the ratio")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	token := tokenFlag(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stderr, benchUsage)
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return c, false, err
		}
		return c, false, usageError{err}
	}
	if fs.NArg() > 0 {
		return c, false, usagef("unexpected argument %q", fs.Arg(0))
	}
	for _, t := range strings.Split(targets, ",") {
		t = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(t), "http://"), "/")
		if err := checkHostPort(t, false); err != nil {
			return c, false, usagef("-targets %q: %v", t, err)
		}
		c.targets = append(c.targets, "http://"+t)
	}
	if err := json.Unmarshal([]byte(argsJSON), &c.args); err != nil {
		return c, false, usagef("-args is not a JSON object: %v", err)
	}
	switch {
	case !slices.Contains([]string{"call", "cache-set", "cache-get", "session-init", "failover"}, c.scenario):
		return c, false, usagef("-scenario %q: want call, cache-set, cache-get, session-init or failover", c.scenario)
	case c.op != "call" && c.op != "cache-set":
		return c, false, usagef("-op %q: want call or cache-set", c.op)
	case c.protocol != legacyProtocol && c.protocol != mcplib.ProtocolVersion20260728:
		return c, false, usagef("-protocol %q: want %s or %s", c.protocol, legacyProtocol, mcplib.ProtocolVersion20260728)
	case c.scenario == "session-init" && c.protocol != legacyProtocol:
		return c, false, usagef("-scenario session-init needs -protocol %s (2026-07-28 has no sessions)", legacyProtocol)
	case c.concurrency < 1 || c.concurrency > 10000:
		return c, false, usagef("-concurrency %d: want 1 to 10000", c.concurrency)
	case c.duration <= 0 && c.calls <= 0:
		return c, false, usagef("-duration must be positive")
	case c.calls < 0 || c.rate < 0 || c.valueSize < 0 || c.timeout <= 0:
		return c, false, usagef("-calls, -rate and -value-size must be >= 0, -timeout positive")
	case !slices.Contains([]string{"stale", "default", "linearizable"}, c.consistency):
		return c, false, usagef("-consistency %q: want stale, default or linearizable", c.consistency)
	case c.killPID < 0:
		return c, false, usagef("-kill-pid must be a process id")
	case c.baseline && c.scenario != "call" && c.scenario != "session-init":
		return c, false, usagef("-baseline goes with -scenario call or session-init")
	}
	if c.scenario == "failover" && c.rate == 0 {
		c.rate = 200
	}
	c.name = c.scenario
	c.token = token()
	return c, *asJSON, nil
}

const legacyProtocol = mcplib.ProtocolVersion20251125

// runBench is `mcpcluster bench`.
func runBench(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "suite" {
		return runBenchSuite(args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "tls-cost" {
		return runBenchTLSCost(args[1:], stdout, stderr)
	}
	cfg, asJSON, err := parseBenchFlags(args, stderr)
	if err != nil {
		return err
	}
	if isTerminal(stderr) {
		cfg.progress = stderr
	}
	ctx, stop := signalContext()
	defer stop()
	if err := preflight(ctx, cfg); err != nil {
		return usageError{err}
	}
	if err := checkCacheAccess(ctx, cfg); err != nil {
		return err
	}
	res, err := benchWithBaseline(ctx, cfg)
	if err != nil {
		return err
	}
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(res)
	}
	printResult(stdout, res)
	return nil
}

// benchWithBaseline runs cfg, and with cfg.baseline the same against a
// bare mcp-go server started in this process.
func benchWithBaseline(ctx context.Context, cfg benchConfig) (BenchResult, error) {
	res, err := bench(ctx, cfg)
	if err != nil || !cfg.baseline {
		return res, err
	}
	url, stop, err := startBareServer()
	if err != nil {
		return res, err
	}
	defer stop()
	bcfg := cfg
	bcfg.targets, bcfg.name, bcfg.progress = []string{url}, cfg.name+" (bare mcp-go)", nil
	if bcfg.tool != "" && !isBuiltinTool(bcfg.tool) {
		bcfg.tool = "echo" // the bare server has only the built-in tools
		bcfg.args = map[string]any{"text": "hello"}
	}
	base, err := bench(ctx, bcfg)
	if err != nil {
		return res, fmt.Errorf("baseline: %w", err)
	}
	res.Baseline = &base
	if base.PerSecond > 0 {
		res.Ratio = res.PerSecond / base.PerSecond
	}
	return res, nil
}

func isBuiltinTool(name string) bool {
	for _, t := range mcp.BuiltinTools(nil) {
		if t.Tool.Name == name {
			return true
		}
	}
	return false
}

// startBareServer serves the built-in tools from a plain mcp-go server on
// a loopback port, as the baseline.
func startBareServer() (string, func(), error) {
	s := server.NewMCPServer("bare", mcp.Version, server.WithToolCapabilities(true))
	s.AddTools(mcp.BuiltinTools(nil)...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, fmt.Errorf("baseline server: %w", err)
	}
	srv := &http.Server{Handler: server.NewStreamableHTTPServer(s), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	return "http://" + ln.Addr().String(), func() { srv.Close() }, nil
}

var benchHTTP = &http.Client{Transport: &http.Transport{
	MaxIdleConns: 4096, MaxIdleConnsPerHost: 1024, IdleConnTimeout: 90 * time.Second,
	DialContext: (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
}}

// preflight fails fast on targets that do not answer and tools the
// cluster does not have.
func preflight(ctx context.Context, cfg benchConfig) error {
	for _, t := range cfg.targets {
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		req, _ := http.NewRequestWithContext(cctx, http.MethodGet, t+"/healthz", nil)
		resp, err := benchHTTP.Do(req)
		cancel()
		if err != nil {
			return fmt.Errorf("node at %s does not answer: %v", strings.TrimPrefix(t, "http://"), rootCause(err))
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("node at %s: /healthz answered %s", strings.TrimPrefix(t, "http://"), resp.Status)
		}
	}
	if cfg.scenario == "call" || (cfg.scenario == "failover" && cfg.op == "call") {
		c, err := connectMCP(ctx, cfg.targets[0], cfg.protocol)
		if err != nil {
			return err
		}
		defer c.Close()
		list, err := c.ListTools(ctx, mcplib.ListToolsRequest{})
		if err != nil {
			return fmt.Errorf("list tools at %s: %v", cfg.targets[0], err)
		}
		for _, t := range list.Tools {
			if t.Name == cfg.tool {
				return nil
			}
		}
		return fmt.Errorf("tool %q is not in the cluster's catalog (%d tools; mcpcluster tools lists them)", cfg.tool, len(list.Tools))
	}
	return nil
}

// checkCacheAccess fails fast when a cache scenario's token is missing or
// may not write: one write of bench/preflight on every target.
func checkCacheAccess(ctx context.Context, cfg benchConfig) error {
	kind := cfg.scenario
	if kind == "failover" {
		kind = cfg.op
	}
	if kind != "cache-set" && kind != "cache-get" {
		return nil
	}
	for _, t := range cfg.targets {
		cctx, cancel := context.WithTimeout(ctx, cfg.timeout)
		req, err := http.NewRequestWithContext(cctx, http.MethodPut, t+"/v1/cache/bench/preflight", strings.NewReader("x"))
		if err != nil {
			cancel()
			return err
		}
		setToken(req, cfg.token)
		resp, err := benchHTTP.Do(req)
		if err != nil {
			cancel()
			return fmt.Errorf("node at %s: %v", strings.TrimPrefix(t, "http://"), rootCause(err))
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
		cancel()
		if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
			return apiError(strings.TrimPrefix(t, "http://"), resp, body)
		}
	}
	return nil
}

func rootCause(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
}

// connectMCP returns an initialized mcp-go client of the node at base.
func connectMCP(ctx context.Context, base, protocol string) (*client.Client, error) {
	tr, err := transport.NewStreamableHTTP(base+"/mcp", transport.WithHTTPBasicClient(benchHTTP))
	if err != nil {
		return nil, err
	}
	var opts []client.ClientOption
	if protocol == legacyProtocol {
		opts = append(opts, client.WithProtocolVersion(legacyProtocol))
	}
	c := client.NewClient(tr, opts...)
	if err := c.Start(ctx); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", base, err)
	}
	init := mcplib.InitializeRequest{}
	init.Params.ProtocolVersion = protocol
	init.Params.ClientInfo = mcplib.Implementation{Name: "mcpcluster-bench", Version: mcp.Version}
	if _, err := c.Initialize(ctx, init); err != nil {
		c.Close()
		return nil, fmt.Errorf("initialize at %s: %w", base, err)
	}
	return c, nil
}

// opFunc runs one operation; its error is classified by errKind.
type opFunc func(ctx context.Context) error

// httpStatusError is a non-2xx answer.
type httpStatusError struct{ code int }

func (e httpStatusError) Error() string { return fmt.Sprintf("HTTP %d", e.code) }

var errToolError = errors.New("tool returned an error")

// errKind classifies a failed operation for the report.
func errKind(err error) string {
	var hs httpStatusError
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.As(err, &hs) && hs.code == http.StatusTooManyRequests:
		return "busy"
	case errors.As(err, &hs) && hs.code == http.StatusServiceUnavailable:
		return "unavailable"
	case errors.As(err, &hs):
		return fmt.Sprintf("http_%d", hs.code)
	case errors.Is(err, errToolError):
		return "tool_error"
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, io.EOF), errors.As(err, &ne):
		return "connection"
	case strings.Contains(err.Error(), "429"):
		return "busy"
	case strings.Contains(err.Error(), "503"):
		return "unavailable"
	}
	return "other"
}

// newOp prepares worker w's operation for cfg's scenario.
func newOp(ctx context.Context, cfg benchConfig, w int) (opFunc, func(), error) {
	target := cfg.targets[w%len(cfg.targets)]
	kind := cfg.scenario
	if kind == "failover" {
		kind = cfg.op
	}
	switch kind {
	case "call":
		c, err := connectMCP(ctx, target, cfg.protocol)
		if err != nil {
			return nil, nil, err
		}
		req := mcplib.CallToolRequest{}
		req.Params.Name, req.Params.Arguments = cfg.tool, cfg.args
		return func(ctx context.Context) error {
			res, err := c.CallTool(ctx, req)
			if err != nil {
				return err
			}
			if res.IsError {
				return errToolError
			}
			return nil
		}, func() { c.Close() }, nil
	case "session-init":
		return func(ctx context.Context) error {
			c, err := connectMCP(ctx, target, cfg.protocol)
			if err != nil {
				return err
			}
			return c.Close() // DELETE: the session ends too
		}, func() {}, nil
	case "cache-set":
		value := strings.Repeat("v", cfg.valueSize)
		var i atomic.Int64
		return func(ctx context.Context) error {
			return httpDo(ctx, cfg.token, http.MethodPut, fmt.Sprintf("%s/v1/cache/bench/%d/%d", target, w, i.Add(1)), value)
		}, func() {}, nil
	case "cache-get":
		key := fmt.Sprintf("%s/v1/cache/bench/get/%d", target, w)
		if err := httpDo(ctx, cfg.token, http.MethodPut, key, "value"); err != nil {
			return nil, nil, fmt.Errorf("seed %s: %w", key, err)
		}
		return func(ctx context.Context) error {
			return httpDo(ctx, cfg.token, http.MethodGet, key+"?consistency="+cfg.consistency, "")
		}, func() {}, nil
	}
	return nil, nil, fmt.Errorf("unknown scenario %q", kind)
}

func httpDo(ctx context.Context, token cluster.Token, method, url, body string) error {
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		return err
	}
	setToken(req, token)
	resp, err := benchHTTP.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return httpStatusError{resp.StatusCode}
	}
	return nil
}

// sample is one finished operation.
type sample struct {
	done    time.Duration // since the start
	latency time.Duration
	kind    string // "" for success
}

// bench runs cfg and summarizes it.
func bench(ctx context.Context, cfg benchConfig) (BenchResult, error) {
	ops := make([]opFunc, cfg.concurrency)
	var cleanups []func()
	defer func() {
		for _, c := range cleanups {
			c()
		}
	}()
	for w := range ops {
		op, cleanup, err := newOp(ctx, cfg, w)
		if err != nil {
			return BenchResult{}, err
		}
		ops[w] = op
		cleanups = append(cleanups, cleanup)
	}
	start := time.Now()
	runCtx := ctx
	if cfg.calls == 0 {
		var cancel context.CancelFunc
		runCtx, cancel = context.WithDeadline(ctx, start.Add(cfg.duration))
		defer cancel()
	}
	samples := make([][]sample, cfg.concurrency)
	var started, finished atomic.Int64
	res := BenchResult{Name: cfg.name, Scenario: cfg.scenario, Tool: cfg.tool, Protocol: cfg.protocol,
		Concurrency: cfg.concurrency, Rate: cfg.rate}
	for _, t := range cfg.targets {
		res.Targets = append(res.Targets, strings.TrimPrefix(t, "http://"))
	}
	if cfg.scenario == "cache-get" {
		res.Consistency = cfg.consistency
	}
	if cfg.scenario != "call" && !(cfg.scenario == "failover" && cfg.op == "call") {
		res.Tool, res.Protocol = "", ""
		if cfg.scenario == "session-init" {
			res.Protocol = cfg.protocol
		}
	}
	run := func(w int, scheduled time.Time) {
		octx, cancel := context.WithTimeout(ctx, cfg.timeout)
		err := ops[w](octx)
		cancel()
		now := time.Now()
		s := sample{done: now.Sub(start), latency: now.Sub(scheduled)}
		if err != nil {
			s.kind = errKind(err)
		}
		samples[w] = append(samples[w], s)
		finished.Add(1)
	}
	more := func() bool {
		if cfg.calls > 0 {
			return started.Add(1) <= int64(cfg.calls)
		}
		return runCtx.Err() == nil
	}

	stopProgress := progressLine(cfg.progress, start, &finished)
	var killedAt time.Duration
	if cfg.killPID > 0 {
		timer := time.AfterFunc(cfg.killAfter, func() {
			_ = syscall.Kill(cfg.killPID, syscall.SIGKILL)
		})
		defer timer.Stop()
		killedAt = cfg.killAfter
	}
	var wg sync.WaitGroup
	if cfg.rate == 0 {
		for w := range ops {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for more() {
					run(w, time.Now())
				}
			}()
		}
	} else {
		// Open loop: operations start on schedule, latency counts from the
		// scheduled time; if every worker is busy, the operation waits.
		ticks := make(chan time.Time, cfg.concurrency)
		for w := range ops {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for t := range ticks {
					run(w, t)
				}
			}()
		}
		interval := time.Duration(float64(time.Second) / cfg.rate)
		next := start
		for more() {
			if d := time.Until(next); d > 0 {
				select {
				case <-time.After(d):
				case <-runCtx.Done():
				}
				if runCtx.Err() != nil && cfg.calls == 0 {
					break
				}
			}
			ticks <- next
			next = next.Add(interval)
		}
		close(ticks)
	}
	wg.Wait()
	stopProgress()
	elapsed := time.Since(start)

	all := slices.Concat(samples...)
	sort.Slice(all, func(i, j int) bool { return all[i].done < all[j].done })
	res.Elapsed = Duration(elapsed)
	res.Errors = map[string]int{}
	var lat []time.Duration
	for _, s := range all {
		if s.kind != "" {
			res.Errors[s.kind]++
			continue
		}
		res.OK++
		lat = append(lat, s.latency)
	}
	res.PerSecond = float64(res.OK) / elapsed.Seconds()
	res.Latency = percentiles(lat)
	if cfg.scenario == "failover" {
		res.Timeline = timeline(all)
		if whole := int(elapsed / time.Second); len(res.Timeline) > whole {
			res.Timeline = res.Timeline[:whole] // the last, partial second would read as a drop
		}
		res.LongestGap, res.ErrorsInGap = longestGap(all)
		res.KilledAt = Duration(killedAt)
	}
	return res, nil
}

// timeline buckets samples by the second they finished in.
func timeline(all []sample) []Second {
	var out []Second
	var lat []time.Duration
	flush := func() {
		if len(out) > 0 {
			p := percentiles(lat)
			out[len(out)-1].P50, out[len(out)-1].Max = p.P50, p.Max
		}
		lat = lat[:0]
	}
	for _, s := range all {
		sec := int(s.done / time.Second)
		for len(out) <= sec {
			flush()
			out = append(out, Second{At: len(out)})
		}
		if s.kind != "" {
			out[sec].Errors++
			continue
		}
		out[sec].OK++
		lat = append(lat, s.latency)
	}
	flush()
	return out
}

// longestGap is the longest time between two consecutive successes (from
// the first success on), and how many operations failed within it.
func longestGap(all []sample) (Duration, int) {
	var gap, from, to time.Duration
	last := time.Duration(-1)
	for _, s := range all {
		if s.kind != "" {
			continue
		}
		if last >= 0 && s.done-last > gap {
			gap, from, to = s.done-last, last, s.done
		}
		last = s.done
	}
	errs := 0
	for _, s := range all {
		if s.kind != "" && s.done > from && s.done <= to {
			errs++
		}
	}
	return Duration(gap), errs
}

// progressLine prints a live status line every second until stopped.
func progressLine(w io.Writer, start time.Time, finished *atomic.Int64) func() {
	if w == nil {
		return func() {}
	}
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				fmt.Fprint(w, "\r\033[K")
				return
			case <-t.C:
				el := time.Since(start)
				n := finished.Load()
				fmt.Fprintf(w, "\r\033[K%5.1fs  %d ops  %.0f ops/s", el.Seconds(), n, float64(n)/el.Seconds())
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func printResult(w io.Writer, r BenchResult) {
	errs := 0
	for _, n := range r.Errors {
		errs += n
	}
	mode := fmt.Sprintf("%d clients, closed loop", r.Concurrency)
	if r.Rate > 0 {
		mode = fmt.Sprintf("%.0f/s fixed rate, up to %d in flight", r.Rate, r.Concurrency)
	}
	fmt.Fprintf(w, "%s against %s (%s)\n", r.Name, strings.Join(r.Targets, ","), mode)
	fmt.Fprintf(w, "  %d ok, %d errors %v in %s: %.0f ops/s\n", r.OK, errs, r.Errors, time.Duration(r.Elapsed).Round(time.Millisecond), r.PerSecond)
	l := r.Latency
	fmt.Fprintf(w, "  latency p50 %s  p90 %s  p99 %s  p99.9 %s  max %s\n",
		time.Duration(l.P50), time.Duration(l.P90), time.Duration(l.P99), time.Duration(l.P999), time.Duration(l.Max))
	if r.Baseline != nil {
		fmt.Fprintf(w, "  bare mcp-go: %.0f ops/s, p50 %s; ratio %.2f\n", r.Baseline.PerSecond, time.Duration(r.Baseline.Latency.P50), r.Ratio)
	}
	if r.Scenario == "failover" {
		fmt.Fprintf(w, "  longest window without a success: %s (%d errors in it)\n", time.Duration(r.LongestGap).Round(time.Millisecond), r.ErrorsInGap)
		for _, s := range r.Timeline {
			fmt.Fprintf(w, "    %3ds  ok %5d  errors %4d  p50 %s\n", s.At, s.OK, s.Errors, time.Duration(s.P50).Round(time.Microsecond))
		}
	}
}
