package htmlreport

import (
	"bytes"
	"encoding/json"
	"fmt"
	"image"
	"image/color"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun"
	"github.com/kubectl-mesh/kubectl-mesh/pkg/perfrun/perfruntest"
	"github.com/kubectl-mesh/kubectl-mesh/test/chromium"
)

// TestReportInChromium opens reports in headless Chromium and checks, from the DOM Chromium
// built and from its screenshot, that every chart rendered: the SVG is there with each
// node's series, and the chart's area of the screenshot is drawn in the series' colours.
func TestReportInChromium(t *testing.T) {
	cases := []struct {
		name     string
		opts     perfruntest.Options
		measured []string
		missing  []string
	}{
		{"two nodes", perfruntest.Options{Nodes: []string{"node-a", "node-b"}, Added: 80 * time.Microsecond, Seed: 11},
			[]string{"node-a", "node-b"}, nil},
		{"failed node", perfruntest.Options{Nodes: []string{"node-a", "node-b", "node-c"}, Added: 120 * time.Microsecond, FailNode: "node-b", Seed: 12},
			[]string{"node-a", "node-c"}, []string{"node-b"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := perfruntest.Run(tc.opts)
			checkInChromium(t, r, tc.measured, tc.missing)
		})
	}
}

// canaryHost is fetched by the probe page only, to prove that every check on fetching (the
// net log's page requests, the guard, Resource Timing) sees a fetch; the .invalid name
// resolves nowhere even if the guard were bypassed.
const canaryHost = "canary.kubectl-mesh.invalid"

// probeScript records where each chart landed, for the screenshot check, and every resource
// the page fetched (Resource Timing lists failed fetches too); with it comes a canary fetch.
// It goes into a copy of the report only, so the report itself stays script-free.
const probeScript = `<div style="display:none"><img src="http://` + canaryHost + `/probe.png" alt=""></div>
<script>
function probe() {
  document.querySelectorAll('figure[data-chart]').forEach(function (f) {
    var s = f.querySelector('svg');
    if (!s) return;
    var r = s.getBoundingClientRect();
    f.setAttribute('data-rect', [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height].map(Math.round).join(','));
  });
  document.body.setAttribute('data-page-height', String(document.documentElement.scrollHeight));
  document.body.setAttribute('data-resources', JSON.stringify(performance.getEntriesByType('resource').map(function (e) { return e.name; })));
}
probe();
window.addEventListener('load', probe);
</script>
`

const windowHeight = 4000

func checkInChromium(t *testing.T, r *perfrun.Run, measured, missing []string) {
	report := render(t, r)
	pagePath := filepath.Join(t.TempDir(), "report.html")
	probe := bytes.Replace(report, []byte("</body>"), []byte(probeScript+"</body>"), 1)
	if err := os.WriteFile(pagePath, probe, 0o644); err != nil {
		t.Fatal(err)
	}
	// The window is tall enough for the whole report of a few nodes. The probe's additions
	// draw nothing; its canary is the one fetch allowed.
	shot := chromium.Render(t, pagePath, chromium.WindowSize(1280, windowHeight), chromium.AllowRequests())
	canary := "http://" + canaryHost + "/probe.png"
	if want := []string{"GET " + canary}; !slices.Equal(shot.Requests, want) {
		t.Errorf("the page fetched %q; want nothing but the probe's canary %q", shot.Requests, want)
	}
	if !slices.ContainsFunc(shot.Refused, func(r string) bool { return strings.Contains(r, canaryHost) }) {
		t.Errorf("the canary fetch did not reach the network guard (it saw %q): Chromium is not confined", shot.Refused)
	}
	if shot.SVGs != 3 {
		t.Errorf("Chromium's DOM has %d SVGs, want the 3 charts", shot.SVGs)
	}
	doc := parse(t, []byte(shot.DOM))
	checkCharts(t, doc, r, measured, missing)

	rects := map[string]image.Rectangle{}
	for _, name := range []string{ChartLatency, ChartAdded, ChartSidecar} {
		fig := byID(doc, "chart-"+name)
		v, _ := attr(fig, "data-rect")
		var x, y, w, h int
		if _, err := fmt.Sscanf(v, "%d,%d,%d,%d", &x, &y, &w, &h); err != nil || w < 400 || h < 150 {
			t.Fatalf("chart-%s: laid out at %q, want a chart-sized box", name, v)
		}
		rects[name] = image.Rect(x, y, x+w, y+h)
	}
	var pageH int
	var resources []string
	walk(doc, func(n *html.Node) {
		if v, ok := attr(n, "data-page-height"); ok {
			pageH, _ = strconv.Atoi(v)
		}
		if v, ok := attr(n, "data-resources"); ok {
			if err := json.Unmarshal([]byte(v), &resources); err != nil {
				t.Fatalf("probe's resource list %q: %v", v, err)
			}
		}
	})
	// Resource Timing is the page's own account of its fetches, a second witness to the net log.
	if len(resources) != 1 || resources[0] != canary {
		t.Errorf("Resource Timing lists %q; want nothing but the probe's canary %s", resources, canary)
	}
	if pageH < 500 || pageH > windowHeight {
		t.Fatalf("the report is %d px tall; the screenshot holds %d", pageH, windowHeight)
	}

	img := shot.Screenshot
	for name, rc := range rects {
		if !rc.In(img.Bounds()) {
			t.Fatalf("chart-%s at %v lies outside the %v screenshot", name, rc, img.Bounds())
		}
		if frac := chromium.InkFraction(img, rc); frac < 0.03 {
			t.Errorf("chart-%s is blank in the screenshot: %.2f%% of its pixels drawn", name, 100*frac)
		}
	}
	// Each series shows in its own colour where its chart is.
	for _, n := range measured {
		// Two lines across the plot; the legend's swatch alone is a few dozen pixels.
		if got := chromium.ColorPixels(img, rects[ChartLatency], nodeColor(nodeIndex(r, n))); got < 400 {
			t.Errorf("latency chart: %d pixels in %s's colour, want its lines", got, n)
		}
	}
	wantColors := []struct {
		chart string
		c     color.Color
		what  string
	}{
		{ChartAdded, colorAB, "A/B bars"},
		{ChartAdded, colorResidency, "residency bars"},
		{ChartSidecar, colorLoaded, "sidecar bars"},
	}
	for _, w := range wantColors {
		// Bars cover thousands of pixels; the legend's swatch alone a few hundred.
		if got := chromium.ColorPixels(img, rects[w.chart], w.c); got < 5000 {
			t.Errorf("chart-%s: %d pixels of %s, want them drawn", w.chart, got, w.what)
		}
		// And not elsewhere: the colour belongs to the chart, not to the page around it.
		if other := chromium.ColorPixels(img, image.Rect(0, 0, img.Bounds().Dx(), rects[ChartLatency].Min.Y), w.c); other > 50 {
			t.Errorf("%d pixels of the %s colour above the charts", other, w.what)
		}
	}
}
