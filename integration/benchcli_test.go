package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// Acceptance 7.2: `mcpcluster bench` fails fast with one line and exit
// status 2 on a node that does not exist, a tool that does not exist or a
// bad flag; errors during a run are counted, not fatal.
func TestBenchCommand(t *testing.T) {
	c := newCluster(t, 3)
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	n := c.nodes[0]
	bad := [][]string{
		{"bench", "--targets", fmt.Sprintf("127.0.0.1:%d", freePort(t)), "--duration", "1s"},
		{"bench", "--targets", n.http, "--tool", "no_such_tool", "--duration", "1s"},
		{"bench", "--targets", n.http, "--concurrency", "-3"},
		{"bench", "--targets", n.http, "--frobnicate"},
	}
	for _, args := range bad {
		start := time.Now()
		code, _, stderr := runCLI(t, args...)
		if code != 2 || strings.Count(strings.TrimSpace(stderr), "\n") != 0 || time.Since(start) > 10*time.Second {
			t.Errorf("%v: exit %d after %s, stderr %q", args, code, time.Since(start).Round(time.Millisecond), stderr)
		}
	}

	// sha256 with rounds 0 is a tool error on every call: counted.
	code, stdout, stderr := runCLI(t, "bench", "--targets", n.http+","+c.nodes[1].http, "--tool", "sha256",
		"--args", `{"text":"x","rounds":0}`, "--calls", "50", "--concurrency", "4", "--json")
	if code != 0 {
		t.Fatalf("run with failing calls: exit %d: %s", code, stderr)
	}
	var res struct {
		OK     int
		Errors map[string]int
	}
	if err := json.Unmarshal([]byte(stdout), &res); err != nil {
		t.Fatalf("result JSON: %v\n%s", err, stdout)
	}
	if res.OK != 0 || res.Errors["tool_error"] != 50 {
		t.Fatalf("want 50 tool errors, got %+v", res)
	}

	code, stdout, stderr = runCLI(t, "bench", "--targets", n.http, "--scenario", "cache-set", "--calls", "200", "--concurrency", "8")
	if code != 0 || !strings.Contains(stdout, "200 ok, 0 errors") {
		t.Fatalf("cache-set run: exit %d\n%s%s", code, stdout, stderr)
	}
}
