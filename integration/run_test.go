package integration

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// `mcpcluster agent --dev` needs nothing else: it bootstraps alone, takes
// writes, and removes its temporary data dir on exit.
func TestDevMode(t *testing.T) {
	n := newNode(t, "dev", "--dev")
	n.dataDir = ""
	n.start()
	waitFor(t, 20*time.Second, func() error {
		st, err := n.status()
		if err != nil {
			return err
		}
		if !st.Ready {
			return fmt.Errorf("not ready: %s", st.ReadyError)
		}
		return nil
	})
	n.mustPut("k", "v")
	if code := n.stop(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// syncBuffer is a bytes.Buffer safe for a process writer and a reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// `mcpcluster local` (what `make run` starts) runs a secured 3-node cluster
// (TLS, gossip key and admin token made in its data dir), prints its
// endpoints and admin token, and stops every node on Ctrl-C.
func TestLocalCluster(t *testing.T) {
	// Ten consecutive free ports per node, searched below the ephemeral
	// range, where nothing else picks ports at random.
	base := 0
	for i := range 200 {
		if p := 20000 + 10*((os.Getpid()+i*37)%1000); portsFree(p, 30) {
			base = p
			break
		}
	}
	if base == 0 {
		t.Fatal("no run of 30 free ports found")
	}
	var out syncBuffer
	dataDir := t.TempDir()
	cmd := exec.Command(binary, "local", "--base-port", fmt.Sprint(base), "--data-dir", dataDir)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	nodes := make([]*node, 3)
	for i := range nodes {
		nodes[i] = &node{t: t, id: fmt.Sprintf("node%d", i+1), http: fmt.Sprintf("127.0.0.1:%d", base+10*i)}
	}
	var token string
	waitFor(t, 30*time.Second, func() error {
		b, err := os.ReadFile(filepath.Join(dataDir, "admin.token"))
		token = strings.TrimSpace(string(b))
		return err
	})
	for _, nd := range nodes {
		nd.token = token
	}
	c := &testCluster{t: t, nodes: nodes}
	c.waitStable(30*time.Second, nodes, c.ids()...)
	if !strings.Contains(out.String(), "MCPCLUSTER_ADMIN_TOKEN="+token+"\n") {
		t.Errorf("admin token not printed:\n%s", out.String())
	}
	noToken := &http.Client{Timeout: 10 * time.Second}
	if resp, err := noToken.Get("http://" + nodes[0].http + "/v1/status"); err != nil {
		t.Error(err)
	} else if resp.Body.Close(); resp.StatusCode == http.StatusOK {
		t.Error("/v1/status answers without the admin token")
	}
	for _, f := range []string{"mcpcluster-ca.pem", "node1.pem", "node3-key.pem"} {
		if _, err := os.Stat(filepath.Join(dataDir, "tls", f)); err != nil {
			t.Error(err)
		}
	}
	for i := range nodes {
		if want := fmt.Sprintf("http://127.0.0.1:%d", base+10*i); !strings.Contains(out.String(), want) {
			t.Errorf("endpoint %s not printed:\n%s", want, out.String())
		}
	}
	_ = cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("local exited with %v:\n%s", err, out.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("local did not stop on SIGINT:\n%s", out.String())
	}
	if got := strings.Count(out.String(), "exited: exit status 0"); got != 3 {
		t.Fatalf("%d of 3 nodes exited cleanly:\n%s", got, out.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, _, err := nodes[0].get(ctx, "x", "stale"); err == nil {
		t.Fatal("node1 still answers after Ctrl-C")
	}
}
