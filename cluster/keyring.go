package cluster

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"sync"
	"time"

	"github.com/mcpcluster/mcpcluster/membership"
)

// Gossip keys rotate across a running cluster in three steps: install the
// new key everywhere, make it the primary everywhere, then remove the old
// one everywhere. The node that takes the request runs each step on every
// alive member over the cluster RPC and reports each node's answer.

// KeyringArgs is one keyring operation for one node.
type KeyringArgs struct {
	Op  string
	Key []byte
}

// KeyringReply is that node's keyring after the operation.
type KeyringReply struct {
	Primary []byte
	Keys    [][]byte
}

// Keyring runs a keyring operation on this node.
func (s *rpcService) Keyring(args KeyringArgs, reply *KeyringReply) error {
	op, err := membership.ParseKeyringOp(args.Op)
	if err != nil {
		return err
	}
	reply.Primary, reply.Keys, err = s.n.members.Keyring(op, args.Key)
	return err
}

// KeyringNode is one node's answer to a cluster-wide keyring operation.
// Keys are base64, as `mcpcluster keygen` prints them.
type KeyringNode struct {
	Node    string   `json:"node"`
	Primary string   `json:"primary,omitempty"`
	Keys    []string `json:"keys,omitempty"`
	Error   string   `json:"error,omitempty"`
}

// keyringTimeout bounds one node's answer to a keyring operation.
const keyringTimeout = 5 * time.Second

// KeyringAll runs op (with key, except for list) on every alive member,
// this node included, and returns every node's answer sorted by node id.
// It fails only if op or key is invalid; per-node failures are in the
// answers.
func (n *Node) KeyringAll(ctx context.Context, op membership.KeyringOp, key []byte) ([]KeyringNode, error) {
	var targets []membership.Member
	for _, m := range n.members.Members() {
		if m.State == membership.StateAlive || m.State == membership.StateSuspect {
			targets = append(targets, m)
		}
	}
	out := make([]KeyringNode, len(targets))
	var wg sync.WaitGroup
	for i, m := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			res := KeyringNode{Node: m.ID}
			var reply KeyringReply
			var err error
			if m.ID == n.id {
				reply.Primary, reply.Keys, err = n.members.Keyring(op, key)
			} else {
				cctx, cancel := context.WithTimeout(ctx, keyringTimeout)
				err = n.pool.call(cctx, m.RPCAddr, "Keyring", KeyringArgs{Op: string(op), Key: key}, &reply)
				cancel()
			}
			if err != nil {
				res.Error = err.Error()
			} else {
				res.Primary = base64.StdEncoding.EncodeToString(reply.Primary)
				for _, k := range reply.Keys {
					res.Keys = append(res.Keys, base64.StdEncoding.EncodeToString(k))
				}
				sort.Strings(res.Keys)
			}
			out[i] = res
		}()
	}
	wg.Wait()
	sort.Slice(out, func(i, j int) bool { return out[i].Node < out[j].Node })
	if op != membership.KeyringList {
		failed := 0
		for _, r := range out {
			if r.Error != "" {
				failed++
			}
		}
		n.logger.Info("gossip keyring operation", "op", string(op), "nodes", len(out), "failed", failed)
	}
	return out, nil
}

// ParseGossipKey decodes a base64 gossip key of 16, 24 or 32 bytes.
func ParseGossipKey(s string) ([]byte, error) {
	k, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: gossip key is not base64: %v", ErrInvalid, err)
	}
	if l := len(k); l != 16 && l != 24 && l != 32 {
		return nil, fmt.Errorf("%w: gossip key is %d bytes, want 16, 24 or 32", ErrInvalid, l)
	}
	return k, nil
}

// KeyringResponse is the answer of the keyring endpoints.
type KeyringResponse struct {
	Nodes  []KeyringNode `json:"nodes"`
	Failed int           `json:"failed"`
	Error  string        `json:"error,omitempty"`
}

// keyringRoutes adds GET /v1/operator/keyring (every node's keys) and
// POST /v1/operator/keyring/{op} with {"key": "<base64>"} (install, use,
// remove on every alive node). All need a write token: keys are secrets.
func (a *API) keyringRoutes() {
	a.handle("GET /v1/operator/keyring", AccessWrite, func(w http.ResponseWriter, r *http.Request) {
		a.keyringOp(w, r, membership.KeyringList, nil)
	})
	a.handle("POST /v1/operator/keyring/{op}", AccessWrite, func(w http.ResponseWriter, r *http.Request) {
		op, err := membership.ParseKeyringOp(r.PathValue("op"))
		if err != nil || op == membership.KeyringList {
			writeError(w, http.StatusNotFound, fmt.Errorf("unknown keyring operation %q (want install, use or remove)", r.PathValue("op")))
			return
		}
		var body struct {
			Key string `json:"key"`
		}
		if err := json.NewDecoder(io.LimitReader(r.Body, 4096)).Decode(&body); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Errorf("want a JSON body {\"key\": \"<base64>\"}: %w", err))
			return
		}
		key, err := ParseGossipKey(body.Key)
		if err != nil {
			writeError(w, http.StatusBadRequest, err)
			return
		}
		a.keyringOp(w, r, op, key)
	})
}

func (a *API) keyringOp(w http.ResponseWriter, r *http.Request, op membership.KeyringOp, key []byte) {
	nodes, err := a.n.KeyringAll(r.Context(), op, key)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	resp := KeyringResponse{Nodes: nodes}
	for _, n := range nodes {
		if n.Error != "" {
			resp.Failed++
		}
	}
	code := http.StatusOK
	if resp.Failed > 0 {
		code = http.StatusInternalServerError
		resp.Error = fmt.Sprintf("keyring %s failed on %d of %d nodes", op, resp.Failed, len(nodes))
	}
	writeJSON(w, code, resp)
}
