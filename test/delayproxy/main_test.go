package main

import (
	"bufio"
	"errors"
	"strings"
	"testing"
	"time"
)

func TestReadMessage(t *testing.T) {
	r := bufio.NewReader(strings.NewReader("POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nConnection: close\r\n\r\n"))
	m, _, err := readMessage(r, false)
	if err != nil || m.first != "POST /x HTTP/1.1" || string(m.body) != "hello" || m.close {
		t.Fatalf("first message: %+v, %v", m, err)
	}
	m, _, err = readMessage(r, false)
	if err != nil || m.first != "GET / HTTP/1.1" || len(m.body) != 0 || !m.close {
		t.Fatalf("second message: %+v, %v", m, err)
	}
	// A 304 carries the length of the body it did not send.
	r = bufio.NewReader(strings.NewReader("HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"))
	if m, _, err = readMessage(r, true); err != nil || len(m.body) != 0 {
		t.Fatalf("304: %+v, %v", m, err)
	}
	r = bufio.NewReader(strings.NewReader("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"))
	if _, _, err = readMessage(r, false); !errors.Is(err, errChunked) {
		t.Fatalf("chunked request: %v; want errChunked", err)
	}
}

func TestWaitIsNeverShort(t *testing.T) {
	for _, d := range []time.Duration{0, 50 * time.Microsecond, 200 * time.Microsecond, 3 * time.Millisecond} {
		start := time.Now()
		wait(start, d)
		if got := time.Since(start); got < d {
			t.Errorf("wait(%v) returned after %v", d, got)
		}
	}
}
