package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/fsm"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// errRetry marks a failure that another attempt (possibly on a new leader)
// may not hit: no leader, leadership lost or moving.
var errRetry = errors.New("leadership unavailable, retry")

func isRetryable(err error) bool {
	return errors.Is(err, raft.ErrNotLeader) || errors.Is(err, raft.ErrLeadershipLost) ||
		errors.Is(err, raft.ErrLeadershipTransferInProgress) || errors.Is(err, raft.ErrAbortedByRestore) ||
		errors.Is(err, raft.ErrEnqueueTimeout) || errors.Is(err, errRetry)
}

// ErrRefused marks a command the leader would not commit: it does not pass
// fsm.Check, or it breaks a cache bound of the leader's configuration.
// Nothing was written and sending it again cannot succeed, so it is never
// retried. A refusal is also ErrInvalid (a request rejected before anything
// was written).
var ErrRefused = errors.New("refused command")

// refusedPrefix starts the message of a refusal, which is how a refusal
// crosses the cluster RPC (ApplyReply.Err).
const refusedPrefix = "refused command: "

type refusedError struct{ err error }

func (e *refusedError) Error() string { return refusedPrefix + e.err.Error() }
func (e *refusedError) Unwrap() error { return e.err }
func (e *refusedError) Is(target error) bool {
	return target == ErrRefused || target == ErrInvalid
}

// refusal turns the message of ApplyReply.Err back into an error, an
// ErrRefused one if the leader refused the command.
func refusal(msg string) error {
	if rest, ok := strings.CutPrefix(msg, refusedPrefix); ok {
		return &refusedError{err: errors.New(rest)}
	}
	return errors.New(msg)
}

// checkCommand is the gate every command passes on the leader before
// raft.Apply, whether proposed here (applyLocal) or forwarded by a peer
// (ApplyBatch): nothing that Apply cannot decode, nothing this version
// does not fully understand and no cache entry beyond this node's bounds
// gets committed. Its error is ErrRefused.
func (n *Node) checkCommand(data []byte) error {
	c, err := fsm.Check(data)
	if err == nil {
		if err = n.checkCacheBounds(c); err != nil {
			err = fmt.Errorf("%s: %w", c.Type, err)
		}
	}
	if err != nil {
		return &refusedError{err: err}
	}
	return nil
}

// NewRequestID returns a random id for Command.RequestID.
func NewRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Apply commits cmd through raft from any node: on the leader directly,
// elsewhere forwarded to the leader over the cluster RPC. It stamps the
// proposer's time and a request id, so retries after a lost leader or a
// broken connection are applied at most once. It retries until ctx ends
// (or ApplyTimeout when ctx has no deadline), and never past fsm.MaxRetry
// after the stamp.
func (n *Node) Apply(ctx context.Context, cmd *fsm.Command) (*fsm.Result, error) {
	if cmd.RequestID == "" {
		cmd.RequestID = NewRequestID()
	}
	if cmd.Now == 0 {
		cmd.Now = time.Now().UnixNano()
	}
	data, err := fsm.Encode(cmd)
	if err != nil {
		return nil, fmt.Errorf("encode command: %w", err)
	}
	// The FSM remembers the request id for fsm.DedupeWindow after the
	// stamp: retries stop well inside it, so a late retry of an applied
	// command is still found a duplicate.
	ctx, cancel := context.WithDeadline(ctx, time.Unix(0, cmd.Now).Add(fsm.MaxRetry))
	defer cancel()
	ctx, span := startApplySpan(ctx, cmd, len(data))
	var res *fsm.Result
	err = n.onLeader(ctx, func(ctx context.Context) (err error) {
		res, err = n.applyLocal(ctx, data)
		return err
	}, func(ctx context.Context, addr string) (bool, error) {
		if span != nil {
			span.SetAttributes(attribute.String("mcpcluster.raft.leader_address", addr))
		}
		reply, err := n.forwardApply(ctx, addr, data)
		if err != nil {
			return false, err
		}
		res = &reply.Result
		return reply.NotLeader, nil
	})
	if span != nil {
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
		} else {
			span.SetAttributes(attribute.Int64("mcpcluster.raft.index", int64(res.Index)))
		}
		span.End()
	}
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", cmd.Type, err)
	}
	return res, nil
}

// startApplySpan opens the span of a raft write made on behalf of a
// traced request (a session commit, a cache set): nothing, at no cost,
// when ctx carries no recording span.
func startApplySpan(ctx context.Context, cmd *fsm.Command, size int) (context.Context, trace.Span) {
	parent := trace.SpanFromContext(ctx)
	if !parent.IsRecording() {
		return ctx, nil
	}
	return parent.TracerProvider().Tracer("github.com/mcpcluster/mcpcluster/cluster").Start(ctx,
		"raft apply "+cmd.Type.String(), trace.WithSpanKind(trace.SpanKindInternal), trace.WithAttributes(
			attribute.String("mcpcluster.raft.command", cmd.Type.String()),
			attribute.String("mcpcluster.raft.request_id", cmd.RequestID),
			attribute.Int("mcpcluster.raft.command_bytes", size),
		))
}

// onLeader runs local when this node leads and remote against the leader
// otherwise, retrying with backoff while there is no leader, leadership moves
// (a retryable local error, or remote answering "not leader") or the leader
// cannot be reached. A remote failure is retried, except a refusal
// (ErrRefused): callers make that safe (request ids for writes; reads have
// no effect). It gives up when ctx
// ends, or after ApplyTimeout when ctx has no deadline.
func (n *Node) onLeader(ctx context.Context, local func(ctx context.Context) error, remote func(ctx context.Context, addr string) (notLeader bool, err error)) error {
	ctx, cancel := n.bounded(ctx)
	defer cancel()
	var lastErr error
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			if err := n.backoff(ctx, attempt); err != nil {
				return fmt.Errorf("%w (last error: %v)", err, lastErr)
			}
		}
		if n.raft.State() == raft.Leader {
			err := local(ctx)
			if err == nil || !isRetryable(err) {
				return err
			}
			lastErr = err
			continue
		}
		_, addr := n.Leader()
		if addr == "" {
			lastErr = errors.New("no known leader")
			continue
		}
		notLeader, err := remote(ctx, addr)
		switch {
		case errors.Is(err, ErrRefused), errors.Is(err, ErrQuorum), errors.Is(err, ErrInvalid):
			return err // the leader's answer, not worth repeating
		case err != nil:
			lastErr = err
		case notLeader:
			lastErr = fmt.Errorf("%s is no longer the leader", addr)
		default:
			return nil
		}
	}
}

// applyLocal applies encoded data on this node, which must lead, if
// checkCommand lets it through.
func (n *Node) applyLocal(ctx context.Context, data []byte) (*fsm.Result, error) {
	timeout := n.cfg.ApplyTimeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return nil, context.DeadlineExceeded
	}
	if err := n.checkCommand(data); err != nil {
		return nil, err
	}
	f := n.raft.Apply(data, timeout)
	if err := n.await(ctx, f); err != nil {
		if isRetryable(err) {
			return nil, fmt.Errorf("%w: %v", errRetry, err)
		}
		if errors.Is(err, raft.ErrRaftShutdown) {
			return nil, ErrShutdown
		}
		return nil, err
	}
	res, ok := f.Response().(*fsm.Result)
	if !ok {
		return nil, fmt.Errorf("unexpected fsm response %T", f.Response())
	}
	return res, nil
}

// await waits for f's answer, for ctx to end or for the node to shut
// down, whichever comes first. raft never answers a future still queued in
// its (buffered) apply channel when leadership ends or raft shuts down, so
// a bare f.Error() could wait forever and hang Shutdown. The goroutine
// that waits for the answer ends with it (or with the process, for a
// future raft dropped).
func (n *Node) await(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-n.shutdownCh:
		return ErrShutdown
	}
}

// bounded gives ctx the ApplyTimeout deadline if it has none.
func (n *Node) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, n.cfg.ApplyTimeout)
}

// backoff waits before retry attempt (1-based), bounded by ctx and shutdown.
func (n *Node) backoff(ctx context.Context, attempt int) error {
	d := time.Duration(attempt) * 20 * time.Millisecond
	if d > 250*time.Millisecond {
		d = 250 * time.Millisecond
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-n.shutdownCh:
		return ErrShutdown
	case <-t.C:
		return nil
	}
}

// Consistency is the guarantee a read asks for.
type Consistency string

const (
	// Stale reads the local FSM as it is: fastest, may be behind.
	Stale Consistency = "stale"
	// Default reads state at least as new as the leader's applied state,
	// trusting the leader's lease (no quorum round trip).
	Default Consistency = "default"
	// Linearizable confirms leadership with a quorum first (read-index) and
	// sees every write acknowledged before the read began.
	Linearizable Consistency = "linearizable"
)

// ParseConsistency parses a consistency level name; "" means Linearizable.
func ParseConsistency(s string) (Consistency, error) {
	switch Consistency(s) {
	case "":
		return Linearizable, nil
	case Stale, Default, Linearizable:
		return Consistency(s), nil
	}
	return "", fmt.Errorf("unknown consistency %q (want stale, default or linearizable)", s)
}

// ReadInfo tells which guarantee a read got and where.
type ReadInfo struct {
	Level Consistency
	Node  string
	// Index is the applied index the local FSM had reached for the read.
	Index uint64
}

// ReadBarrier waits until the local FSM may serve a read at level, then
// returns. Read from FSM() right after it.
func (n *Node) ReadBarrier(ctx context.Context, level Consistency) (ReadInfo, error) {
	info := ReadInfo{Level: level, Node: n.id}
	if level == Stale {
		info.Index = n.fsm.LastIndex()
		return info, nil
	}
	if level != Default && level != Linearizable {
		return info, fmt.Errorf("unknown consistency %q", level)
	}
	ctx, cancel := n.bounded(ctx)
	defer cancel()
	lin := level == Linearizable
	var idx uint64
	err := n.onLeader(ctx, func(ctx context.Context) (err error) {
		idx, err = n.leaderReadIndex(ctx, lin)
		return err
	}, func(ctx context.Context, addr string) (bool, error) {
		var reply ReadIndexReply
		if err := n.pool.call(ctx, addr, "ReadIndex", ReadIndexArgs{Linearizable: lin}, &reply); err != nil {
			return false, err
		}
		idx = reply.Index
		return reply.NotLeader, nil
	})
	if err == nil {
		err = n.waitApplied(ctx, idx)
	}
	if err != nil {
		return info, fmt.Errorf("%s read: %w", level, err)
	}
	info.Index = n.fsm.LastIndex()
	return info, nil
}

// leaderReadIndex returns the index a read must wait for, per the
// read-index protocol, noted before confirming leadership. It is the index
// of the last command the leader's FSM applied: every acknowledged write was
// applied there before its acknowledgement (after the leader's barrier, that
// includes earlier terms), and a follower's FSM reaches that exact index.
// raft's own AppliedIndex will not do: it moves when entries are handed to
// the FSM goroutine, before they are applied.
func (n *Node) leaderReadIndex(ctx context.Context, linearizable bool) (uint64, error) {
	if n.raft.State() != raft.Leader {
		return 0, errRetry
	}
	if !n.leaderReady() {
		// No entry of this term committed yet: the commit index may be behind.
		return 0, fmt.Errorf("%w: leader has not committed in its term yet", errRetry)
	}
	idx := n.fsm.LastIndex()
	if linearizable {
		if err := n.await(ctx, n.raft.VerifyLeader()); err != nil {
			return 0, fmt.Errorf("%w: verify leader: %v", errRetry, err)
		}
	}
	return idx, nil
}

// WaitApplied waits until this node has applied the log up to idx (the
// index of a write it made): read-your-writes without asking the leader.
func (n *Node) WaitApplied(ctx context.Context, idx uint64) error { return n.waitApplied(ctx, idx) }

// waitApplied polls until the local FSM has applied the command at idx.
func (n *Node) waitApplied(ctx context.Context, idx uint64) error {
	if n.fsm.LastIndex() >= idx {
		return nil
	}
	t := time.NewTicker(time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for index %d (applied %d): %w", idx, n.fsm.LastIndex(), ctx.Err())
		case <-n.shutdownCh:
			return ErrShutdown
		case <-t.C:
			if n.fsm.LastIndex() >= idx {
				return nil
			}
		}
	}
}
