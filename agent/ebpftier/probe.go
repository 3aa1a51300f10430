package ebpftier

// Probe is the agent's tier decision: the winning tier, every attempt, and the winner's
// program left attached so that its counter shows the hook really fires.
type Probe struct {
	Tier     Tier
	Attempts []Attempt
	// Sends is the attached counter of the winning tier; nil when Tier is None.
	Sends *SendCounter
}

// ProbeTiers tries the send counter on each of tiers in turn (Order for automatic choice,
// a single tier when forced, none to run without eBPF).
func ProbeTiers(tiers []Tier) *Probe {
	t, c, attempts := Select(tiers, AttachSendCounter)
	return &Probe{Tier: t, Attempts: attempts, Sends: c}
}

// Close detaches the winning program, if any.
func (p *Probe) Close() error {
	if p == nil || p.Sends == nil {
		return nil
	}
	return p.Sends.Close()
}
