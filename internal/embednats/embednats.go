// Package embednats runs a NATS server with JetStream inside the process,
// for `inferq serve` and for tests.
package embednats

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// Options configure the embedded server. The zero value is not usable:
// StoreDir is required.
type Options struct {
	// StoreDir is where JetStream keeps its streams on disk.
	StoreDir string
	// Host and Port are where native NATS clients connect. Port -1 picks a
	// free port; Port 0 with Host "" listens on no port at all, and only
	// in-process connections work.
	Host string
	Port int
	// Token, when set, is what every client must give to connect, in
	// process too (Connect gives it). A server that listens should have
	// one: without it any local process reads and writes every stream.
	Token string
	// SyncAlways makes JetStream fsync every write, so an accepted job
	// survives a machine crash, not only a process crash, at a cost in
	// throughput.
	SyncAlways bool
	// Logger receives the server's warnings and errors; nil discards them.
	Logger *slog.Logger
}

// Server is a running embedded NATS server.
type Server struct {
	ns     *server.Server
	listen bool
	token  string
}

// Start starts a server and waits until it accepts connections.
func Start(opts Options) (*Server, error) {
	if opts.StoreDir == "" {
		return nil, errors.New("embedded NATS: a JetStream store directory is required")
	}
	listen := opts.Port != 0 || opts.Host != ""
	so := &server.Options{
		ServerName: "inferq",
		Host:       opts.Host,
		Port:       opts.Port,
		JetStream:  true,
		StoreDir:   opts.StoreDir,
		NoSigs:     true,
		NoLog:      opts.Logger == nil,
		DontListen: !listen,
		SyncAlways: opts.SyncAlways,
		// Big enough for a batch of results or a large request; larger
		// payloads are the object store's job.
		MaxPayload:    8 << 20,
		Authorization: opts.Token,
	}
	if so.Host == "" {
		so.Host = "127.0.0.1"
	}
	ns, err := server.NewServer(so)
	if err != nil {
		return nil, fmt.Errorf("embedded NATS: %w", err)
	}
	if opts.Logger != nil {
		ns.SetLoggerV2(&logAdapter{opts.Logger}, false, false, false)
	}
	ns.Start()
	if !ns.ReadyForConnections(30 * time.Second) {
		ns.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not become ready (store %s, listen %s:%d)", opts.StoreDir, so.Host, opts.Port)
	}
	return &Server{ns: ns, listen: listen, token: opts.Token}, nil
}

// ClientURL is the URL native clients connect to; empty when the server
// listens on no port.
func (s *Server) ClientURL() string {
	if !s.listen {
		return ""
	}
	return s.ns.ClientURL()
}

// Connect opens a client connection to the server, in process.
func (s *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	opts = append([]nats.Option{nats.InProcessServer(s.ns), nats.Name("inferq")}, opts...)
	if s.token != "" {
		opts = append(opts, nats.Token(s.token))
	}
	return nats.Connect("", opts...)
}

// Shutdown stops the server and waits until it has stopped.
func (s *Server) Shutdown() {
	s.ns.Shutdown()
	s.ns.WaitForShutdown()
}

type logAdapter struct{ l *slog.Logger }

func (a *logAdapter) Noticef(format string, v ...any) {}
func (a *logAdapter) Debugf(format string, v ...any)  {}
func (a *logAdapter) Tracef(format string, v ...any)  {}
func (a *logAdapter) Warnf(format string, v ...any) {
	a.l.Warn(fmt.Sprintf(format, v...), "component", "nats")
}
func (a *logAdapter) Errorf(format string, v ...any) {
	a.l.Error(fmt.Sprintf(format, v...), "component", "nats")
}
func (a *logAdapter) Fatalf(format string, v ...any) {
	a.l.Error(fmt.Sprintf(format, v...), "component", "nats", "fatal", true)
}
