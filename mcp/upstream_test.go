package mcp

import (
	"context"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	mcplib "github.com/mark3labs/mcp-go/mcp"
)

func TestUpstreamEnv(t *testing.T) {
	environ := []string{
		"PATH=/usr/bin", "HOME=/home/n", "MCPCLUSTER_ADMIN_TOKEN=secret", "MCPCLUSTER_ENCRYPT=key",
		"AWS_SECRET_ACCESS_KEY=x", "LANG=C.UTF-8", "TZ=UTC", "EMPTY=",
	}
	got, err := upstreamEnv(environ, []string{"TZ=Europe/Oslo", "API_KEY=a", "API_KEY=b", "MCPCLUSTER_URL=http://n1"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"PATH=/usr/bin", "HOME=/home/n", "LANG=C.UTF-8", "TZ=Europe/Oslo", "API_KEY=b", "MCPCLUSTER_URL=http://n1"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("env\n got %q\nwant %q", got, want)
	}
	// Nothing inherited and nothing declared is an empty environment, not
	// nil (which exec reads as "inherit everything").
	if got, err := upstreamEnv([]string{"MCPCLUSTER_ADMIN_TOKEN=secret"}, nil); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("empty env: %q %v", got, err)
	}
	for _, bad := range []string{"NOVALUE", "=x"} {
		if _, err := upstreamEnv(nil, []string{bad}); err == nil {
			t.Errorf("declared %q accepted", bad)
		}
	}
}

// TestStdioUpstreamEnv runs examples/stdio-server as a stdio provider and
// asks it for its environment: none of the node's MCPCLUSTER_ secrets
// reach it, the declared entries do.
func TestStdioUpstreamEnv(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to build examples/stdio-server")
	}
	bin := filepath.Join(t.TempDir(), "stdio-server")
	if out, err := exec.Command(goBin, "build", "-o", bin, "github.com/mcpcluster/mcpcluster/examples/stdio-server").CombinedOutput(); err != nil {
		t.Fatalf("build stdio-server: %v\n%s", err, out)
	}
	t.Setenv("MCPCLUSTER_ADMIN_TOKEN", "admin-secret")
	t.Setenv("MCPCLUSTER_ENCRYPT", "gossip-key")
	t.Setenv("UNRELATED_NODE_VAR", "x")

	p, err := NewStdio("demo", []string{bin}, []string{"STDIO_TEST_MARK=1"}, discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	req := mcplib.CallToolRequest{}
	req.Params.Name = "env"
	res, err := p.Call(ctx, req)
	if err != nil || res.IsError {
		t.Fatalf("env tool: %+v %v", res, err)
	}
	names := strings.Split(res.Content[0].(mcplib.TextContent).Text, "\n")
	for _, name := range names {
		if strings.HasPrefix(name, "MCPCLUSTER_") || name == "UNRELATED_NODE_VAR" {
			t.Errorf("upstream inherited %s from the node", name)
		}
	}
	if !slices.Contains(names, "STDIO_TEST_MARK") || !slices.Contains(names, "PATH") {
		t.Errorf("upstream environment %q lacks the declared STDIO_TEST_MARK or PATH", names)
	}
}
