package batchfile

import (
	"fmt"
	"slices"

	"github.com/inferq/inferq/batching"
	"github.com/inferq/inferq/tensor"
)

// EndToEnd is the Key of lines that share a job laid end to end (see
// batching.Pack), whatever their shapes: run one at a time, or a shape
// at a time.
const EndToEnd = "end to end"

// MaxBytes bounds the request bytes of a job packed from a batch file's
// lines, as model.MaxJobRows bounds its rows: the costs paid per job (a
// record, an acknowledgement, an announcement) are shared by many small
// lines, and a worker runs the job in slices of at most max_batch_size
// rows.
const MaxBytes = 256 << 10

// Line is a valid line of a batch file, as the packer sees it.
type Line struct {
	// Index is the line's index entry: Line, CustomID and OpenAI set.
	Index IndexLine
	// Inputs are the line's tensors in the model's input order, Outputs
	// the outputs it asks for.
	Inputs  []tensor.Tensor
	Outputs []string
	Rows    int
	// Bytes is the line's size in the file.
	Bytes int
	// Key is that of the lines it may share a run with (batching.Key):
	// "" for a line that shares no job, EndToEnd for one that shares
	// a job with any other, laid end to end.
	Key string
}

// Chunk is consecutive lines of a batch file packed into one job.
type Chunk struct {
	// Key is the lines' Key, or EndToEnd when it differs among them.
	Key     string
	Lines   []IndexLine // Row and Rows set
	Inputs  [][]tensor.Tensor
	Outputs []string
	Rows    int
	Bytes   int
}

// Packer packs consecutive lines into chunks, one job each: lines of the
// same Key, asking the same outputs, up to MaxRows rows and MaxBytes
// bytes. With Mixable, lines of different keys share a chunk too, laid
// end to end (a model that takes its inputs in slices: images of
// different sizes, sequences of different lengths).
type Packer struct {
	MaxRows  int // at least 1
	MaxBytes int // default MaxBytes
	Mixable  bool
	cur      Chunk
}

// Add adds l to the chunk being filled, and returns the chunk it closed
// first when l does not fit in it (nil when it did).
func (p *Packer) Add(l Line) *Chunk {
	maxBytes := p.MaxBytes
	if maxBytes <= 0 {
		maxBytes = MaxBytes
	}
	var closed *Chunk
	c := &p.cur
	if len(c.Lines) > 0 && !(l.Key != "" && c.Key != "" && (c.Key == l.Key || p.Mixable) &&
		c.Rows+l.Rows <= p.MaxRows && c.Bytes+l.Bytes <= maxBytes && slices.Equal(c.Outputs, l.Outputs)) {
		closed = p.Flush()
	}
	key := l.Key
	if len(c.Lines) > 0 && c.Key != key {
		key = EndToEnd // lines of different shapes share the job end to end
	}
	il := l.Index
	il.Rows, il.Row = l.Rows, c.Rows
	c.Key, c.Outputs = key, l.Outputs
	c.Lines = append(c.Lines, il)
	c.Inputs = append(c.Inputs, l.Inputs)
	c.Rows += l.Rows
	c.Bytes += l.Bytes
	return closed
}

// Flush closes the chunk being filled and returns it: nil when it holds
// no line.
func (p *Packer) Flush() *Chunk {
	if len(p.cur.Lines) == 0 {
		return nil
	}
	c := p.cur
	p.cur = Chunk{}
	return &c
}

// Request makes the job's request of the chunk, and how its lines are
// packed in it (nil for a chunk of one line): stacked along the batch
// dimension, batched[i] saying which inputs have one, or laid end to end
// when they cannot be stacked (lines of different shapes, or a model that
// cannot stack rows).
func (c *Chunk) Request(batched []bool) (*tensor.Request, *batching.Lines, error) {
	req := &tensor.Request{Outputs: c.Outputs}
	var err error
	switch {
	case c.Key == EndToEnd && len(c.Inputs) > 1:
		var shapes [][][]int64
		if req.Inputs, shapes, err = batching.Pack(c.Inputs); err != nil {
			return nil, nil, fmt.Errorf("pack %d lines end to end: %w", len(c.Inputs), err)
		}
		return req, &batching.Lines{Shapes: shapes}, nil
	}
	if req.Inputs, err = batching.Stack(c.Inputs, batched); err != nil {
		return nil, nil, fmt.Errorf("stack %d lines: %w", len(c.Inputs), err)
	}
	if len(c.Lines) == 1 {
		return req, nil, nil
	}
	// Each line's rows, so that a run that fails can be retried a line
	// at a time and fail only the lines at fault.
	rows := make([]int, len(c.Lines))
	for i, l := range c.Lines {
		rows[i] = l.Rows
	}
	return req, &batching.Lines{Rows: rows}, nil
}
