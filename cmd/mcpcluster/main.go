// Command mcpcluster runs and operates an mcpcluster node.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/mcpcluster/mcpcluster/mcp"
)

const usage = `Usage: mcpcluster <command> [flags]

Commands:
  agent     run a node (see mcpcluster agent -h)
  local     run a local 3-node cluster on loopback until Ctrl-C
  status    print a node's view of the cluster
  members   print the cluster's members with status and load
  tools     print the cluster's tool catalog with each tool's holders
  cache     get, set, delete and list keys of the shared cache
  bench     load-test running nodes (bench suite: the standard report)
  leave     make a node leave the cluster gracefully and exit
  operator  raft list-peers, raft remove-peer ID (only while quorum holds)
  health    exit 0 when a node is ready (/readyz), 1 otherwise: for health checks
  tls       create a cluster CA and node certificates (tls ca create, tls cert create)
  keygen    print a new gossip encryption key
  keyring   list, install, use and remove gossip keys on every node
  secrets   make a cluster's absent secrets in a directory (secrets init)
  snapshot  save, restore and inspect snapshots of the cluster's state
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes one command and returns the process exit status:
// 0 success, 1 failure, 2 bad usage (flags, config, addresses).
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "agent":
		err = runAgent(args[1:], stderr)
	case "local":
		err = runLocal(args[1:], stdout, stderr)
	case "status":
		err = runStatus(args[1:], stdout, stderr)
	case "members":
		err = runMembers(args[1:], stdout, stderr)
	case "bench":
		err = runBench(args[1:], stdout, stderr)
	case "cache":
		err = runCache(args[1:], os.Stdin, stdout, stderr)
	case "tools":
		err = runTools(args[1:], stdout, stderr)
	case "operator":
		err = runOperator(args[1:], stdout, stderr)
	case "health":
		err = runHealth(args[1:], stdout, stderr)
	case "leave":
		err = runLeave(args[1:], stdout, stderr)
	case "tls":
		err = runTLS(args[1:], stdout, stderr)
	case "secrets":
		err = runSecrets(args[1:], stdout, stderr)
	case "keyring":
		err = runKeyring(args[1:], stdout, stderr)
	case "keygen":
		err = runKeygen(args[1:], stdout, stderr)
	case "snapshot":
		err = runSnapshot(args[1:], stdout, stderr)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = usagef("unknown command %q (run mcpcluster help)", args[0])
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "mcpcluster %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "mcpcluster %s: %v\n", args[0], err)
		return 1
	}
}

func newLogger(w io.Writer, level, format string) *slog.Logger {
	l, _ := parseLevel(level)
	opts := &slog.HandlerOptions{Level: l}
	// Lines logged with a traced call's context carry its trace_id and span_id.
	if format == "json" {
		return slog.New(mcp.LogHandler(slog.NewJSONHandler(w, opts)))
	}
	return slog.New(mcp.LogHandler(slog.NewTextHandler(w, opts)))
}

func runAgent(args []string, stderr io.Writer) error {
	cfg, err := parseAgentConfig(args, os.Getenv, stderr)
	if err != nil {
		return err
	}
	logger := newLogger(stderr, cfg.LogLevel, cfg.LogFormat)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	agent, err := NewAgent(cfg, logger)
	if err != nil {
		return err
	}
	go func() {
		// A second signal stops at once.
		<-ctx.Done()
		stop()
		ch := make(chan os.Signal, 1)
		signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
		<-ch
		logger.Warn("second signal: exiting now")
		os.Exit(1)
	}()
	return agent.Run(ctx)
}
