package consumer

import "testing"

// High-priority messages go first, but a steady supply of them leaves
// room for normal ones: never more than streak highs in a row while a
// normal one waits.
func TestPreferDoesNotStarve(t *testing.T) {
	high, normal := make(chan string, 100), make(chan string, 100)
	for range 40 {
		high <- "h"
	}
	for range 10 {
		normal <- "n"
	}
	close(high)
	close(normal)
	out := make(chan string)
	go prefer(high, normal, out, 4)
	var got []string
	for m := range out {
		got = append(got, m)
	}
	if len(got) != 50 {
		t.Fatalf("%d messages forwarded, want 50", len(got))
	}
	run, highsFirst := 0, 0
	for i, m := range got {
		if m == "h" {
			run++
			if i < 10 {
				highsFirst++
			}
		} else {
			run = 0
		}
		if run > 4 && i < 49 && countN(got[i:]) > 0 {
			t.Fatalf("%d highs in a row while normal ones waited: %v", run, got)
		}
	}
	if highsFirst < 7 {
		t.Errorf("only %d of the first 10 were high priority: %v", highsFirst, got)
	}
}

func countN(s []string) int {
	n := 0
	for _, m := range s {
		if m == "n" {
			n++
		}
	}
	return n
}
