package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// clientFlags are the flags every API-calling command shares.
type clientFlags struct {
	addr    string
	json    bool
	timeout time.Duration
	token   cluster.Token
}

const tokenUsage = "admin API token (default: env MCPCLUSTER_ADMIN_TOKEN)"

// tokenFlag registers --token on fs; the returned func gives its value, or
// MCPCLUSTER_ADMIN_TOKEN when the flag is not set. (The env value is not
// the flag's default, so -h does not print it.)
func tokenFlag(fs *flag.FlagSet) func() cluster.Token {
	var tok string
	fs.StringVar(&tok, "token", "", tokenUsage)
	return func() cluster.Token {
		if tok == "" {
			tok = os.Getenv("MCPCLUSTER_ADMIN_TOKEN")
		}
		return cluster.Token(tok)
	}
}

// setToken adds the admin token to req, if there is one.
func setToken(req *http.Request, tok cluster.Token) {
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+string(tok))
	}
}

// apiError is the error of a non-2xx answer: the node's JSON error in one
// line, with a hint on 401 and 403.
func apiError(addr string, resp *http.Response, body []byte) error {
	var e struct{ Error string }
	msg := resp.Status
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		msg = strings.ReplaceAll(e.Error, "\n", " ")
	}
	switch resp.StatusCode {
	case http.StatusUnauthorized:
		return fmt.Errorf("node at %s: %s (HTTP 401; pass --token or set MCPCLUSTER_ADMIN_TOKEN)", addr, msg)
	case http.StatusForbidden:
		return fmt.Errorf("node at %s: %s (HTTP 403)", addr, msg)
	}
	return fmt.Errorf("node at %s: %s", addr, msg)
}

func parseClientFlags(name string, args []string, stderr io.Writer) (clientFlags, error) {
	c, pos, err := parseClientArgs(name, args, stderr)
	if err == nil && len(pos) > 0 {
		return c, usagef("unexpected argument %q", pos[0])
	}
	return c, err
}

// parseClientArgs parses the shared client flags, which may come before
// or after positional arguments, and returns the positional ones.
func parseClientArgs(name string, args []string, stderr io.Writer) (clientFlags, []string, error) {
	var c clientFlags
	def := os.Getenv("MCPCLUSTER_HTTP_ADDR")
	if def == "" {
		def = "127.0.0.1:8700"
	}
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.StringVar(&c.addr, "http-addr", def, "HTTP address of a node (env MCPCLUSTER_HTTP_ADDR)")
	fs.BoolVar(&c.json, "json", false, "print the raw JSON answer")
	fs.DurationVar(&c.timeout, "timeout", 10*time.Second, "how long to wait for the node")
	token := tokenFlag(fs)
	fs.SetOutput(io.Discard)
	pos, err := parseFlagsArgs(fs, args, stderr)
	if err != nil {
		return c, nil, err
	}
	if err := checkHostPort(strings.TrimPrefix(c.addr, "http://"), false); err != nil {
		return c, nil, usagef("-http-addr %q: %v", c.addr, err)
	}
	c.token = token()
	return c, pos, nil
}

// parseFlags parses args into fs; -h prints the flags, anything else
// wrong (including a positional argument) is a usageError.
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	pos, err := parseFlagsArgs(fs, args, stderr)
	if err == nil && len(pos) > 0 {
		err = usagef("unexpected argument %q", pos[0])
	}
	return err
}

// parseFlagsArgs parses args into fs, flags before or after positional
// arguments, and returns the positional ones; -h prints the flags, a bad
// flag is a usageError.
func parseFlagsArgs(fs *flag.FlagSet, args []string, stderr io.Writer) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fs.SetOutput(stderr)
				fs.PrintDefaults()
				return nil, err
			}
			return nil, usageError{err}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}

func (c clientFlags) url(path string) string {
	return "http://" + strings.TrimPrefix(c.addr, "http://") + path
}

// call sends one request to the node's API and returns the body of a 2xx answer.
func (c clientFlags) call(method, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, c.url(path), nil)
	if err != nil {
		return nil, err
	}
	setToken(req, c.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("node at %s: %w", c.addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		return nil, apiError(c.addr, resp, body)
	}
	return body, nil
}

func fetchStatus(c clientFlags) (cluster.Status, []byte, error) {
	var st cluster.Status
	body, err := c.call(http.MethodGet, "/v1/status")
	if err != nil {
		return st, nil, err
	}
	if err := json.Unmarshal(body, &st); err != nil {
		return st, nil, fmt.Errorf("decode status: %w", err)
	}
	return st, body, nil
}

func runStatus(args []string, stdout, stderr io.Writer) error {
	c, err := parseClientFlags("status", args, stderr)
	if err != nil {
		return err
	}
	st, body, err := fetchStatus(c)
	if err != nil {
		return err
	}
	if c.json {
		_, err = stdout.Write(body)
		return err
	}
	leader := st.Leader.ID
	if leader == "" {
		leader = "(none)"
	}
	ready := "yes"
	if !st.Ready {
		ready = "no: " + st.ReadyError
	}
	fmt.Fprintf(stdout, "Node:          %s\n", st.Node)
	fmt.Fprintf(stdout, "Leader:        %s %s\n", leader, st.Leader.HTTPAddr)
	fmt.Fprintf(stdout, "Raft state:    %s\n", st.Raft.State)
	fmt.Fprintf(stdout, "Term:          %d\n", st.Raft.Term)
	fmt.Fprintf(stdout, "Last index:    %d (commit %d, applied %d)\n", st.Raft.LastIndex, st.Raft.CommitIndex, st.Raft.AppliedIndex)
	fmt.Fprintf(stdout, "Ready:         %s\n", ready)
	fmt.Fprintf(stdout, "State:         %d nodes, %d tools, %d sessions, %d cache entries\n", st.FSM.Nodes, st.FSM.Tools, st.FSM.Sessions, st.FSM.CacheEntries)
	fmt.Fprintf(stdout, "Voters:        %d (%d healthy) of %d wanted, max %d; %d non-voters\n", st.Voters.Voters, st.Voters.HealthyVoters, st.Voters.Wanted, st.Voters.MaxVoters, st.Voters.Nonvoters)
	if st.Voters.Warning != "" {
		fmt.Fprintf(stdout, "Warning:       %s\n", st.Voters.Warning)
	}
	fmt.Fprintln(stdout, "Servers:")
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	for _, s := range st.Servers {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", s.ID, s.Address, s.Suffrage)
	}
	tw.Flush()
	fmt.Fprintln(stdout, "Members:")
	printMembers(stdout, st)
	return nil
}

func printMembers(w io.Writer, st cluster.Status) {
	voters := map[string]string{}
	for _, s := range st.Servers {
		voters[s.ID] = strings.ToLower(s.Suffrage)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tHTTP\tRPC\tGOSSIP\tSTATE\tSTATUS\tRAFT\tZONE\tLOAD")
	for _, m := range st.Members {
		role := voters[m.ID]
		if role == "" {
			role = "-"
		}
		if m.ID == st.Leader.ID {
			role = "leader"
		}
		if m.NoVote {
			role += " (pinned)"
		}
		zone := m.Zone
		if zone == "" {
			zone = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\n", m.ID, m.HTTPAddr, m.RPCAddr, m.Gossip, m.State, m.Status, role, zone, m.InFlight, m.Capacity)
	}
	tw.Flush()
}

func runMembers(args []string, stdout, stderr io.Writer) error {
	c, err := parseClientFlags("members", args, stderr)
	if err != nil {
		return err
	}
	st, _, err := fetchStatus(c)
	if err != nil {
		return err
	}
	if c.json {
		return json.NewEncoder(stdout).Encode(st.Members)
	}
	printMembers(stdout, st)
	return nil
}

func runLeave(args []string, stdout, stderr io.Writer) error {
	c, err := parseClientFlags("leave", args, stderr)
	if err != nil {
		return err
	}
	if c.timeout < 35*time.Second {
		c.timeout = 35 * time.Second
	}
	if _, err := c.call(http.MethodPost, "/v1/agent/leave"); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "node at %s left the cluster\n", c.addr)
	return nil
}

func runTools(args []string, stdout, stderr io.Writer) error {
	c, err := parseClientFlags("tools", args, stderr)
	if err != nil {
		return err
	}
	body, err := c.call(http.MethodGet, "/v1/catalog")
	if err != nil {
		return err
	}
	if c.json {
		_, err = stdout.Write(body)
		return err
	}
	var cat cluster.Catalog
	if err := json.Unmarshal(body, &cat); err != nil {
		return fmt.Errorf("decode catalog: %w", err)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOOL\tPROVIDER\tPLACEMENT\tHOLDERS")
	for _, t := range cat.Tools {
		placement := "everywhere"
		if t.Replicas > 0 {
			placement = fmt.Sprintf("replicas: %d", t.Replicas)
		}
		holders := strings.Join(t.Holders, ",")
		if holders == "" {
			holders = "(none)"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, t.Provider, placement, holders)
	}
	return tw.Flush()
}
