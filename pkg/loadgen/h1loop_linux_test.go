package loadgen

import (
	"net"
	"testing"
)

// The event-loop cases of TestClosedLoopHTTP1Paths would pass on the goroutine path too, so this holds
// detachable to sending a dialled TCP connection to the loops, and anything else away.
func TestDetachable(t *testing.T) {
	addr := serveHTTP(t, &okHandler{}, false)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, c := range []struct {
		name string
		conn net.Conn
		want bool
	}{
		{"dialled TCP", conn, true},
		{"wrapped", plainConn{conn}, false},
		{"not yet dialled", nil, false},
	} {
		if got := detachable([]*worker{{cl: &h1Client{rawConn: rawConn{conn: c.conn}}}}); got != c.want {
			t.Errorf("%s: detachable %v, want %v", c.name, got, c.want)
		}
	}
}
