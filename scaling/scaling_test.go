package scaling

import (
	"strings"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	t0 := time.Unix(1_000_000, 0)
	type step struct {
		after   time.Duration
		obs     Observation
		want    int
		because string // part of the reason
	}
	tests := []struct {
		name   string
		policy Policy
		steps  []step
	}{
		{"idle stays at zero", Policy{Min: 0, Max: 4}, []step{
			{0, Observation{}, 0, "idle"},
		}},
		{"one job wakes a model at zero", Policy{Min: 0, Max: 4}, []step{
			{0, Observation{Pending: 1}, 1, "backlog 1"},
		}},
		{"activation threshold holds a model at zero", Policy{Min: 0, Max: 4, Activation: 10}, []step{
			{0, Observation{Pending: 9}, 0, "below activation"},
			{time.Second, Observation{Pending: 10}, 1, "backlog 10"},
		}},
		{"backlog per replica", Policy{Min: 1, Max: 8, TargetBacklog: 100}, []step{
			{0, Observation{Pending: 250, Current: 1}, 3, "backlog 250 at 100"},
		}},
		{"max bounds", Policy{Min: 1, Max: 3, TargetBacklog: 10}, []step{
			{0, Observation{Pending: 1000, Current: 1}, 3, ""},
		}},
		{"max step bounds one decision", Policy{Min: 0, Max: 20, TargetBacklog: 10, MaxStep: 2}, []step{
			{0, Observation{Pending: 1000}, 2, "limited to 2"},
			{time.Second, Observation{Pending: 1000, Current: 2}, 4, "limited to 2"},
		}},
		{"drain time with measured throughput", Policy{Min: 1, Max: 50, TargetBacklog: 1000, TargetDrain: 10 * time.Second}, []step{
			// 5000 waiting / 10 s + 100/s arriving = 600/s at 50/s each: 12.
			{0, Observation{Pending: 5000, ArrivalRate: 100, PerReplica: 50, Current: 4}, 8, "limited to 4"},
			{time.Second, Observation{Pending: 5000, ArrivalRate: 100, PerReplica: 50, Current: 8}, 12, "drain in 10s"},
		}},
		{"scale down waits out its window", Policy{Min: 0, Max: 4, DownWindow: 30 * time.Second}, []step{
			{0, Observation{Pending: 200, Current: 4}, 4, ""},
			{10 * time.Second, Observation{Current: 4}, 4, "scale-down window"},
			{25 * time.Second, Observation{Current: 4}, 4, "scale-down window"},
			{31 * time.Second, Observation{Current: 4}, 0, "idle"},
		}},
		{"min replicas stay", Policy{Min: 2, Max: 4, DownWindow: time.Second}, []step{
			{0, Observation{Current: 2}, 2, ""},
			{time.Minute, Observation{Current: 2}, 2, ""},
		}},
		{"scale up can wait for a sustained backlog", Policy{Min: 1, Max: 4, TargetBacklog: 10, UpWindow: 5 * time.Second}, []step{
			{0, Observation{Pending: 5, Current: 1}, 1, ""},
			{time.Second, Observation{Pending: 40, Current: 1}, 1, "scale-up window"},
			{7 * time.Second, Observation{Pending: 40, Current: 1}, 4, "backlog 40"},
		}},
		// A backlog that hovers around the threshold of a second replica
		// does not make it come and go.
		{"no flapping at a threshold", Policy{Min: 0, Max: 4, TargetBacklog: 64, DownWindow: 30 * time.Second}, []step{
			{0, Observation{Pending: 70, Current: 1}, 2, ""},
			{time.Second, Observation{Pending: 60, Current: 2}, 2, "scale-down window"},
			{2 * time.Second, Observation{Pending: 66, Current: 2}, 2, ""},
			{3 * time.Second, Observation{Pending: 62, Current: 2}, 2, "scale-down window"},
			{4 * time.Second, Observation{Pending: 65, Current: 2}, 2, ""},
			{5 * time.Second, Observation{Pending: 63, Current: 2}, 2, "scale-down window"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := NewDecider(tt.policy)
			if err != nil {
				t.Fatal(err)
			}
			for i, s := range tt.steps {
				s.obs.At = t0.Add(s.after)
				got := d.Decide(s.obs)
				if got.Replicas != s.want || !strings.Contains(got.Reason, s.because) {
					t.Fatalf("step %d (%+v): %+v, want %d because %q", i, s.obs, got, s.want, s.because)
				}
			}
		})
	}
}

func TestPolicyValidate(t *testing.T) {
	for _, p := range []Policy{{Min: -1}, {Min: 3, Max: 2}, {TargetBacklog: -1}, {DownWindow: -time.Second}} {
		if _, err := NewDecider(p); err == nil {
			t.Errorf("policy %+v accepted", p)
		}
	}
	d, err := NewDecider(Policy{Min: 2})
	if err != nil || d.Policy().Max != 2 || d.Policy().TargetBacklog != 64 {
		t.Fatalf("defaults: %+v %v", d.Policy(), err)
	}
}
