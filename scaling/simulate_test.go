package scaling

import (
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
)

// sim replays an arrival trace (jobs per second, one entry per second)
// through a Decider driving a model of workers: each replica finishes
// rate jobs a second once it has started, which takes coldStart. It
// returns what a reader of docs/scaling.md wants to see per second.
type simPoint struct {
	sec                int
	arrivals, backlog  float64
	replicas, starting int
	wait               float64 // seconds a job arriving now waits: backlog / capacity
}

func simulate(trace []float64, p Policy, rate float64, coldStart time.Duration, tick time.Duration) (points []simPoint, reversals int) {
	d, _ := NewDecider(p)
	t0 := time.Unix(0, 0)
	var backlog float64
	var ready []time.Time // when each replica is (or will be) ready
	var out []simPoint
	lastDir := 0
	steps := int(time.Second / tick)
	for sec, arrivals := range trace {
		for s := range steps {
			now := t0.Add(time.Duration(sec)*time.Second + time.Duration(s)*tick)
			backlog += arrivals * tick.Seconds()
			up := 0
			for _, r := range ready {
				if !now.Before(r) {
					up++
				}
			}
			backlog = math.Max(0, backlog-float64(up)*rate*tick.Seconds())
			dec := d.Decide(Observation{At: now, Pending: int64(backlog), ArrivalRate: arrivals, PerReplica: rate, Current: len(ready)})
			if dir := sign(dec.Replicas - len(ready)); dir != 0 {
				if lastDir != 0 && dir != lastDir {
					reversals++
				}
				lastDir = dir
			}
			for len(ready) < dec.Replicas {
				ready = append(ready, now.Add(coldStart))
			}
			ready = ready[:dec.Replicas]
		}
		up := 0
		for _, r := range ready {
			if !t0.Add(time.Duration(sec+1) * time.Second).Before(r) {
				up++
			}
		}
		wait := 0.0
		if up > 0 {
			wait = backlog / (float64(up) * rate)
		} else if backlog > 0 {
			wait = math.Inf(1)
		}
		out = append(out, simPoint{sec, arrivals, backlog, len(ready), len(ready) - up, wait})
	}
	return out, reversals
}

func sign(n int) int {
	switch {
	case n > 0:
		return 1
	case n < 0:
		return -1
	}
	return 0
}

// burst is an idle minute, a burst of peak jobs/s for 20 s, a tail at a
// tenth of it for 40 s, and idle again.
func burst(peak float64) []float64 {
	var tr []float64
	for s := range 240 {
		switch {
		case s < 30:
			tr = append(tr, 0)
		case s < 50:
			tr = append(tr, peak)
		case s < 90:
			tr = append(tr, peak/10)
		default:
			tr = append(tr, 0)
		}
	}
	return tr
}

// TestSimulatedBursts replays a burst through the policy at two sizes: a
// model whose whole fleet is one machine's worth (up to 4 replicas) and
// one that needs up to 1,000. The backlog must drain, the fleet must return
// to zero, and replicas must not flap. `go test ./scaling -run Simulated
// -v` prints the tables in docs/scaling.md.
func TestSimulatedBursts(t *testing.T) {
	cases := []struct {
		name  string
		peak  float64 // jobs/s
		rate  float64 // jobs/s per replica
		max   int
		drain time.Duration
	}{
		{"one machine", 400, 100, 4, 30 * time.Second},
		{"1,000 workers", 200_000, 250, 1000, 30 * time.Second},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := Policy{Min: 0, Max: c.max, TargetBacklog: int64(c.rate * 5), TargetDrain: c.drain, MaxStep: max(4, c.max/4), DownWindow: 30 * time.Second}
			pts, reversals := simulate(burst(c.peak), p, c.rate, 2*time.Second, 500*time.Millisecond)
			var b strings.Builder
			fmt.Fprintf(&b, "%s: peak %.0f jobs/s, %.0f jobs/s per replica, max %d replicas, 2 s cold start\n", c.name, c.peak, c.rate, c.max)
			fmt.Fprintf(&b, "  t(s)  arrivals/s     backlog  replicas  wait(s)\n")
			maxWait, peakReplicas := 0.0, 0
			for _, pt := range pts {
				if pt.sec%10 == 0 || (pt.sec >= 30 && pt.sec <= 36) {
					fmt.Fprintf(&b, "  %4d  %10.0f  %10.0f  %8d  %7.1f\n", pt.sec, pt.arrivals, pt.backlog, pt.replicas, pt.wait)
				}
				if pt.sec > 36 && pt.wait > maxWait && !math.IsInf(pt.wait, 1) {
					maxWait = pt.wait
				}
				peakReplicas = max(peakReplicas, pt.replicas)
			}
			fmt.Fprintf(&b, "  peak replicas %d, %d reversals of direction, worst wait after warm-up %.1f s\n", peakReplicas, reversals, maxWait)
			t.Log("\n" + b.String())
			last := pts[len(pts)-1]
			if last.backlog != 0 || last.replicas != 0 {
				t.Errorf("after the burst: backlog %.0f, %d replicas; want both 0", last.backlog, last.replicas)
			}
			if peakReplicas > c.max {
				t.Errorf("peaked at %d replicas, above max %d", peakReplicas, c.max)
			}
			// One way up, one way down: anything more is flapping.
			if reversals > 1 {
				t.Errorf("replicas changed direction %d times: flapping", reversals)
			}
		})
	}
}
