package main

import (
	"net/http"
	"strings"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
	"github.com/mcpcluster/mcpcluster/mcp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics is the node's Prometheus registry and the mcp.Observer that
// feeds it.
type metrics struct {
	reg        *prometheus.Registry
	node       *cluster.Node
	requests   *prometheus.CounterVec
	errors     *prometheus.CounterVec
	calls      *prometheus.HistogramVec
	rejections *prometheus.CounterVec
	operations *prometheus.HistogramVec
}

func newMetrics(node *cluster.Node) *metrics {
	m := &metrics{
		reg:  prometheus.NewRegistry(),
		node: node,
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpcluster_requests_total", Help: "MCP requests by JSON-RPC method and tool.",
		}, []string{"method", "tool"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpcluster_request_errors_total", Help: "MCP requests that failed, by method and tool.",
		}, []string{"method", "tool"}),
		calls: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mcpcluster_call_duration_seconds",
			Help:    "tools/call latency by tool and where it ran (local, forwarded, cache).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"tool", "where"}),
		rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mcpcluster_rejections_total", Help: "Requests refused before running, by reason: busy, draining, queue_timeout, origin, unauthorized, policy, rate_limit.",
		}, []string{"reason"}),
		// mcp.server.operation.duration of the OpenTelemetry MCP
		// conventions, with their buckets, as Prometheus names it.
		operations: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "mcp_server_operation_duration_seconds",
			Help:    "MCP server operation duration (OpenTelemetry mcp.server.operation.duration): JSON-RPC requests by method, tool and error.type.",
			Buckets: []float64{.01, .02, .05, .1, .2, .5, 1, 2, 5, 10, 30, 60, 120, 300},
		}, []string{"mcp_method_name", "gen_ai_tool_name", "error_type"}),
	}
	m.reg.MustRegister(m.requests, m.errors, m.calls, m.rejections, m.operations,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		&clusterCollector{n: node})
	return m
}

// watchFront registers the front door's load gauges.
func (m *metrics) watchFront(front *mcp.Server) {
	gauge := func(name, help string, f func() int) prometheus.GaugeFunc {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, func() float64 { return float64(f()) })
	}
	m.reg.MustRegister(
		gauge("mcpcluster_inflight_calls", "Calls running on this node, its clients' and forwarded ones.", func() int { return front.Stats().InFlight }),
		gauge("mcpcluster_admitted_requests", "tools/call requests admitted through this node's /mcp.", func() int { return front.Stats().Admitted }),
		gauge("mcpcluster_queue_length", "tools/call requests waiting for a slot.", func() int { return front.Stats().Queued }),
	)
}

// watchBounds registers the node's configured bounds as gauges, so
// dashboards and alerts compare the live values with them.
func (m *metrics) watchBounds(cfg AgentConfig) {
	def := mcp.DefaultConfig()
	maxConcurrent, maxQueue := cfg.MaxConcurrent, cfg.MaxQueue
	if maxConcurrent <= 0 {
		maxConcurrent = def.MaxConcurrent
	}
	if maxQueue < 0 {
		maxQueue = def.MaxQueue
	}
	bound := func(name, help string, v float64) prometheus.Gauge {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
		g.Set(v)
		return g
	}
	m.reg.MustRegister(
		bound("mcpcluster_cache_max_entries", "Bound of the shared cache in entries (--cache-max-entries); the oldest writes are evicted past it.", float64(cfg.CacheMaxEntries)),
		bound("mcpcluster_cache_max_bytes", "Bound of the shared cache in bytes of keys and values (--cache-max-bytes).", float64(cfg.CacheMaxBytes)),
		bound("mcpcluster_max_concurrent_calls", "tools/call requests this node runs at once (--max-concurrent).", float64(maxConcurrent)),
		bound("mcpcluster_max_queue_length", "tools/call requests that may wait for a slot (--max-queue); beyond it, busy.", float64(maxQueue)),
		bound("mcpcluster_session_idle_ttl_seconds", "Idle time after which MCP sessions expire (--session-idle-ttl).", cfg.SessionIdleTTL.Seconds()),
	)
}

// toolLabel keeps label values to the cluster's tools (unknown names from
// clients would grow the series without bound).
func (m *metrics) toolLabel(tool string) string {
	if tool == "" {
		return ""
	}
	if _, _, ok := m.node.FSM().ToolProvider(tool); !ok {
		return "(unknown)"
	}
	return tool
}

func (m *metrics) Request(method, tool string, failed bool) {
	if method = mcp.MethodLabel(method); method == "" {
		method = "(unparsed)"
	}
	tool = m.toolLabel(tool)
	m.requests.WithLabelValues(method, tool).Inc()
	if failed {
		m.errors.WithLabelValues(method, tool).Inc()
	}
}

func (m *metrics) Call(tool, where string, d time.Duration, _ bool) {
	m.calls.WithLabelValues(m.toolLabel(tool), where).Observe(d.Seconds())
}

func (m *metrics) Rejected(reason string) { m.rejections.WithLabelValues(reason).Inc() }

func (m *metrics) Operation(method, tool, errorType string, d time.Duration) {
	m.operations.WithLabelValues(method, m.toolLabel(tool), errorType).Observe(d.Seconds())
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// clusterCollector reports raft and gossip state at scrape time.
type clusterCollector struct{ n *cluster.Node }

var (
	descRaftState     = prometheus.NewDesc("mcpcluster_raft_state", "1 for this node's raft state.", []string{"state"}, nil)
	descRaftTerm      = prometheus.NewDesc("mcpcluster_raft_term", "Current raft term.", nil, nil)
	descRaftCommit    = prometheus.NewDesc("mcpcluster_raft_commit_index", "Raft commit index.", nil, nil)
	descRaftApplied   = prometheus.NewDesc("mcpcluster_raft_applied_index", "Raft applied index.", nil, nil)
	descRaftLast      = prometheus.NewDesc("mcpcluster_raft_last_index", "Last raft log index.", nil, nil)
	descLeaderChanges = prometheus.NewDesc("mcpcluster_leader_changes_total", "Leader changes this node observed.", nil, nil)
	descMembers       = prometheus.NewDesc("mcpcluster_members", "Gossip members by liveness and status.", []string{"state", "status"}, nil)
	descServers       = prometheus.NewDesc("mcpcluster_raft_servers", "Raft servers by suffrage (voter, nonvoter) and health (healthy, failed), as this node sees them.", []string{"suffrage", "health"}, nil)
	descCache         = prometheus.NewDesc("mcpcluster_cache_entries", "Entries in the shared cache.", nil, nil)
	descCacheBytes    = prometheus.NewDesc("mcpcluster_cache_bytes", "Bytes of keys and values in the shared cache.", nil, nil)
	descSessions      = prometheus.NewDesc("mcpcluster_sessions", "Replicated MCP sessions.", nil, nil)
)

func (c *clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRaftState, descRaftTerm, descRaftCommit, descRaftApplied, descRaftLast, descLeaderChanges, descMembers, descServers, descCache, descCacheBytes, descSessions} {
		ch <- d
	}
}

func (c *clusterCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.n.RaftStats()
	for _, s := range []string{"Follower", "Candidate", "Leader", "Shutdown"} {
		v := 0.0
		if st.State == s {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(descRaftState, prometheus.GaugeValue, v, s)
	}
	ch <- prometheus.MustNewConstMetric(descRaftTerm, prometheus.GaugeValue, float64(st.Term))
	ch <- prometheus.MustNewConstMetric(descRaftCommit, prometheus.GaugeValue, float64(st.CommitIndex))
	ch <- prometheus.MustNewConstMetric(descRaftApplied, prometheus.GaugeValue, float64(st.AppliedIndex))
	ch <- prometheus.MustNewConstMetric(descRaftLast, prometheus.GaugeValue, float64(st.LastIndex))
	ch <- prometheus.MustNewConstMetric(descLeaderChanges, prometheus.CounterValue, float64(c.n.LeaderChanges()))
	counts := map[[2]string]int{}
	for _, m := range c.n.Members() {
		counts[[2]string{string(m.State), string(m.Status)}]++
	}
	for k, v := range counts {
		ch <- prometheus.MustNewConstMetric(descMembers, prometheus.GaugeValue, float64(v), k[0], k[1])
	}
	if peers, err := c.n.RaftPeers(); err == nil {
		servers := map[[2]string]int{{"voter", "healthy"}: 0, {"voter", "failed"}: 0, {"nonvoter", "healthy"}: 0, {"nonvoter", "failed"}: 0}
		for _, p := range peers {
			k := [2]string{strings.ToLower(p.Suffrage), "failed"}
			if p.Healthy {
				k[1] = "healthy"
			}
			servers[k]++
		}
		for k, v := range servers {
			ch <- prometheus.MustNewConstMetric(descServers, prometheus.GaugeValue, float64(v), k[0], k[1])
		}
	}
	fc := c.n.FSM().Counts()
	ch <- prometheus.MustNewConstMetric(descCache, prometheus.GaugeValue, float64(fc.CacheEntries))
	ch <- prometheus.MustNewConstMetric(descCacheBytes, prometheus.GaugeValue, float64(fc.CacheBytes))
	ch <- prometheus.MustNewConstMetric(descSessions, prometheus.GaugeValue, float64(fc.Sessions))
}
