package batching

import (
	"bytes"
	"encoding/binary"
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/inferq/inferq/tensor"
)

type clock struct{ t time.Time }

func (c *clock) now() time.Time          { return c.t }
func (c *clock) advance(d time.Duration) { c.t = c.t.Add(d) }

func TestNewRefusesBadPolicies(t *testing.T) {
	for name, p := range map[string]Policy{
		"no size":           {},
		"negative delay":    {MaxBatchSize: 4, MaxQueueDelay: -1},
		"preferred too big": {MaxBatchSize: 4, PreferredBatchSizes: []int{8}},
		"preferred zero":    {MaxBatchSize: 4, PreferredBatchSizes: []int{0}},
	} {
		if _, err := New[int](p, nil); err == nil {
			t.Errorf("%s: New accepted %+v", name, p)
		}
	}
}

func TestBatcherDecisions(t *testing.T) {
	type add struct {
		key  string
		rows int
	}
	cases := []struct {
		name     string
		policy   Policy
		adds     []add
		advance  time.Duration
		idle     bool
		want     []Reason // batches taken by Next, in order
		wantRows []int
		pending  int
	}{
		{"full by count", Policy{MaxBatchSize: 3, MaxQueueDelay: time.Second}, []add{{"a", 1}, {"a", 1}, {"a", 1}}, 0, false, []Reason{ReasonMaxSize}, []int{3}, 0},
		{"not full, not late", Policy{MaxBatchSize: 3, MaxQueueDelay: time.Second}, []add{{"a", 1}, {"a", 1}}, 999 * time.Millisecond, true, nil, nil, 2},
		{"late", Policy{MaxBatchSize: 3, MaxQueueDelay: time.Second}, []add{{"a", 1}, {"a", 1}}, time.Second, false, []Reason{ReasonDelay}, []int{2}, 0},
		{"overflow closes the open batch", Policy{MaxBatchSize: 4, MaxQueueDelay: time.Second}, []add{{"a", 3}, {"a", 2}}, 0, false, []Reason{ReasonMaxSize}, []int{3}, 1},
		{"oversized item alone", Policy{MaxBatchSize: 4, MaxQueueDelay: time.Second}, []add{{"a", 9}}, 0, false, []Reason{ReasonMaxSize}, []int{9}, 0},
		{"keys do not mix", Policy{MaxBatchSize: 2, MaxQueueDelay: time.Second}, []add{{"a", 1}, {"b", 1}, {"a", 1}}, 0, false, []Reason{ReasonMaxSize}, []int{2}, 1},
		{"preferred when idle", Policy{MaxBatchSize: 8, MaxQueueDelay: time.Second, PreferredBatchSizes: []int{2, 4}}, []add{{"a", 1}, {"a", 1}}, 0, true, []Reason{ReasonPreferred}, []int{2}, 0},
		{"preferred waits while busy", Policy{MaxBatchSize: 8, MaxQueueDelay: time.Second, PreferredBatchSizes: []int{2, 4}}, []add{{"a", 1}, {"a", 1}}, 0, false, nil, nil, 2},
		{"not preferred size", Policy{MaxBatchSize: 8, MaxQueueDelay: time.Second, PreferredBatchSizes: []int{4}}, []add{{"a", 1}, {"a", 1}, {"a", 1}}, 0, true, nil, nil, 3},
		{"zero delay dispatches when idle", Policy{MaxBatchSize: 8}, []add{{"a", 1}, {"a", 1}}, 0, true, []Reason{ReasonDelay}, []int{2}, 0},
		{"zero delay keeps filling while busy", Policy{MaxBatchSize: 8}, []add{{"a", 1}, {"a", 1}}, 0, false, nil, nil, 2},
		{"too many groups closes the oldest", Policy{MaxBatchSize: 8, MaxQueueDelay: time.Second, MaxOpenGroups: 2}, []add{{"a", 1}, {"b", 1}, {"c", 1}}, 0, false, []Reason{ReasonGroups}, []int{1}, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			clk := &clock{t: time.Unix(1000, 0)}
			b, err := New[int](c.policy, clk.now)
			if err != nil {
				t.Fatal(err)
			}
			for i, a := range c.adds {
				b.Add(a.key, i, a.rows)
			}
			clk.advance(c.advance)
			var got []Reason
			var rows []int
			for {
				batch, ok := b.Next(c.idle)
				if !ok {
					break
				}
				got = append(got, batch.Reason)
				rows = append(rows, batch.Rows)
			}
			if !slices.Equal(got, c.want) || !slices.Equal(rows, c.wantRows) {
				t.Fatalf("got batches %v rows %v, want %v rows %v", got, rows, c.want, c.wantRows)
			}
			if b.Pending() != c.pending {
				t.Fatalf("pending %d, want %d", b.Pending(), c.pending)
			}
		})
	}
}

// TestFull: with every instance busy, only full batches (or those closed
// to bound the open groups) come out; one past its delay stays open and
// fills.
func TestFull(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	b, _ := New[int](Policy{MaxBatchSize: 3, MaxQueueDelay: 10 * time.Millisecond, MaxOpenGroups: 1}, clk.now)
	b.Add("a", 0, 1)
	b.Add("a", 1, 1)
	clk.advance(time.Second)
	if batch, ok := b.Full(); ok {
		t.Fatalf("Full gave a batch of %d rows, closed by %s, before any was full", batch.Rows, batch.Reason)
	}
	b.Add("a", 2, 1) // the late batch took one more and is full now
	b.Add("b", 3, 1)
	b.Add("c", 4, 1) // a second open group closes the first, b
	var got []Batch[int]
	for {
		batch, ok := b.Full()
		if !ok {
			break
		}
		got = append(got, batch)
	}
	if len(got) != 2 || got[0].Reason != ReasonMaxSize || !slices.Equal(got[0].Items, []int{0, 1, 2}) ||
		got[1].Reason != ReasonGroups || !slices.Equal(got[1].Items, []int{3}) {
		t.Fatalf("Full gave %+v; want the full batch a, then b closed for room", got)
	}
	// c is past no delay yet; once it is, Next (an instance free) takes it.
	clk.advance(10 * time.Millisecond)
	if batch, ok := b.Next(false); !ok || batch.Reason != ReasonDelay || !slices.Equal(batch.Items, []int{4}) {
		t.Fatalf("Next after the delay = %+v, %v", batch, ok)
	}
}

// TestBusyInstancesGetFullBatches drives a batcher as a worker does, under
// more load than its instances can run: a worker holds at most two
// batches per instance, so jobs arrive as runs end and free room, a few
// at a time. Taking batches with Full while every instance is busy (and
// Next only when one is free) gives full batches once the first runs
// end. Closing them at their delay whatever the instances are doing, as
// Next alone does, locks sizes in: here at 21 rows (the jobs that arrive
// in one delay) and 2; in BenchmarkQueueVsDirect, at 5 to 32 rows in a
// repeating cycle.
func TestBusyInstancesGetFullBatches(t *testing.T) {
	const (
		instances = 2
		maxBatch  = 32
		room      = 2 * maxBatch * instances
		runFor    = 200 * time.Millisecond
		arrival   = 500 * time.Microsecond // faster than the runs take jobs
		step      = 100 * time.Microsecond
	)
	for _, busyRule := range []bool{true, false} {
		clk := &clock{t: time.Unix(0, 0)}
		b, _ := New[int](Policy{MaxBatchSize: maxBatch, MaxQueueDelay: 10 * time.Millisecond}, clk.now)
		type run struct {
			rows int
			ends time.Time
		}
		var queued []Batch[int]
		var running []run
		held, n, taken := 0, 0, 0
		var sizes []int
		nextArrival := clk.t
		for clk.t.Before(time.Unix(10, 0)) {
			// Runs that end free their instance and their room.
			running = slices.DeleteFunc(running, func(r run) bool {
				if clk.t.Before(r.ends) {
					return false
				}
				held -= r.rows
				return true
			})
			if held < room && !clk.t.Before(nextArrival) {
				b.Add("a", n, 1)
				n++
				held++
				nextArrival = clk.t.Add(arrival)
			}
			for {
				var batch Batch[int]
				var ok bool
				if busyRule && len(running)+len(queued) >= instances {
					batch, ok = b.Full()
				} else {
					batch, ok = b.Next(false)
				}
				if !ok {
					break
				}
				queued = append(queued, batch)
			}
			for len(running) < instances && len(queued) > 0 {
				running = append(running, run{rows: queued[0].Rows, ends: clk.t.Add(runFor)})
				taken += len(queued[0].Items)
				sizes = append(sizes, queued[0].Rows)
				queued = queued[1:]
			}
			clk.advance(step)
		}
		// The first batches are formed before the instances are busy.
		late := sizes[2*instances:]
		short := slices.IndexFunc(late, func(rows int) bool { return rows < maxBatch })
		switch {
		case busyRule && short >= 0:
			t.Fatalf("batch %d of %d ran %d rows while the instances were busy; want %d: sizes %v", 2*instances+short, len(sizes), late[short], maxBatch, sizes)
		case !busyRule && short < 0:
			t.Fatalf("closing batches at their delay gave full batches too (%v): this test no longer shows the lock-in it guards against", sizes)
		}
		if taken == 0 || len(sizes) < 20 {
			t.Fatalf("only %d batches ran", len(sizes))
		}
	}
}

func TestUntilNext(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	b, _ := New[int](Policy{MaxBatchSize: 4, MaxQueueDelay: 10 * time.Millisecond}, clk.now)
	if _, ok := b.UntilNext(); ok {
		t.Fatal("UntilNext with nothing open")
	}
	b.Add("a", 1, 1)
	clk.advance(3 * time.Millisecond)
	b.Add("b", 2, 1)
	if d, ok := b.UntilNext(); !ok || d != 7*time.Millisecond {
		t.Fatalf("UntilNext = %v, %v; want 7ms", d, ok)
	}
	clk.advance(20 * time.Millisecond)
	if d, _ := b.UntilNext(); d != 0 {
		t.Fatalf("UntilNext after the deadline = %v", d)
	}
	if got := b.Flush(); len(got) != 2 || got[0].Reason != ReasonFlush {
		t.Fatalf("Flush = %+v", got)
	}
	if b.Pending() != 0 {
		t.Fatal("items left after Flush")
	}
}

// TestNoRequestWaitsPastItsDelay drives the batcher the way the fetch
// loop does, with random arrivals, and checks that every item leaves in a
// batch no later than its batch's delay after the batch opened, and that
// every item leaves exactly once.
func TestNoRequestWaitsPastItsDelay(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		delay := time.Duration(rng.IntN(20)+1) * time.Millisecond
		p := Policy{MaxBatchSize: rng.IntN(16) + 1, MaxQueueDelay: delay, PreferredBatchSizes: nil, MaxOpenGroups: rng.IntN(4) + 1}
		clk := &clock{t: time.Unix(0, 0)}
		b, err := New[int](p, clk.now)
		if err != nil {
			t.Fatal(err)
		}
		arrived := map[int]time.Time{}
		seen := map[int]bool{}
		take := func(idle bool) {
			for {
				batch, ok := b.Next(idle)
				if !ok {
					return
				}
				if batch.Rows > p.MaxBatchSize && len(batch.Items) > 1 {
					t.Fatalf("trial %d: batch of %d rows over max %d", trial, batch.Rows, p.MaxBatchSize)
				}
				for _, it := range batch.Items {
					if seen[it] {
						t.Fatalf("trial %d: item %d left twice", trial, it)
					}
					seen[it] = true
					if waited := clk.t.Sub(arrived[it]); waited > delay {
						t.Fatalf("trial %d: item %d waited %v, delay %v", trial, it, waited, delay)
					}
				}
			}
		}
		n := 0
		for step := 0; step < 300; step++ {
			// The loop sleeps at most UntilNext before looking again.
			gap := time.Duration(rng.IntN(3000)) * time.Microsecond
			if d, ok := b.UntilNext(); ok && d < gap {
				gap = d
			}
			clk.advance(gap)
			take(true)
			for range rng.IntN(5) {
				arrived[n] = clk.t
				b.Add(string(rune('a'+rng.IntN(3))), n, rng.IntN(p.MaxBatchSize)+1)
				n++
			}
			take(false)
		}
		for _, batch := range b.Flush() {
			for _, it := range batch.Items {
				seen[it] = true
			}
		}
		if len(seen) != n {
			t.Fatalf("trial %d: %d of %d items came out", trial, len(seen), n)
		}
	}
}

// TestStackSplitProperty: for random requests of random datatypes and row
// counts, splitting the stacked batch gives back each request's rows.
func TestStackSplitProperty(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	types := []tensor.Datatype{tensor.FP32, tensor.Int64, tensor.Uint8, tensor.FP16, tensor.Bool, tensor.Bytes}
	for trial := range 500 {
		nreq := rng.IntN(6) + 1
		ninputs := rng.IntN(3) + 1
		inner := make([][]int64, ninputs)
		dts := make([]tensor.Datatype, ninputs)
		for i := range inner {
			dts[i] = types[rng.IntN(len(types))]
			for range rng.IntN(3) {
				inner[i] = append(inner[i], int64(rng.IntN(3)+1))
			}
		}
		var reqs [][]tensor.Tensor
		var rows []int
		for range nreq {
			r := rng.IntN(4) + 1
			rows = append(rows, r)
			var req []tensor.Tensor
			for i := range ninputs {
				shape := append([]int64{int64(r)}, inner[i]...)
				req = append(req, randomTensor(rng, "in"+string(rune('0'+i)), dts[i], shape))
			}
			reqs = append(reqs, req)
		}
		stacked, err := Stack(reqs, nil)
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		for i := range stacked {
			if err := stacked[i].CheckData(); err != nil {
				t.Fatalf("trial %d: stacked input inconsistent: %v", trial, err)
			}
		}
		parts, err := Split(stacked, rows)
		if err != nil {
			t.Fatalf("trial %d: %v", trial, err)
		}
		for r := range reqs {
			for i := range reqs[r] {
				if !bytes.Equal(parts[r][i].Data, reqs[r][i].Data) || !slices.Equal(parts[r][i].Shape, reqs[r][i].Shape) {
					t.Fatalf("trial %d: request %d input %d changed by stack and split", trial, r, i)
				}
			}
		}
	}
}

func randomTensor(rng *rand.Rand, name string, dt tensor.Datatype, shape []int64) tensor.Tensor {
	t := tensor.Tensor{Name: name, Datatype: dt, Shape: shape}
	n := tensor.NumElements(shape)
	for range n {
		if dt == tensor.Bytes {
			s := make([]byte, rng.IntN(6))
			for i := range s {
				s[i] = byte(rng.IntN(256))
			}
			t.Data = tensor.AppendBytesElement(t.Data, s)
			continue
		}
		for range dt.Size() {
			t.Data = append(t.Data, byte(rng.IntN(256)))
		}
	}
	return t
}

func TestSplitRefusesMismatchedRows(t *testing.T) {
	out := []tensor.Tensor{{Name: "y", Datatype: tensor.FP32, Shape: []int64{3}, Data: make([]byte, 12)}}
	if _, err := Split(out, []int{1, 1}); err == nil {
		t.Fatal("split 3 rows into 2")
	}
	scalar := []tensor.Tensor{{Name: "s", Datatype: tensor.FP32, Shape: nil, Data: make([]byte, 4)}}
	if _, err := Split(scalar, []int{1}); err == nil {
		t.Fatal("split a scalar output")
	}
	if _, err := Stack([][]tensor.Tensor{
		{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 2}, Data: make([]byte, 8)}},
		{{Name: "x", Datatype: tensor.FP32, Shape: []int64{1, 3}, Data: make([]byte, 12)}},
	}, nil); err == nil {
		t.Fatal("stacked different inner shapes")
	}
}

// Shared inputs (scalars, state) are taken once per batch, and only
// requests with identical values for them share a key.
func TestSharedInputs(t *testing.T) {
	f32 := func(v ...float32) []byte {
		var b []byte
		for _, x := range v {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
		}
		return b
	}
	req := func(x []float32, temp float32, state []float32) []tensor.Tensor {
		return []tensor.Tensor{
			{Name: "x", Datatype: tensor.FP32, Shape: []int64{int64(len(x) / 2), 2}, Data: f32(x...)},
			{Name: "temperature", Datatype: tensor.FP32, Shape: []int64{}, Data: f32(temp)},
			{Name: "state", Datatype: tensor.FP32, Shape: []int64{2, int64(len(state) / 2)}, Data: f32(state...)},
		}
	}
	batched := []bool{true, false, false}
	long := make([]float32, 40) // a state long enough to be digested
	longer := slices.Clone(long)
	longer[39] = 1
	tests := []struct {
		name string
		a, b []tensor.Tensor
		same bool
	}{
		{"same shared values, different rows", req([]float32{1, 2}, 0.5, []float32{1, 2}), req([]float32{3, 4, 5, 6}, 0.5, []float32{1, 2}), true},
		{"different scalar", req([]float32{1, 2}, 0.5, []float32{1, 2}), req([]float32{1, 2}, 0.7, []float32{1, 2}), false},
		{"different state", req([]float32{1, 2}, 0.5, []float32{1, 2}), req([]float32{1, 2}, 0.5, []float32{1, 3}), false},
		{"different long state", req([]float32{1, 2}, 0.5, long), req([]float32{1, 2}, 0.5, longer), false},
		{"same long state", req([]float32{1, 2}, 0.5, long), req([]float32{7, 8}, 0.5, slices.Clone(long)), true},
		{"different state shape", req([]float32{1, 2}, 0.5, []float32{1, 2, 3, 4}), req([]float32{1, 2}, 0.5, []float32{1, 2}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			same := Key(tt.a, batched) == Key(tt.b, batched)
			if same != tt.same {
				t.Fatalf("keys equal = %v, want %v", same, tt.same)
			}
			stacked, err := Stack([][]tensor.Tensor{tt.a, tt.b}, batched)
			if !tt.same {
				if err == nil {
					t.Fatal("stacked requests whose shared inputs differ")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got, want := stacked[0].Shape[0], tt.a[0].Shape[0]+tt.b[0].Shape[0]; got != want {
				t.Errorf("x stacked to %d rows, want %d", got, want)
			}
			for i := 1; i < 3; i++ {
				if !slices.Equal(stacked[i].Shape, tt.a[i].Shape) || !bytes.Equal(stacked[i].Data, tt.a[i].Data) {
					t.Errorf("shared input %s = %v %x, want it once as %v %x", stacked[i].Name, stacked[i].Shape, stacked[i].Data, tt.a[i].Shape, tt.a[i].Data)
				}
			}
			// StackInto takes the stacked input's buffer from its caller,
			// and only that one: the shared inputs are the requests' own.
			var lent [][]byte
			into, err := StackInto([][]tensor.Tensor{tt.a, tt.b}, batched, func(n int) []byte {
				b := make([]byte, 0, n)
				lent = append(lent, b)
				return b
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(lent) != 1 || &into[0].Data[0] != &lent[0][:1][0] || !bytes.Equal(into[0].Data, stacked[0].Data) {
				t.Errorf("StackInto took %d buffers, and x is in one of them: %v", len(lent), len(lent) == 1 && &into[0].Data[0] == &lent[0][:1][0])
			}
			if &into[1].Data[0] != &tt.a[1].Data[0] {
				t.Error("StackInto copied a shared input")
			}
		})
	}
}

func TestPadAndTrim(t *testing.T) {
	f := func(v ...float32) []byte {
		var b []byte
		for _, x := range v {
			b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
		}
		return b
	}
	// [2, 3] padded along axis 1 to 5 with -1, then trimmed back.
	x := tensor.Tensor{Name: "x", Datatype: tensor.FP32, Shape: []int64{2, 3}, Data: f(1, 2, 3, 4, 5, 6)}
	p, err := Pad(x, 1, 5, -1)
	if err != nil {
		t.Fatal(err)
	}
	if want := f(1, 2, 3, -1, -1, 4, 5, 6, -1, -1); !slices.Equal(p.Shape, []int64{2, 5}) || !bytes.Equal(p.Data, want) {
		t.Fatalf("padded %v %v", p.Shape, p.Data)
	}
	back, err := Trim(p, 1, 3)
	if err != nil || !slices.Equal(back.Shape, x.Shape) || !bytes.Equal(back.Data, x.Data) {
		t.Fatalf("trimmed back to %v %v, %v", back.Shape, back.Data, err)
	}
	// Axis 0 of a [2, 2] INT64, and an axis in the middle of [1, 2, 2].
	i := tensor.Tensor{Name: "i", Datatype: tensor.Int64, Shape: []int64{1, 2, 2}}
	for _, v := range []uint64{1, 2, 3, 4} {
		i.Data = binary.LittleEndian.AppendUint64(i.Data, v)
	}
	p, err = Pad(i, 1, 3, 0)
	if err != nil || !slices.Equal(p.Shape, []int64{1, 3, 2}) || binary.LittleEndian.Uint64(p.Data[32:]) != 0 || binary.LittleEndian.Uint64(p.Data[24:]) != 4 {
		t.Fatalf("middle axis: %v %v %v", p.Shape, p.Data, err)
	}
	// BYTES pads with empty strings.
	s := tensor.Tensor{Name: "s", Datatype: tensor.Bytes, Shape: []int64{1, 2}}
	s.Data = tensor.AppendBytesElement(tensor.AppendBytesElement(nil, []byte("ab")), []byte("c"))
	p, err = Pad(s, 1, 4, 0)
	if err != nil {
		t.Fatal(err)
	}
	strs, _ := p.Strings()
	if len(strs) != 4 || string(strs[0]) != "ab" || string(strs[1]) != "c" || len(strs[3]) != 0 {
		t.Fatalf("BYTES padded to %q", strs)
	}
	if back, _ := Trim(p, 1, 2); !bytes.Equal(back.Data, s.Data) {
		t.Fatal("BYTES did not trim back")
	}
	if _, err := Pad(x, 2, 5, 0); err == nil {
		t.Fatal("padded an axis the tensor does not have")
	}
	for _, c := range []struct {
		n    int64
		want int64
		ok   bool
	}{{1, 8, true}, {8, 8, true}, {9, 16, true}, {17, 0, false}} {
		if got, ok := Bucket([]int64{8, 16}, c.n); got != c.want || ok != c.ok {
			t.Errorf("Bucket(%d) = %d, %v", c.n, got, ok)
		}
	}
}
