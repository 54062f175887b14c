package record

import (
	"slices"
	"sort"
)

// SeqSet is a set of positive sequence numbers kept as sorted, disjoint,
// non-adjacent closed ranges: a batch's jobs counted so far, which finish
// roughly in order, so that the set stays a few ranges long however many
// jobs the batch has.
type SeqSet [][2]int64

// Add puts n in the set and reports whether it was not there before.
func (s *SeqSet) Add(n int64) bool {
	r := *s
	// i is the first range ending at n-1 or later: the one n could join
	// from the left, or the first wholly after n.
	i := r.endingFrom(n - 1)
	if i < len(r) && r[i][0] <= n && n <= r[i][1] {
		return false
	}
	switch {
	case i < len(r) && r[i][1] == n-1:
		r[i][1] = n
		if i+1 < len(r) && r[i+1][0] == n+1 { // the gap closed: merge
			r[i][1] = r[i+1][1]
			r = slices.Delete(r, i+1, i+2)
		}
	case i < len(r) && r[i][0] == n+1:
		r[i][0] = n
	default:
		r = slices.Insert(r, i, [2]int64{n, n})
	}
	*s = r
	return true
}

// Has reports whether n is in the set.
func (s SeqSet) Has(n int64) bool {
	i := s.endingFrom(n)
	return i < len(s) && s[i][0] <= n
}

// endingFrom is the index of the first range that ends at v or later
// (len(s) if none does).
func (s SeqSet) endingFrom(v int64) int {
	return sort.Search(len(s), func(i int) bool { return s[i][1] >= v })
}
