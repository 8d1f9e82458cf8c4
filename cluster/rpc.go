package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/rpc"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/fsm"
)

// ApplyReply is the leader's answer for one command of ApplyBatchArgs.
type ApplyReply struct {
	Result    fsm.Result
	NotLeader bool
	Err       string // a failure other than leadership (ApplyBatch)
}

// ReadIndexArgs asks the leader for the index a read must wait for.
type ReadIndexArgs struct{ Linearizable bool }

// ReadIndexReply is the leader's read index.
type ReadIndexReply struct {
	Index     uint64
	NotLeader bool
}

// PeersArgs asks a node about its raft configuration.
type PeersArgs struct{}

// PeersReply tells how many servers a node's raft configuration holds and
// how far its log reaches, which the leader reads before promoting it.
type PeersReply struct {
	ID           string
	Servers      int
	LastIndex    uint64
	AppliedIndex uint64
}

// RemovePeerArgs asks the leader to remove a server from the configuration.
type RemovePeerArgs struct{ ID string }

// RemovePeerReply is the leader's answer to RemovePeerArgs.
type RemovePeerReply struct{ NotLeader bool }

// UnreachableArgs reports that a node refused a connection.
type UnreachableArgs struct{ ID, From string }

// UnreachableReply is the leader's answer to UnreachableArgs.
type UnreachableReply struct{ NotLeader bool }

// rpcService is the node-to-node RPC surface, registered as "Cluster",
// one per connection.
type rpcService struct {
	n *Node
	// peer is the node id the caller proved with its certificate ("" in
	// plaintext, where nothing is proven).
	peer string
}

// speaksFor refuses a request made in another node's name.
func (s *rpcService) speaksFor(id string) error {
	if s.peer != "" && s.peer != id {
		return fmt.Errorf("node %q may not act for node %q", s.peer, id)
	}
	return nil
}

// ReadIndex returns the leader's commit index, after confirming leadership
// with a quorum when the read is linearizable.
func (s *rpcService) ReadIndex(args ReadIndexArgs, reply *ReadIndexReply) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.n.cfg.ApplyTimeout)
	defer cancel()
	idx, err := s.n.leaderReadIndex(ctx, args.Linearizable)
	if errors.Is(err, errRetry) {
		reply.NotLeader = true
		return nil
	}
	reply.Index = idx
	return err
}

// Peers reports the size of this node's raft configuration; bootstrap uses it
// to refuse bootstrapping when a peer already belongs to a cluster.
func (s *rpcService) Peers(_ PeersArgs, reply *PeersReply) error {
	f := s.n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return fmt.Errorf("read raft configuration: %w", err)
	}
	reply.ID = s.n.id
	reply.Servers = len(f.Configuration().Servers)
	reply.LastIndex = s.n.raft.LastIndex()
	reply.AppliedIndex = s.n.raft.AppliedIndex()
	return nil
}

// RemovePeer removes a server from the raft configuration (a graceful leave).
func (s *rpcService) RemovePeer(args RemovePeerArgs, reply *RemovePeerReply) error {
	if err := s.speaksFor(args.ID); err != nil {
		return err
	}
	if s.n.raft.State() != raft.Leader {
		reply.NotLeader = true
		return nil
	}
	if servers, err := s.n.Servers(); err == nil && !hasServer(servers, args.ID) {
		return nil // removed already: a retry
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.n.cfg.ApplyTimeout)
	defer cancel()
	if err := s.n.removeServer(ctx, args.ID); err != nil {
		if errors.Is(err, errRetry) {
			reply.NotLeader = true
			return nil
		}
		return err
	}
	s.n.logger.Info("removed server on its request", "id", args.ID)
	return nil
}

// Unreachable takes a report that a node refused a connection; the leader
// checks it and, if confirmed, stops placing providers there at once.
func (s *rpcService) Unreachable(args UnreachableArgs, reply *UnreachableReply) error {
	if err := s.speaksFor(args.From); err != nil {
		return err
	}
	if s.n.raft.State() != raft.Leader {
		reply.NotLeader = true
		return nil
	}
	s.n.suspect(args.ID, args.From)
	return nil
}

// rpcPool keeps one multiplexed net/rpc client per peer address.
type rpcPool struct {
	mu          sync.Mutex
	clients     map[string]*pooledClient
	dialTimeout time.Duration
	dial        func(addr string, timeout time.Duration) (net.Conn, error)
	closed      bool
}

// pooledClient is a shared client and its connection, which notes when it
// last received anything: a caller whose deadline passes closes the
// connection only if the peer has been silent since that call was sent (a
// paused peer), not while it answers other callers (a slow call).
type pooledClient struct {
	*rpc.Client
	conn *activityConn
}

type activityConn struct {
	net.Conn
	lastRead atomic.Int64 // unix ns
}

func (c *activityConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.lastRead.Store(time.Now().UnixNano())
	}
	return n, err
}

func newRPCPool(dialTimeout time.Duration, dial func(addr string, timeout time.Duration) (net.Conn, error)) *rpcPool {
	return &rpcPool{clients: make(map[string]*pooledClient), dialTimeout: dialTimeout, dial: dial}
}

var errPoolClosed = errors.New("rpc pool closed")

func (p *rpcPool) client(ctx context.Context, addr string) (*pooledClient, error) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil, errPoolClosed
	}
	if c, ok := p.clients[addr]; ok {
		p.mu.Unlock()
		return c, nil
	}
	p.mu.Unlock()

	timeout := p.dialTimeout
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	conn, err := p.dial(addr, timeout)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	ac := &activityConn{Conn: conn}
	ac.lastRead.Store(time.Now().UnixNano())
	c := &pooledClient{Client: newRPCClient(ac), conn: ac}

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return nil, errPoolClosed
	}
	if existing, ok := p.clients[addr]; ok {
		c.Close()
		return existing, nil
	}
	p.clients[addr] = c
	return c, nil
}

func (p *rpcPool) drop(addr string, c *pooledClient) {
	p.mu.Lock()
	if p.clients[addr] == c {
		delete(p.clients, addr)
	}
	p.mu.Unlock()
	c.Close()
}

// call runs one RPC against addr, bounded by ctx. A broken connection is
// dropped from the pool so the next call dials afresh; so is one that has
// said nothing since this call was sent when its deadline passes (a paused
// peer). A connection that answers others while this call is slow stays.
func (p *rpcPool) call(ctx context.Context, addr, method string, args, reply any) error {
	c, err := p.client(ctx, addr)
	if err != nil {
		return err
	}
	sent := time.Now().UnixNano()
	call := c.Go("Cluster."+method, args, reply, make(chan *rpc.Call, 1))
	select {
	case <-call.Done:
		var se rpc.ServerError
		if call.Error != nil && !errors.As(call.Error, &se) {
			p.drop(addr, c)
		}
		if call.Error != nil {
			return fmt.Errorf("rpc %s to %s: %w", method, addr, call.Error)
		}
		return nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) && c.conn.lastRead.Load() < sent {
			p.drop(addr, c)
		}
		return fmt.Errorf("rpc %s to %s: %w", method, addr, ctx.Err())
	}
}

func (p *rpcPool) close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	for addr, c := range p.clients {
		c.Close()
		delete(p.clients, addr)
	}
}
