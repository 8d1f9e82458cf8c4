package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// chaosNode returns the node of c with id, or nil.
func chaosNode(c *testCluster, id string) *node {
	for _, nd := range c.nodes {
		if nd.id == id {
			return nd
		}
	}
	return nil
}

func nodeIDs(nodes []*node) []string {
	var ids []string
	for _, nd := range nodes {
		ids = append(ids, nd.id)
	}
	return ids
}

// waitDeclared waits until every node of nodes sees each provider offered
// by exactly those nodes: each node has declared its providers, and no
// node outside them is still listed.
func (r *chaosRun) waitDeclared(timeout time.Duration, nodes []*node) {
	r.t.Helper()
	want := nodeIDs(nodes)
	sort.Strings(want)
	waitFor(r.t, timeout, func() error {
		for _, nd := range nodes {
			resp, err := httpClient.Get("http://" + nd.http + "/v1/catalog")
			if err != nil {
				return err
			}
			var cat cluster.Catalog
			err = json.NewDecoder(resp.Body).Decode(&cat)
			resp.Body.Close()
			if err != nil {
				return fmt.Errorf("%s: catalog: %w", nd.id, err)
			}
			if len(cat.Providers) == 0 {
				return fmt.Errorf("%s lists no providers", nd.id)
			}
			for _, p := range cat.Providers {
				got := slices.Sorted(slices.Values(p.Nodes))
				if !slices.Equal(got, want) {
					return fmt.Errorf("%s sees provider %s offered by %v, want %v", nd.id, p.Name, got, want)
				}
			}
		}
		return nil
	})
}

// waitMembers waits until every node of nodes is ready, agrees on one
// leader, and sees exactly want in the raft configuration, voters or
// not: the leader keeps an odd number of voters, so a configuration of
// two or four servers has a non-voter.
func (r *chaosRun) waitMembers(timeout time.Duration, nodes []*node, want ...string) {
	r.t.Helper()
	want = slices.Sorted(slices.Values(want))
	waitFor(r.t, timeout, func() error {
		sts, err := oneLeader(nodes)
		if err != nil {
			return err
		}
		for i, st := range sts {
			var got []string
			for _, s := range st.Servers {
				got = append(got, s.ID)
			}
			if got = slices.Sorted(slices.Values(got)); !slices.Equal(got, want) {
				return fmt.Errorf("%s sees raft servers %v, want %v", nodes[i].id, got, want)
			}
		}
		return nil
	})
}

// longPause stops a follower past the dead-server timeout and gossip's
// failure detection: the leader removes it from raft, and its providers
// from the catalog. Resumed, it must come back as a voter and declare its
// providers again, which heal waits for.
func (r *chaosRun) longPause() {
	c := r.c
	v := c.except(r.leader().id)[0]
	others := c.except(v.id)
	r.setDown(true, v)
	v.signal(syscall.SIGSTOP)
	paused := time.Now()
	r.waitMembers(chaosDeadServerTimeout+60*time.Second, others, nodeIDs(others)...)
	r.waitDeclared(30*time.Second, others)
	r.t.Logf("%s removed %s after it was paused", v.id, time.Since(paused).Round(100*time.Millisecond))
	r.hold(2 * time.Second)
	v.signal(syscall.SIGCONT)
	r.waitReady(60*time.Second, v)
	r.setDown(false, v)
}

// drainSlowHolder sends SIGTERM to the holder of slow_tick while clients
// call it through the other nodes. slow_tick is not safe to repeat: the
// draining holder must finish the calls it holds, and new calls must go
// to the new holder; none through a live node may fail. The node is then
// started again.
func (r *chaosRun) drainSlowHolder() {
	c := r.c
	h := c.node(c.nodes[0].holders(r.t, "slow_tick", 1)[0])
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var termAt int64
	defer func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		inFlight, after := 0, 0
		for _, h := range r.calls {
			switch {
			case h.Input.Key != "slow_tick" || h.Output.Unknown || termAt == 0:
			case h.Call < termAt && h.Return > termAt:
				inFlight++
			case h.Call > termAt:
				after++
			}
		}
		r.t.Logf("slow_tick through the other nodes: %d calls in flight at %s's SIGTERM and %d after it succeeded", inFlight, h.id, after)
	}()
	for w, clients := range r.slow {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.callClient(200+w, "slow_tick", clients, stop, h.id)
		}()
	}
	defer wg.Wait()
	defer close(stop)
	r.hold(2500 * time.Millisecond) // calls are inside the provider on h
	r.setDown(true, h)
	termAt = r.now()
	h.signal(syscall.SIGTERM)
	if code, ok := h.wait(30 * time.Second); !ok {
		r.t.Fatalf("%s still running 30s after SIGTERM", h.id)
	} else if code != 0 {
		r.t.Errorf("%s exited %d after SIGTERM", h.id, code)
	}
	other := c.except(h.id)[0]
	waitFor(r.t, 30*time.Second, func() error {
		tools, err := other.catalog()
		if err != nil {
			return err
		}
		for _, tl := range tools {
			if tl.Name == "slow_tick" && len(tl.Holders) == 1 && tl.Holders[0] != h.id {
				return nil
			}
		}
		return fmt.Errorf("slow_tick has no new holder on %s's view", other.id)
	})
	r.hold(2 * time.Second) // calls run on the new holder
	h.start()
	r.waitReady(60*time.Second, h)
	r.setDown(false, h)
	r.hold(time.Second)
}

// leaveWithDeadVoter kills a follower, waits until the leader sees it
// failed, then runs `mcpcluster leave` on another voter. With three
// voters that removal would leave one healthy voter of two: it must be
// refused with the quorum message and change nothing. With five it
// leaves three healthy of four and must go through. Then the killed node
// is restarted, and a node that left is started again and must rejoin.
func (r *chaosRun) leaveWithDeadVoter() {
	c := r.c
	l := r.leader()
	followers := c.except(l.id)
	dead, leaving := followers[0], followers[1]
	r.setDown(true, dead)
	dead.kill()
	waitFor(r.t, 30*time.Second, func() error {
		code, body, err := l.do(context.Background(), http.MethodGet, "/v1/operator/raft/peers", "")
		if err != nil || code != http.StatusOK {
			return fmt.Errorf("peers on %s: %d %s %v", l.id, code, body, err)
		}
		var resp struct{ Peers []cluster.RaftPeer }
		if err := json.Unmarshal([]byte(body), &resp); err != nil {
			return err
		}
		for _, p := range resp.Peers {
			if p.ID == dead.id && !p.Healthy {
				return nil
			}
		}
		return fmt.Errorf("%s not failed on %s's view yet: %s", dead.id, l.id, body)
	})
	// Without the leaving voter, n-1 remain and n-2 of them are healthy.
	n := len(c.nodes)
	allowed := 2*(n-2) > n-1
	if allowed {
		r.setDown(true, leaving)
	}
	code, stdout, stderr := runCLI(r.t, "leave", "--http-addr", leaving.http)
	switch {
	case !allowed:
		if code != 1 || !strings.Contains(stderr, "quorum") || !strings.Contains(stderr, dead.id) {
			r.t.Errorf("leave of %s with %s dead, %d voters: exit %d, stdout %q, stderr %q, want a refusal naming quorum and %s",
				leaving.id, dead.id, n, code, stdout, stderr, dead.id)
		}
		if !leaving.running() {
			r.t.Errorf("%s exited after a refused leave", leaving.id)
			r.setDown(true, leaving)
			break
		}
		if st, err := l.status(); err != nil || len(voters(st)) != n {
			r.t.Errorf("voters on %s after a refused leave: %v %v", l.id, voters(st), err)
		}
		waitFor(r.t, 15*time.Second, func() error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if code, body, err := leaving.put(ctx, "chaos-after-refused-leave", "v"); err != nil || code != http.StatusOK {
				return fmt.Errorf("put through %s after a refused leave: %d %s %v", leaving.id, code, body, err)
			}
			return nil
		})
	default:
		if code != 0 {
			r.t.Errorf("leave of %s with %s dead, %d voters: exit %d, stdout %q, stderr %q, want it to go through",
				leaving.id, dead.id, n, code, stdout, stderr)
		}
		if code, ok := leaving.wait(30 * time.Second); !ok || code != 0 {
			r.t.Errorf("%s after leave: exited=%v code=%d", leaving.id, ok, code)
		}
	}
	r.hold(2 * time.Second)
	dead.start()
	r.waitReady(60*time.Second, dead)
	r.setDown(false, dead)
	if !leaving.running() {
		leaving.start()
		r.waitReady(60*time.Second, leaving)
	}
	r.setDown(false, leaving)
}

// rollingRestart stops every node in turn with SIGTERM, waits for it to
// exit, starts it again and waits until the cluster is whole before the
// next.
func (r *chaosRun) rollingRestart() {
	for _, nd := range r.c.nodes {
		r.setDown(true, nd)
		if code := nd.stop(30 * time.Second); code != 0 {
			r.t.Errorf("%s exited %d after SIGTERM", nd.id, code)
		}
		nd.start()
		r.waitReady(60*time.Second, nd)
		r.setDown(false, nd)
		r.heal()
	}
}

// chaosEntries is how many cache entries a node joins with.
const chaosEntries = 100_000

// loadClient writes the entries, with a connection per writer kept.
var loadClient = &http.Client{
	Timeout:   30 * time.Second,
	Transport: withToken(&http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute}),
}

// loadEntries writes chaosEntries entries of 100 bytes (e000000...)
// through the leader with 192 writers (following nodes would only forward
// them to it), the fastest way the API offers: there is no batch write.
// The clients idle meanwhile: the entries are the setting of the next
// fault, not a fault. They stay (no TTL, far below the cache bound), so a
// later round writes none.
func (r *chaosRun) loadEntries() {
	if r.loaded {
		return
	}
	r.loaded = true
	r.idle.Store(true)
	idleFrom := r.now()
	defer func() {
		r.idle.Store(false)
		r.mu.Lock()
		r.idles = append(r.idles, span{idleFrom, r.now()})
		r.mu.Unlock()
	}()
	began := time.Now()
	l := r.leader()
	value := strings.Repeat("v", 100)
	put := func(ctx context.Context, nd *node, key string) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+nd.http+"/v1/cache/"+key, strings.NewReader(value))
		if err != nil {
			return err
		}
		resp, err := loadClient.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s %s", nd.id, resp.Status, strings.TrimSpace(string(b)))
		}
		return nil
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	const writers = 192
	errs := make(chan error, writers)
	ctx, cancel := context.WithTimeout(r.t.Context(), 5*time.Minute)
	defer cancel()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 3))
			for {
				i := next.Add(1) - 1
				if i >= chaosEntries || ctx.Err() != nil {
					return
				}
				// A write that fails is tried again, the last time
				// through any node.
				key := fmt.Sprintf("e%06d", i)
				var err error
				for attempt, nd := range []*node{l, l, r.pick(rng, "")} {
					if attempt > 0 {
						time.Sleep(200 * time.Millisecond)
					}
					if err = put(ctx, nd, key); err == nil {
						break
					}
				}
				if err != nil {
					errs <- fmt.Errorf("write %s: %w", key, err)
					cancel()
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		r.t.Fatal(err)
	}
	r.t.Logf("wrote %d cache entries through %s in %s", chaosEntries, l.id, time.Since(began).Round(100*time.Millisecond))
}

// joinWithEntries starts a node beyond the cluster's n, joined to the
// others, once the cache holds chaosEntries entries, and waits until it
// is a raft server (a voter or not, as the leader decides) that serves a
// linearizable read and a tool call. It then
// leaves cleanly, so the later faults and checks see the cluster of n.
func (r *chaosRun) joinWithEntries() {
	c := r.c
	r.joined++
	nn := newNode(r.t, fmt.Sprintf("node%d", len(c.nodes)+r.joined), slices.Clone(c.nodes[0].extra)...)
	r.extra = append(r.extra, nn)
	began := time.Now()
	nn.start()
	all := append(slices.Clone(c.nodes), nn)
	r.waitMembers(120*time.Second, all, nodeIDs(all)...)
	member := time.Since(began)
	value := strings.Repeat("v", 100)
	waitFor(r.t, 60*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, key := range []string{"e000000", fmt.Sprintf("e%06d", chaosEntries-1)} {
			code, body, err := nn.get(ctx, key, "linearizable")
			if err != nil || code != http.StatusOK || body != value {
				return fmt.Errorf("linearizable get %s through %s: %d %.40q %v", key, nn.id, code, body, err)
			}
		}
		return nil
	})
	cl := mcpgoClient(r.t, nn.mcpURL(), legacy)
	waitFor(r.t, 30*time.Second, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		text, _, err := callTool(ctx, cl, "pinned_echo", map[string]any{"text": "joined"})
		if err != nil || text != "joined" {
			return fmt.Errorf("pinned_echo through %s: %q %v", nn.id, text, err)
		}
		return nil
	})
	r.t.Logf("%s joined with %d entries: a raft server after %s, serving after %s", nn.id, chaosEntries,
		member.Round(100*time.Millisecond), time.Since(began).Round(100*time.Millisecond))
	cl.Close()

	code, stdout, stderr := runCLI(r.t, "leave", "--http-addr", nn.http)
	if code != 0 {
		r.t.Errorf("leave of %s: exit %d, %s %s", nn.id, code, stdout, stderr)
	}
	if code, ok := nn.wait(30 * time.Second); !ok || code != 0 {
		r.t.Errorf("%s after leave: exited=%v code=%d", nn.id, ok, code)
	}
}
