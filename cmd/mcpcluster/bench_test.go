package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"
)

func ms(n int) time.Duration { return time.Duration(n) * time.Millisecond }

func TestPercentileNearestRank(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 1000; i++ {
		lat = append(lat, ms(i))
	}
	cases := []struct {
		q    float64
		want time.Duration
	}{{0.5, ms(500)}, {0.9, ms(900)}, {0.99, ms(990)}, {0.999, ms(999)}, {1, ms(1000)}, {0.0001, ms(1)}}
	for _, c := range cases {
		if got := percentile(lat, c.q); got != c.want {
			t.Errorf("p%v = %s, want %s", c.q*100, got, c.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("empty: %s", got)
	}
	if got := percentile([]time.Duration{ms(7)}, 0.99); got != ms(7) {
		t.Errorf("one sample: %s", got)
	}
	// Unsorted input: percentiles sorts it.
	p := percentiles([]time.Duration{ms(3), ms(1), ms(2), ms(4)})
	if p.P50 != Duration(ms(2)) || p.P99 != Duration(ms(4)) || p.Max != Duration(ms(4)) {
		t.Errorf("percentiles = %+v", p)
	}
}

func TestBenchResultJSON(t *testing.T) {
	r := BenchResult{
		Name: "x", Scenario: "call", Concurrency: 16, Elapsed: Duration(1500 * time.Millisecond),
		OK: 10, Errors: map[string]int{"busy": 2}, PerSecond: 6.5,
		Latency:  Percentiles{P50: Duration(ms(2)), P99: Duration(1500 * time.Microsecond)},
		Baseline: &BenchResult{Name: "bare", PerSecond: 13}, Ratio: 0.5,
	}
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if raw["elapsed"] != 1.5 || raw["latency"].(map[string]any)["p99"] != 0.0015 || raw["ratio"] != 0.5 {
		t.Fatalf("durations are not seconds: %s", b)
	}
	if _, ok := raw["timeline"]; ok {
		t.Fatalf("empty timeline written: %s", b)
	}
	var back BenchResult
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if back.Elapsed != r.Elapsed || back.Latency != r.Latency || back.Errors["busy"] != 2 || back.Baseline.PerSecond != 13 {
		t.Fatalf("round trip: %+v", back)
	}
}

func TestTimelineAndGap(t *testing.T) {
	s := func(at int, kind string) sample { return sample{done: ms(at), latency: ms(1), kind: kind} }
	all := []sample{s(100, ""), s(900, ""), s(1100, "connection"), s(1500, "timeout"), s(2600, ""), s(2700, ""), s(3100, "")}
	tl := timeline(all)
	if len(tl) != 4 || tl[0].OK != 2 || tl[1].Errors != 2 || tl[1].OK != 0 || tl[2].OK != 2 || tl[3].OK != 1 {
		t.Fatalf("timeline %+v", tl)
	}
	gap, errs := longestGap(all)
	if time.Duration(gap) != ms(1700) || errs != 2 {
		t.Fatalf("gap %s with %d errors, want 1.7s with 2", time.Duration(gap), errs)
	}
}

func TestErrKind(t *testing.T) {
	cases := map[string]error{
		"timeout":     fmt.Errorf("call: %w", context.DeadlineExceeded),
		"busy":        httpStatusError{429},
		"unavailable": httpStatusError{503},
		"http_500":    httpStatusError{500},
		"tool_error":  errToolError,
		"connection":  fmt.Errorf("dial: %w", syscall.ECONNREFUSED),
		"other":       errors.New("strange"),
	}
	for want, err := range cases {
		if got := errKind(err); got != want {
			t.Errorf("errKind(%v) = %s, want %s", err, got, want)
		}
	}
}

func TestBenchFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--scenario", "nope"},
		{"--protocol", "2024-01-01"},
		{"--concurrency", "0"},
		{"--targets", "nowhere"},
		{"--args", "[1]"},
		{"--scenario", "session-init", "--protocol", "2026-07-28"},
		{"--scenario", "cache-set", "--baseline"},
		{"extra"},
	} {
		if _, _, err := parseBenchFlags(args, nil); err == nil {
			t.Errorf("%v accepted", args)
		} else if _, ok := err.(usageError); !ok || strings.Contains(err.Error(), "\n") {
			t.Errorf("%v: %v, want a one-line usage error", args, err)
		}
	}
	c, _, err := parseBenchFlags([]string{"--scenario", "failover", "--targets", "127.0.0.1:1,http://127.0.0.1:2/"}, nil)
	if err != nil || c.rate != 200 || len(c.targets) != 2 || c.targets[1] != "http://127.0.0.1:2" {
		t.Fatalf("failover defaults: %+v %v", c, err)
	}
}
