package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"text/tabwriter"

	"github.com/mcpcluster/mcpcluster/cluster"
)

const operatorUsage = `Usage: mcpcluster operator raft <list-peers|remove-peer> [flags] [ID]

  list-peers       the raft configuration: suffrage, leader, health
  remove-peer ID   remove server ID (a dead one) through the leader, only
                   while the healthy voters left are a majority

  --http-addr ADDR   a node (env MCPCLUSTER_HTTP_ADDR; default 127.0.0.1:8700)
  --token TOKEN      admin token (env MCPCLUSTER_ADMIN_TOKEN): read for
                     list-peers, write for remove-peer
  --json             print the raw JSON answer
`

// runOperator is `mcpcluster operator raft ...`: the raft configuration.
func runOperator(args []string, stdout, stderr io.Writer) error {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprint(stdout, operatorUsage)
		return nil
	}
	if len(args) < 2 || args[0] != "raft" {
		return usagef("usage: mcpcluster operator raft <list-peers|remove-peer> [flags] [ID]")
	}
	sub := args[1]
	c, pos, err := parseClientArgs("operator raft "+sub, args[2:], stderr)
	if err != nil {
		return err
	}
	switch sub {
	case "list-peers":
		if len(pos) > 0 {
			return usagef("list-peers takes no argument, got %q", pos[0])
		}
		body, err := c.call(http.MethodGet, "/v1/operator/raft/peers")
		if err != nil {
			return err
		}
		if c.json {
			_, err = stdout.Write(body)
			return err
		}
		var resp struct{ Peers []cluster.RaftPeer }
		if err := json.Unmarshal(body, &resp); err != nil {
			return fmt.Errorf("decode peers: %w", err)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tADDRESS\tSUFFRAGE\tLEADER\tHEALTHY\tGOSSIP")
		for _, p := range resp.Peers {
			gossip := p.Gossip
			if gossip == "" {
				gossip = "-"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%t\t%s\n", p.ID, p.Address, p.Suffrage, p.Leader, p.Healthy, gossip)
		}
		return tw.Flush()
	case "remove-peer":
		if len(pos) != 1 {
			return usagef("remove-peer needs one node ID")
		}
		if _, err := c.call(http.MethodPost, "/v1/operator/raft/remove-peer?id="+url.QueryEscape(pos[0])); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "removed %s from the raft configuration\n", pos[0])
		return nil
	}
	return usagef("unknown operator raft subcommand %q (list-peers or remove-peer)", sub)
}
