package main

import (
	"errors"
	"io"
	"log/slog"
	"runtime/debug"
	"testing"

	"github.com/KimMachineGun/automemlimit/memlimit"
)

func TestSetMemoryLimit(t *testing.T) {
	const gib = 1 << 30
	failing := func() (uint64, error) { return 0, errors.New("permission denied") }
	tests := []struct {
		name      string
		value     string
		env       string // GOMEMLIMIT
		container memlimit.Provider
		want      int64 // the limit while serving; 0: left as found
		wantErr   bool
	}{
		{name: "auto takes a share of the container's", value: "auto", container: memlimit.Limit(4 * gib), want: 2 * gib},
		{name: "auto without a container limit sets none", value: "auto", container: func() (uint64, error) { return 0, memlimit.ErrNoLimit }},
		{name: "auto outside a cgroup sets none", value: "auto", container: func() (uint64, error) { return 0, memlimit.ErrNoCgroup }},
		{name: "auto when the limit cannot be read sets none", value: "auto", container: failing},
		{name: "auto keeps GOMEMLIMIT", value: "auto", env: "300MiB", container: memlimit.Limit(4 * gib)},
		{name: "off", value: "off", container: memlimit.Limit(4 * gib)},
		{name: "a size", value: "800MiB", container: memlimit.Limit(4 * gib), want: 800 << 20},
		{name: "a size with a space", value: "2 GiB", container: failing, want: 2 * gib},
		{name: "a size wins over GOMEMLIMIT", value: "1GiB", env: "300MiB", container: failing, want: gib},
		{name: "not a size", value: "lots", container: failing, wantErr: true},
		{name: "zero", value: "0", container: failing, wantErr: true},
		{name: "negative", value: "-1GiB", container: failing, wantErr: true},
	}
	found := debug.SetMemoryLimit(-1)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("GOMEMLIMIT", tt.env)
			restore, err := setMemoryLimit(tt.value, 0.5, tt.container, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if tt.wantErr {
				if err == nil {
					t.Fatalf("setMemoryLimit(%q) = nil error, want one", tt.value)
				}
				if got := debug.SetMemoryLimit(-1); got != found {
					t.Errorf("a refused value changed the limit to %d", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := tt.want
			if want == 0 {
				want = found
			}
			if got := debug.SetMemoryLimit(-1); got != want {
				t.Errorf("limit while serving = %d, want %d", got, want)
			}
			restore()
			if got := debug.SetMemoryLimit(-1); got != found {
				t.Errorf("limit after restore = %d, want %d as found", got, found)
			}
		})
	}
}
