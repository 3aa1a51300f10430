package htmlreport

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"html/template"
	"image/color"
	"math"
	"strings"
	"sync"
	"time"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/image/font/sfnt"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
)

// Chart geometry. The width fits a laptop screen at 96 dpi (648 pt = 864 px).
const (
	chartWidth = 9 * vg.Inch
	plotHeight = 3.6 * vg.Inch
)

// The charts' one typeface: it is embedded in the page once (fontFaceCSS), so text measured by
// gonum when laying out is the text the browser draws.
var chartFont = font.Font{Typeface: "Liberation", Variant: "Sans"}

func sans(size vg.Length) font.Font {
	f := chartFont
	f.Size = size
	return f
}

// Series colours. Nodes take plotutil's dark palette in the run's order, so a node has the
// same colour in every chart; methods and cost series have fixed colours.
var (
	colorAB        = color.RGBA{R: 24, G: 90, B: 169, A: 255}
	colorResidency = color.RGBA{R: 244, G: 125, B: 35, A: 255}
	colorLoaded    = color.RGBA{R: 0, G: 140, B: 72, A: 255}
	colorIdle      = color.RGBA{R: 160, G: 205, B: 180, A: 255}
	colorKey       = color.RGBA{R: 90, G: 90, B: 90, A: 255}
	colorZero      = color.RGBA{R: 120, G: 120, B: 120, A: 255}
)

func nodeColor(i int) color.Color { return plotutil.DarkColors[i%len(plotutil.DarkColors)] }

var aroundDashes = []vg.Length{vg.Points(5), vg.Points(3)}

func renderCharts(nodes []perfrun.Summary, total perfrun.Summary) ([]chart, error) {
	var out []chart
	for _, f := range []func([]perfrun.Summary, perfrun.Summary) (chart, error){latencyChart, addedChart, sidecarChart} {
		c, err := f(nodes, total)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

// latencyChart plots each node's latency by percentile the way HdrHistogram does: the x axis
// is 1/(1−q) on a log scale, so the tail (99%, 99.9%) gets as much room as the median, and
// the gap between a node's solid and dashed lines is what its sidecars add at that percentile.
func latencyChart(nodes []perfrun.Summary, _ perfrun.Summary) (chart, error) {
	c := chart{Name: ChartLatency, Title: "Latency by percentile, through the mesh and around it",
		Caption: "Each node's latency through the sidecars (solid) and straight to the application, around them (dashed). " +
			"The x axis stretches the tail the way HdrHistogram plots do; the vertical gap between a node's two lines is the latency its sidecars add at that percentile."}
	type line struct {
		node   int
		around bool
		h      *hdrhistogram.Histogram
	}
	var lines []line
	var series, skipped []string
	for i, s := range nodes {
		if !s.Measured() {
			skipped = append(skipped, s.Node)
			continue
		}
		series = append(series, s.Node)
		lines = append(lines, line{node: i, h: s.Through})
		if s.Around != nil && s.Around.TotalCount() > 0 {
			lines = append(lines, line{node: i, around: true, h: s.Around})
		}
	}
	c.Series = strings.Join(series, " ")
	if len(lines) == 0 {
		c.Empty = "No latency was measured on any node."
		return c, nil
	}
	c.Caption += skippedNote(skipped)

	var maxUS float64
	var xmax float64 = 10
	for _, l := range lines {
		xmax = math.Max(xmax, float64(l.h.TotalCount()))
		maxUS = math.Max(maxUS, float64(l.h.Max()))
	}
	unit := unitFor(maxUS)

	p := newPlot()
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.TickerFunc(percentileTicks)
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "latency (" + unit.name + ")"
	grid := plotter.NewGrid()
	grid.Vertical.Color = color.Gray{Y: 225}
	grid.Horizontal.Color = color.Gray{Y: 225}
	p.Add(grid)
	var legend []legendEntry
	seen := map[int]bool{}
	hasAround := false
	for _, l := range lines {
		pl, err := plotter.NewLine(percentileSeries(l.h, unit))
		if err != nil {
			return c, fmt.Errorf("latency chart: %w", err)
		}
		pl.LineStyle.Color = nodeColor(l.node)
		pl.LineStyle.Width = vg.Points(1.6)
		if l.around {
			pl.LineStyle.Dashes = aroundDashes
			hasAround = true
		}
		p.Add(pl)
		if !seen[l.node] {
			seen[l.node] = true
			legend = append(legend, legendEntry{nodes[l.node].Node, []plot.Thumbnailer{pl}})
		}
	}
	p.X.Min, p.X.Max = 1, xmax
	p.Y.Min = 0
	key := func(name string, dashes []vg.Length) legendEntry {
		k := &plotter.Line{LineStyle: draw.LineStyle{Color: colorKey, Width: vg.Points(1.6), Dashes: dashes}}
		return legendEntry{name, []plot.Thumbnailer{k}}
	}
	legend = append(legend, key("through the mesh", nil))
	if hasAround {
		legend = append(legend, key("around the mesh (direct to the app)", aroundDashes))
	}
	svg, err := renderSVG(func(lh vg.Length) vg.Length { return plotHeight + lh }, legend, func(dc draw.Canvas) {
		p.Draw(dc)
	})
	c.SVG = svg
	return c, err
}

// percentileSeries samples h at points spaced evenly on the chart's log axis, up to the
// highest percentile its count resolves (1 − 1/n).
func percentileSeries(h *hdrhistogram.Histogram, u unit) plotter.XYs {
	const samples = 160
	n := math.Max(float64(h.TotalCount()), 10)
	xys := make(plotter.XYs, 0, samples+1)
	for k := 0; k <= samples; k++ {
		x := math.Pow(n, float64(k)/samples)
		v := h.Min()
		if k > 0 {
			v = h.ValueAtQuantile((1 - 1/x) * 100)
		}
		xys = append(xys, plotter.XY{X: x, Y: float64(v) / u.perUS})
	}
	return xys
}

// percentileTicks labels the log axis at 0%, 50%, 90%, 99%, 99.9%, …
func percentileTicks(_, max float64) []plot.Tick {
	ticks := []plot.Tick{{Value: 1, Label: "0%"}, {Value: 2, Label: "50%"}}
	for k := 1; math.Pow(10, float64(k)) <= max*1.0001; k++ {
		x := math.Pow(10, float64(k))
		ticks = append(ticks, plot.Tick{Value: x, Label: fmt.Sprintf("%.*f%%", max0(k-2), 100-100/x)})
	}
	return ticks
}

func max0(v int) int {
	if v < 0 {
		return 0
	}
	return v
}

// addedChart shows, per node and for the whole run, the added latency at each reported
// quantile: A/B's estimate with its bootstrap interval next to the eBPF residency, so the two
// methods can be checked against each other. Bars run sideways so that node names of any
// length read in full, one row per node.
func addedChart(nodes []perfrun.Summary, total perfrun.Summary) (chart, error) {
	c := chart{Name: ChartAdded, Title: "Added latency per node",
		Caption: "The latency the sidecars add, per node and for the whole run, at each quantile: by A/B (through the mesh minus around it) with its 95% bootstrap interval, " +
			"and by eBPF residency (time requests spent inside the sidecar), measured in the kernel."}
	var cats []perfrun.Summary
	var skipped []string
	hasData := func(s perfrun.Summary) bool {
		_, res := s.ResidencyAt(0.5)
		return len(s.AB) > 0 || res
	}
	for _, s := range nodes {
		if s.Failed || !hasData(s) {
			skipped = append(skipped, s.Node)
			continue
		}
		cats = append(cats, s)
	}
	if len(cats) > 1 && hasData(total) {
		total.Node = "all nodes"
		cats = append(cats, total)
	}
	names := make([]string, len(cats))
	for i, s := range cats {
		names[i] = s.Node
	}
	c.Series = strings.Join(names, " ")
	if len(cats) == 0 {
		c.Empty = "No added latency was measured on any node: neither A/B nor eBPF residency returned figures."
		return c, nil
	}
	c.Caption += skippedNote(skipped)

	var maxUS float64
	var tiers []string
	for _, s := range cats {
		for _, q := range perfrun.Quantiles {
			if d, ok := s.ABDelta(q); ok {
				maxUS = math.Max(maxUS, math.Max(absUS(d.CILow), math.Max(absUS(d.CIHigh), absUS(d.Value))))
			}
			if v, ok := s.ResidencyAt(q); ok {
				maxUS = math.Max(maxUS, absUS(v))
			}
		}
		for _, t := range s.ResidencyTiers {
			if n := tierName(t); !containsString(tiers, n) {
				tiers = append(tiers, n)
			}
		}
	}
	u := unitFor(maxUS)
	inUnit := func(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) / u.perUS }

	var plots []*plot.Plot
	var abThumb, resThumb plot.Thumbnailer
	xmin, xmax := 0.0, 0.0
	for qi, q := range perfrun.Quantiles {
		p := barPanel("added at "+quantileName(q), "added latency ("+u.name+")", names, qi == 0)
		for i, s := range cats {
			y := catY(i, len(cats))
			if d, ok := s.ABDelta(q); ok {
				v, lo, hi := inUnit(d.Value), inUnit(d.CILow), inUnit(d.CIHigh)
				b, err := bar(v, y+0.18, colorAB)
				if err != nil {
					return c, err
				}
				eb := &plotter.XErrorBars{
					XYs:       plotter.XYs{{X: v, Y: y + 0.18}},
					XErrors:   plotter.XErrors{{Low: math.Max(v-lo, 0), High: math.Max(hi-v, 0)}},
					LineStyle: draw.LineStyle{Color: color.Black, Width: vg.Points(1.2)},
					CapWidth:  barThickness * 0.7,
				}
				p.Add(b, eb)
				abThumb = b
				xmin, xmax = math.Min(xmin, math.Min(lo, v)), math.Max(xmax, math.Max(hi, v))
			}
			if d, ok := s.ResidencyAt(q); ok {
				v := inUnit(d)
				b, err := bar(v, y-0.18, colorResidency)
				if err != nil {
					return c, err
				}
				p.Add(b)
				resThumb = b
				xmin, xmax = math.Min(xmin, v), math.Max(xmax, v)
			}
		}
		plots = append(plots, p)
	}
	// One scale for every panel, so bars compare across quantiles.
	span := xmax - xmin
	if span == 0 {
		span = 1
	}
	for _, p := range plots {
		p.X.Min = xmin - 0.05*span*b2f(xmin < 0)
		p.X.Max = xmax + 0.08*span
		if xmin < 0 {
			zero, err := plotter.NewLine(plotter.XYs{{X: 0, Y: p.Y.Min}, {X: 0, Y: p.Y.Max}})
			if err != nil {
				return c, err
			}
			zero.LineStyle = draw.LineStyle{Color: colorZero, Width: vg.Points(0.8)}
			p.Add(zero)
		}
	}
	var legend []legendEntry
	if abThumb != nil {
		legend = append(legend, legendEntry{"A/B: through minus around, with its 95% interval", []plot.Thumbnailer{abThumb}})
	}
	if resThumb != nil {
		name := "eBPF residency"
		if len(tiers) > 0 {
			name += " (tier " + strings.Join(tiers, ", ") + ")"
		}
		legend = append(legend, legendEntry{name, []plot.Thumbnailer{resThumb}})
	}
	svg, err := renderSVG(func(lh vg.Length) vg.Length { return barsHeight(len(cats)) + lh }, legend, func(dc draw.Canvas) {
		drawRow(plots, dc)
	})
	c.SVG = svg
	return c, err
}

// sidecarChart shows each node's sidecar cost: CPU under load next to idle, memory, and CPU
// per 1000 requests per second, the figure that compares across rates.
func sidecarChart(nodes []perfrun.Summary, _ perfrun.Summary) (chart, error) {
	c := chart{Name: ChartSidecar, Title: "Sidecar CPU and memory per node",
		Caption: "Average per sidecar on each node: CPU under load and idle (before the load), memory working set under load, and CPU per 1000 requests per second."}
	var cats []perfrun.Summary
	var skipped []string
	for _, s := range nodes {
		if s.Failed || (s.SidecarCPU == 0 && s.SidecarMemory == 0) {
			skipped = append(skipped, s.Node)
			continue
		}
		cats = append(cats, s)
	}
	names := make([]string, len(cats))
	for i, s := range cats {
		names[i] = s.Node
	}
	c.Series = strings.Join(names, " ")
	if len(cats) == 0 {
		c.Empty = "No sidecar CPU or memory was measured on any node."
		return c, nil
	}
	c.Caption += skippedNote(skipped)

	cpu := barPanel("CPU", "millicores", names, true)
	mem := barPanel("memory (working set)", "MiB", names, false)
	per1k := barPanel("CPU per 1000 req/s", "millicores", names, false)
	var loadedThumb, idleThumb plot.Thumbnailer
	for i, s := range cats {
		y := catY(i, len(cats))
		lb, err := bar(s.SidecarCPU, y+0.18, colorLoaded)
		if err != nil {
			return c, err
		}
		cpu.Add(lb)
		loadedThumb = lb
		if s.SidecarIdleCPU > 0 {
			ib, err := bar(s.SidecarIdleCPU, y-0.18, colorIdle)
			if err != nil {
				return c, err
			}
			cpu.Add(ib)
			idleThumb = ib
		}
		mb, err := bar(float64(s.SidecarMemory)/(1<<20), y, colorLoaded)
		if err != nil {
			return c, err
		}
		mem.Add(mb)
		if s.CPUPer1kRPS > 0 {
			pb, err := bar(s.CPUPer1kRPS, y, colorLoaded)
			if err != nil {
				return c, err
			}
			per1k.Add(pb)
		}
	}
	for _, p := range []*plot.Plot{cpu, mem, per1k} {
		// Bars start at zero; headroom keeps the longest off the frame.
		p.X.Min = 0
		if p.X.Max <= 0 || math.IsInf(p.X.Max, 0) {
			p.X.Max = 1
		}
		p.X.Max *= 1.08
	}
	legend := []legendEntry{{"under load", []plot.Thumbnailer{loadedThumb}}}
	if idleThumb != nil {
		legend = append(legend, legendEntry{"idle, before the load", []plot.Thumbnailer{idleThumb}})
	}
	svg, err := renderSVG(func(lh vg.Length) vg.Length { return barsHeight(len(cats)) + lh }, legend, func(dc draw.Canvas) {
		drawRow([]*plot.Plot{cpu, mem, per1k}, dc)
	})
	c.SVG = svg
	return c, err
}

// Bar charts give each node a row of fixed height, so the chart grows with the node count.
const (
	barRow       = 34 // points per node
	barThickness = vg.Length(11)
)

func barsHeight(n int) vg.Length {
	return max(vg.Length(n*barRow)+vg.Points(70), 2*vg.Inch)
}

// catY is the y of the i-th of n categories: the first on top.
func catY(i, n int) float64 { return float64(n - 1 - i) }

// barPanel is one panel of a horizontal bar chart over the named categories, the first on
// top; only the leftmost panel names them.
func barPanel(title, xlabel string, names []string, showNames bool) *plot.Plot {
	p := newPlot()
	p.Title.Text = title
	p.X.Label.Text = xlabel
	ticks := make(plot.ConstantTicks, len(names))
	for i, n := range names {
		ticks[i] = plot.Tick{Value: catY(i, len(names))}
		if showNames {
			ticks[i].Label = n
		}
	}
	p.Y.Tick.Marker = ticks
	p.Y.Tick.Length = 0
	p.Y.Width = 0
	p.Y.Min, p.Y.Max = -0.6, float64(len(names))-0.4
	return p
}

func bar(v, y float64, c color.Color) (*plotter.BarChart, error) {
	b, err := plotter.NewBarChart(plotter.Values{v}, barThickness)
	if err != nil {
		return nil, fmt.Errorf("bar chart: %w", err)
	}
	b.Horizontal = true
	b.XMin = y
	b.Color = c
	b.LineStyle.Width = 0
	return b, nil
}

func newPlot() *plot.Plot {
	p := plot.New()
	p.Title.TextStyle.Font = sans(11)
	for _, a := range []*plot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = sans(10)
		a.Tick.Label.Font = sans(9)
	}
	p.X.Tick.Marker = plot.TickerFunc(shortTicks)
	p.Y.Tick.Marker = plot.TickerFunc(shortTicks)
	return p
}

// shortTicks are gonum's default ticks labelled without trailing zeros ("250", not "250.00").
func shortTicks(min, max float64) []plot.Tick {
	ticks := plot.DefaultTicks{}.Ticks(min, max)
	for i, t := range ticks {
		if strings.Contains(t.Label, ".") && !strings.ContainsAny(t.Label, "eE") {
			ticks[i].Label = strings.TrimSuffix(strings.TrimRight(t.Label, "0"), ".")
		}
	}
	return ticks
}

func drawRow(plots []*plot.Plot, dc draw.Canvas) {
	tiles := draw.Tiles{Rows: 1, Cols: len(plots), PadX: vg.Points(10), PadTop: vg.Points(4), PadBottom: vg.Points(2), PadLeft: vg.Points(2), PadRight: vg.Points(6)}
	canvases := plot.Align([][]*plot.Plot{plots}, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[0][i])
	}
}

type legendEntry struct {
	name   string
	thumbs []plot.Thumbnailer
}

// Legends sit in a strip under the chart, in as many columns as fit, so they never hide
// data however many nodes the run had.
const legendPad = 6

func newLegend() plot.Legend {
	l := plot.NewLegend()
	l.TextStyle.Font = sans(10)
	l.ThumbnailWidth = vg.Points(26)
	l.Top, l.Left = true, true
	l.Padding = vg.Points(4)
	return l
}

func legendLayout(entries []legendEntry) (cols, rows int, colW, rowH vg.Length) {
	l := newLegend()
	for _, e := range entries {
		w := l.ThumbnailWidth + l.TextStyle.Width(" "+e.name) + vg.Points(18)
		colW = max(colW, w)
		rowH = max(rowH, l.TextStyle.Rectangle(e.name).Max.Y)
	}
	rowH += l.Padding
	cols = max(1, min(len(entries), int((chartWidth-vg.Points(2*legendPad))/colW)))
	rows = (len(entries) + cols - 1) / cols
	return cols, rows, colW, rowH
}

func drawLegend(dc draw.Canvas, entries []legendEntry) {
	cols, rows, colW, _ := legendLayout(entries)
	for col := range cols {
		l := newLegend()
		for r := range rows {
			// Column-major, so a node's entries read top to bottom.
			if i := col*rows + r; i < len(entries) {
				l.Add(entries[i].name, entries[i].thumbs...)
			}
		}
		left := vg.Points(legendPad) + vg.Length(col)*colW
		c := draw.Crop(dc, left, 0, 0, 0)
		c.Max.X = min(c.Min.X+colW, dc.Max.X)
		l.Draw(c)
	}
}

// renderSVG draws a chart with its legend strip below it and returns the SVG element alone
// (without the XML prolog, which has no place inside HTML).
func renderSVG(height func(legend vg.Length) vg.Length, legend []legendEntry, plotFn func(draw.Canvas)) (svg template.HTML, err error) {
	defer func() {
		// gonum reports impossible layouts by panicking; a report must fail, not crash.
		if r := recover(); r != nil {
			err = fmt.Errorf("draw chart: %v", r)
		}
	}()
	var legendH vg.Length
	if len(legend) > 0 {
		_, rows, _, rowH := legendLayout(legend)
		legendH = vg.Length(rows)*rowH + vg.Points(2*legendPad)
	}
	h := height(legendH)
	canvas := vgsvg.New(chartWidth, h)
	dc := draw.New(canvas)
	plotFn(draw.Crop(dc, 0, 0, legendH, 0))
	if len(legend) > 0 {
		strip := draw.Crop(dc, 0, 0, 0, -(h - legendH))
		drawLegend(draw.Crop(strip, 0, 0, vg.Points(legendPad), -vg.Points(legendPad)), legend)
	}
	var buf bytes.Buffer
	if _, err := canvas.WriteTo(&buf); err != nil {
		return "", fmt.Errorf("write chart: %w", err)
	}
	out := buf.Bytes()
	i := bytes.Index(out, []byte("<svg"))
	if i < 0 {
		return "", fmt.Errorf("write chart: no <svg> element in gonum's output")
	}
	// vgsvg escapes every text it draws (node names included), so its output is safe to
	// place in the page as is.
	return template.HTML(out[i:]), nil
}

type unit struct {
	name  string
	perUS float64
}

// unitFor picks microseconds for sub-2 ms figures and milliseconds above.
func unitFor(maxUS float64) unit {
	if maxUS >= 2000 {
		return unit{"ms", 1000}
	}
	return unit{"µs", 1}
}

func absUS(d time.Duration) float64 { return math.Abs(float64(d) / float64(time.Microsecond)) }

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func containsString(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func skippedNote(nodes []string) string {
	if len(nodes) == 0 {
		return ""
	}
	return " Not shown (no figures): " + strings.Join(nodes, ", ") + "."
}

var fontCSS struct {
	once sync.Once
	css  template.CSS
	err  error
}

// fontFaceCSS declares the charts' typeface from the font gonum measured with, as a data URL,
// so the charts render the same on machines without Liberation Sans and fetch nothing.
func fontFaceCSS() (template.CSS, error) {
	fontCSS.once.Do(func() {
		face := font.DefaultCache.Lookup(chartFont, 10)
		if face.Face == nil {
			fontCSS.err = fmt.Errorf("chart font %s not found", chartFont.Name())
			return
		}
		var raw bytes.Buffer
		if _, err := face.Face.WriteSourceTo(nil, &raw); err != nil {
			fontCSS.err = fmt.Errorf("read chart font: %w", err)
			return
		}
		// The family name vgsvg writes into the charts' text styles.
		family, err := face.Face.Name(nil, sfnt.NameIDFamily)
		if err != nil {
			fontCSS.err = fmt.Errorf("read chart font name: %w", err)
			return
		}
		fontCSS.css = template.CSS(fmt.Sprintf("@font-face{font-family:%q;font-style:normal;font-weight:normal;src:url(data:font/ttf;base64,%s) format(\"truetype\");}",
			family, base64.StdEncoding.EncodeToString(raw.Bytes())))
	})
	return fontCSS.css, fontCSS.err
}
