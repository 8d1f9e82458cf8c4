package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// MachineInfo describes where a benchmark ran.
type MachineInfo struct {
	CPUs     int    // runtime.NumCPU()
	CPUModel string // "model name" from /proc/cpuinfo, "" if unknown
	OS, Arch string // runtime.GOOS, runtime.GOARCH
	Go       string // runtime.Version()
	Date     string // RFC 3339 UTC, passed in by the caller (deterministic output for tests)
}

// machineInfo fills MachineInfo for this machine (date = now, UTC).
func machineInfo() MachineInfo {
	return MachineInfo{
		CPUs:     runtime.NumCPU(),
		CPUModel: cpuModel("/proc/cpuinfo"),
		OS:       runtime.GOOS,
		Arch:     runtime.GOARCH,
		Go:       runtime.Version(),
		Date:     time.Now().UTC().Format(time.RFC3339),
	}
}

// cpuModel returns the first "model name" in a /proc/cpuinfo style file, or
// "" if there is none (other systems, other architectures).
func cpuModel(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// writeBenchReport writes the markdown benchmark report (docs/benchmarks.md)
// to w: the machine, one table of all results, the failover gaps and the
// plot pngName (skipped if "").
func writeBenchReport(w io.Writer, results []BenchResult, m MachineInfo, pngName string) error {
	var b bytes.Buffer
	cpu := fmt.Sprintf("%d CPUs", m.CPUs)
	if m.CPUModel != "" {
		cpu += " (" + m.CPUModel + ")"
	}
	fmt.Fprintf(&b, "# Benchmarks\n\nMeasured on %s, %s/%s, %s, %s.\n\n", cpu, m.OS, m.Arch, m.Go, m.Date)

	b.WriteString("| benchmark | scenario | concurrency | ops/s | p50 | p99 | p99.9 | max | errors | ratio vs baseline |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, r := range results {
		conc := strconv.Itoa(r.Concurrency)
		if r.Rate > 0 {
			conc = formatRate(r.Rate) + "/s fixed"
		}
		lat := []Duration{r.Latency.P50, r.Latency.P99, r.Latency.P999, r.Latency.Max}
		cells := make([]string, len(lat))
		for i, d := range lat {
			cells[i] = "—"
			if r.OK > 0 {
				cells[i] = formatDuration(time.Duration(d))
			}
		}
		ratio := "—"
		if r.Baseline != nil {
			q := r.Ratio
			if q == 0 && r.Baseline.PerSecond > 0 {
				q = r.PerSecond / r.Baseline.PerSecond
			}
			ratio = fmt.Sprintf("%.2f× (bare %s/s)", q, formatRate(r.Baseline.PerSecond))
			if r.Scenario == "scaling" {
				ratio = fmt.Sprintf("%.2f× (1 node %s/s)", q, formatRate(r.Baseline.PerSecond))
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
			mdCell(r.Name), mdCell(r.Scenario), conc, formatRate(r.PerSecond),
			cells[0], cells[1], cells[2], cells[3], thousands(int64(errorCount(r))), ratio)
	}

	// What the hop adds to a call's median latency, one client at a time.
	var local, forwarded *BenchResult
	for i := range results {
		r := &results[i]
		if r.Scenario == "call" && r.Concurrency == 1 && r.OK > 0 {
			if strings.HasPrefix(r.Name, "local call") {
				local = r
			} else if strings.HasPrefix(r.Name, "forwarded call") {
				forwarded = r
			}
		}
	}
	if local != nil && forwarded != nil {
		fmt.Fprintf(&b, "\n- the forwarding hop adds %s to the p50 of a call (one client: %s forwarded, %s local)\n",
			formatDuration(time.Duration(forwarded.Latency.P50-local.Latency.P50)),
			formatDuration(time.Duration(forwarded.Latency.P50)), formatDuration(time.Duration(local.Latency.P50)))
	}

	first := true
	for _, r := range results {
		if r.Scenario != "failover" {
			continue
		}
		if first {
			b.WriteString("\n")
			first = false
		}
		fmt.Fprintf(&b, "- %s: longest window without a success %s (%s errors in it), node killed at %s\n",
			r.Name, formatDuration(time.Duration(r.LongestGap)), thousands(int64(r.ErrorsInGap)),
			formatDuration(time.Duration(r.KilledAt)))
	}
	if pngName != "" {
		fmt.Fprintf(&b, "\n![benchmark plot](%s)\n", pngName)
	}
	_, err := w.Write(b.Bytes())
	return err
}

// errorCount is the number of failed operations of r, of any kind.
func errorCount(r BenchResult) int {
	n := 0
	for _, c := range r.Errors {
		n += c
	}
	return n
}

// mdCell makes s safe inside a markdown table cell.
func mdCell(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "|", `\|`), "\n", " ")
}

// formatDuration prints d as "850 µs", "12.34 ms" or "1.50 s".
func formatDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	case d < time.Second:
		return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2f s", d.Seconds())
	}
}

// formatRate prints an operations-per-second figure: whole numbers with
// thousands separators, one decimal below 10 (e.g. "12,345", "4.5").
func formatRate(f float64) string {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "—"
	}
	if math.Abs(f) < 10 && f != math.Trunc(f) {
		return strconv.FormatFloat(f, 'f', 1, 64)
	}
	return thousands(int64(math.Round(f)))
}

// thousands prints n with comma thousands separators.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}

// writeBenchPlot writes a 1200x900 PNG to path: the throughput of every
// non-failover result as bars on top, and below them the successful
// operations per second over time of every failover result, with the
// moment a node was killed marked.
func writeBenchPlot(path string, results []BenchResult) error {
	if len(results) == 0 {
		return errors.New("bench plot: no results")
	}
	var plain, failover []BenchResult
	for _, r := range results {
		if r.Scenario == "failover" {
			failover = append(failover, r)
		} else {
			plain = append(plain, r)
		}
	}
	var rows [][]*plot.Plot
	if len(plain) > 0 {
		p, err := throughputPlot(plain)
		if err != nil {
			return fmt.Errorf("bench plot: %w", err)
		}
		rows = append(rows, []*plot.Plot{p})
	}
	if len(failover) > 0 {
		p, err := failoverPlot(failover)
		if err != nil {
			return fmt.Errorf("bench plot: %w", err)
		}
		rows = append(rows, []*plot.Plot{p})
	}

	// 8x6 inches at 150 dpi: 1200x900 pixels with legible text.
	img := vgimg.NewWith(vgimg.UseWH(8*vg.Inch, 6*vg.Inch), vgimg.UseDPI(150))
	tiles := draw.Tiles{Rows: len(rows), Cols: 1, PadTop: vg.Points(4), PadBottom: vg.Points(4),
		PadLeft: vg.Points(4), PadRight: vg.Points(8), PadY: vg.Points(16)}
	canvases := plot.Align(rows, tiles, draw.New(img))
	for i, row := range rows {
		row[0].Draw(canvases[i][0])
	}
	var buf bytes.Buffer
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(&buf); err != nil {
		return fmt.Errorf("bench plot: encode png: %w", err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("bench plot: %w", err)
	}
	return nil
}

// throughputPlot draws one labelled bar per result, height = ops/s.
func throughputPlot(results []BenchResult) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Throughput"
	p.Y.Label.Text = "operations/s"
	vals := make(plotter.Values, len(results))
	names := make([]string, len(results))
	labels := plotter.XYLabels{XYs: make(plotter.XYs, len(results)), Labels: make([]string, len(results))}
	top := 0.0
	for i, r := range results {
		v := r.PerSecond
		if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
			v = 0
		}
		vals[i], names[i] = v, abbreviate(r.Name, 22)
		labels.XYs[i] = plotter.XY{X: float64(i), Y: v}
		labels.Labels[i] = formatRate(v)
		top = max(top, v)
	}
	width := min(vg.Inch/2, 6*vg.Inch/vg.Length(len(results))*0.6)
	bars, err := plotter.NewBarChart(vals, width)
	if err != nil {
		return nil, err
	}
	bars.Color = plotutil.Color(0)
	bars.LineStyle.Width = 0
	text, err := plotter.NewLabels(labels)
	if err != nil {
		return nil, err
	}
	for i := range text.TextStyle {
		text.TextStyle[i].XAlign = draw.XCenter
		text.TextStyle[i].YAlign = draw.YBottom
	}
	text.Offset = vg.Point{Y: vg.Points(2)}
	grid := plotter.NewGrid()
	grid.Vertical.Color = nil
	p.Add(bars, text, grid)
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.5, float64(len(results))-0.5
	p.Y.Tick.Marker = rateTicks
	p.X.Tick.Label.Rotation = math.Pi / 8
	if len(results) > 4 {
		p.X.Tick.Label.Rotation = math.Pi / 4
	}
	p.X.Tick.Label.XAlign = draw.XRight
	p.X.Tick.Label.YAlign = draw.YTop
	p.Y.Min, p.Y.Max = 0, max(top*1.15, 1) // room for the value labels
	return p, nil
}

// failoverPlot draws successful operations per second over time, one line
// per result, with a dashed vertical line where a node was killed.
func failoverPlot(results []BenchResult) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Failover: successful operations per second"
	p.X.Label.Text = "seconds since start"
	p.Y.Label.Text = "operations/s"
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	top, right := 1.0, 1.0
	for _, r := range results {
		for _, s := range r.Timeline {
			top = max(top, float64(s.OK))
			right = max(right, float64(s.At))
		}
		right = max(right, time.Duration(r.KilledAt).Seconds())
	}
	for i, r := range results {
		c := plotutil.Color(i)
		if len(r.Timeline) > 0 {
			xys := make(plotter.XYs, len(r.Timeline))
			for j, s := range r.Timeline {
				xys[j] = plotter.XY{X: float64(s.At), Y: float64(s.OK)}
			}
			l, err := plotter.NewLine(xys)
			if err != nil {
				return nil, err
			}
			l.Color, l.Width = c, vg.Points(1.5)
			p.Add(l)
			p.Legend.Add(r.Name, l)
		}
		if r.KilledAt > 0 {
			k, y := time.Duration(r.KilledAt).Seconds(), top*(1.2-0.07*float64(i%3))
			mark, err := plotter.NewLine(plotter.XYs{{X: k, Y: 0}, {X: k, Y: y}})
			if err != nil {
				return nil, err
			}
			mark.Color, mark.Dashes = c, []vg.Length{vg.Points(4), vg.Points(3)}
			note, err := plotter.NewLabels(plotter.XYLabels{XYs: plotter.XYs{{X: k, Y: y}}, Labels: []string{" node killed"}})
			if err != nil {
				return nil, err
			}
			note.TextStyle[0].Color = c
			note.TextStyle[0].YAlign = draw.YTop
			p.Add(mark, note)
		}
	}
	p.X.Min, p.X.Max = 0, right
	p.Y.Min, p.Y.Max = 0, top*1.3 // room for the legend and the notes
	p.Y.Tick.Marker = rateTicks
	return p, nil
}

// rateTicks are plot.DefaultTicks labelled like the report ("12,345").
var rateTicks = plot.TickerFunc(func(lo, hi float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(lo, hi)
	for i, t := range ticks {
		if t.Label != "" {
			ticks[i].Label = formatRate(t.Value)
		}
	}
	return ticks
})

// abbreviate shortens s to at most n runes by cutting its middle, so that
// names differing only at the end stay distinguishable.
func abbreviate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	head := (n - 1) / 2
	return string(r[:head]) + "…" + string(r[len(r)-(n-1-head):])
}
