package producer

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/inferq/inferq/batchfile"
	"github.com/inferq/inferq/model"
)

// lineBlock is a run of a batch file's lines, parsed together.
type lineBlock struct {
	lines  [][]byte
	parsed []parsedLine
	errs   []error
	done   chan struct{} // closed once parsed and errs are set
}

// linesPerBlock is how many lines a parser takes at once: enough that
// handing blocks around costs nothing next to parsing them.
const linesPerBlock = 256

// parseLines reads the non-blank lines of body, parses them on every core,
// and calls fn with each line, its number (from 1) and what parseLine made
// of it, in the order of the file, one line at a time. Decoding the
// tensors of each line is most of the work of reading a batch file; done
// on one core, it bounded how fast a file could be queued.
//
// It returns fn's first error, after which no more lines are read, or
// else the error that ended reading, naming the line it was reading (nil
// at the end of body). body is read only by the calling goroutine, and
// nothing runs on after it returns.
func (s *Server) parseLines(m *model.Model, body *bufio.Reader, fn func(n int64, line []byte, p parsedLine, err error) error) error {
	workers := runtime.GOMAXPROCS(0)
	toParse := make(chan *lineBlock, workers)
	ordered := make(chan *lineBlock, 2*workers)
	var parsers sync.WaitGroup
	for range workers {
		parsers.Go(func() {
			for b := range toParse {
				b.parsed, b.errs = make([]parsedLine, len(b.lines)), make([]error, len(b.lines))
				for i, line := range b.lines {
					b.parsed[i], b.errs[i] = s.parseLine(m, line)
				}
				close(b.done)
			}
		})
	}
	// fn runs on its own goroutine, so that reading goes on while it
	// packs; stopped tells the reader that fn failed.
	var fnErr error
	stopped := make(chan struct{})
	packed := make(chan struct{})
	go func() {
		defer close(packed)
		var n int64
		for b := range ordered {
			<-b.done
			if fnErr != nil {
				continue // drain what was read
			}
			for i, line := range b.lines {
				n++
				if fnErr = fn(n, line, b.parsed[i], b.errs[i]); fnErr != nil {
					close(stopped)
					break
				}
			}
		}
	}()
	failed := func() bool {
		select {
		case <-stopped:
			return true
		default:
			return false
		}
	}
	var readErr error
	var read int64
	for readErr == nil && !failed() {
		b := &lineBlock{done: make(chan struct{})}
		for len(b.lines) < linesPerBlock && readErr == nil {
			var line []byte
			line, readErr = batchfile.ReadLine(body, s.opts.MaxBodyBytes)
			if len(bytes.TrimSpace(line)) > 0 {
				b.lines = append(b.lines, line)
				read++
			}
		}
		toParse <- b
		ordered <- b
	}
	close(toParse)
	close(ordered)
	<-packed
	parsers.Wait()
	if fnErr != nil {
		return fnErr
	}
	if readErr == io.EOF {
		return nil
	}
	return fmt.Errorf("reading line %d: %w", read+1, readErr)
}
