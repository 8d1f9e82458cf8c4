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
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

const snapshotUsage = `Usage: mcpcluster snapshot <save|restore|inspect> [flags] FILE

Save and restore the cluster's replicated state (node registry, tool
catalog, assignments, MCP sessions, shared cache). A snapshot holds
secrets (cache values, session ids): keep it so.

  save FILE      write a snapshot of the state, holding every write
                 acknowledged before the call, to FILE (mode 0600)
  restore FILE   replace the whole cluster's state with the snapshot in
                 FILE (any node; a follower forwards it to the leader)
  inspect FILE   check FILE offline; print its index, term, size and records

  --http-addr ADDR   a node (env MCPCLUSTER_HTTP_ADDR; default 127.0.0.1:8700)
  --token TOKEN      admin write token (env MCPCLUSTER_ADMIN_TOKEN)
  --timeout D        how long the whole transfer may take (default 10m)
  --json             print the JSON answer
`

// snapshotTimeout is the snapshot commands' default --timeout: a transfer
// of a large state takes longer than one API call.
const snapshotTimeout = 10 * time.Minute

// runSnapshot is `mcpcluster snapshot`: a thin client of /v1/snapshot,
// plus an offline inspect.
func runSnapshot(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") && args[0] != "-h" && args[0] != "--help" {
		return usagef("missing subcommand (save, restore or inspect)")
	}
	op := args[0]
	switch op {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, snapshotUsage)
		return nil
	case "inspect":
		return runSnapshotInspect(args[1:], stdout, stderr)
	case "save", "restore":
	default:
		return usagef("unknown snapshot subcommand %q (save, restore or inspect)", op)
	}
	c, pos, err := parseClientArgs("snapshot "+op, args[1:], stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("snapshot %s needs one FILE", op)
	}
	if !flagGiven(args[1:], "timeout") {
		c.timeout = snapshotTimeout
	}
	if op == "save" {
		return snapshotSave(c, pos[0], stdout)
	}
	return snapshotRestore(c, pos[0], stdout)
}

// flagGiven reports whether args set the flag name (-name, --name, with
// or without =value).
func flagGiven(args []string, name string) bool {
	for _, a := range args {
		if a == "--" {
			return false
		}
		if !strings.HasPrefix(a, "-") {
			continue
		}
		n, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if n == name {
			return true
		}
	}
	return false
}

// snapshotClient has no timeout of its own: the request's context bounds
// the whole transfer.
var snapshotClient = &http.Client{}

// snapshotSave downloads a snapshot archive, checks it while writing it to
// a temporary file next to path, and renames it into place: path is either
// the whole, verified archive or untouched.
func snapshotSave(c clientFlags, path string, stdout io.Writer) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/v1/snapshot"), nil)
	if err != nil {
		return err
	}
	setToken(req, c.token)
	resp, err := snapshotClient.Do(req)
	if err != nil {
		return fmt.Errorf("node at %s: %w", c.addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return apiError(c.addr, resp, body)
	}

	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create snapshot file: %w", err)
	}
	defer func() {
		if err != nil {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("create snapshot file: %w", err)
	}
	counted := &countWriter{w: tmp}
	meta, err := cluster.ReadSnapshotArchive(io.TeeReader(resp.Body, counted), io.Discard, cluster.MaxSnapshotBytes)
	if err == nil {
		// Anything after the archive (there should be nothing) is kept,
		// so the file is exactly what the node sent.
		_, err = io.Copy(counted, resp.Body)
	}
	switch {
	case counted.err != nil:
		return fmt.Errorf("write %s: %w", tmp.Name(), counted.err)
	case errors.Is(err, cluster.ErrBadSnapshot):
		return fmt.Errorf("node at %s sent a snapshot that does not check out (transfer cut?): %w", c.addr, err)
	case err != nil:
		return fmt.Errorf("download snapshot from %s: %w", c.addr, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", tmp.Name(), err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		_ = d.Sync()
		d.Close()
	}
	if c.json {
		return json.NewEncoder(stdout).Encode(map[string]any{"file": path, "archive_bytes": counted.n, "meta": meta})
	}
	fmt.Fprintf(stdout, "Saved snapshot to %s: index %d, term %d, %d bytes of state (%d bytes archived), taken on %s\n",
		path, meta.Index, meta.Term, meta.Size, counted.n, meta.Node)
	return nil
}

// countWriter counts what it writes and remembers its first error.
type countWriter struct {
	w   io.Writer
	n   int64
	err error
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	if err != nil && c.err == nil {
		c.err = err
	}
	return n, err
}

// snapshotRestore checks the archive at path, then uploads it.
func snapshotRestore(c clientFlags, path string, stdout io.Writer) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	// Refuse a bad file here rather than upload it (the node checks again).
	meta, err := cluster.ReadSnapshotArchive(f, io.Discard, cluster.MaxSnapshotBytes)
	if err != nil {
		return fmt.Errorf("%s: %w; nothing was sent", path, err)
	}
	size, err := f.Seek(0, io.SeekEnd)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		return err
	}

	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.url("/v1/snapshot"), f)
	if err != nil {
		return err
	}
	req.ContentLength = size
	req.Header.Set("Content-Type", "application/gzip")
	setToken(req, c.token)
	resp, err := snapshotClient.Do(req)
	if err != nil {
		return fmt.Errorf("node at %s: %w", c.addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return apiError(c.addr, resp, body)
	}
	if c.json {
		_, err = stdout.Write(body)
		return err
	}
	var info cluster.RestoreInfo
	if err := json.Unmarshal(body, &info); err != nil {
		return fmt.Errorf("decode restore answer: %w", err)
	}
	fmt.Fprintf(stdout, "Restored snapshot %s (index %d, term %d, %d bytes of state, taken on %s) through leader %s: the cluster's state is now at index %d\n",
		path, info.Index, info.Term, info.Size, meta.Node, info.Node, info.RestoredIndex)
	return nil
}

// runSnapshotInspect checks an archive offline and summarizes it.
func runSnapshotInspect(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("snapshot inspect", flag.ContinueOnError)
	asJSON := fs.Bool("json", false, "print the summary as JSON")
	fs.SetOutput(io.Discard)
	pos, err := parseFlagsArgs(fs, args, stderr)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usagef("snapshot inspect needs one FILE")
	}
	f, err := os.Open(pos[0])
	if err != nil {
		return err
	}
	defer f.Close()
	sum, err := cluster.InspectSnapshot(f)
	if err != nil {
		return fmt.Errorf("%s: %w", pos[0], err)
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(sum)
	}
	m := sum.Meta
	var servers []string
	for _, s := range m.Servers {
		servers = append(servers, s.ID)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "ID\t%s\n", m.ID)
	fmt.Fprintf(tw, "Index\t%d\n", m.Index)
	fmt.Fprintf(tw, "Term\t%d\n", m.Term)
	fmt.Fprintf(tw, "Version\t%d\n", m.Version)
	fmt.Fprintf(tw, "Size\t%d bytes of state\n", m.Size)
	fmt.Fprintf(tw, "Taken\ton %s at %s\n", m.Node, m.CreatedAt.Format(time.RFC3339))
	fmt.Fprintf(tw, "Servers\t%s (configuration index %d)\n", strings.Join(servers, ", "), m.ConfigurationIndex)
	fmt.Fprintln(tw, "Checksums\tOK")
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "KIND\tCOUNT\tBYTES\tSHA256")
	for _, r := range sum.Records {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%s\n", r.Kind, r.Count, r.Bytes, r.SHA256)
	}
	return tw.Flush()
}
