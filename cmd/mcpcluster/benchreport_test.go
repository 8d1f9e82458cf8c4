package main

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func fakeBenchResults() []BenchResult {
	lat := Percentiles{
		P50: Duration(850 * time.Microsecond), P90: Duration(2 * time.Millisecond),
		P99: Duration(12345 * time.Microsecond), P999: Duration(40 * time.Millisecond), Max: Duration(1500 * time.Millisecond),
	}
	bare := BenchResult{Name: "bare mcp-go", Scenario: "call", Concurrency: 32, OK: 123450, PerSecond: 12345, Latency: lat}
	timeline := make([]Second, 20)
	for i := range timeline {
		timeline[i] = Second{At: i, OK: 900 + 10*i}
	}
	timeline[10], timeline[11] = Second{At: 10, OK: 120, Errors: 7}, Second{At: 11, OK: 0, Errors: 30}
	return []BenchResult{
		{Name: "local call", Scenario: "call", Concurrency: 32, OK: 234567, PerSecond: 23456.7, Latency: lat},
		{Name: "cache get", Scenario: "cache-get", Rate: 2000, OK: 20000, PerSecond: 1999.6, Latency: lat,
			Errors: map[string]int{"timeout": 1200, "busy": 34}},
		{Name: "forwarded call", Scenario: "call", Concurrency: 32, OK: 112340, PerSecond: 11234, Latency: lat,
			Baseline: &bare, Ratio: 0.91},
		{Name: "leader failover", Scenario: "failover", Concurrency: 8, OK: 17000, PerSecond: 850, Latency: lat,
			Errors: map[string]int{"unavailable": 37}, Timeline: timeline,
			LongestGap: Duration(1234500 * time.Microsecond), ErrorsInGap: 37, KilledAt: Duration(10 * time.Second)},
	}
}

func TestWriteBenchReport(t *testing.T) {
	m := MachineInfo{CPUs: 8, CPUModel: "Test CPU @ 3.00GHz", OS: "linux", Arch: "amd64", Go: "go1.26.8", Date: "2025-01-02T03:04:05Z"}
	var a, b bytes.Buffer
	if err := writeBenchReport(&a, fakeBenchResults(), m, "benchmarks.png"); err != nil {
		t.Fatal(err)
	}
	if err := writeBenchReport(&b, fakeBenchResults(), m, "benchmarks.png"); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Fatalf("output is not deterministic:\n%s\n---\n%s", a.String(), b.String())
	}
	out := a.String()
	for _, want := range []string{
		"8 CPUs (Test CPU @ 3.00GHz), linux/amd64, go1.26.8, 2025-01-02T03:04:05Z",
		"| benchmark | scenario | concurrency | ops/s | p50 | p99 | p99.9 | max | errors | ratio vs baseline |",
		"| local call | call | 32 | 23,457 | 850 µs | 12.35 ms | 40.00 ms | 1.50 s | 0 | — |",
		"| cache get | cache-get | 2,000/s fixed | 2,000 |",
		"| 1,234 | — |",
		"| forwarded call |",
		"0.91× (bare 12,345/s)",
		"leader failover: longest window without a success 1.23 s (37 errors in it), node killed at 10.00 s",
		"![benchmark plot](benchmarks.png)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestFormatHelpers(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{thousands(0), "0"},
		{thousands(999), "999"},
		{thousands(1000), "1,000"},
		{thousands(-1234567), "-1,234,567"},
		{formatRate(4.5), "4.5"},
		{formatRate(12344.6), "12,345"},
		{formatDuration(999 * time.Microsecond), "999 µs"},
		{formatDuration(1500 * time.Microsecond), "1.50 ms"},
		{formatDuration(2 * time.Second), "2.00 s"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestWriteBenchPlot(t *testing.T) {
	dir := t.TempDir()
	for name, results := range map[string][]BenchResult{
		"all":      fakeBenchResults(),
		"bars":     fakeBenchResults()[:3],
		"failover": fakeBenchResults()[3:],
	} {
		path := filepath.Join(dir, name+".png")
		if err := writeBenchPlot(path, results); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: not a PNG: %v", name, err)
		}
		if b := img.Bounds(); b.Dx() <= 500 || b.Dy() <= 500 {
			t.Errorf("%s: image is %v, want more than 500x500", name, b)
		}
	}
	if err := writeBenchPlot(filepath.Join(dir, "none.png"), nil); err == nil {
		t.Error("no results: want an error")
	}
}
