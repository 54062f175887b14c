// Package scaling decides how many consumers (replicas) a model needs from
// what its queue shows: jobs waiting and in flight, how fast they arrive,
// and how fast one replica works. It is pure: no NATS, no clock of its
// own, no processes; drivers (the in-process autoscaler of inferq serve,
// and inferq scaler for KEDA) feed it observations and act on its answers.
package scaling

import (
	"fmt"
	"math"
	"time"
)

// Policy is how a model scales. The zero value of a field takes the
// default named on it.
type Policy struct {
	// Min and Max bound the replicas. Min 0 lets an idle model scale to
	// zero. Max 0 means Min (no scaling).
	Min, Max int
	// TargetBacklog is the backlog (waiting plus in flight) one replica
	// should carry. Default 64.
	TargetBacklog int64
	// TargetDrain, with a measured per-replica throughput, asks for enough
	// replicas to clear the backlog within it while keeping up with
	// arrivals. 0 uses TargetBacklog alone.
	TargetDrain time.Duration
	// Activation is the backlog that wakes a model at zero replicas.
	// Default 1: any job.
	Activation int64
	// UpWindow and DownWindow stabilise decisions, as Kubernetes' HPA
	// does: scaling up follows the lowest recommendation of the last
	// UpWindow (default 0: at once), scaling down the highest of the last
	// DownWindow (default 30s), so a backlog hovering at a threshold does
	// not make replicas flap.
	UpWindow, DownWindow time.Duration
	// MaxStep bounds how many replicas one decision adds. Default 4.
	MaxStep int
}

func (p Policy) withDefaults() Policy {
	if p.Max < p.Min {
		p.Max = p.Min
	}
	if p.TargetBacklog <= 0 {
		p.TargetBacklog = 64
	}
	if p.Activation <= 0 {
		p.Activation = 1
	}
	if p.DownWindow == 0 {
		p.DownWindow = 30 * time.Second
	}
	if p.MaxStep <= 0 {
		p.MaxStep = 4
	}
	return p
}

// Validate reports a policy that cannot work.
func (p Policy) Validate() error {
	switch {
	case p.Min < 0 || p.Max < 0:
		return fmt.Errorf("replicas min %d, max %d: must not be negative", p.Min, p.Max)
	case p.Max > 0 && p.Max < p.Min:
		return fmt.Errorf("replicas max %d is below min %d", p.Max, p.Min)
	case p.TargetBacklog < 0 || p.TargetDrain < 0 || p.Activation < 0 || p.UpWindow < 0 || p.DownWindow < 0 || p.MaxStep < 0:
		return fmt.Errorf("scaling settings must not be negative")
	}
	return nil
}

// idleRate is the arrival rate, in jobs per second, below which a model
// with no backlog counts as idle.
const idleRate = 0.01

// Observation is what a driver sees of a model's queue at one moment.
type Observation struct {
	At time.Time
	// Pending are jobs waiting; InFlight are delivered to a replica and
	// not finished.
	Pending, InFlight int64
	// ArrivalRate is jobs per second arriving lately (0 if unknown).
	ArrivalRate float64
	// PerReplica is jobs per second one replica finishes, measured from
	// completed batches (0 if unknown).
	PerReplica float64
	// Current is the replicas running now.
	Current int
}

// Decision is a desired replica count and why.
type Decision struct {
	Replicas int
	Reason   string
	// Raw is the recommendation before stabilisation and step limits.
	Raw int
}

type recommendation struct {
	at       time.Time
	replicas int
}

// Decider turns observations into decisions. It keeps the recent
// recommendations its stabilisation windows need; give it observations in
// time order. Not safe for concurrent use.
type Decider struct {
	p       Policy
	history []recommendation
}

// NewDecider returns a Decider for p.
func NewDecider(p Policy) (*Decider, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	return &Decider{p: p.withDefaults()}, nil
}

// Policy is the policy in effect, defaults filled.
func (d *Decider) Policy() Policy { return d.p }

// Decide returns how many replicas the model should have.
func (d *Decider) Decide(o Observation) Decision {
	p := d.p
	backlog := o.Pending + o.InFlight
	raw, reason := d.recommend(o, backlog)
	raw = min(max(raw, p.Min), p.Max)

	// Keep the window's recommendations.
	keep := max(p.UpWindow, p.DownWindow)
	h := d.history[:0]
	for _, r := range d.history {
		if o.At.Sub(r.at) <= keep {
			h = append(h, r)
		}
	}
	d.history = append(h, recommendation{o.At, raw})

	desired := raw
	switch {
	case raw > o.Current:
		// Up: the lowest recommendation of the up window.
		for _, r := range d.history {
			if o.At.Sub(r.at) <= p.UpWindow {
				desired = min(desired, r.replicas)
			}
		}
		desired = max(desired, o.Current)
		if desired > o.Current+p.MaxStep {
			desired = o.Current + p.MaxStep
			reason += fmt.Sprintf("; limited to %d more at a time", p.MaxStep)
		}
		if desired == o.Current {
			reason = "waiting out the scale-up window: " + reason
		}
	case raw < o.Current:
		// Down: the highest recommendation of the down window.
		for _, r := range d.history {
			if o.At.Sub(r.at) <= p.DownWindow {
				desired = max(desired, r.replicas)
			}
		}
		desired = min(desired, o.Current)
		if desired == o.Current {
			reason = "waiting out the scale-down window: " + reason
		}
	}
	return Decision{Replicas: desired, Reason: reason, Raw: raw}
}

// recommend is the replica count the observation alone asks for.
func (d *Decider) recommend(o Observation, backlog int64) (int, string) {
	p := d.p
	if o.Current == 0 && backlog < p.Activation {
		return 0, fmt.Sprintf("idle: backlog %d below activation %d", backlog, p.Activation)
	}
	if backlog == 0 && o.ArrivalRate < idleRate {
		return 0, "idle: no backlog, no arrivals"
	}
	n := int(math.Ceil(float64(backlog) / float64(p.TargetBacklog)))
	reason := fmt.Sprintf("backlog %d at %d per replica", backlog, p.TargetBacklog)
	if p.TargetDrain > 0 && o.PerReplica > 0 {
		need := float64(backlog)/p.TargetDrain.Seconds() + o.ArrivalRate
		if m := int(math.Ceil(need / o.PerReplica)); m > n {
			n = m
			reason = fmt.Sprintf("backlog %d to drain in %s with %.0f jobs/s arriving, at %.0f jobs/s per replica", backlog, p.TargetDrain, o.ArrivalRate, o.PerReplica)
		}
	}
	return max(n, 1), reason
}
