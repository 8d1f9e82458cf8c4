package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// localCluster is a cluster of child `mcpcluster agent` processes on
// loopback: node i listens on base+10*i (HTTP), +1 (cluster), +2 (gossip).
type localCluster struct {
	self     string
	n        int
	basePort int
	dataDir  string
	extra    []string // flags every node gets
	stdout   io.Writer
	stderr   io.Writer

	mu    sync.Mutex
	procs []*exec.Cmd
	wg    sync.WaitGroup
}

func (lc *localCluster) addr(i, off int) string {
	return fmt.Sprintf("127.0.0.1:%d", lc.basePort+10*i+off)
}

func (lc *localCluster) id(i int) string { return fmt.Sprintf("node%d", i+1) }

// start launches every node.
func (lc *localCluster) start() error {
	lc.procs = make([]*exec.Cmd, lc.n)
	for i := range lc.n {
		if err := lc.startNode(i); err != nil {
			lc.stop(10 * time.Second)
			return err
		}
	}
	return nil
}

// startNode launches node i (again).
func (lc *localCluster) startNode(i int) error {
	args := []string{"agent",
		"--node-id", lc.id(i),
		"--data-dir", filepath.Join(lc.dataDir, lc.id(i)),
		"--http-addr", lc.addr(i, 0),
		"--rpc-addr", lc.addr(i, 1),
		"--gossip-addr", lc.addr(i, 2),
		"--bootstrap-expect", fmt.Sprint(lc.n),
	}
	for j := range lc.n {
		args = append(args, "--join", lc.addr(j, 2))
	}
	cmd := exec.Command(lc.self, append(args, lc.extra...)...)
	cmd.Stdout = prefixWriter(lc.stdout, lc.id(i))
	cmd.Stderr = prefixWriter(lc.stderr, lc.id(i))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C reaches us, and we stop the nodes
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", lc.id(i), err)
	}
	lc.mu.Lock()
	lc.procs[i] = cmd
	lc.mu.Unlock()
	lc.wg.Add(1)
	go func() {
		defer lc.wg.Done()
		err := cmd.Wait()
		fmt.Fprintf(lc.stdout, "%s exited: %v\n", lc.id(i), exitText(err))
	}()
	return nil
}

// pid returns node i's process id.
func (lc *localCluster) pid(i int) int {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	return lc.procs[i].Process.Pid
}

// waitReady waits until every node answers /readyz.
func (lc *localCluster) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for i := 0; i < lc.n; {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+lc.addr(i, 0)+"/readyz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				i++
				continue
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s", lc.id(i), timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// stop sends SIGTERM to every node, then SIGKILL after timeout.
func (lc *localCluster) stop(timeout time.Duration) {
	lc.mu.Lock()
	for _, p := range lc.procs {
		if p != nil {
			_ = p.Process.Signal(syscall.SIGTERM)
		}
	}
	lc.mu.Unlock()
	done := make(chan struct{})
	go func() { lc.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(timeout):
		lc.mu.Lock()
		for _, p := range lc.procs {
			if p != nil {
				_ = p.Process.Kill()
			}
		}
		lc.mu.Unlock()
		<-done
	}
}

// runLocal starts a local cluster of child `mcpcluster agent` processes on
// loopback, prints their endpoints, and stops them all on Ctrl-C.
func runLocal(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("local", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	nodes := fs.Int("nodes", 3, "number of nodes")
	dataDir := fs.String("data-dir", "data/local", "parent directory of the nodes' data dirs (kept between runs)")
	basePort := fs.Int("base-port", 8700, "node i listens on base+10*i (HTTP), +1 (RPC), +2 (gossip)")
	logLevel := fs.String("log-level", "warn", "log level of the nodes")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stderr)
			fs.PrintDefaults()
			return err
		}
		return usageError{err}
	}
	if *nodes < 1 || *nodes > 9 {
		return usagef("-nodes %d: want 1 to 9", *nodes)
	}
	if *basePort < 1024 || *basePort+10**nodes > 65535 {
		return usagef("-base-port %d: out of range", *basePort)
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("find own executable: %w", err)
	}
	ctx, stop := signalContext()
	defer stop()

	lc := &localCluster{self: self, n: *nodes, basePort: *basePort, dataDir: *dataDir, stdout: stdout, stderr: stderr,
		extra: []string{"--gossip-profile", "local", "--dead-server-timeout", "30s", "--log-level", *logLevel}}
	fmt.Fprintf(stdout, "Starting %d mcpcluster nodes (data in %s):\n", *nodes, *dataDir)
	if err := lc.start(); err != nil {
		return err
	}
	for i := range lc.n {
		fmt.Fprintf(stdout, "  %s  pid %-7d http://%s  (status: mcpcluster status --http-addr %s)\n", lc.id(i), lc.pid(i), lc.addr(i, 0), lc.addr(i, 0))
	}
	fmt.Fprintln(stdout, "Press Ctrl-C to stop all nodes.")
	<-ctx.Done()
	fmt.Fprintln(stdout, "stopping nodes...")
	lc.stop(15 * time.Second)
	return nil
}

// signalContext is cancelled by SIGINT or SIGTERM.
func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// prefixWriter prefixes each line written to w with the node id.
func prefixWriter(w io.Writer, id string) io.Writer {
	return &linePrefixer{w: w, prefix: "[" + id + "] "}
}

type linePrefixer struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
	buf    []byte
}

func (l *linePrefixer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		if _, err := fmt.Fprintf(l.w, "%s%s\n", l.prefix, l.buf[:i]); err != nil {
			return len(p), err
		}
		l.buf = l.buf[i+1:]
	}
}
