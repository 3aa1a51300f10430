package ebpftier

import (
	"errors"
	"slices"
	"testing"
)

func TestParseTierRoundTrip(t *testing.T) {
	for _, tier := range append([]Tier{None}, Order...) {
		got, err := ParseTier(tier.String())
		if err != nil || got != tier {
			t.Errorf("ParseTier(%q) = %v, %v; want %v", tier.String(), got, err, tier)
		}
	}
	if _, err := ParseTier("uprobe"); err == nil {
		t.Error("ParseTier(uprobe) succeeded; want an error")
	}
}

func TestSelectStopsAtFirstWorkingTier(t *testing.T) {
	var tried []Tier
	attach := func(tier Tier) (string, error) {
		tried = append(tried, tier)
		if tier == RawTP || tier == KProbe {
			return "attached " + tier.String(), nil
		}
		return "", errors.New(tier.String() + " refused")
	}
	tier, v, attempts := Select(Order, attach)
	if tier != RawTP || v != "attached raw_tp" {
		t.Fatalf("Select = %v, %q; want raw_tp", tier, v)
	}
	if want := []Tier{TPBTF, RawTP}; !slices.Equal(tried, want) {
		t.Errorf("tried %v; want %v (nothing after the winner)", tried, want)
	}
	if len(attempts) != 2 || attempts[0].OK() || attempts[0].Err.Error() != "tp_btf refused" || !attempts[1].OK() {
		t.Errorf("attempts = %+v", attempts)
	}
}

func TestSelectNoneWorks(t *testing.T) {
	tier, v, attempts := Select(Order, func(tier Tier) (*int, error) { return nil, errors.New("no") })
	if tier != None || v != nil || len(attempts) != len(Order) {
		t.Fatalf("Select = %v, %v, %d attempts; want none, nil, %d", tier, v, len(attempts), len(Order))
	}
	tier, _, attempts = Select(nil, func(Tier) (int, error) { t.Fatal("attach called with no tiers"); return 0, nil })
	if tier != None || len(attempts) != 0 {
		t.Fatalf("Select(nil) = %v, %v", tier, attempts)
	}
}
