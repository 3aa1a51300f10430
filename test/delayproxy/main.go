// Command delayproxy is an HTTP/1.1 reverse proxy that adds a known delay to every
// request and logs what it did, the ground truth that residency measurements are
// checked against.
//
//	delayproxy --listen ADDR --upstream ADDR --delay D --log FILE
//
// For each request read from a client it waits exactly D (busy-waiting up to 2 ms,
// sleeping then spinning the last 2 ms above), forwards the request over a kept-alive upstream
// connection of its own (one per client connection, so the pairing is unambiguous),
// reads the response and writes it back in one write. Per request it logs one line:
//
//	<t_write − t_read> <t_upstream_read − t_upstream_write> <t_write_start − t_read> <t_upstream_read − t_upstream_write_start>
//
// in ns. The first is the proxy's view of the whole exchange; minus the second (the
// upstream round trip) it is the time the request spent inside the proxy. Each t_read is
// taken when the first bytes of a message are returned by a read; t_write when a write
// returns, t_write_start when it is called. The kernel's tracepoints lie between the two:
// a write's return can be delayed by the peer it woke preempting the proxy, so the last
// two figures bound the proxy's time from below as the first two bound it from above.
//
// On start it prints "listening ADDR" on stdout, so --listen may name port 0.
//
// Bodies are delimited by Content-Length only; chunked messages are refused (501 for a
// request, 502 for a response) and the connection closed.
package main

import (
	"bufio"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// spinBelow is the delay under which the proxy never sleeps, and the tail of longer ones
// it spins. A sleeping goroutine's wake-up can overshoot by a timer tick (about 1 ms on
// hosts with HZ=1000 and default timer slack), far beyond 100µs, so the margin covers a
// tick: delays up to 2 ms are pure busy-waits, longer ones sleep then spin the last 2 ms.
const spinBelow = 2 * time.Millisecond

// maxHeader bounds a message's header block.
const maxHeader = 64 << 10

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to accept clients on")
	upstream := flag.String("upstream", "", "address of the upstream HTTP server")
	delay := flag.Duration("delay", 0, "delay added to each request")
	logPath := flag.String("log", "", "file to append one line per request to")
	flag.Parse()
	if *upstream == "" || *logPath == "" || *delay < 0 {
		fmt.Fprintln(os.Stderr, "usage: delayproxy --listen ADDR --upstream ADDR --delay D --log FILE")
		os.Exit(2)
	}
	logFile, err := os.OpenFile(*logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		log.Fatal(err)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	// The address line lets a harness listen on port 0 and learn the port without a race.
	fmt.Printf("listening %s\n", ln.Addr())
	p := &proxy{upstream: *upstream, delay: *delay, log: logFile}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		ln.Close()
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			log.Printf("accept: %v", err)
			continue
		}
		go p.serve(c)
	}
}

type proxy struct {
	upstream string
	delay    time.Duration
	logMu    sync.Mutex
	log      *os.File
}

// message is one HTTP/1.1 request or response, header block and body as read.
type message struct {
	head  []byte
	body  []byte
	first string // request line or status line
	close bool   // Connection: close
}

var errChunked = errors.New("chunked transfer coding is not supported")

// readMessage reads a message; it returns the instant the first bytes were available.
// isResponse selects the body rules of responses (no body for 1xx, 204, 304).
func readMessage(r *bufio.Reader, isResponse bool) (message, time.Time, error) {
	var m message
	if _, err := r.Peek(1); err != nil {
		return m, time.Time{}, err
	}
	first := time.Now()
	var head bytes.Buffer
	length := int64(0)
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return m, first, fmt.Errorf("read header: %w", err)
		}
		head.Write(line)
		if head.Len() > maxHeader {
			return m, first, errors.New("header block too large")
		}
		s := strings.TrimRight(string(line), "\r\n")
		if m.first == "" {
			m.first = s
			continue
		}
		if s == "" {
			break
		}
		name, value, ok := strings.Cut(s, ":")
		if !ok {
			return m, first, fmt.Errorf("malformed header line %q", s)
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "content-length":
			length, err = strconv.ParseInt(value, 10, 64)
			if err != nil || length < 0 {
				return m, first, fmt.Errorf("bad Content-Length %q", value)
			}
		case "transfer-encoding":
			if !strings.EqualFold(value, "identity") {
				return m, first, errChunked
			}
		case "connection":
			m.close = strings.EqualFold(value, "close")
		}
	}
	if isResponse {
		if code := statusCode(m.first); code/100 == 1 || code == 204 || code == 304 {
			length = 0
		}
	}
	m.head = head.Bytes()
	if length > 0 {
		m.body = make([]byte, length)
		if _, err := io.ReadFull(r, m.body); err != nil {
			return m, first, fmt.Errorf("read body: %w", err)
		}
	}
	return m, first, nil
}

func statusCode(statusLine string) int {
	f := strings.Fields(statusLine)
	if len(f) < 2 {
		return 0
	}
	c, _ := strconv.Atoi(f[1])
	return c
}

// wait blocks until d has passed since start, spinning for the last spinBelow of it.
func wait(start time.Time, d time.Duration) {
	if d <= 0 {
		return
	}
	deadline := start.Add(d)
	if d > spinBelow {
		time.Sleep(d - spinBelow)
	}
	for time.Now().Before(deadline) {
	}
}

func (p *proxy) serve(client net.Conn) {
	defer client.Close()
	cr := bufio.NewReaderSize(client, 64<<10)
	var up net.Conn
	var ur *bufio.Reader
	defer func() {
		if up != nil {
			up.Close()
		}
	}()
	for {
		req, tRead, err := readMessage(cr, false)
		if err != nil {
			if errors.Is(err, errChunked) {
				io.WriteString(client, "HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			} else if !errors.Is(err, io.EOF) {
				log.Printf("read request: %v", err)
			}
			return
		}
		wait(time.Now(), p.delay)
		if up == nil {
			if up, err = net.Dial("tcp", p.upstream); err != nil {
				log.Printf("dial upstream: %v", err)
				io.WriteString(client, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
				return
			}
			ur = bufio.NewReaderSize(up, 64<<10)
		}
		tUpWriteStart := time.Now()
		if _, err := (&net.Buffers{req.head, req.body}).WriteTo(up); err != nil {
			log.Printf("write upstream: %v", err)
			return
		}
		tUpWrite := time.Now()
		resp, tUpRead, err := readMessage(ur, true)
		if err != nil {
			log.Printf("read upstream response: %v", err)
			io.WriteString(client, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
			return
		}
		// One write for head and body: the response leg ends at its first byte.
		out := append(resp.head, resp.body...)
		tWriteStart := time.Now()
		if _, err := client.Write(out); err != nil {
			log.Printf("write response: %v", err)
			return
		}
		tWrite := time.Now()
		p.logMu.Lock()
		fmt.Fprintf(p.log, "%d %d %d %d\n", tWrite.Sub(tRead).Nanoseconds(), tUpRead.Sub(tUpWrite).Nanoseconds(),
			tWriteStart.Sub(tRead).Nanoseconds(), tUpRead.Sub(tUpWriteStart).Nanoseconds())
		p.logMu.Unlock()
		if req.close || resp.close {
			return
		}
	}
}
