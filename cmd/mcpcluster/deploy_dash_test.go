package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	mcplib "github.com/mark3labs/mcp-go/mcp"
	"gopkg.in/yaml.v3"
)

// TestDashboardAndAlertMetrics checks that every metric the Grafana
// dashboard and the Prometheus alert rules use is one a node exports: it
// runs a node in-process, drives some traffic through it (a call, a tool
// error, a busy rejection) so every labelled family has a series, and
// compares with its /metrics.
func TestDashboardAndAlertMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a node")
	}
	dashExprs := dashboardExprs(t, "../../deploy/grafana/mcpcluster.json")
	alertExprs, alerts := alertRuleExprs(t, "../../deploy/prometheus/mcpcluster-alerts.yaml")
	for _, want := range []string{"MCPClusterNoLeader", "MCPClusterNodeDown", "MCPClusterLeaderFlapping", "MCPClusterRejectionsRising",
		"MCPClusterCacheNearEntryBound", "MCPClusterCacheNearByteBound", "MCPClusterSessionsHigh"} {
		if !slices.Contains(alerts, want) {
			t.Errorf("alert rules lack %s", want)
		}
	}

	cfg := defaultAgentConfig()
	cfg.Dev, cfg.BootstrapExpect, cfg.DataDir = true, 1, t.TempDir()
	cfg.HTTPAddr, cfg.RPCAddr, cfg.GossipAddr = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.GossipProfile = "local"
	cfg.MaxConcurrent, cfg.MaxQueue = 1, 0
	agent, err := NewAgent(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { agent.Close() })
	base := "http://" + agent.HTTPAddr()
	waitUntil(t, 20*time.Second, func() error {
		resp, err := http.Get(base + "/readyz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("readyz: %s", resp.Status)
		}
		return nil
	})
	exported := driveAndScrape(t, base)

	checked := 0
	for _, src := range []struct {
		file  string
		exprs []string
	}{{"deploy/grafana/mcpcluster.json", dashExprs}, {"deploy/prometheus/mcpcluster-alerts.yaml", alertExprs}} {
		if len(src.exprs) == 0 {
			t.Errorf("%s: no queries found", src.file)
		}
		for _, expr := range src.exprs {
			names := promqlMetricNames(expr)
			if len(names) == 0 {
				t.Errorf("%s: no metric in %q", src.file, expr)
			}
			for _, name := range names {
				checked++
				if name == "up" { // made by Prometheus for every scrape target
					continue
				}
				if !exported[name] {
					t.Errorf("%s uses %s, which a node does not export (in %q)", src.file, name, expr)
				}
			}
		}
	}
	t.Logf("%d dashboard and %d alert queries, %d metric references checked", len(dashExprs), len(alertExprs), checked)
}

func waitUntil(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("still failing after %s: %v", timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// driveAndScrape makes a call, a failing call and a busy rejection
// through the node at base, then returns the metric names of its /metrics
// (histograms with their _bucket, _sum and _count series).
func driveAndScrape(t *testing.T, base string) map[string]bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := func(name string, args map[string]any) (*mcplib.CallToolResult, error) {
		c, err := connectMCP(ctx, base, legacyProtocol)
		if err != nil {
			return nil, err
		}
		defer c.Close()
		req := mcplib.CallToolRequest{}
		req.Params.Name, req.Params.Arguments = name, args
		return c.CallTool(ctx, req)
	}
	if res, err := call("echo", map[string]any{"text": "hi"}); err != nil || res.IsError {
		t.Fatalf("echo: %v %+v", err, res)
	}
	if res, err := call("sleep", map[string]any{"ms": -1}); err != nil || !res.IsError {
		t.Fatalf("sleep -1 ms is not a tool error: %v %+v", err, res)
	}
	// Hold the only slot, then be refused.
	sleepCtx, stopSleep := context.WithCancel(ctx)
	slept := make(chan struct{})
	go func() {
		defer close(slept)
		c, err := connectMCP(sleepCtx, base, legacyProtocol)
		if err != nil {
			return
		}
		defer c.Close()
		req := mcplib.CallToolRequest{}
		req.Params.Name, req.Params.Arguments = "sleep", map[string]any{"ms": 20000}
		_, _ = c.CallTool(sleepCtx, req)
	}()
	defer func() { stopSleep(); <-slept }()
	waitUntil(t, 10*time.Second, func() error {
		m, err := scrape(base)
		if err != nil {
			return err
		}
		if m["mcpcluster_admitted_requests"] < 1 {
			return errors.New("the sleep call is not admitted yet")
		}
		return nil
	})
	if _, err := call("echo", map[string]any{"text": "refused"}); err == nil {
		t.Fatal("a call beyond --max-concurrent 1 and --max-queue 0 was not refused")
	}
	names := map[string]bool{}
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 4 || f[0] != "#" || f[1] != "TYPE" {
			continue
		}
		names[f[2]] = true
		switch f[3] {
		case "histogram":
			names[f[2]+"_bucket"], names[f[2]+"_sum"], names[f[2]+"_count"] = true, true, true
		case "summary":
			names[f[2]+"_sum"], names[f[2]+"_count"] = true, true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read /metrics: %v", err)
	}
	for _, must := range []string{"mcpcluster_requests_total", "mcpcluster_request_errors_total", "mcpcluster_rejections_total", "mcpcluster_call_duration_seconds"} {
		if !names[must] {
			t.Fatalf("/metrics has no %s after the traffic", must)
		}
	}
	return names
}

// scrape returns the unlabelled samples of /metrics at base.
func scrape(base string) (map[string]float64, error) {
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("scrape: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("read /metrics: %w", err)
	}
	out := map[string]float64{}
	for _, line := range strings.Split(string(b), "\n") {
		var name string
		var v float64
		if _, err := fmt.Sscanf(line, "%s %g", &name, &v); err == nil && !strings.HasPrefix(name, "#") {
			out[name] = v
		}
	}
	return out, nil
}

// dashboardExprs returns every PromQL query of a Grafana dashboard: panel
// targets (nested rows included) and templating queries.
func dashboardExprs(t *testing.T, path string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var dash any
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var exprs []string
	var walk func(v any, key string)
	walk = func(v any, key string) {
		switch v := v.(type) {
		case map[string]any:
			for k, c := range v {
				walk(c, k)
			}
		case []any:
			for _, c := range v {
				walk(c, key)
			}
		case string:
			if key == "expr" || key == "definition" || (key == "query" && strings.Contains(v, "(")) {
				exprs = append(exprs, v)
			}
		}
	}
	walk(dash, "")
	return exprs
}

// alertRuleExprs returns the expressions and names of the alert rules in
// a Prometheus rules file.
func alertRuleExprs(t *testing.T, path string) (exprs, alerts []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert         string            `yaml:"alert"`
				Record        string            `yaml:"record"`
				Expr          string            `yaml:"expr"`
				For           string            `yaml:"for"`
				KeepFiringFor string            `yaml:"keep_firing_for"`
				Labels        map[string]string `yaml:"labels"`
				Annotations   map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	dec := yaml.NewDecoder(strings.NewReader(string(b)))
	dec.KnownFields(true)
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Expr == "" {
				t.Errorf("%s: rule %s%s has no expr", path, r.Alert, r.Record)
			}
			if r.Alert != "" && (r.Labels["severity"] == "" || r.Annotations["summary"] == "") {
				t.Errorf("%s: alert %s needs a severity label and a summary", path, r.Alert)
			}
			exprs = append(exprs, r.Expr)
			if r.Alert != "" {
				alerts = append(alerts, r.Alert)
			}
		}
	}
	return exprs, alerts
}

var (
	promStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promMatchers = regexp.MustCompile(`\{[^{}]*\}`)
	promRanges   = regexp.MustCompile(`\[[^\[\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promVars     = regexp.MustCompile(`\$\{?\w+\}?`)
	labelValues  = regexp.MustCompile(`label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)`) // Grafana's, not PromQL
	promIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	// Words of PromQL that are not metrics and are not followed by "(".
	promKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"inf": true, "nan": true, "atan2": true}
)

// promqlMetricNames returns the metric names a PromQL expression selects:
// identifiers left once strings, label matchers, ranges, grouping
// clauses and Grafana variables are taken out, that are neither a
// function call nor a keyword. Grafana's label_values(metric, label)
// counts as its metric.
func promqlMetricNames(expr string) []string {
	s := labelValues.ReplaceAllString(expr, "$1")
	s = promStrings.ReplaceAllString(s, `""`)
	s = promVars.ReplaceAllString(s, "")
	s = promGrouping.ReplaceAllString(s, " ")
	s = promMatchers.ReplaceAllString(s, " ")
	s = promRanges.ReplaceAllString(s, " ")
	var names []string
	for _, loc := range promIdent.FindAllStringIndex(s, -1) {
		word := s[loc[0]:loc[1]]
		if loc[0] > 0 && (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9' || s[loc[0]-1] == '.') {
			continue // the tail of a number, such as 1e3 or 0.5
		}
		rest := strings.TrimLeft(s[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "(") || promKeywords[strings.ToLower(word)] {
			continue
		}
		if !slices.Contains(names, word) {
			names = append(names, word)
		}
	}
	return names
}

func TestPromqlMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (job) (rate(a_total{reason=~"busy|x"}[5m])) / clamp_min(sum by (job) (rate(b_total[5m])), 0.001) > 0.05`: {"a_total", "b_total"},
		`(sum by (job) (x{state="Leader"} == 1) or sum by (job) (up{job="m"}) * 0) < 1`:                                  {"x", "up"},
		`histogram_quantile(0.95, sum by (le, where) (rate(h_bucket{instance=~"$instance"}[$__rate_interval])))`:         {"h_bucket"},
		`c - d offset 5m > 1e3 and on (instance) e_total`:                                                                {"c", "d", "e_total"},
		`label_values(mcpcluster_raft_term, instance)`:                                                                   {"mcpcluster_raft_term"},
		`predict_linear(s[1h], 6 * 3600) > 2 * max by (job) (s)`:                                                         {"s"},
	} {
		if got := promqlMetricNames(expr); !slices.Equal(got, want) {
			t.Errorf("%s: got %v, want %v", expr, got, want)
		}
	}
}
