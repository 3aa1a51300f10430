package loadgen

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// maxLineBytes bounds one status, header, chunk-size or trailer line, so a hostile server
// cannot make the generator buffer without end.
const maxLineBytes = 16 << 10

var (
	errMalformed = errors.New("malformed HTTP response")
	// errTrailingBytes: the server sent more than the framing of its response says, which a
	// client that does not pipeline cannot attribute to any request.
	errTrailingBytes = errors.New("bytes after the end of the response")
)

const (
	psStatus = iota
	psHeader
	psBody      // remain bytes of a Content-Length body
	psChunkSize // the next chunk-size line
	psChunkData // remain bytes of a chunk
	psChunkEnd  // the CRLF after a chunk
	psTrailer
	psUntilClose // a body delimited by the end of the connection
	psDone
)

// respParser reads one HTTP/1.x response fed in pieces as they come off the socket,
// discarding its body. It is incremental rather than a bufio.Reader loop so one parser
// serves both the blocking client and the event loop, which cannot block mid-response.
type respParser struct {
	head    bool // the request was HEAD: no body whatever the headers say
	state   int
	remain  int64
	code    int
	keep    bool
	length  int64
	chunked bool
	got     bool   // a byte of the response arrived
	line    []byte // a line split across reads
}

func (p *respParser) reset(head bool) {
	*p = respParser{head: head, line: p.line[:0]}
}

func (p *respParser) done() bool { return p.state == psDone }

// feed consumes b and returns how many bytes belong to the response. Bytes after the end
// of the response (done) are the server's error: errTrailingBytes.
func (p *respParser) feed(b []byte) (int, error) {
	if len(b) > 0 {
		p.got = true
	}
	i := 0
	for i < len(b) && p.state != psDone {
		switch p.state {
		case psBody, psChunkData:
			n := int(min(p.remain, int64(len(b)-i)))
			i += n
			p.remain -= int64(n)
			if p.remain == 0 {
				if p.state == psBody {
					p.state = psDone
				} else {
					p.state = psChunkEnd
				}
			}
		case psUntilClose:
			i = len(b)
		default:
			j := bytes.IndexByte(b[i:], '\n')
			if j < 0 {
				if len(p.line)+len(b)-i > maxLineBytes {
					return i, kindErr(ErrProtocol, fmt.Errorf("%w: line longer than %d bytes", errMalformed, maxLineBytes))
				}
				p.line = append(p.line, b[i:]...)
				return len(b), nil
			}
			line := b[i : i+j+1]
			i += j + 1
			if len(p.line)+len(line) > maxLineBytes {
				return i, kindErr(ErrProtocol, fmt.Errorf("%w: line longer than %d bytes", errMalformed, maxLineBytes))
			}
			if len(p.line) > 0 {
				p.line = append(p.line, line...)
				line = p.line
			}
			err := p.onLine(trimEOL(line))
			p.line = p.line[:0]
			if err != nil {
				return i, err
			}
		}
	}
	if i < len(b) {
		return i, kindErr(ErrProtocol, errTrailingBytes)
	}
	return i, nil
}

// eof tells the parser the server closed the connection; it is the end of a close-delimited
// body and an error anywhere else.
func (p *respParser) eof() error {
	switch p.state {
	case psUntilClose:
		p.state = psDone
		return nil
	case psDone:
		return nil
	}
	err := io.EOF
	if p.got {
		err = io.ErrUnexpectedEOF
	}
	// first: nothing of the response arrived, so the request may not have either.
	return &reqError{kind: ErrIO, err: err, first: !p.got}
}

func (p *respParser) onLine(line []byte) error {
	switch p.state {
	case psStatus:
		if len(line) < 12 || string(line[:7]) != "HTTP/1." || line[8] != ' ' {
			return kindErr(ErrProtocol, fmt.Errorf("%w: status line %q", errMalformed, line))
		}
		p.keep = line[7] == '1'
		p.code = 0
		for _, d := range line[9:12] {
			if d < '0' || d > '9' {
				return kindErr(ErrProtocol, fmt.Errorf("%w: status line %q", errMalformed, line))
			}
			p.code = p.code*10 + int(d-'0')
		}
		p.length, p.chunked = -1, false
		p.state = psHeader
	case psHeader:
		if len(line) == 0 {
			p.endHeaders()
			return nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return kindErr(ErrProtocol, fmt.Errorf("%w: header %q", errMalformed, line))
		}
		name, value := line[:colon], bytes.TrimSpace(line[colon+1:])
		switch {
		case equalFoldBytes(name, "content-length"):
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 {
				return kindErr(ErrProtocol, fmt.Errorf("%w: Content-Length %q", errMalformed, value))
			}
			p.length = n
		case equalFoldBytes(name, "transfer-encoding"):
			p.chunked = containsFold(value, "chunked")
		case equalFoldBytes(name, "connection"):
			if containsFold(value, "close") {
				p.keep = false
			} else if containsFold(value, "keep-alive") {
				p.keep = true
			}
		}
	case psChunkSize:
		if i := bytes.IndexByte(line, ';'); i >= 0 {
			line = line[:i]
		}
		size, err := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
		if err != nil || size < 0 {
			return kindErr(ErrProtocol, fmt.Errorf("%w: chunk size %q", errMalformed, line))
		}
		if size == 0 {
			p.state = psTrailer
		} else {
			p.state, p.remain = psChunkData, size
		}
	case psChunkEnd:
		if len(line) != 0 {
			return kindErr(ErrProtocol, fmt.Errorf("%w: chunk not followed by CRLF", errMalformed))
		}
		p.state = psChunkSize
	case psTrailer:
		if len(line) == 0 {
			p.state = psDone
		}
	}
	return nil
}

func (p *respParser) endHeaders() {
	switch {
	case p.code >= 100 && p.code < 200 && p.code != 101:
		p.state = psStatus // interim response; the real one follows
	case p.head || p.code == 204 || p.code == 304 || p.code == 101:
		p.state = psDone
	case p.chunked:
		p.state = psChunkSize
	case p.length == 0:
		p.state = psDone
	case p.length > 0:
		p.state, p.remain = psBody, p.length
	default:
		// Delimited by close: the connection is spent.
		p.state, p.keep = psUntilClose, false
	}
}

// statusErr is the error of a complete response, nil for a success.
func statusErr(code int) error {
	if code >= 400 {
		return kindErr(ErrStatus, fmt.Errorf("HTTP %d", code))
	}
	return nil
}
