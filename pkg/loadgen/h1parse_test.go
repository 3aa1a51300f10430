package loadgen

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// Every response is parsed whole, byte by byte and in three-byte pieces: a response split
// anywhere across reads must give the same answer.
func TestResponseParser(t *testing.T) {
	long := strings.Repeat("a", maxLineBytes+1)
	cases := []struct {
		name     string
		head     bool
		in       string
		code     int
		keep     bool
		eof      bool // the server closes after in; needed to end the response
		err      ErrorKind
		trailing bool // bytes follow the response
		first    bool // the error came before any byte
	}{
		{name: "content-length", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", code: 200, keep: true},
		{name: "empty body", in: "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", code: 200, keep: true},
		{name: "bare LF", in: "HTTP/1.1 200 OK\nContent-Length: 2\n\nhi", code: 200, keep: true},
		{name: "chunked", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1a\r\n" + strings.Repeat("z", 26) + "\r\n0\r\nX-Trailer: t\r\n\r\n", code: 200, keep: true},
		{name: "HEAD ignores length", head: true, in: "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", code: 200, keep: true},
		{name: "204", in: "HTTP/1.1 204 No Content\r\n\r\n", code: 204, keep: true},
		{name: "304", in: "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", code: 304, keep: true},
		{name: "interim 100", in: "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx", code: 201, keep: true},
		{name: "HTTP/1.0 closes", in: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", code: 200, keep: false},
		{name: "HTTP/1.0 keep-alive", in: "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\nx", code: 200, keep: true},
		{name: "connection close", in: "HTTP/1.1 503 Busy\r\nconnection: close\r\ncontent-length: 2\r\n\r\nno", code: 503, keep: false},
		{name: "close-delimited", in: "HTTP/1.1 200 OK\r\n\r\nuntil the end", eof: true, code: 200, keep: false},
		{name: "bytes after the response", in: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nxy", err: ErrProtocol, trailing: true},
		{name: "bad status line", in: "HTTP/2 200\r\n\r\n", err: ErrProtocol},
		{name: "bad status code", in: "HTTP/1.1 2x0 OK\r\n\r\n", err: ErrProtocol},
		{name: "bad content-length", in: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", err: ErrProtocol},
		{name: "header without colon", in: "HTTP/1.1 200 OK\r\nnocolon\r\n\r\n", err: ErrProtocol},
		{name: "bad chunk size", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", err: ErrProtocol},
		{name: "chunk without CRLF", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxy\r\n", err: ErrProtocol},
		{name: "line too long", in: "HTTP/1.1 200 OK\r\nX: " + long + "\r\n\r\n", err: ErrProtocol},
		{name: "closed mid-body", in: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", eof: true, err: ErrIO},
		{name: "closed before any byte", in: "", eof: true, err: ErrIO, first: true},
	}
	for _, c := range cases {
		for _, step := range []int{len(c.in) + 1, 1, 3} {
			var p respParser
			p.reset(c.head)
			var err error
			in := []byte(c.in)
			for len(in) > 0 && err == nil && !p.done() {
				var used int
				used, err = p.feed(in[:min(step, len(in))])
				in = in[used:]
			}
			// What is left arrives in a later read, after the response ended.
			if err == nil && p.done() && len(in) > 0 {
				err = kindErr(ErrProtocol, errTrailingBytes)
			}
			if err == nil && !p.done() && c.eof {
				err = p.eof()
			}
			if c.err != "" {
				if err == nil {
					t.Errorf("%s (pieces of %d): no error", c.name, step)
					continue
				}
				if k := classify(err); k != c.err {
					t.Errorf("%s (pieces of %d): error kind %v (%v), want %v", c.name, step, k, err, c.err)
				}
				if c.trailing != errors.Is(err, errTrailingBytes) {
					t.Errorf("%s (pieces of %d): %v, trailing bytes %v", c.name, step, err, c.trailing)
				}
				var re *reqError
				if errors.As(err, &re) && re.first != c.first {
					t.Errorf("%s (pieces of %d): first %v, want %v", c.name, step, re.first, c.first)
				}
				continue
			}
			if err != nil || !p.done() {
				t.Errorf("%s (pieces of %d): err %v, done %v", c.name, step, err, p.done())
				continue
			}
			if p.code != c.code || p.keep != c.keep {
				t.Errorf("%s (pieces of %d): code %d keep %v, want %d %v", c.name, step, p.code, p.keep, c.code, c.keep)
			}
		}
	}
}

// A parser reused across responses starts each one clean.
func TestResponseParserReset(t *testing.T) {
	var p respParser
	p.reset(false)
	if _, err := p.feed([]byte("HTTP/1.1 200 OK\r\nTransfer-Enc")); err != nil || p.done() {
		t.Fatalf("partial: %v %v", err, p.done())
	}
	p.reset(false)
	if err := p.eof(); !errors.Is(err, io.EOF) {
		t.Fatalf("eof on a fresh parser: %v, want io.EOF", err)
	}
	p.reset(false)
	if _, err := p.feed([]byte("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")); err != nil || !p.done() || p.code != 404 || p.chunked {
		t.Fatalf("after reset: %v done %v code %d chunked %v", err, p.done(), p.code, p.chunked)
	}
	if err := statusErr(p.code); classify(err) != ErrStatus {
		t.Errorf("404 is %v", err)
	}
}
