package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

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

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	addr := func(i, off int) string { return fmt.Sprintf("127.0.0.1:%d", *basePort+10*i+off) }
	var joins []string
	for i := 0; i < *nodes; i++ {
		joins = append(joins, "--join", addr(i, 2))
	}
	var (
		wg    sync.WaitGroup
		procs []*exec.Cmd
	)
	fmt.Fprintf(stdout, "Starting %d mcpcluster nodes (data in %s):\n", *nodes, *dataDir)
	for i := 0; i < *nodes; i++ {
		id := fmt.Sprintf("node%d", i+1)
		args := append([]string{"agent",
			"--node-id", id,
			"--data-dir", filepath.Join(*dataDir, id),
			"--http-addr", addr(i, 0),
			"--rpc-addr", addr(i, 1),
			"--gossip-addr", addr(i, 2),
			"--bootstrap-expect", fmt.Sprint(*nodes),
			"--gossip-profile", "local",
			"--dead-server-timeout", "30s",
			"--log-level", *logLevel,
		}, joins...)
		cmd := exec.Command(self, args...)
		cmd.Stdout = prefixWriter(stdout, id)
		cmd.Stderr = prefixWriter(stderr, id)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // Ctrl-C reaches us, and we stop the nodes
		if err := cmd.Start(); err != nil {
			stopAll(procs)
			return fmt.Errorf("start %s: %w", id, err)
		}
		procs = append(procs, cmd)
		fmt.Fprintf(stdout, "  %s  pid %-7d http://%s  (status: mcpcluster status --http-addr %s)\n", id, cmd.Process.Pid, addr(i, 0), addr(i, 0))
		wg.Add(1)
		go func(id string, cmd *exec.Cmd) {
			defer wg.Done()
			err := cmd.Wait()
			fmt.Fprintf(stdout, "%s exited: %v\n", id, exitText(err))
		}(id, cmd)
	}
	fmt.Fprintln(stdout, "Press Ctrl-C to stop all nodes.")
	<-ctx.Done()
	fmt.Fprintln(stdout, "stopping nodes...")
	stopAll(procs)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		for _, p := range procs {
			_ = p.Process.Kill()
		}
		<-done
	}
	return nil
}

func stopAll(procs []*exec.Cmd) {
	for _, p := range procs {
		_ = p.Process.Signal(syscall.SIGTERM)
	}
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
