package integration

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/anishathalye/porcupine"
)

// Classes of failed operations. A failure is explained by its own node
// when the node the request went to was down (taken down by the nemesis
// and not yet ready again) at any moment between call and return; else by
// lost quorum when it overlaps the window of the fault that kills a
// majority (from the kill until the cluster is healed); else the cluster
// failed it through a live node.
const (
	classNodeDown = "node down"
	classQuorum   = "quorum lost"
	classLive     = "live node"
)

// chaosOps are the summary's rows: cache operations, then tools.
var chaosOps = []string{"get", "put", "cas", "pinned_echo", "slow_tick"}

// mustNotFail are the tools that no call through a live node may fail:
// pinned_echo is safe to repeat, and slow_tick is only called while its
// holder drains, which finishes the calls it holds.
var mustNotFail = map[string]bool{"pinned_echo": true, "slow_tick": true}

// classify returns the class of f. Call with r.mu held or after the run.
func (r *chaosRun) classify(f opFailure) string {
	for _, s := range r.downs[f.node] {
		if s.overlaps(f.call, f.ret) {
			return classNodeDown
		}
	}
	if r.down[f.node] && r.downAt[f.node] <= f.ret {
		return classNodeDown
	}
	for _, w := range r.windows {
		if w.name == faultKillMajority && (span{w.start, w.end}).overlaps(f.call, f.ret) {
			return classQuorum
		}
	}
	return classLive
}

// windowsAt names the fault windows [call, ret] overlaps.
func (r *chaosRun) windowsAt(call, ret int64) string {
	var names []string
	for _, w := range r.windows {
		if (span{w.start, w.end}).overlaps(call, ret) {
			names = append(names, w.name)
		}
	}
	if len(names) == 0 {
		return "between faults"
	}
	return strings.Join(names, " + ")
}

// liveFailures returns the failures the cluster made through live nodes.
func (r *chaosRun) liveFailures() []opFailure {
	var out []opFailure
	for _, f := range r.fails {
		if r.classify(f) == classLive {
			out = append(out, f)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].call < out[j].call })
	return out
}

// describe is one failure on one line: operation, node, fault, error
// (with the nodes' cluster addresses in it named).
func (r *chaosRun) describe(f opFailure) string {
	return fmt.Sprintf("%s\t%s\t%.1fs–%.1fs\t%s\t%.240s", f.op, f.node, time.Duration(f.call).Seconds(),
		time.Duration(f.ret).Seconds(), r.windowsAt(f.call, f.ret), r.nameAddrs(f.err))
}

// nameAddrs follows each node's cluster address in text with its id.
func (r *chaosRun) nameAddrs(text string) string {
	for _, nd := range append(slices.Clone(r.c.nodes), r.extra...) {
		text = strings.ReplaceAll(text, nd.rpc, nd.rpc+" ("+nd.id+")")
	}
	return text
}

// gapIn is the longest time within w without a successful operation of ops.
func gapIn(ops []histOp, w faultWindow) time.Duration {
	last, gap := w.start, int64(0)
	var done []int64
	for _, h := range ops {
		if !h.Output.Unknown && h.Return >= w.start && h.Return <= w.end {
			done = append(done, h.Return)
		}
	}
	sort.Slice(done, func(i, j int) bool { return done[i] < done[j] })
	for _, d := range done {
		gap = max(gap, d-last)
		last = d
	}
	gap = max(gap, w.end-last)
	return time.Duration(gap).Round(10 * time.Millisecond)
}

// idledIn reports whether the clients idled between from and to.
func (r *chaosRun) idledIn(from, to int64) bool {
	for _, s := range r.idles {
		if s.overlaps(from, to) {
			return true
		}
	}
	return false
}

// ranIn reports whether any operation of ops was called within w.
func ranIn(ops []histOp, w faultWindow) bool {
	for _, h := range ops {
		if h.Call >= w.start && h.Call <= w.end {
			return true
		}
	}
	return false
}

// summary is the run's table: faults, operations and their failures by
// class, unavailability per fault, the failures through live nodes, and
// the checks' verdicts.
func (r *chaosRun) summary(n int, verdict porcupine.CheckResult, lost, twoLeaders int, histFile string) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "chaos run, %d nodes, %s\n", n, time.Since(r.start).Round(time.Second))
	fmt.Fprintln(tw, "FAULT\tINJECTED")
	var names []string
	for f := range r.faults {
		names = append(names, f)
	}
	sort.Strings(names)
	for _, f := range names {
		fmt.Fprintf(tw, "%s\t%d\n", f, r.faults[f])
	}
	byOp := map[string][]histOp{}
	for _, h := range r.history {
		byOp[h.Input.Op] = append(byOp[h.Input.Op], h)
	}
	for _, h := range r.calls {
		byOp[h.Input.Key] = append(byOp[h.Input.Key], h)
	}
	classes := map[string]map[string]int{}
	failed := map[string]int{}
	for _, f := range r.fails {
		if classes[f.op] == nil {
			classes[f.op] = map[string]int{}
		}
		classes[f.op][r.classify(f)]++
		failed[f.op]++
	}
	fmt.Fprintln(tw, "OPERATION\tOK\tFAILED\tUNKNOWN\tNODE DOWN\tQUORUM LOST\tLIVE NODE\tLONGEST UNAVAILABILITY")
	for _, name := range chaosOps {
		ops := byOp[name]
		ok, unknown := 0, 0
		var done []int64
		for _, h := range ops {
			if h.Output.Unknown {
				unknown++
				continue
			}
			ok++
			done = append(done, h.Return)
		}
		fails := failed[name]
		if name == "put" || name == "cas" {
			fails = 0
		} else {
			unknown = 0
		}
		var gap int64
		if name == "slow_tick" {
			// Its callers run only during the drain: the gaps between
			// drains are not unavailability.
			for _, w := range r.windows {
				if ranIn(ops, w) {
					gap = max(gap, int64(gapIn(ops, w)))
				}
			}
		} else {
			// Gaps while the clients idled are not unavailability.
			sort.Slice(done, func(i, j int) bool { return done[i] < done[j] })
			for i := 1; i < len(done); i++ {
				if !r.idledIn(done[i-1], done[i]) {
					gap = max(gap, done[i]-done[i-1])
				}
			}
		}
		cl := classes[name]
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\n", name, ok, fails, unknown,
			cl[classNodeDown], cl[classQuorum], cl[classLive], time.Duration(gap).Round(time.Millisecond))
	}
	fmt.Fprintln(tw, "UNAVAILABILITY DURING FAULT\tGET\tPUT\tCAS\tPINNED_ECHO\tSLOW_TICK")
	for _, w := range r.windows {
		slow := "-"
		if ranIn(byOp["slow_tick"], w) {
			slow = gapIn(byOp["slow_tick"], w).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", w.name, gapIn(byOp["get"], w), gapIn(byOp["put"], w), gapIn(byOp["cas"], w), gapIn(byOp["pinned_echo"], w), slow)
	}
	live := r.liveFailures()
	fmt.Fprintf(tw, "FAILED THROUGH A LIVE NODE (%d)\tNODE\tCALLED–RETURNED\tFAULT\tERROR\n", len(live))
	shown := 0
	for _, f := range live {
		// Every tool call is listed; cache operations up to 30.
		if !mustNotFail[f.op] {
			if shown++; shown > 30 {
				continue
			}
		}
		fmt.Fprintln(tw, r.describe(f))
	}
	if shown > 30 {
		fmt.Fprintf(tw, "... and %d more cache operations\n", shown-30)
	}
	fmt.Fprintf(tw, "linearizability (porcupine)\t%s\n", verdict)
	fmt.Fprintf(tw, "acknowledged writes lost\t%d of %d\n", lost, len(r.acked))
	fmt.Fprintf(tw, "terms with two leaders\t%d of %d seen\n", twoLeaders, len(r.leaders))
	fmt.Fprintf(tw, "history\t%s\n", histFile)
	tw.Flush()
	return b.String()
}
