package integration

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client/transport"
)

// composeCluster is deploy/compose.yaml brought up under its own project
// name, image, ports and network, so it never meets a developer's own.
type composeCluster struct {
	t       *testing.T
	root    string
	project string
	env     []string
	ports   [3]int
	token   string
}

func (cc *composeCluster) compose(args ...string) (string, error) {
	cmd := exec.Command("docker-compose", append([]string{"-f", filepath.Join(cc.root, "deploy", "compose.yaml"), "-p", cc.project}, args...)...)
	cmd.Env = append(os.Environ(), cc.env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (cc *composeCluster) mustCompose(args ...string) string {
	cc.t.Helper()
	out, err := cc.compose(args...)
	if err != nil {
		cc.t.Fatalf("docker-compose %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (cc *composeCluster) url(i int, path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", cc.ports[i], path)
}

// do calls node i's HTTP port with the cluster's admin token.
func (cc *composeCluster) do(i int, method, path, body string) (int, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, cc.url(i, path), strings.NewReader(body))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+cc.token)
	resp, err := (&http.Client{}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func (cc *composeCluster) waitReady(i int, timeout time.Duration) {
	cc.t.Helper()
	waitFor(cc.t, timeout, func() error {
		resp, err := http.Get(cc.url(i, "/readyz"))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("node%d: /readyz %s", i+1, resp.Status)
		}
		return nil
	})
}

// echo calls the echo tool through node i with a fresh MCP session.
func (cc *composeCluster) echo(i int, text string) error {
	cl := mcpgoClient(cc.t, cc.url(i, "/mcp"), legacy, transport.WithHTTPTimeout(10*time.Second))
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, _, err := callTool(ctx, cl, "echo", map[string]any{"text": text})
	if err == nil && got != text {
		err = fmt.Errorf("echo answered %q", got)
	}
	return err
}

// Deploy acceptance 1: the compose cluster for real: image, secured
// cluster from one command, MCP through every published port, a node
// killed and restarted with its data, everything removed afterwards.
func TestComposeCluster(t *testing.T) {
	if _, err := exec.LookPath("docker-compose"); err != nil {
		t.Skip("docker-compose is not installed; skipping the compose test")
	}
	if out, err := exec.Command("docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		t.Skipf("Docker is not available; skipping the compose test: %v %s", err, strings.TrimSpace(string(out)))
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	tag := hex.EncodeToString(b[:])
	_, file, _, _ := runtime.Caller(0)
	cc := &composeCluster{t: t, root: filepath.Dir(filepath.Dir(file)), project: "mcpctest" + tag}
	image := "mcpcluster-compose-test:" + tag
	for i := range cc.ports {
		cc.ports[i] = freePort(t)
	}
	cc.env = []string{"MCPCLUSTER_IMAGE=" + image, fmt.Sprintf("MCPCLUSTER_SUBNET=172.30.%d", 10+int(b[0])%200),
		fmt.Sprintf("MCPCLUSTER_HTTP_PORT1=%d", cc.ports[0]), fmt.Sprintf("MCPCLUSTER_HTTP_PORT2=%d", cc.ports[1]),
		fmt.Sprintf("MCPCLUSTER_HTTP_PORT3=%d", cc.ports[2])}

	build := exec.Command("make", "image", "IMAGE="+image)
	build.Dir = cc.root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("make image: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("docker", "rmi", "-f", image).Run() })
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := cc.compose("logs", "--tail", "30")
			t.Logf("compose logs:\n%s", out)
		}
		out, err := cc.compose("down", "-v", "--remove-orphans")
		if err != nil {
			t.Errorf("docker-compose down: %v\n%s", err, out)
		}
		// Nothing of the project is left: containers, volumes, network.
		if out, _ := exec.Command("docker", "volume", "ls", "-q", "--filter", "name="+cc.project).CombinedOutput(); strings.TrimSpace(string(out)) != "" {
			t.Errorf("volumes left after down -v: %s", out)
		}
	})

	cc.mustCompose("up", "-d")
	for i := range cc.ports {
		cc.waitReady(i, 90*time.Second)
	}
	cmd := exec.Command("docker-compose", "-f", filepath.Join(cc.root, "deploy", "compose.yaml"), "-p", cc.project, "run", "--rm", "-T", "token")
	cmd.Env = append(os.Environ(), cc.env...)
	out, err := cmd.Output() // the token alone, without compose's progress lines
	if err != nil {
		t.Fatalf("docker-compose run token: %v", err)
	}
	cc.token = strings.TrimSpace(string(out))
	if lines := strings.Split(cc.token, "\n"); len(cc.token) < 16 || len(lines) != 1 {
		t.Fatalf("token service printed %q", cc.token)
	}
	// The admin API needs the token; with it, the cluster has three voters.
	if code, _, _ := cc.do(0, "GET", "/v1/status", ""); code != http.StatusOK {
		t.Fatalf("status with the token: %d", code)
	}
	resp, err := http.Get(cc.url(0, "/v1/status"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status without a token: %s", resp.Status)
	}

	for i := range cc.ports {
		if err := cc.echo(i, fmt.Sprintf("via node%d", i+1)); err != nil {
			t.Fatalf("MCP call through node%d's port: %v", i+1, err)
		}
	}
	if code, body, err := cc.do(0, "PUT", "/v1/cache/compose-key", "before-kill"); err != nil || code != http.StatusOK {
		t.Fatalf("cache write: %d %s %v", code, body, err)
	}

	// Kill node2's container: the other two keep serving.
	cc.mustCompose("kill", "node2")
	for _, i := range []int{0, 2} {
		waitFor(t, 20*time.Second, func() error { return cc.echo(i, "still here") })
		waitFor(t, 20*time.Second, func() error {
			code, body, err := cc.do(i, "PUT", fmt.Sprintf("/v1/cache/after-kill-%d", i), "v")
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("write through node%d with node2 down: %d %s %v", i+1, code, body, err)
			}
			return nil
		})
	}

	// Restart it: it rejoins with its data and catches up.
	cc.mustCompose("start", "node2")
	cc.waitReady(1, 90*time.Second)
	for _, key := range []string{"compose-key", "after-kill-0", "after-kill-2"} {
		waitFor(t, 20*time.Second, func() error {
			code, body, err := cc.do(1, "GET", "/v1/cache/"+key+"?consistency=stale", "")
			if err != nil || code != http.StatusOK {
				return fmt.Errorf("node2 reads %s: %d %s %v", key, code, body, err)
			}
			return nil
		})
	}
	if err := cc.echo(1, "back"); err != nil {
		t.Fatalf("MCP call through node2 after its restart: %v", err)
	}
	code, body, err := cc.do(1, "GET", "/v1/status", "")
	if err != nil || code != http.StatusOK || strings.Count(body, `"Voter"`) != 3 {
		t.Fatalf("node2's status after restart: %d %s %v", code, body, err)
	}
}
