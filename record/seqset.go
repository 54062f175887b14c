package record

import "slices"

// SeqSet is a set of positive sequence numbers kept as sorted, disjoint,
// non-adjacent closed ranges: a batch's jobs counted so far, which finish
// roughly in order, so that the set stays a few ranges long however many
// jobs the batch has.
type SeqSet [][2]int64

// Add puts n in the set and reports whether it was not there before.
func (s *SeqSet) Add(n int64) bool {
	r := *s
	// i is the first range that ends at or after n-1: the one n could
	// join from the left, or the first wholly after n.
	i, _ := slices.BinarySearchFunc(r, n-1, func(e [2]int64, t int64) int {
		switch {
		case e[1] < t:
			return -1
		case e[1] > t:
			return 1
		}
		return 0
	})
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
	i, found := slices.BinarySearchFunc(s, n, func(e [2]int64, t int64) int {
		switch {
		case e[1] < t:
			return -1
		case e[0] > t:
			return 1
		}
		return 0
	})
	return found && i < len(s)
}
