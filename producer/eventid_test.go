package producer

import (
	"strconv"
	"testing"
)

func TestEventID(t *testing.T) {
	key := []byte("0123456789abcdef")
	other := []byte("fedcba9876543210")
	for _, seq := range []uint64{1, 2, 3, 1 << 40, 1<<64 - 1} {
		id := eventID(key, "iris", seq)
		if got, ok := parseEventID(key, "iris", id); !ok || got != seq {
			t.Errorf("position %d: id %q reads back as %d, %v", seq, id, got, ok)
		}
		if _, ok := parseEventID(key, "iris2", id); ok {
			t.Errorf("position %d: iris's id reads as an id of iris2's stream", seq)
		}
		if _, ok := parseEventID(other, "iris", id); ok {
			t.Errorf("position %d: the id reads under another deployment's key", seq)
		}
	}
	// Consecutive positions give ids with nothing in common to read.
	a, b := eventID(key, "iris", 41), eventID(key, "iris", 42)
	same := 0
	for i := range min(len(a), len(b)) {
		if a[i] == b[i] {
			same++
		}
	}
	if same > len(a)/2 {
		t.Errorf("ids of positions 41 and 42 share %d of %d characters: %s, %s", same, len(a), a, b)
	}
	for _, bad := range []string{"", "1", strconv.FormatUint(1<<64-1, 10), "not base64!", eventID(key, "iris", 5) + "x"} {
		if _, ok := parseEventID(key, "iris", bad); ok {
			t.Errorf("%q read as an event id", bad)
		}
	}
}
