// Package chromium renders an HTML page in Debian's headless Chromium for tests: one run gives
// the DOM Chromium built and a screenshot, with every network request refused and recorded, so
// a test can check that a self-contained page really draws what it claims and fetches nothing.
package chromium

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// Shot is what one Chromium run made of a page.
type Shot struct {
	// DOM is the document Chromium built, serialised after the load event.
	DOM string
	// Screenshot is the window (see WindowSize) at scale 1, from the top of the page.
	Screenshot image.Image
	// SVGs counts the <svg> elements in DOM.
	SVGs int
	// InkFraction is the fraction of the screenshot's pixels that are not (near) white.
	InkFraction float64
	// Requests are the network requests the page made ("GET http://h/p"), from Chromium's
	// net log, in the order they started. All were refused by the guard.
	Requests []string
	// Refused are the request lines the network guard saw and refused ("GET http://h/p
	// HTTP/1.1", "CONNECT h:443 HTTP/1.1"): the page's and Chromium's own (sign-in, update
	// and time services call out on every start), in arrival order.
	Refused []string
}

// Option changes how Render runs Chromium.
type Option func(*config)

type config struct {
	width, height int
	allowRequests bool
	timeout       time.Duration
}

// Default window: wide enough for a desktop layout, tall enough that a report of a few nodes
// fits whole in the screenshot (headless Chromium shoots the window, not the full page).
const (
	DefaultWidth  = 1280
	DefaultHeight = 4000
)

// WindowSize sets the window, and so the screenshot, to w x h pixels.
func WindowSize(w, h int) Option {
	return func(c *config) { c.width, c.height = w, h }
}

// AllowRequests stops Render from failing the test when the page made requests; the caller
// checks Shot.Requests itself. For pages that fetch on purpose, such as a canary that proves
// the guard sees fetches.
func AllowRequests() Option {
	return func(c *config) { c.allowRequests = true }
}

// Timeout bounds the Chromium run (default 20 s); at the limit Chromium is killed and the
// test fails.
func Timeout(d time.Duration) Option {
	return func(c *config) { c.timeout = d }
}

// Render opens the HTML file at page in headless Chromium, once, and returns its DOM and a
// screenshot. Chromium runs with a throwaway profile and home, its only proxy a loopback
// listener that refuses and records every request, and every host name unresolvable. The
// page's own requests are told from Chromium's by its net log (a page's requests have the
// page as initiator, Chromium's services have none). Unless AllowRequests is given, any
// request of the page fails the test (Errorf: the Shot is still returned), since a report
// that must open offline may fetch nothing. References to other local files (file://) do not
// touch the network and are not counted.
//
// Chromium and every process it started are gone when Render returns, even when the test
// fails. A machine without Chromium fails the test: it is a declared test dependency.
func Render(t testing.TB, page string, opts ...Option) Shot {
	t.Helper()
	cfg := config{width: DefaultWidth, height: DefaultHeight, timeout: 20 * time.Second}
	for _, o := range opts {
		o(&cfg)
	}
	bin, err := browser()
	if err != nil {
		t.Fatalf("%v: install Debian's chromium package (apt-get install chromium)", err)
	}
	abs, err := filepath.Abs(page)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(abs); err != nil || !st.Mode().IsRegular() {
		t.Fatalf("page %s: not a file (%v)", page, err)
	}
	pageURL := (&url.URL{Scheme: "file", Path: abs}).String()

	work, err := os.MkdirTemp("", "chromium-render-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	shotPath := filepath.Join(work, "shot.png")

	guard, err := startGuard()
	if err != nil {
		t.Fatalf("network guard: %v", err)
	}
	netLog := filepath.Join(work, "netlog.json")
	dom, runErr := run(t, bin, work, guard.addr(), cfg.timeout, "--dump-dom", "--screenshot="+shotPath,
		"--log-net-log="+netLog, "--net-log-capture-mode=Default",
		fmt.Sprintf("--window-size=%d,%d", cfg.width, cfg.height), pageURL)
	// Chromium is gone: every request it made has been accepted and read.
	refused := guard.stop()
	if runErr != nil {
		t.Fatalf("chromium on %s: %v", page, runErr)
	}
	reqs, err := pageRequests(netLog)
	if err != nil {
		t.Fatalf("chromium on %s: net log: %v", page, err)
	}

	img, err := decodePNG(shotPath)
	if err != nil {
		t.Fatalf("chromium on %s: screenshot: %v", page, err)
	}
	svgs, err := countSVGs(dom)
	if err != nil {
		t.Fatalf("chromium on %s: parse its DOM: %v", page, err)
	}
	shot := Shot{
		DOM:         string(dom),
		Screenshot:  img,
		SVGs:        svgs,
		InkFraction: InkFraction(img, img.Bounds()),
		Requests:    reqs,
		Refused:     refused,
	}
	if len(reqs) > 0 && !cfg.allowRequests {
		t.Errorf("rendering %s sent %d network request(s), refused: %q; the page must fetch nothing", page, len(reqs), reqs)
	}
	return shot
}

// debianBrowser is the browser itself in Debian's chromium package. Its launcher on PATH
// sources /etc/chromium.d, which adds Google API keys and remote extensions: with them the
// browser calls Google's sign-in and update services on every start, which would be noise
// among the page's requests. The browser is run directly, with only Render's flags.
const debianBrowser = "/usr/lib/chromium/chromium"

func browser() (string, error) {
	launcher, err := exec.LookPath("chromium")
	if err != nil {
		return "", fmt.Errorf("chromium not found on PATH (%w)", err)
	}
	if st, err := os.Stat(debianBrowser); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
		return debianBrowser, nil
	}
	return launcher, nil
}

// InkFraction is the fraction of the pixels of img within rc that are not (near) white.
func InkFraction(img image.Image, rc image.Rectangle) float64 {
	rc = rc.Intersect(img.Bounds())
	if rc.Empty() {
		return 0
	}
	var ink int
	for y := rc.Min.Y; y < rc.Max.Y; y++ {
		for x := rc.Min.X; x < rc.Max.X; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			if r < 0xf000 || g < 0xf000 || b < 0xf000 {
				ink++
			}
		}
	}
	return float64(ink) / float64(rc.Dx()*rc.Dy())
}

// ColorPixels counts the pixels of img within rc that are within a small distance of c in
// each channel, so that antialiased edges blended with the background do not count.
func ColorPixels(img image.Image, rc image.Rectangle, c color.Color) int {
	cr, cg, cb, _ := c.RGBA()
	near := func(a, b uint32) bool {
		d := int(a>>8) - int(b>>8)
		return d > -24 && d < 24
	}
	rc = rc.Intersect(img.Bounds())
	n := 0
	for y := rc.Min.Y; y < rc.Max.Y; y++ {
		for x := rc.Min.X; x < rc.Max.X; x++ {
			r, g, b, _ := img.At(x, y).RGBA()
			if near(r, cr) && near(g, cg) && near(b, cb) {
				n++
			}
		}
	}
	return n
}

// pageRequests reads the requests a page made from the net log Chromium wrote at exit. Every
// request Chromium starts is logged with its initiator: the origin that asked for it (for a
// file:// page, "null"), or "not an origin" for the browser's own services. Anything else
// counts as the page's, so should Chromium change how it logs its own, they show up here
// rather than a page's fetch going unseen.
func pageRequests(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var log struct {
		Constants struct {
			LogEventTypes map[string]int `json:"logEventTypes"`
		} `json:"constants"`
		Events []struct {
			Type   int `json:"type"`
			Params struct {
				Initiator *string `json:"initiator"`
				Method    string  `json:"method"`
				URL       string  `json:"url"`
			} `json:"params"`
		} `json:"events"`
	}
	if err := json.Unmarshal(b, &log); err != nil {
		return nil, err
	}
	start, ok := log.Constants.LogEventTypes["URL_REQUEST_START_JOB"]
	if !ok {
		return nil, errors.New("no URL_REQUEST_START_JOB event type in its constants")
	}
	var reqs []string
	for _, e := range log.Events {
		// The job's end is logged under the same type, with no URL.
		p := e.Params
		if e.Type != start || p.URL == "" {
			continue
		}
		if p.Initiator != nil && *p.Initiator == "not an origin" {
			continue
		}
		reqs = append(reqs, p.Method+" "+p.URL)
	}
	return reqs, nil
}

func countSVGs(dom []byte) (int, error) {
	doc, err := html.Parse(bytes.NewReader(dom))
	if err != nil {
		return 0, err
	}
	n := 0
	var walk func(*html.Node)
	walk = func(e *html.Node) {
		if e.Type == html.ElementNode && e.DataAtom == atom.Svg {
			n++
		}
		for c := e.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(doc)
	return n, nil
}

func decodePNG(path string) (image.Image, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return png.Decode(bufio.NewReader(f))
}

// guard is the only proxy Chromium may use: a loopback listener that refuses and records
// every request, so nothing leaves the machine and the test sees whatever was fetched.
type guard struct {
	ln    net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex
	seen  []string
	conns map[net.Conn]struct{}
}

func startGuard() (*guard, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g := &guard{ln: ln, conns: map[net.Conn]struct{}{}}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.conns[c] = struct{}{}
			g.mu.Unlock()
			g.wg.Add(1)
			go func() {
				defer g.wg.Done()
				g.refuse(c)
			}()
		}
	}()
	return g, nil
}

func (g *guard) addr() string { return g.ln.Addr().String() }

// refuse records the request line a client sent and closes the connection. The line is
// recorded before the refusal, so Chromium cannot finish loading before it is in the list.
func (g *guard) refuse(c net.Conn) {
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	g.mu.Lock()
	if line = strings.TrimSpace(line); line != "" {
		g.seen = append(g.seen, line)
	}
	delete(g.conns, c)
	g.mu.Unlock()
	c.Close()
}

// stop closes the guard and returns what it saw. Connections whose client is gone read EOF
// at once; any still open are closed, so stop does not wait for the read deadline.
func (g *guard) stop() []string {
	g.ln.Close()
	g.mu.Lock()
	for c := range g.conns {
		// Unblocks the reader, which keeps whatever line already arrived.
		_ = c.SetReadDeadline(time.Now())
	}
	g.mu.Unlock()
	g.wg.Wait()
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]string(nil), g.seen...)
}

// run runs one headless Chromium command with its profile and home under work, every request
// sent to the guard at proxy and every host name unresolvable, and returns its stdout.
// Chromium and every process it spawned are killed when it is done.
func run(t testing.TB, bin, work, proxy string, timeout time.Duration, args ...string) ([]byte, error) {
	t.Helper()
	home := filepath.Join(work, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	base := []string{
		"--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
		"--user-data-dir=" + filepath.Join(home, "profile"),
		"--proxy-server=http://" + proxy,
		// Loopback too goes to the guard: a page has no business with local servers either.
		"--proxy-bypass-list=<-loopback>",
		// Every name is unresolvable; the guard's own address stays reachable.
		"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
		"--no-first-run", "--no-default-browser-check", "--disable-background-networking",
		"--disable-component-update", "--disable-sync", "--disable-extensions", "--disable-default-apps",
		"--disable-domain-reliability", "--disable-breakpad", "--metrics-recording-only",
		"--disable-features=NetworkTimeServiceQuerying,OptimizationHints,Translate,MediaRouter",
		"--hide-scrollbars", "--force-device-scale-factor=1",
	}
	cmd := exec.CommandContext(ctx, bin, append(base, args...)...)
	cmd.Dir = home
	cmd.Env = []string{"HOME=" + home, "XDG_CONFIG_HOME=" + filepath.Join(home, "config"),
		"XDG_CACHE_HOME=" + filepath.Join(home, "cache"), "PATH=" + os.Getenv("PATH"), "LANG=C.UTF-8"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start: %w", err)
	}
	pgid := cmd.Process.Pid
	// Chromium's helpers share its process group, except its crash handlers, which start their
	// own sessions; they are known by the throwaway home in their command line. End any that
	// outlive Chromium.
	defer func() {
		if err := syscall.Kill(-pgid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Logf("kill chromium's process group %d: %v", pgid, err)
		}
		killByArg(t, home+string(filepath.Separator))
	}()
	start := time.Now()
	if err := cmd.Wait(); err != nil {
		return nil, fmt.Errorf("%s: %w (after %v; %v)\n%s", strings.Join(args, " "), err,
			time.Since(start).Round(time.Millisecond), ctx.Err(), tail(stderr.String(), 2000))
	}
	return stdout.Bytes(), nil
}

// killByArg kills the processes with arg in their command line: only this run's Chromium
// processes have its temporary home there.
func killByArg(t testing.TB, arg string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(arg)) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Logf("kill leftover chromium process %d: %v", pid, err)
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
