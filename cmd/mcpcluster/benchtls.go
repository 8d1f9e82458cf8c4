package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// runBenchTLSCost is `mcpcluster bench tls-cost`: it starts two local
// 3-node clusters, one plain and one secured (mutual TLS on the cluster
// port, encrypted gossip, admin tokens), and measures the same scenarios
// on both, alternating, so the cost of security is a ratio taken in one
// run on one machine.
func runBenchTLSCost(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bench tls-cost", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	duration := fs.Duration("duration", 5*time.Second, "length of each closed-loop run")
	rounds := fs.Int("rounds", 3, "runs of each scenario on each cluster; the median is reported")
	only := fs.String("only", "", "run only the scenarios whose name contains this")
	basePort := fs.Int("base-port", 18800, "ports of the plain cluster (node i: base+10*i, +1, +2); the secured one uses base+100")
	if err := parseFlags(fs, args, stderr); err != nil {
		return err
	}
	if *duration <= 0 || *rounds < 1 || *basePort < 1024 || *basePort > 65000 {
		return usagef("-duration and -rounds must be positive, -base-port 1024 to 65000")
	}
	dir, err := os.MkdirTemp("", "mcpcluster-bench-tls-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	ctx, stop := signalContext()
	defer stop()

	start := func(name string, port int, secured bool) (*localCluster, error) {
		lc, err := newBenchCluster(filepath.Join(dir, name), port)
		if err != nil {
			return nil, err
		}
		if secured {
			if lc.security, _, err = setupLocalSecurity(lc.dataDir, lc.ids()); err != nil {
				return nil, err
			}
		}
		fmt.Fprintf(stdout, "starting a %s local 3-node cluster on ports %d-%d\n", name, port, port+22)
		if err := lc.start(); err != nil {
			return nil, err
		}
		if err := lc.waitReady(ctx, 60*time.Second); err != nil {
			lc.stop(15 * time.Second)
			return nil, err
		}
		return lc, nil
	}
	plain, err := start("plain", *basePort, false)
	if err != nil {
		return err
	}
	defer plain.stop(15 * time.Second)
	secured, err := start("secured", *basePort+100, true)
	if err != nil {
		return err
	}
	defer secured.stop(15 * time.Second)

	type scenario struct {
		name    string
		latency bool // compare p50 latency; else throughput
		cfg     func(lc *localCluster, via int) benchConfig
	}
	base := benchConfig{protocol: legacyProtocol, duration: *duration, timeout: 10 * time.Second,
		consistency: "linearizable", valueSize: 100, args: map[string]any{"text": "hello"}}
	call := func(c int) func(lc *localCluster, via int) benchConfig {
		return func(lc *localCluster, via int) benchConfig {
			return with(base, func(b *benchConfig) {
				b.scenario, b.tool, b.concurrency = "call", "pinned_echo", c
				b.targets, b.token = []string{"http://" + lc.addr(via, 0)}, lc.token()
			})
		}
	}
	scenarios := []scenario{
		{"forwarded call, c=1 (p50)", true, call(1)},
		{"forwarded call, c=32", false, call(32)},
		{"session set-up, c=8", false, func(lc *localCluster, via int) benchConfig {
			return with(base, func(b *benchConfig) {
				b.scenario, b.concurrency, b.targets, b.token = "session-init", 8, []string{"http://" + lc.addr(via, 0)}, lc.token()
			})
		}},
		{"cache set, 64 writers", false, func(lc *localCluster, _ int) benchConfig {
			return with(base, func(b *benchConfig) {
				b.scenario, b.concurrency, b.token = "cache-set", 64, lc.token()
				for i := range lc.n {
					b.targets = append(b.targets, "http://"+lc.addr(i, 0))
				}
			})
		}},
	}
	if *only != "" {
		scenarios = slices.DeleteFunc(scenarios, func(sc scenario) bool { return !strings.Contains(sc.name, *only) })
		if len(scenarios) == 0 {
			return usagef("-only %q matches no scenario", *only)
		}
	}
	// Calls enter through a node that neither holds the tool nor leads.
	via := func(lc *localCluster) (int, error) {
		holder, leader, err := lc.roles(ctx, "pinned_echo")
		if err != nil {
			return 0, err
		}
		return other(3, holder, leader), nil
	}
	type figures struct{ plain, secured []float64 }
	results := make([]figures, len(scenarios))
	for r := range *rounds {
		for si, sc := range scenarios {
			order := []*localCluster{plain, secured}
			if r%2 == 1 {
				order = []*localCluster{secured, plain}
			}
			for _, lc := range order {
				v, err := via(lc)
				if err != nil {
					return err
				}
				res, err := bench(ctx, sc.cfg(lc, v))
				if err != nil {
					return fmt.Errorf("%s: %w", sc.name, err)
				}
				if res.OK == 0 {
					return fmt.Errorf("%s: no successful operation (errors %v)", sc.name, res.Errors)
				}
				fig := res.PerSecond
				if sc.latency {
					fig = float64(time.Duration(res.Latency.P50)) / float64(time.Millisecond)
				}
				which := "plain"
				if lc == secured {
					which = "secured"
					results[si].secured = append(results[si].secured, fig)
				} else {
					results[si].plain = append(results[si].plain, fig)
				}
				fmt.Fprintf(stdout, "  round %d  %-28s %-8s %10.2f\n", r+1, sc.name, which, fig)
			}
		}
	}
	fmt.Fprintf(stdout, "\nmedian of %d rounds of %s each; calls enter through a node that neither holds the tool nor leads\n", *rounds, *duration)
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SCENARIO\tPLAIN\tSECURED\tSECURED/PLAIN")
	for si, sc := range scenarios {
		p, s := median(results[si].plain), median(results[si].secured)
		unit := "/s"
		if sc.latency {
			unit = " ms"
		}
		fmt.Fprintf(tw, "%s\t%.2f%s\t%.2f%s\t%.3f\n", sc.name, p, unit, s, unit, s/p)
	}
	return tw.Flush()
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
