package chromium

import (
	"fmt"
	"image"
	"image/color"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
)

func writePage(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "page.html")
	page := "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>t</title>" +
		"<style>html,body{margin:0;background:#fff}</style></head><body>" + body + "</body></html>\n"
	if err := os.WriteFile(p, []byte(page), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRenderInlineSVG renders a page whose only drawing is an inline SVG: the DOM, the SVG
// count and the screenshot must all show it, in its place and colour.
func TestRenderInlineSVG(t *testing.T) {
	t.Parallel()
	// A 400x300 red block at (100,50) in a 800x600 window, and nothing else drawn.
	page := writePage(t, `<svg width="800" height="600" style="display:block">`+
		`<rect x="100" y="50" width="400" height="300" fill="#d62728"/></svg>`+
		`<p style="color:#fff;margin:0">marker-7f3a</p>`)
	shot := Render(t, page, WindowSize(800, 600))

	if !strings.Contains(shot.DOM, "marker-7f3a") || !strings.Contains(shot.DOM, "<rect") {
		t.Errorf("DOM lacks the page's content:\n%s", shot.DOM)
	}
	if shot.SVGs != 1 {
		t.Errorf("SVGs = %d, want 1", shot.SVGs)
	}
	if b := shot.Screenshot.Bounds(); b.Dx() != 800 || b.Dy() != 600 {
		t.Fatalf("screenshot is %v, want 800x600", b)
	}
	// 400*300 of 800*600 pixels is a quarter.
	if want := 0.25; shot.InkFraction < want-0.01 || shot.InkFraction > want+0.01 {
		t.Errorf("InkFraction = %.4f, want %.2f", shot.InkFraction, want)
	}
	block := image.Rect(100, 50, 500, 350)
	red := color.RGBA{0xd6, 0x27, 0x28, 0xff}
	if got, want := ColorPixels(shot.Screenshot, block, red), block.Dx()*block.Dy(); got < want*99/100 {
		t.Errorf("%d red pixels where the block is, want %d", got, want)
	}
	if got := InkFraction(shot.Screenshot, block); got < 0.99 {
		t.Errorf("InkFraction(block) = %.3f, want it all drawn", got)
	}
	if got := InkFraction(shot.Screenshot, image.Rect(500, 0, 800, 600)); got != 0 {
		t.Errorf("InkFraction right of the block = %.4f, want 0", got)
	}
	if len(shot.Requests) != 0 {
		t.Errorf("a self-contained page sent requests: %q", shot.Requests)
	}
}

// recorder stands in for the test so that the failure Render reports can be checked; anything
// fatal still fails the real test.
type recorder struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

func (r *recorder) Error(args ...any) { r.Errorf("%s", fmt.Sprint(args...)) }

// TestRenderCatchesFetches renders a page that references outside resources over http, over
// https and on loopback: the guard must see each, and Render must fail the test for them.
func TestRenderCatchesFetches(t *testing.T) {
	t.Parallel()
	page := writePage(t, `<link rel="stylesheet" href="https://cdn.kubectl-mesh.invalid/site.css">`+
		`<img src="http://img.kubectl-mesh.invalid/logo.png" alt="">`+
		`<img src="http://127.0.0.1:2/local.png" alt="">`+
		`<p>marker-1c9e</p>`)
	// Port 2, not 9: Chromium refuses ports it deems unsafe (9 is one) before any proxy.
	rec := &recorder{TB: t}
	shot := Render(rec, page, WindowSize(400, 300))

	wantReqs := []string{
		"GET https://cdn.kubectl-mesh.invalid/site.css",
		"GET http://img.kubectl-mesh.invalid/logo.png",
		"GET http://127.0.0.1:2/local.png",
	}
	for _, want := range wantReqs {
		if !slices.Contains(shot.Requests, want) {
			t.Errorf("Requests = %q, want %q among them", shot.Requests, want)
		}
	}
	if len(shot.Requests) != len(wantReqs) {
		t.Errorf("Requests = %q, want only %q", shot.Requests, wantReqs)
	}
	// And each went to the guard, which refused it.
	for _, want := range []string{
		"CONNECT cdn.kubectl-mesh.invalid:443 ",
		"GET http://img.kubectl-mesh.invalid/logo.png ",
		"GET http://127.0.0.1:2/local.png ",
	} {
		if !slices.ContainsFunc(shot.Refused, func(r string) bool { return strings.HasPrefix(r, want) }) {
			t.Errorf("the guard did not see %q; it saw %q", want, shot.Refused)
		}
	}
	if !strings.Contains(shot.DOM, "marker-1c9e") {
		t.Errorf("DOM lacks the page's content:\n%s", shot.DOM)
	}
	if len(rec.errors) != 1 || !strings.Contains(rec.errors[0], "the page must fetch nothing") ||
		!strings.Contains(rec.errors[0], "img.kubectl-mesh.invalid") {
		t.Errorf("Render reported %q; want one error naming the fetches", rec.errors)
	}

	// With AllowRequests the caller owns the check: the same page is no failure of Render's.
	rec = &recorder{TB: t}
	shot = Render(rec, page, WindowSize(400, 300), AllowRequests())
	if len(rec.errors) != 0 || len(shot.Requests) != len(wantReqs) {
		t.Errorf("with AllowRequests: errors %q, requests %q", rec.errors, shot.Requests)
	}
}

func TestRenderMissingPage(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "nope.html")
	var failed bool
	done := make(chan struct{})
	// Fatalf ends its goroutine, so it runs on one of its own.
	go func() {
		defer close(done)
		rec := &fatalRecorder{TB: t, failed: &failed}
		Render(rec, missing)
	}()
	<-done
	if !failed {
		t.Error("Render of a missing page did not fail the test")
	}
}

type fatalRecorder struct {
	testing.TB
	failed *bool
}

func (r *fatalRecorder) Fatalf(format string, args ...any) {
	*r.failed = strings.Contains(fmt.Sprintf(format, args...), "not a file")
	runtime.Goexit()
}
