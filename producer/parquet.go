package producer

import (
	"bufio"
	"fmt"
	"net/http"

	"github.com/inferq/inferq/batchfile"
	"github.com/inferq/inferq/record"
)

// parquetOutput writes a finished batch's output as one Parquet file
// (?format=parquet): a row per input line, in input order, a column per
// output of the model (batchfile.ParquetWriter). The file is written as
// it is made; a failure midway aborts the response, so that a client
// never takes a cut file for a whole one.
func (s *Server) parquetOutput(w http.ResponseWriter, r *http.Request, rec *record.BatchRecord) error {
	m, err := s.opts.Catalog.Lookup(rec.Model, 0)
	if err != nil {
		return errorf(http.StatusConflict, "model %s is no longer served, and its outputs make the Parquet columns: read the JSON Lines output instead (%v)", rec.Model, err)
	}
	columns := make([]batchfile.ParquetColumn, len(m.Outputs))
	for i, o := range m.Outputs {
		columns[i] = batchfile.ParquetColumn{Name: o.Name, Datatype: o.Datatype}
	}
	w.Header().Set("Content-Type", "application/vnd.apache.parquet")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="batch-%s.parquet"`, rec.ID))
	w.WriteHeader(http.StatusOK)
	out := bufio.NewWriterSize(w, 256<<10)
	pw := batchfile.NewParquetWriter(out, columns)
	err = s.eachOutput(r.Context(), rec, batchfile.Select{}, func(index []batchfile.IndexLine, lines [][]byte) error {
		for i, l := range lines {
			if err := pw.Write(index[i].Line, l); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = pw.Close()
	}
	if err == nil {
		err = out.Flush()
	}
	if err != nil {
		if r.Context().Err() == nil {
			s.log.Warn("batch Parquet output cut short", "batch", rec.ID, "err", err)
		}
		panic(http.ErrAbortHandler)
	}
	return nil
}
