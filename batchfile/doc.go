// Package batchfile holds what a batch file is made of between its
// upload and its output, apart from HTTP and storage: reading its lines
// (read.go), the packing of consecutive lines into jobs (pack.go), the
// index that says which job holds each line (index.go), and the output,
// a line per input line assembled from its job's response (output.go).
//
// The API (package producer) drives them: it reads and checks the lines
// of an upload, queues a job per Chunk the Packer closes, streams the
// index to storage, and at the end reads the index back and assembles
// the output from each job's stored response.
package batchfile
