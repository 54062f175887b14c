package traffic

import (
	"strings"
	"testing"
)

func loaded(vs ...int64) func(int64) bool {
	return func(v int64) bool {
		for _, x := range vs {
			if x == v {
				return true
			}
		}
		return false
	}
}

func TestCheck(t *testing.T) {
	known := loaded(1, 2, 3, 4)
	for _, tc := range []struct {
		name  string
		split Split
		want  string // "" for none
	}{
		{"empty", Split{}, ""},
		{"canary", Split{Traffic: map[string]int{"2": 90, "3": 10}, Shadow: []string{"4"}}, ""},
		{"all on one", Split{Traffic: map[string]int{"3": 1}}, ""},
		{"zero share kept", Split{Traffic: map[string]int{"2": 100, "3": 0}, Shadow: []string{"3"}}, ""},
		{"unknown version", Split{Traffic: map[string]int{"9": 10}}, "no version 9"},
		{"not a version", Split{Traffic: map[string]int{"v2": 10}}, `version "v2" is not a positive integer`},
		{"negative", Split{Traffic: map[string]int{"2": -1, "3": 5}}, "negative share"},
		{"sums to zero", Split{Traffic: map[string]int{"2": 0}}, "sum to 0"},
		{"unknown shadow", Split{Shadow: []string{"7"}}, "shadow: the model has no version 7"},
		{"shadow twice", Split{Shadow: []string{"4", "4"}}, "named twice"},
		{"shadow answers", Split{Traffic: map[string]int{"2": 50, "4": 50}, Shadow: []string{"4"}}, "a shadow or answers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.split.Check(known)
			if (err == nil) != (tc.want == "") || err != nil && !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Check: %v, want %q", err, tc.want)
			}
		})
	}
}

// Picks over evenly spread draws land on each version by its share; a
// version not loaded is taken out, its share spread over the others.
func TestPick(t *testing.T) {
	s := Split{Traffic: map[string]int{"2": 90, "3": 10}}
	count := func(live func(int64) bool) (map[int64]int, []int64) {
		got := map[int64]int{}
		var dropped []int64
		for i := range 1000 {
			v, d := s.Pick(live, (float64(i)+0.5)/1000)
			got[v]++
			dropped = d
		}
		return got, dropped
	}
	got, dropped := count(loaded(2, 3))
	if got[2] != 900 || got[3] != 100 || dropped != nil {
		t.Errorf("90/10: %v, dropped %v", got, dropped)
	}
	got, dropped = count(loaded(2))
	if got[2] != 1000 || len(dropped) != 1 || dropped[0] != 3 {
		t.Errorf("3 gone: %v, dropped %v", got, dropped)
	}
	got, _ = count(loaded())
	if got[0] != 1000 {
		t.Errorf("none loaded: %v, want the default (0) for all", got)
	}
	if v, _ := (Split{}).Pick(loaded(1), 0.3); v != 0 {
		t.Errorf("no split: %d, want 0", v)
	}
}

func TestShadows(t *testing.T) {
	s := Split{Shadow: []string{"3", "4", "5"}}
	if got := s.Shadows(loaded(2, 3, 4), 3); len(got) != 1 || got[0] != 4 {
		t.Errorf("Shadows: %v, want [4] (3 answers, 5 not loaded)", got)
	}
}
