package testenv

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSServerBinary builds nats-server, the version go.mod names, once per
// test run, so that tests can run it as processes they can kill.
func NATSServerBinary(t testing.TB) string {
	t.Helper()
	return Binary(t, "github.com/nats-io/nats-server/v2")
}

var (
	binMu    sync.Mutex
	binaries = map[string]*builtBinary{}
)

type builtBinary struct {
	once sync.Once
	path string
	err  error
}

// Binary builds the main package pkg (of this module or one it requires)
// once per test run and returns the executable's path.
func Binary(t testing.TB, pkg string) string {
	t.Helper()
	binMu.Lock()
	b := binaries[pkg]
	if b == nil {
		b = &builtBinary{}
		binaries[pkg] = b
	}
	binMu.Unlock()
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "inferq-bin-")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, filepath.Base(strings.TrimSuffix(pkg, "/v2")))
		cmd := exec.Command("go", "build", "-o", b.path, pkg)
		cmd.Dir = Root(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build %s: %v\n%s", pkg, err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// Cluster is a JetStream cluster of nats-server processes on loopback,
// joined by routes, each storing JetStream on disk in a folder of its own
// that outlives a restart.
type Cluster struct {
	t     testing.TB
	bin   string
	Nodes []*Node
}

// Node is one server of a Cluster.
type Node struct {
	Name       string
	Port       int
	routePort  int
	dir        string
	cmd        *exec.Cmd
	log        *bytes.Buffer
	exited     chan struct{}
	mu         sync.Mutex
	clusterOf  *Cluster
	startCount int
}

// URL is the node's client URL.
func (n *Node) URL() string { return fmt.Sprintf("nats://127.0.0.1:%d", n.Port) }

// StartCluster starts a cluster of size nodes and waits until JetStream
// answers on it; the nodes are killed when the test ends.
func StartCluster(t testing.TB, size int) *Cluster {
	t.Helper()
	c := &Cluster{t: t, bin: NATSServerBinary(t)}
	ports := FreePorts(t, 2*size) // distinct: a port picked twice left a node unable to listen
	for i := range size {
		c.Nodes = append(c.Nodes, &Node{Name: fmt.Sprintf("n%d", i), Port: ports[2*i], routePort: ports[2*i+1], dir: t.TempDir(), clusterOf: c})
	}
	for _, n := range c.Nodes {
		n.Start()
	}
	t.Cleanup(func() {
		for _, n := range c.Nodes {
			n.Kill()
		}
		if t.Failed() {
			for _, n := range c.Nodes {
				t.Logf("nats-server %s output (last 3 KB):\n%s", n.Name, n.tail(3<<10))
			}
		}
	})
	c.WaitReady(60 * time.Second)
	return c
}

// URLs is every node's client URL, comma-separated, as clients take them.
func (c *Cluster) URLs() string {
	var u []string
	for _, n := range c.Nodes {
		u = append(u, n.URL())
	}
	return strings.Join(u, ",")
}

// Start starts the node's process (again, after Kill or Stop), on the same
// ports and folder.
func (n *Node) Start() {
	t := n.clusterOf.t
	t.Helper()
	var routes []string
	for _, o := range n.clusterOf.Nodes {
		if o != n {
			routes = append(routes, fmt.Sprintf("nats://127.0.0.1:%d", o.routePort))
		}
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	n.startCount++
	if n.log == nil {
		n.log = &bytes.Buffer{}
	}
	cmd := exec.Command(n.clusterOf.bin, "-a", "127.0.0.1", "-p", fmt.Sprint(n.Port), "-n", n.Name,
		"-js", "-sd", n.dir, "--cluster_name", "inferq-test",
		"--cluster", fmt.Sprintf("nats://127.0.0.1:%d", n.routePort), "--routes", strings.Join(routes, ","))
	cmd.Stdout, cmd.Stderr = syncWriter{&n.mu, n.log}, syncWriter{&n.mu, n.log}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start nats-server %s: %v", n.Name, err)
	}
	n.cmd, n.exited = cmd, make(chan struct{})
	exited := n.exited
	go func() {
		cmd.Wait()
		close(exited)
	}()
}

// Kill kills the node at once (SIGKILL), as a machine lost would be.
func (n *Node) Kill() { n.signal(syscall.SIGKILL) }

// Stop stops the node as an upgrade does (SIGTERM: it closes its clients
// and routes, and its JetStream leaderships move).
func (n *Node) Stop() { n.signal(syscall.SIGTERM) }

func (n *Node) signal(sig syscall.Signal) {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	cmd.Process.Signal(sig)
	select {
	case <-exited:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
	}
}

func (n *Node) tail(max int) string {
	n.mu.Lock()
	defer n.mu.Unlock()
	b := n.log.Bytes()
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return string(b)
}

// WaitReady waits until JetStream answers through every running node:
// a meta leader is elected and each node takes API requests.
func (c *Cluster) WaitReady(within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for _, n := range c.Nodes {
		for {
			err := jetStreamAnswers(n.URL())
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				c.t.Fatalf("JetStream not ready on %s within %v: %v", n.Name, within, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

func jetStreamAnswers(url string) error {
	nc, err := nats.Connect(url, nats.Timeout(time.Second), nats.NoReconnect())
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err = js.AccountInfo(ctx)
	return err
}

// Leader is the node that leads stream name, and nil when none does.
func (c *Cluster) Leader(js jetstream.JetStream, stream string) *Node {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil
	}
	info, err := s.Info(ctx)
	if err != nil || info.Cluster == nil {
		return nil
	}
	for _, n := range c.Nodes {
		if n.Name == info.Cluster.Leader {
			return n
		}
	}
	return nil
}

// WaitCurrent waits until every replica of stream is current: after a
// node comes back, it has caught up.
func (c *Cluster) WaitCurrent(js jetstream.JetStream, stream string, within time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(within)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := func() (*jetstream.StreamInfo, error) {
			s, err := js.Stream(ctx, stream)
			if err != nil {
				return nil, err
			}
			return s.Info(ctx)
		}()
		cancel()
		if err == nil && info.Cluster != nil && info.Cluster.Leader != "" && len(info.Cluster.Replicas) == len(c.Nodes)-1 {
			current := true
			for _, r := range info.Cluster.Replicas {
				current = current && r.Current && !r.Offline
			}
			if current {
				return
			}
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("stream %s not current on every node within %v (err %v)", stream, within, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// syncWriter writes to a buffer under a lock.
type syncWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
