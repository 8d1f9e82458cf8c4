package main

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"time"
)

// BenchResult is the outcome of one `mcpcluster bench` run (the --json
// output, and what the benchmark report is made of).
type BenchResult struct {
	Name        string   `json:"name"`     // e.g. "forwarded call"
	Scenario    string   `json:"scenario"` // call, cache-set, cache-get, session-init, failover
	Targets     []string `json:"targets"`
	Tool        string   `json:"tool,omitempty"`
	Protocol    string   `json:"protocol,omitempty"`
	Consistency string   `json:"consistency,omitempty"`
	Concurrency int      `json:"concurrency"`
	Rate        float64  `json:"rate,omitempty"` // operations/s for a fixed-rate (open loop) run; 0: closed loop

	Elapsed   Duration       `json:"elapsed"`
	OK        int            `json:"ok"`
	Errors    map[string]int `json:"errors"` // by kind: timeout, busy, unavailable, connection, tool_error, http_<code>, other
	PerSecond float64        `json:"per_second"`
	Latency   Percentiles    `json:"latency"` // successful operations only

	// Timeline has one entry per second of the run (failover runs).
	Timeline []Second `json:"timeline,omitempty"`
	// LongestGap is the longest time without a successful operation after
	// the first one (failover runs), and ErrorsInGap the failures within it.
	LongestGap  Duration `json:"longest_gap,omitempty"`
	ErrorsInGap int      `json:"errors_in_gap,omitempty"`
	KilledAt    Duration `json:"killed_at,omitempty"` // since the start, when the command killed a node

	// Baseline is the same run against a bare mcp-go server (--baseline),
	// and Ratio this run's PerSecond divided by the baseline's.
	Baseline *BenchResult `json:"baseline,omitempty"`
	Ratio    float64      `json:"ratio,omitempty"`
}

// Second is one second of a run.
type Second struct {
	At     int      `json:"at"` // seconds since the start
	OK     int      `json:"ok"`
	Errors int      `json:"errors"`
	P50    Duration `json:"p50"`
	Max    Duration `json:"max"`
}

// Percentiles of operation latency.
type Percentiles struct {
	P50  Duration `json:"p50"`
	P90  Duration `json:"p90"`
	P99  Duration `json:"p99"`
	P999 Duration `json:"p999"`
	Max  Duration `json:"max"`
}

// Duration is a time.Duration that marshals as seconds (a JSON number).
type Duration time.Duration

// MarshalJSON writes d in seconds.
func (d Duration) MarshalJSON() ([]byte, error) {
	return []byte(formatFloat(time.Duration(d).Seconds())), nil
}

// UnmarshalJSON reads seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var f float64
	if err := jsonUnmarshal(b, &f); err != nil {
		return err
	}
	*d = Duration(time.Duration(math.Round(f * float64(time.Second))))
	return nil
}

// percentile returns the nearest-rank q-quantile (0 < q <= 1) of sorted
// latencies: the smallest value with at least q of all values at or below it.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = min(max(rank, 1), len(sorted))
	return sorted[rank-1]
}

// percentiles summarizes latencies (it sorts them in place).
func percentiles(lat []time.Duration) Percentiles {
	slices.Sort(lat)
	if len(lat) == 0 {
		return Percentiles{}
	}
	return Percentiles{
		P50:  Duration(percentile(lat, 0.50)),
		P90:  Duration(percentile(lat, 0.90)),
		P99:  Duration(percentile(lat, 0.99)),
		P999: Duration(percentile(lat, 0.999)),
		Max:  Duration(lat[len(lat)-1]),
	}
}

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
