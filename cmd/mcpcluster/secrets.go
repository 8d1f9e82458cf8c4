package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// runSecrets is `mcpcluster secrets init --dir DIR --node ID...`: it makes
// whatever is absent of a cluster's secrets in DIR, as `mcpcluster local`
// does in its data dir: tls/ with the CA and one certificate per node,
// gossip.key and admin.token. Existing files are kept (and checked), so a
// one-shot init container may run it on every start.
func runSecrets(args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "show-token" {
		return runShowToken(args[1:], stdout, stderr)
	}
	if len(args) == 0 || args[0] != "init" {
		return usagef("usage: mcpcluster secrets init --dir DIR --node ID [--node ID]... | secrets show-token --dir DIR")
	}
	fs := flag.NewFlagSet("secrets init", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("dir", "", "directory of the secrets (tls/, gossip.key, admin.token)")
	var nodes []string
	fs.Func("node", "a node id to make a certificate for (repeatable)", func(v string) error {
		nodes = append(nodes, v)
		return nil
	})
	if err := parseFlags(fs, args[1:], stderr); err != nil {
		return err
	}
	switch {
	case *dir == "":
		return usagef("-dir is required")
	case len(nodes) == 0:
		return usagef("at least one -node is required")
	}
	sec, created, err := setupLocalSecurity(*dir, nodes)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: %d files created, the others kept (certificates in %s, gossip key in %s, admin token in %s)\n",
		*dir, created, sec.tlsDir, filepath.Join(*dir, localGossipKey), sec.tokenFile)
	return nil
}

// runShowToken is `mcpcluster secrets show-token --dir DIR`: it prints the
// admin token that `secrets init` made (images have no cat).
func runShowToken(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("secrets show-token", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	dir := fs.String("dir", "", "directory of the secrets")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *dir == "" {
		return usagef("usage: mcpcluster secrets show-token --dir DIR")
	}
	b, err := os.ReadFile(filepath.Join(*dir, localTokenFile))
	if err != nil {
		return fmt.Errorf("read admin token: %w", err)
	}
	_, err = fmt.Fprintln(stdout, strings.TrimSpace(string(b)))
	return err
}
