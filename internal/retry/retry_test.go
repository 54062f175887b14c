package retry

import (
	"context"
	"testing"
	"time"
)

func TestDelay(t *testing.T) {
	for _, c := range []struct {
		n    int
		want time.Duration
	}{{0, time.Second}, {1, time.Second}, {2, 2 * time.Second}, {3, 4 * time.Second}, {5, 16 * time.Second}, {6, 30 * time.Second}, {1000, 30 * time.Second}} {
		if got := Delay(time.Second, 30*time.Second, c.n); got != c.want {
			t.Errorf("Delay(1s, 30s, %d) = %v, want %v", c.n, got, c.want)
		}
	}
}

// TestBackoffGrowsWithinJitterAndResets: each delay is within a fifth of
// min doubled, capped at max, and Reset starts from min again.
func TestBackoffGrowsWithinJitterAndResets(t *testing.T) {
	b := New(100*time.Millisecond, time.Second)
	want := []time.Duration{100, 200, 400, 800, 1000, 1000}
	for round := range 2 {
		for i, w := range want {
			w *= time.Millisecond
			if d := b.Next(); d < w*8/10 || d > w*12/10 {
				t.Fatalf("round %d delay %d = %v, want %v ± 20%%", round, i, d, w)
			}
		}
		b.Reset()
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if Sleep(ctx, time.Hour) {
		t.Fatal("Sleep reported an hour passed on a cancelled context")
	}
	if !Sleep(context.Background(), time.Millisecond) {
		t.Fatal("Sleep of 1ms did not pass")
	}
}
