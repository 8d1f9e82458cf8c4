package cluster

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/mcpcluster/mcpcluster/fsm"
)

func encoded(t *testing.T, c *fsm.Command) []byte {
	t.Helper()
	b, err := fsm.Encode(c)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// committed reports whether raft's log holds data between from and to.
func committed(t *testing.T, n *Node, from, to uint64, data []byte) bool {
	t.Helper()
	for i := from; i <= to; i++ {
		var l raft.Log
		if err := n.store.GetLog(i, &l); err != nil {
			t.Fatalf("read log %d: %v", i, err)
		}
		if l.Type == raft.LogCommand && bytes.Equal(l.Data, data) {
			return true
		}
	}
	return false
}

// TestApplyBatchRefusesInvalidCommands feeds the leader's RPC handler what
// a broken or hostile peer could send: each bad command is refused and never
// reaches the log, and the good command of the same batch is applied.
func TestApplyBatchRefusesInvalidCommands(t *testing.T) {
	n := newTestCluster(t, 1)[0]
	hdr := func(typ fsm.Type, js string) []byte { return append([]byte{fsm.EncodingVersion, byte(typ)}, js...) }
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"undecodable", []byte("\xff\xfe not a command"), "unsupported encoding version 255"},
		{"empty", nil, "short input"},
		{"unknown type", hdr(200, `{"now":1}`), "unknown command type 200"},
		{"missing key", hdr(fsm.TypeCacheSet, `{"now":1,"value":"AA=="}`), "cache_set: missing key"},
		{"unknown field", hdr(fsm.TypeCacheSet, `{"now":1,"key":"k","shard":3}`), `unknown field "shard"`},
		{"trailing data", hdr(fsm.TypeCacheExpire, `{"now":1}{"now":2}`), "trailing data"},
		{"long key", encoded(t, &fsm.Command{Type: fsm.TypeCacheSet, Key: strings.Repeat("k", n.cfg.Cache.MaxKeyBytes+1)}), "key is 513 bytes, the maximum is 512"},
		{"long key delete", encoded(t, &fsm.Command{Type: fsm.TypeCacheDelete, Key: strings.Repeat("k", n.cfg.Cache.MaxKeyBytes+1)}), "cache_delete: invalid cache request: key is 513 bytes"},
		{"large value", encoded(t, &fsm.Command{Type: fsm.TypeCacheSet, Key: "k", Value: make([]byte, n.cfg.Cache.MaxValueBytes+1)}), "value is 1048577 bytes"},
	}
	svc := &rpcService{n: n}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			good := encoded(t, &fsm.Command{Type: fsm.TypeCacheSet, Key: "good/" + tc.name, Value: []byte("v"), RequestID: NewRequestID()})
			before := n.raft.LastIndex()
			var reply ApplyBatchReply
			if err := svc.ApplyBatch(ApplyBatchArgs{Data: [][]byte{tc.data, good}}, &reply); err != nil {
				t.Fatal(err)
			}
			if len(reply.Results) != 2 {
				t.Fatalf("%d results", len(reply.Results))
			}
			bad, ok := reply.Results[0], reply.Results[1]
			if bad.NotLeader || !strings.HasPrefix(bad.Err, "refused command: ") || !strings.Contains(bad.Err, tc.want) {
				t.Fatalf("bad command: %+v, want a refusal containing %q", bad, tc.want)
			}
			if bad.Result.Index != 0 {
				t.Fatalf("refused command has a log index: %+v", bad)
			}
			if ok.Err != "" || ok.NotLeader || ok.Result.Index <= before {
				t.Fatalf("good command of the batch: %+v (last index before %d)", ok, before)
			}
			if committed(t, n, before+1, n.raft.LastIndex(), tc.data) {
				t.Fatal("refused command reached the log")
			}
			if _, found := n.FSM().CacheGet("good/"+tc.name, time.Now().UnixNano()); !found {
				t.Fatal("good command not applied")
			}
		})
	}

	// A batch of refusals alone leaves the log as it was.
	before := n.raft.LastIndex()
	var reply ApplyBatchReply
	if err := svc.ApplyBatch(ApplyBatchArgs{Data: [][]byte{cases[0].data, cases[2].data}}, &reply); err != nil {
		t.Fatal(err)
	}
	for i, r := range reply.Results {
		if !strings.HasPrefix(r.Err, "refused command: ") {
			t.Fatalf("command %d: %+v", i, r)
		}
	}
	if got := n.raft.LastIndex(); got != before {
		t.Fatalf("last index moved from %d to %d for refused commands", before, got)
	}

	// The leader's own proposals pass the same gate.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := n.Apply(ctx, &fsm.Command{Type: fsm.TypeCacheSet, Key: strings.Repeat("k", 600)})
	if !errors.Is(err, ErrRefused) || !errors.Is(err, ErrInvalid) || ctx.Err() != nil {
		t.Fatalf("local over-long key: %v", err)
	}
}

// TestForwardedRefusalIsPermanent: a follower whose command the leader
// refuses gets the refusal at once, not retries until its deadline.
func TestForwardedRefusalIsPermanent(t *testing.T) {
	nodes := newTestCluster(t, 2)
	leader := waitStable(t, nodes, 2)
	follower := nodes[0]
	if follower == leader {
		follower = nodes[1]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Node.Apply does not hold keys to the cache bounds; the leader does.
	_, err := follower.Apply(ctx, &fsm.Command{Type: fsm.TypeCacheSet, Key: strings.Repeat("k", 600)})
	if !errors.Is(err, ErrRefused) || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "refused command: cache_set") {
		t.Fatalf("forwarded over-long key: %v", err)
	}
	if ctx.Err() != nil {
		t.Fatal("the refusal was retried until the deadline")
	}
	// The HTTP API's bounds check gives the same answer before forwarding.
	if _, err := follower.CacheSet(ctx, strings.Repeat("k", 600), nil, SetOptions{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("CacheSet of an over-long key: %v", err)
	}
	set(t, follower, "after-refusal", "ok")
}

func TestRefusalCrossesRPC(t *testing.T) {
	err := refusal("refused command: cache_set: missing key")
	if !errors.Is(err, ErrRefused) || err.Error() != "refused command: cache_set: missing key" {
		t.Fatalf("refusal: %v", err)
	}
	if err := refusal("raft is shutting down"); errors.Is(err, ErrRefused) {
		t.Fatalf("other error taken for a refusal: %v", err)
	}
}

func TestTakeBatchBoundsBytes(t *testing.T) {
	req := func(size int) *forwardReq { return &forwardReq{data: make([]byte, size)} }
	fill := func(reqs ...*forwardReq) chan *forwardReq {
		ch := make(chan *forwardReq, len(reqs))
		for _, r := range reqs {
			ch <- r
		}
		return ch
	}
	const mib = 1 << 20

	// By count.
	var many []*forwardReq
	for range maxForwardBatch + 10 {
		many = append(many, req(1))
	}
	batch, next := takeBatch(req(1), fill(many...))
	if len(batch) != maxForwardBatch || next != nil {
		t.Fatalf("count bound: %d commands, next %v", len(batch), next)
	}

	// By bytes: the command that does not fit starts the next batch.
	third := req(6 * mib)
	ch := fill(req(6*mib), third, req(1))
	batch, next = takeBatch(req(6*mib), ch)
	if len(batch) != 2 || next != third {
		t.Fatalf("byte bound: %d commands, next is the third: %v", len(batch), next == third)
	}
	batch, next = takeBatch(next, ch)
	if len(batch) != 2 || next != nil {
		t.Fatalf("next batch: %d commands, next %v", len(batch), next)
	}

	// A command larger than the bound goes alone.
	ch = fill(req(1))
	batch, next = takeBatch(req(maxForwardBatchBytes+1), ch)
	if len(batch) != 1 || next != nil || len(ch) != 1 {
		t.Fatalf("large command: %d commands, next %v, %d left waiting", len(batch), next, len(ch))
	}
	batch, next = takeBatch(req(1), fill(req(maxForwardBatchBytes+1)))
	if len(batch) != 1 || next == nil {
		t.Fatalf("large command behind a small one: %d commands, next %v", len(batch), next)
	}
}
