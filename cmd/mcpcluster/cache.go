package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

const cacheUsage = `Usage: mcpcluster cache <get|set|del|list> [flags] [KEY [VALUE]]

  get KEY            print the value (--consistency linearizable|default|stale)
  set KEY [VALUE]    write VALUE, or standard input without it (--ttl 30s, --cas N)
  del KEY            delete (--cas N)
  list               list keys (--prefix P, --after K, --limit N)

  --http-addr ADDR   a node (env MCPCLUSTER_HTTP_ADDR; default 127.0.0.1:8700)
  --token TOKEN      admin API token (env MCPCLUSTER_ADMIN_TOKEN); get and list
                     need read access, set and del write access
`

// runCache is `mcpcluster cache`: the shared cache from the command line.
func runCache(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	// The subcommand may come after flags: `cache --http-addr X get k`.
	sub := ""
	for i, a := range args {
		if a == "get" || a == "set" || a == "del" || a == "list" {
			sub, args = a, append(args[:i:i], args[i+1:]...)
			break
		}
	}
	if sub == "" {
		if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
			return usagef("unknown cache subcommand %q (get, set, del or list)", args[0])
		}
		return usagef("missing subcommand (get, set, del or list)")
	}
	fs := flag.NewFlagSet("cache "+sub, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	def := os.Getenv("MCPCLUSTER_HTTP_ADDR")
	if def == "" {
		def = "127.0.0.1:8700"
	}
	addr := fs.String("http-addr", def, "HTTP address of a node (env MCPCLUSTER_HTTP_ADDR)")
	consistency := fs.String("consistency", "", "read level: linearizable (default), default or stale")
	ttl := fs.Duration("ttl", 0, "set: lifetime of the entry")
	cas := fs.String("cas", "", "set/del: only at this version (0: only if absent)")
	prefix := fs.String("prefix", "", "list: keys starting with this")
	after := fs.String("after", "", "list: keys after this one")
	limit := fs.Int("limit", 100, "list: at most this many")
	timeout := fs.Duration("timeout", 10*time.Second, "how long to wait for the node")
	token := tokenFlag(fs)
	// Flags may come before or after the key.
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				fmt.Fprint(stderr, cacheUsage)
				return err
			}
			return usageError{err}
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if err := checkHostPort(strings.TrimPrefix(*addr, "http://"), false); err != nil {
		return usagef("-http-addr %q: %v", *addr, err)
	}
	if sub != "list" && len(pos) > 0 && pos[0] == "" {
		return usagef("empty key")
	}
	q := url.Values{}
	var method string
	var body io.Reader
	path := "/v1/cache"
	need := func(n int, what string) error {
		if len(pos) != n {
			return usagef("cache %s takes %s", sub, what)
		}
		return nil
	}
	switch sub {
	case "get":
		if err := need(1, "one KEY"); err != nil {
			return err
		}
		method, path = http.MethodGet, path+"/"+url.PathEscape(pos[0])
		if *consistency != "" {
			q.Set("consistency", *consistency)
		}
	case "set":
		if len(pos) != 1 && len(pos) != 2 {
			return usagef("cache set takes KEY and an optional VALUE (else standard input)")
		}
		method, path = http.MethodPut, path+"/"+url.PathEscape(pos[0])
		if len(pos) == 2 {
			body = strings.NewReader(pos[1])
		} else {
			body = stdin
		}
		if *ttl < 0 {
			return usagef("-ttl must be positive")
		}
		if *ttl > 0 {
			q.Set("ttl", ttl.String())
		}
		if *cas != "" {
			q.Set("cas", *cas)
		}
	case "del":
		if err := need(1, "one KEY"); err != nil {
			return err
		}
		method, path = http.MethodDelete, path+"/"+url.PathEscape(pos[0])
		if *cas != "" {
			q.Set("cas", *cas)
		}
	case "list":
		if err := need(0, "no arguments"); err != nil {
			return err
		}
		method = http.MethodGet
		q.Set("prefix", *prefix)
		q.Set("after", *after)
		q.Set("limit", fmt.Sprint(*limit))
		if *consistency != "" {
			q.Set("consistency", *consistency)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	u := "http://" + strings.TrimPrefix(*addr, "http://") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return err
	}
	setToken(req, token())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("node at %s: %w", *addr, err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		return apiError(*addr, resp, out)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error   string
			Version uint64
		}
		if json.Unmarshal(out, &e) == nil && e.Error != "" {
			if resp.StatusCode == http.StatusConflict {
				return fmt.Errorf("%s (current version %d)", e.Error, e.Version)
			}
			return errors.New(e.Error)
		}
		return fmt.Errorf("node at %s: %s", *addr, resp.Status)
	}
	switch sub {
	case "get":
		_, err = stdout.Write(out)
		if err == nil && len(out) > 0 && out[len(out)-1] != '\n' {
			fmt.Fprintln(stdout)
		}
	case "list":
		var l struct{ Entries []cluster.CacheListEntry }
		if err := json.Unmarshal(out, &l); err != nil {
			return fmt.Errorf("decode list: %w", err)
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KEY\tVERSION\tEXPIRES\tBYTES")
		for _, e := range l.Entries {
			exp := "-"
			if e.ExpiresAt != 0 {
				exp = time.Unix(0, e.ExpiresAt).UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%d\n", e.Key, e.Version, exp, len(e.Value))
		}
		err = tw.Flush()
	default:
		var r struct{ Version uint64 }
		_ = json.Unmarshal(out, &r)
		if sub == "set" {
			fmt.Fprintf(stdout, "ok, version %d\n", r.Version)
		} else {
			fmt.Fprintln(stdout, "ok")
		}
	}
	return err
}
