package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"

	"github.com/mcpcluster/mcpcluster/cluster"
)

const keyringUsage = `Usage: mcpcluster keyring <list|install|use|remove> [flags] [KEY]

Gossip encryption keys of every alive node.
Rotate a key: install the new one, use it, then remove the old one.

  list           every node's primary key and installed keys
  install KEY    add KEY (base64, from mcpcluster keygen) on every node
  use KEY        make the installed KEY the one that encrypts, on every node
  remove KEY     remove KEY (not the primary) from every node

  --http-addr ADDR   a node (env MCPCLUSTER_HTTP_ADDR; default 127.0.0.1:8700)
  --token TOKEN      admin write token (env MCPCLUSTER_ADMIN_TOKEN)
  --json             print the raw JSON answer
`

// runKeyring is `mcpcluster keyring`: a thin client of /v1/operator/keyring.
func runKeyring(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") && args[0] != "-h" && args[0] != "--help" {
		return usagef("missing subcommand (list, install, use or remove)")
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, keyringUsage)
		return nil
	}
	op := args[0]
	c, pos, err := parseClientArgs("keyring "+op, args[1:], stderr)
	if err != nil {
		return err
	}
	var method, path string
	var body []byte
	switch op {
	case "list":
		if len(pos) > 0 {
			return usagef("keyring list takes no key, got %q", pos[0])
		}
		method, path = http.MethodGet, "/v1/operator/keyring"
	case "install", "use", "remove":
		if len(pos) != 1 {
			return usagef("keyring %s needs one KEY (base64, as mcpcluster keygen prints)", op)
		}
		if _, err := cluster.ParseGossipKey(pos[0]); err != nil {
			return usagef("keyring %s: %v", op, strings.TrimPrefix(err.Error(), cluster.ErrInvalid.Error()+": "))
		}
		method, path = http.MethodPost, "/v1/operator/keyring/"+op
		body, _ = json.Marshal(map[string]string{"key": pos[0]})
	default:
		return usagef("unknown keyring subcommand %q (list, install, use or remove)", op)
	}

	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.url(path), bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	setToken(req, c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("node at %s: %w", c.addr, err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	var kr cluster.KeyringResponse
	if resp.StatusCode != http.StatusOK && (resp.StatusCode != http.StatusInternalServerError || json.Unmarshal(raw, &kr) != nil || len(kr.Nodes) == 0) {
		return apiError(c.addr, resp, raw)
	}
	if err := json.Unmarshal(raw, &kr); err != nil {
		return fmt.Errorf("decode keyring answer: %w", err)
	}
	if c.json {
		if _, err := stdout.Write(raw); err != nil {
			return err
		}
	} else {
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tPRIMARY\tKEYS\tERROR")
		for _, n := range kr.Nodes {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Node, n.Primary, strings.Join(n.Keys, ","), n.Error)
		}
		tw.Flush()
	}
	if kr.Failed > 0 {
		return fmt.Errorf("keyring %s failed on %d of %d nodes", op, kr.Failed, len(kr.Nodes))
	}
	return nil
}
