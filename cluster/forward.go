package cluster

import (
	"context"
	"errors"
	"fmt"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/fsm"
)

// Writes a follower forwards to the leader are coalesced: whatever is
// waiting when the batcher is free goes in one RPC, and the leader enqueues
// them all in raft at once, so they share log entries, fsyncs and one round
// trip instead of one each.

// maxForwardBatch bounds the commands of one forwarded batch, and
// maxForwardBatchBytes their encoded size, well inside the cluster RPC's
// largest message; a single larger command goes alone.
const (
	maxForwardBatch      = 256
	maxForwardBatchBytes = 16 << 20
)

// ApplyBatchArgs carries encoded commands to the leader.
type ApplyBatchArgs struct{ Data [][]byte }

// ApplyBatchReply holds one answer per command, in order.
type ApplyBatchReply struct{ Results []ApplyReply }

type forwardReq struct {
	addr string
	data []byte
	done chan forwardResp // buffered 1: the batcher never blocks on it
}

type forwardResp struct {
	reply ApplyReply
	err   error
}

// ApplyBatch commits several commands if this node leads. A command that
// fails for a reason other than leadership reports it in its reply; one
// that checkCommand refuses is not applied (its Err starts "refused
// command:") and the others go on.
func (s *rpcService) ApplyBatch(args ApplyBatchArgs, reply *ApplyBatchReply) error {
	reply.Results = make([]ApplyReply, len(args.Data))
	if s.n.raft.State() != raft.Leader {
		for i := range reply.Results {
			reply.Results[i].NotLeader = true
		}
		return nil
	}
	futures := make([]raft.ApplyFuture, len(args.Data))
	for i, d := range args.Data {
		if err := s.n.checkCommand(d); err != nil {
			s.n.logger.Warn("refused a forwarded command", "bytes", len(d), "error", err)
			reply.Results[i].Err = err.Error()
			continue
		}
		futures[i] = s.n.raft.Apply(d, s.n.cfg.ApplyTimeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.n.cfg.ApplyTimeout)
	defer cancel()
	for i, f := range futures {
		if f == nil {
			continue // refused
		}
		r := &reply.Results[i]
		if err := s.n.await(ctx, f); err != nil {
			// The outcome is unknown when the wait ends first; the
			// command's request id makes the caller's retry safe.
			if isRetryable(err) || errors.Is(err, ErrShutdown) || errors.Is(err, context.DeadlineExceeded) {
				r.NotLeader = true
			} else {
				r.Err = err.Error()
			}
			continue
		}
		res, ok := f.Response().(*fsm.Result)
		if !ok {
			r.Err = fmt.Sprintf("unexpected fsm response %T", f.Response())
			continue
		}
		r.Result = *res
	}
	return nil
}

// forwardApply sends data to the leader at addr through the batcher.
func (n *Node) forwardApply(ctx context.Context, addr string, data []byte) (ApplyReply, error) {
	req := &forwardReq{addr: addr, data: data, done: make(chan forwardResp, 1)}
	select {
	case n.forwardCh <- req:
	case <-ctx.Done():
		return ApplyReply{}, ctx.Err()
	case <-n.shutdownCh:
		return ApplyReply{}, ErrShutdown
	}
	select {
	case resp := <-req.done:
		if resp.err == nil && resp.reply.Err != "" {
			resp.err = refusal(resp.reply.Err)
		}
		return resp.reply, resp.err
	case <-ctx.Done():
		// The command may still commit; its request id makes a retry safe.
		return ApplyReply{}, ctx.Err()
	}
}

// runForwarder collects forwarded writes into batches until shutdown.
func (n *Node) runForwarder() {
	var next *forwardReq // did not fit the last batch
	for {
		first := next
		if first == nil {
			select {
			case first = <-n.forwardCh:
			case <-n.shutdownCh:
				return
			}
		}
		var batch []*forwardReq
		batch, next = takeBatch(first, n.forwardCh)
		// Usually all for one leader; split if leadership moved meanwhile.
		byAddr := map[string][]*forwardReq{}
		for _, r := range batch {
			byAddr[r.addr] = append(byAddr[r.addr], r)
		}
		for addr, reqs := range byAddr {
			n.goFunc(func() { n.sendBatch(addr, reqs) })
		}
	}
}

// takeBatch returns first and whatever is waiting in ch, up to
// maxForwardBatch commands and maxForwardBatchBytes (a first command larger
// than that goes alone). next is a request taken from ch that did not fit:
// it starts the next batch.
func takeBatch(first *forwardReq, ch <-chan *forwardReq) (batch []*forwardReq, next *forwardReq) {
	batch, size := []*forwardReq{first}, len(first.data)
	for len(batch) < maxForwardBatch && size < maxForwardBatchBytes {
		select {
		case r := <-ch:
			if size+len(r.data) > maxForwardBatchBytes {
				return batch, r
			}
			batch, size = append(batch, r), size+len(r.data)
		default:
			return batch, nil
		}
	}
	return batch, nil
}

// sendBatch makes one ApplyBatch call and answers every request of it. The
// call is bounded by the node's ApplyTimeout; each caller stops waiting at
// its own deadline.
func (n *Node) sendBatch(addr string, reqs []*forwardReq) {
	args := ApplyBatchArgs{Data: make([][]byte, len(reqs))}
	for i, r := range reqs {
		args.Data[i] = r.data
	}
	ctx, cancel := context.WithTimeout(context.Background(), n.cfg.ApplyTimeout)
	defer cancel()
	go func() {
		select {
		case <-n.shutdownCh:
			cancel()
		case <-ctx.Done():
		}
	}()
	var reply ApplyBatchReply
	err := n.pool.call(ctx, addr, "ApplyBatch", args, &reply)
	if err == nil && len(reply.Results) != len(reqs) {
		err = fmt.Errorf("leader %s answered %d of %d commands", addr, len(reply.Results), len(reqs))
	}
	for i, r := range reqs {
		if err != nil {
			r.done <- forwardResp{err: err}
			continue
		}
		r.done <- forwardResp{reply: reply.Results[i]}
	}
}
