package consumer

import (
	"slices"
	"testing"
	"time"

	"github.com/inferq/inferq/model"
)

// A worker's overrides replace the model's batch settings field by
// field; preferred sizes past an overridden max batch size go.
func TestOverrides(t *testing.T) {
	cfg := model.Config{MaxBatchSize: 32, MaxQueueDelay: 5 * time.Millisecond, PreferredBatchSizes: []int{8, 16, 32}, Instances: 2}
	for _, tt := range []struct {
		name      string
		o         Overrides
		max       int
		delay     time.Duration
		preferred []int
		instances int
	}{
		{"none", Overrides{}, 32, 5 * time.Millisecond, []int{8, 16, 32}, 2},
		{"a GPU worker's larger batches", Overrides{MaxBatchSize: 256, MaxQueueDelay: 20 * time.Millisecond}, 256, 20 * time.Millisecond, []int{8, 16, 32}, 2},
		{"a small CPU worker", Overrides{MaxBatchSize: 10, Instances: 1}, 10, 5 * time.Millisecond, []int{8}, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p, n := tt.o.apply(cfg)
			if p.MaxBatchSize != tt.max || p.MaxQueueDelay != tt.delay || !slices.Equal(p.PreferredBatchSizes, tt.preferred) || n != tt.instances {
				t.Errorf("got %+v and %d instances", p, n)
			}
		})
	}
	if !slices.Equal(cfg.PreferredBatchSizes, []int{8, 16, 32}) {
		t.Errorf("the model's config changed: %v", cfg.PreferredBatchSizes)
	}
}
