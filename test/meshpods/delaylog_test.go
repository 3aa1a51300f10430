package meshpods

import (
	"testing"
	"time"
)

func TestParseDelayLog(t *testing.T) {
	recs, err := ParseDelayLog("1607938 8917 1538889 164277\n1200000 200000\n\n999 1")
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Fatalf("records %+v: the unterminated last line must be left out", recs)
	}
	if r := recs[0]; r.Residency() != 1599021*time.Nanosecond || r.ResidencyLow() != 1374612*time.Nanosecond {
		t.Errorf("four figures: residency %s, low %s", r.Residency(), r.ResidencyLow())
	}
	if r := recs[1]; r.Residency() != time.Millisecond || r.ResidencyLow() != time.Millisecond {
		t.Errorf("two figures: residency %s, low %s", r.Residency(), r.ResidencyLow())
	}
	for _, bad := range []string{"1 2 3\n", "5 10\n", "x 1\n", "-1 0\n", "10 1 5 6\n"} {
		if _, err := ParseDelayLog(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
