package htmlreport

import (
	"bytes"
	"fmt"
	"image/color"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/bootstrap"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun/perfruntest"
)

func render(t *testing.T, r *perfrun.Run) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, r); err != nil {
		t.Fatalf("Write: %v", err)
	}
	return buf.Bytes()
}

func parse(t *testing.T, b []byte) *html.Node {
	t.Helper()
	doc, err := html.Parse(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("parse report: %v", err)
	}
	return doc
}

func attr(n *html.Node, key string) (string, bool) {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val, true
		}
	}
	return "", false
}

// walk visits every element under n.
func walk(n *html.Node, f func(*html.Node)) {
	if n.Type == html.ElementNode {
		f(n)
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		walk(c, f)
	}
}

func byID(doc *html.Node, id string) *html.Node {
	var found *html.Node
	walk(doc, func(n *html.Node) {
		if v, _ := attr(n, "id"); v == id && found == nil {
			found = n
		}
	})
	return found
}

func elements(n *html.Node, tag string) []*html.Node {
	var out []*html.Node
	walk(n, func(e *html.Node) {
		if e.Data == tag {
			out = append(out, e)
		}
	})
	return out
}

func text(n *html.Node) string {
	var b strings.Builder
	var f func(*html.Node)
	f = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			f(c)
		}
	}
	f(n)
	return b.String()
}

// svgTexts lists the text elements' contents of a chart's SVG: its tick labels and legend.
func svgTexts(fig *html.Node) []string {
	var out []string
	for _, t := range elements(fig, "text") {
		out = append(out, strings.TrimSpace(text(t)))
	}
	return out
}

// pathsWithColor counts the chart's paths stroked or filled with c.
func pathsWithColor(fig *html.Node, c color.Color) int {
	r, g, b, _ := c.RGBA()
	hex := fmt.Sprintf("#%02X%02X%02X", r>>8, g>>8, b>>8)
	n := 0
	for _, p := range elements(fig, "path") {
		style, _ := attr(p, "style")
		d, _ := attr(p, "d")
		if d != "" && (strings.Contains(style, "stroke:"+hex) || strings.Contains(style, "fill:"+hex)) {
			n++
		}
	}
	return n
}

// summaryAB is the whole run's A/B deltas, empty when A/B did not run.
func summaryAB(r *perfrun.Run) []bootstrap.Delta {
	_, total := perfrun.Summarize(r)
	return total.AB
}

func nodeIndex(r *perfrun.Run, node string) int {
	for i, n := range r.GetNodes() {
		if n.GetNode() == node {
			return i
		}
	}
	panic("no node " + node + " in the run")
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// checkCharts checks that each chart is an inline SVG drawing the measured nodes' series and
// naming them in its legend or axis, and leaving out the nodes without figures.
// Nodes are coloured by their place in the run.
func checkCharts(t *testing.T, doc *html.Node, r *perfrun.Run, measured, missing []string) {
	t.Helper()
	for _, name := range []string{ChartLatency, ChartAdded, ChartSidecar} {
		fig := byID(doc, "chart-"+name)
		if fig == nil {
			t.Fatalf("no figure with id chart-%s", name)
		}
		if v, _ := attr(fig, "data-chart"); v != name {
			t.Errorf("chart-%s: data-chart %q", name, v)
		}
		svgs := elements(fig, "svg")
		if len(svgs) != 1 {
			t.Fatalf("chart-%s: %d svg elements, want 1", name, len(svgs))
		}
		texts := svgTexts(fig)
		for _, n := range measured {
			if !contains(texts, n) {
				t.Errorf("chart-%s: node %q not named in the chart (texts %q)", name, n, texts)
			}
		}
		for _, n := range missing {
			if contains(texts, n) {
				t.Errorf("chart-%s: node %q has no figures but is drawn", name, n)
			}
		}
	}
	lat := byID(doc, "chart-"+ChartLatency)
	ab := len(summaryAB(r)) > 0
	for _, n := range measured {
		// The through line, the around line when A/B ran, and the legend's thumbnail.
		want := 2
		if ab {
			want = 3
		}
		if got := pathsWithColor(lat, nodeColor(nodeIndex(r, n))); got < want {
			t.Errorf("latency chart: %d paths in %s's colour, want %d (its lines and legend)", got, n, want)
		}
	}
	if !contains(svgTexts(lat), "99%") || !contains(svgTexts(lat), "through the mesh") {
		t.Errorf("latency chart: percentile axis or line key missing: %q", svgTexts(lat))
	}
	added := byID(doc, "chart-"+ChartAdded)
	cats := len(measured)
	if cats > 1 {
		cats++ // the whole run
	}
	q := len(perfrun.Quantiles)
	if got := pathsWithColor(added, colorAB); ab && got < q*cats {
		t.Errorf("added chart: %d A/B bars, want at least %d", got, q*cats)
	}
	if got := pathsWithColor(added, colorResidency); got < q*cats {
		t.Errorf("added chart: %d residency bars, want at least %d", got, q*cats)
	}
	side := byID(doc, "chart-"+ChartSidecar)
	if got := pathsWithColor(side, colorLoaded); got < 3*len(measured) {
		t.Errorf("sidecar chart: %d bars under load, want at least %d", got, 3*len(measured))
	}
}

// externalRefs lists every attribute or CSS url that would make the browser fetch something.
func externalRefs(doc *html.Node, raw []byte) []string {
	var out []string
	walk(doc, func(n *html.Node) {
		for _, a := range n.Attr {
			switch a.Key {
			case "src", "href", "xlink:href", "srcset", "poster", "data", "action", "formaction", "background":
				if !strings.HasPrefix(a.Val, "#") && !strings.HasPrefix(a.Val, "data:") {
					out = append(out, n.Data+" "+a.Key+"="+a.Val)
				}
			}
		}
		if n.Data == "link" || n.Data == "iframe" || n.Data == "object" || n.Data == "embed" {
			out = append(out, "<"+n.Data+">")
		}
	})
	if bytes.Contains(raw, []byte("@import")) {
		out = append(out, "@import")
	}
	s := string(raw)
	for {
		i := strings.Index(s, "url(")
		if i < 0 {
			break
		}
		s = s[i+4:]
		if !strings.HasPrefix(strings.TrimLeft(s, `"' `), "data:") {
			out = append(out, "url("+s[:min(len(s), 40)])
		}
	}
	return out
}

// TestExternalRefs checks the checker: a page that fetches must be caught.
func TestExternalRefs(t *testing.T) {
	for _, page := range []string{
		`<img src="https://example.com/x.png">`,
		`<link rel="stylesheet" href="x.css">`,
		`<style>@font-face{src:url(https://example.com/f.woff)}</style>`,
		`<svg><image xlink:href="http://example.com/i.png"/></svg>`,
	} {
		b := []byte(page)
		if refs := externalRefs(parse(t, b), b); len(refs) == 0 {
			t.Errorf("not caught: %s", page)
		}
	}
	ok := []byte(`<a href="#problems">p</a><style>@font-face{src:url(data:font/ttf;base64,AA==)}</style>`)
	if refs := externalRefs(parse(t, ok), ok); len(refs) != 0 {
		t.Errorf("false alarm: %q", refs)
	}
}

func TestWriteTwoNodes(t *testing.T) {
	r := perfruntest.Run(perfruntest.Options{Nodes: []string{"node-a", "node-b"}, Added: 80 * time.Microsecond, Seed: 1})
	b := render(t, r)
	doc := parse(t, b)

	if refs := externalRefs(doc, b); len(refs) > 0 {
		t.Errorf("report refers to outside resources: %q", refs)
	}
	if n := len(elements(doc, "script")); n != 0 {
		t.Errorf("report has %d scripts; it needs none", n)
	}
	body := text(doc)
	for _, want := range []string{
		r.GetId(), "deploy/web in namespace demo", "port 8080", "HTTP/1.1", "500 req/s for the whole run",
		"250 req/s", "4 per node", "10s", "1s", "istio 1.24.0", "v1.36.3", "2: node-a, node-b",
		"2026-11-21 08:00:00.000 UTC", "2026-11-21 08:00:10.000 UTC", "v0.1.0-test", "tier tp_btf",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("report does not show %q", want)
		}
	}
	if byID(doc, "failed-nodes") != nil || byID(doc, "interrupted") != nil {
		t.Error("a complete run is flagged as failed or interrupted")
	}
	if byID(doc, "no-problems") == nil {
		t.Error("a run without problems does not say so")
	}

	// One summary row per node and one for the whole run, each with its figures.
	var rows []string
	walk(byID(doc, "summary-table"), func(n *html.Node) {
		if v, ok := attr(n, "data-node"); ok && n.Data == "tr" {
			rows = append(rows, v)
			cells := text(n)
			for _, want := range []string{"p50", "p99", "µs", "[+", "48.0 MiB", "m"} {
				if !strings.Contains(cells, want) {
					t.Errorf("summary row %s lacks %q: %s", v, want, cells)
				}
			}
		}
	})
	if strings.Join(rows, ",") != "node-a,node-b,All nodes" {
		t.Errorf("summary rows %q", rows)
	}
	checkCharts(t, doc, r, []string{"node-a", "node-b"}, nil)
	if !contains(svgTexts(byID(doc, "chart-"+ChartAdded)), "all nodes") {
		t.Error("added chart lacks the whole run")
	}

	// A stored run renders the same every time.
	if again := render(t, r); !bytes.Equal(b, again) {
		t.Error("two renderings of one run differ")
	}
}

func TestWriteFailedNode(t *testing.T) {
	r := perfruntest.Run(perfruntest.Options{Nodes: []string{"node-a", "node-b"}, Added: 80 * time.Microsecond, FailNode: "node-b", Seed: 2})
	r.Interrupted = true
	doc := parse(t, render(t, r))

	banner := byID(doc, "failed-nodes")
	if banner == nil || !strings.Contains(text(banner), "node-b") {
		t.Fatalf("no failed-node banner naming node-b")
	}
	if byID(doc, "interrupted") == nil {
		t.Error("interrupted run not flagged")
	}
	var found bool
	walk(doc, func(n *html.Node) {
		if v, _ := attr(n, "data-node"); v == "node-b" && n.Data == "div" {
			found = true
			s := text(n)
			if !strings.Contains(s, "failed") || !strings.Contains(s, "agent unreachable: port-forward: connection refused") {
				t.Errorf("node-b's problems: %q", s)
			}
			if strings.Contains(s, "node node-b:") {
				t.Errorf("problem repeats the node prefix: %q", s)
			}
		}
	})
	if !found {
		t.Error("no problems section for node-b")
	}
	checkCharts(t, doc, r, []string{"node-a"}, []string{"node-b"})
	for _, name := range []string{ChartLatency, ChartAdded, ChartSidecar} {
		if cap := text(byID(doc, "chart-"+name)); !strings.Contains(cap, "Not shown (no figures): node-b") {
			t.Errorf("chart-%s does not say node-b is left out", name)
		}
	}
}

func TestWriteEveryNodeFailed(t *testing.T) {
	r := perfruntest.Run(perfruntest.Options{Nodes: []string{"node-a"}, FailNode: "node-a", Seed: 3})
	doc := parse(t, render(t, r))
	for _, name := range []string{ChartLatency, ChartAdded, ChartSidecar} {
		fig := byID(doc, "chart-"+name)
		if fig == nil {
			t.Fatalf("no chart-%s", name)
		}
		if v, _ := attr(fig, "data-empty"); v != "true" || len(elements(fig, "svg")) != 0 {
			t.Errorf("chart-%s: want an empty chart with the reason, got data-empty=%q and %d svg", name, v, len(elements(fig, "svg")))
		}
	}
}

// TestWriteEscapes feeds markup through every field a hostile or damaged run file controls.
func TestWriteEscapes(t *testing.T) {
	evil := `<script>alert(1)</script><img src=x onerror=alert(2)>`
	r := perfruntest.Run(perfruntest.Options{Nodes: []string{"node-a" + evil, "node-b"}, Added: 50 * time.Microsecond, FailNode: "node-b", Seed: 4})
	r.Nodes[1].Error = evil
	r.Mesh.Version = `"><svg onload=alert(3)>`
	r.Target.Name = evil
	r.PluginVersion = evil
	r.Environment.KubernetesVersion = `</style><script>alert(4)</script>`
	r.Load.Headers = map[string]string{evil: "secret-token"}
	b := render(t, r)
	doc := parse(t, b)
	if n := len(elements(doc, "script")); n != 0 {
		t.Errorf("%d script elements made it into the page", n)
	}
	if n := len(elements(doc, "img")); n != 0 {
		t.Errorf("%d img elements made it into the page", n)
	}
	walk(doc, func(n *html.Node) {
		for _, a := range n.Attr {
			if strings.HasPrefix(a.Key, "on") {
				t.Errorf("<%s> got an event handler %s=%q", n.Data, a.Key, a.Val)
			}
		}
	})
	if got := len(elements(doc, "svg")); got != 3 {
		t.Errorf("%d svg elements, want the 3 charts only", got)
	}
	if bytes.Contains(b, []byte("secret-token")) {
		t.Error("a header value is shown")
	}
	// The text is shown as text, in the tables and in the charts' legends.
	if !strings.Contains(text(doc), "node-a"+evil) {
		t.Error("the node name is not shown verbatim as text")
	}
	if !contains(svgTexts(byID(doc, "chart-"+ChartLatency)), "node-a"+evil) {
		t.Error("the latency chart's legend does not show the node name as text")
	}
}

// TestWriteWithoutAB covers a run where only eBPF residency measured the sidecars (no path
// around them) and one where the sidecars add nothing, so A/B's deltas straddle zero.
func TestWriteWithoutAB(t *testing.T) {
	r := perfruntest.Run(perfruntest.Options{Nodes: []string{"node-a", "node-b"}, Added: 60 * time.Microsecond, Seed: 5})
	for _, n := range r.GetNodes() {
		for _, p := range n.GetResult().GetPods() {
			p.AroundSidecar = nil
			p.Added = p.Added[1:] // residency only
		}
	}
	doc := parse(t, render(t, r))
	checkCharts(t, doc, r, []string{"node-a", "node-b"}, nil)
	added := byID(doc, "chart-"+ChartAdded)
	if n := pathsWithColor(added, colorAB); n != 0 {
		t.Errorf("%d A/B bars drawn for a run without A/B", n)
	}
	if contains(svgTexts(byID(doc, "chart-"+ChartLatency)), "around the mesh (direct to the app)") {
		t.Error("latency chart keys a path around the mesh that was not measured")
	}
	if !strings.Contains(text(byID(doc, "summary-table")), "did not run") {
		t.Error("summary does not say A/B did not run")
	}

	zero := perfruntest.Run(perfruntest.Options{Nodes: []string{"node-a", "node-b"}, Seed: 6})
	doc = parse(t, render(t, zero))
	checkCharts(t, doc, zero, []string{"node-a", "node-b"}, nil)
}

func TestWriteNil(t *testing.T) {
	var buf bytes.Buffer
	if err := Write(&buf, nil); err == nil || buf.Len() != 0 {
		t.Errorf("Write(nil) = %v, wrote %d bytes", err, buf.Len())
	}
}

func TestPercentileTicks(t *testing.T) {
	var got []string
	for _, tk := range percentileTicks(1, 2000) {
		got = append(got, tk.Label)
	}
	if want := "0% 50% 90% 99% 99.9%"; strings.Join(got, " ") != want {
		t.Errorf("ticks %q, want %q", got, want)
	}
}
