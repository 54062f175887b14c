package record

import (
	"math/rand/v2"
	"slices"
	"testing"
)

func TestSeqSet(t *testing.T) {
	for _, c := range []struct {
		name string
		add  []int64
		want SeqSet
		new  []bool
	}{
		{"empty", nil, nil, nil},
		{"in order", []int64{1, 2, 3}, SeqSet{{1, 3}}, []bool{true, true, true}},
		{"repeat", []int64{5, 5}, SeqSet{{5, 5}}, []bool{true, false}},
		{"gap then filled", []int64{1, 3, 2}, SeqSet{{1, 3}}, []bool{true, true, true}},
		{"extends left", []int64{4, 3}, SeqSet{{3, 4}}, []bool{true, true}},
		{"apart", []int64{10, 1, 5}, SeqSet{{1, 1}, {5, 5}, {10, 10}}, []bool{true, true, true}},
		{"inside a range", []int64{1, 2, 3, 2}, SeqSet{{1, 3}}, []bool{true, true, true, false}},
		{"merge three", []int64{1, 3, 5, 2, 4}, SeqSet{{1, 5}}, []bool{true, true, true, true, true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var s SeqSet
			for i, n := range c.add {
				if got := s.Add(n); got != c.new[i] {
					t.Errorf("add(%d) = %v, want %v", n, got, c.new[i])
				}
			}
			if !slices.Equal(s, c.want) {
				t.Errorf("set %v, want %v", s, c.want)
			}
		})
	}
}

// TestSeqSetAgreesWithAMap: any order of adds, with repeats, gives what a
// map would, in ranges that are sorted, disjoint and never adjacent.
func TestSeqSetAgreesWithAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		var s SeqSet
		seen := map[int64]bool{}
		for range rng.IntN(300) {
			n := 1 + rng.Int64N(100)
			if got := s.Add(n); got == seen[n] {
				t.Fatalf("add(%d) = %v with %d already in: %v", n, got, n, seen[n])
			}
			seen[n] = true
		}
		for n := int64(0); n <= 101; n++ {
			if s.Has(n) != seen[n] {
				t.Fatalf("has(%d) = %v, want %v; set %v", n, s.Has(n), seen[n], s)
			}
		}
		for i, r := range s {
			if r[0] > r[1] || (i > 0 && s[i-1][1]+1 >= r[0]) {
				t.Fatalf("ranges not sorted, disjoint and apart: %v", s)
			}
		}
	}
}
