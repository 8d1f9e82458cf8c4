package integration

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/mcpcluster/mcpcluster/cluster"
)

// Scale out: past the voter bound, nodes serve as raft non-voters. These
// tests start larger clusters of real processes with --bootstrap-expect 3.

// newScaleCluster starts n nodes that bootstrap with --bootstrap-expect 3;
// per(i) gives node i+1 its own extra flags.
func newScaleCluster(t testing.TB, n int, per func(i int) []string, extra ...string) *testCluster {
	t.Helper()
	c := &testCluster{t: t}
	for i := range n {
		c.nodes = append(c.nodes, newNode(t, fmt.Sprintf("node%d", i+1)))
	}
	for i, nd := range c.nodes {
		nd.extra = append(nd.extra, "--bootstrap-expect", "3", "--server-stabilization-time", "1s")
		nd.extra = append(nd.extra, extra...)
		if per != nil {
			nd.extra = append(nd.extra, per(i)...)
		}
		nd.extra = append(nd.extra, c.joinFlags()...)
	}
	c.startAll()
	return c
}

// waitSuffrage waits until every node in nodes is ready and follows one
// leader whose configuration holds exactly the wanted numbers of healthy
// voters and of non-voters, and returns the leader's status.
func (c *testCluster) waitSuffrage(timeout time.Duration, nodes []*node, voters, nonvoters int) cluster.Status {
	c.t.Helper()
	var lst cluster.Status
	waitFor(c.t, timeout, func() error {
		sts, err := oneLeader(nodes)
		if err != nil {
			return err
		}
		leader := sts[0].Leader.ID
		lst = cluster.Status{}
		for _, st := range sts {
			if st.Raft.State == "Leader" {
				lst = st
			}
		}
		if lst.Node != leader {
			return fmt.Errorf("leader %q not among the nodes polled", leader)
		}
		v, nv := 0, 0
		for _, s := range lst.Servers {
			switch {
			case s.Suffrage == "Voter" && s.Healthy:
				v++
			case s.Suffrage == "Nonvoter":
				nv++
			}
		}
		if v != voters || nv != nonvoters {
			return fmt.Errorf("leader %s has %d healthy voters and %d non-voters, want %d and %d: %+v", leader, v, nv, voters, nonvoters, lst.Servers)
		}
		return nil
	})
	return lst
}

// suffrages maps node id to suffrage in st's configuration.
func suffrages(st cluster.Status) map[string]string {
	m := map[string]string{}
	for _, s := range st.Servers {
		m[s.ID] = s.Suffrage
	}
	return m
}

// Acceptance 1 and 2: seven nodes settle to five voters and two
// non-voters, every node serves calls and linearizable reads; two voters
// killed are replaced by the non-voters while writes go on.
func TestScaleOutVoterSet(t *testing.T) {
	c := newScaleCluster(t, 7, nil, "--dead-server-timeout", "4s")
	st := c.waitSuffrage(90*time.Second, c.nodes, 5, 2)
	roles := suffrages(st)

	// Every node answers a tools/call and a linearizable read of a value
	// written through another node.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, nd := range c.nodes {
		writer := c.nodes[(i+1)%len(c.nodes)]
		key, value := "k-"+nd.id, "via-"+writer.id
		writer.mustPut(key, value)
		if code, body, err := nd.get(ctx, key, "linearizable"); err != nil || code != http.StatusOK || body != value {
			t.Errorf("%s (%s) reads %s: %d %q %v", nd.id, roles[nd.id], key, code, body, err)
		}
		if code, body := rawMCP(t, nd, http.MethodPost, "", "application/json", echoCall); code != http.StatusOK || !strings.Contains(body, "still here") {
			t.Errorf("%s (%s): tools/call: %d %s", nd.id, roles[nd.id], code, body)
		}
	}

	// Kill two voters that do not lead; a client on a survivor keeps writing.
	var victims []*node
	for _, nd := range c.nodes {
		if roles[nd.id] == "Voter" && nd.id != st.Node && len(victims) < 2 {
			victims = append(victims, nd)
		}
	}
	var survivor *node
	for _, nd := range c.nodes {
		if nd.id != victims[0].id && nd.id != victims[1].id {
			survivor = nd
			break
		}
	}
	stop := make(chan struct{})
	gaps := make(chan time.Duration, 1)
	go func() {
		cl := &http.Client{Timeout: 2 * time.Second, Transport: withToken(nil)}
		last, worst := time.Now(), time.Duration(0)
		for i := 0; ; i++ {
			select {
			case <-stop:
				gaps <- max(worst, time.Since(last))
				return
			default:
			}
			if _, err := kvDo(cl, survivor, kvInput{Op: "put", Key: "during", Value: fmt.Sprint(i)}); err == nil {
				worst = max(worst, time.Since(last))
				last = time.Now()
			}
		}
	}()
	killed := time.Now()
	for _, v := range victims {
		v.kill()
	}
	var alive []*node
	for _, nd := range c.nodes {
		if nd != victims[0] && nd != victims[1] {
			alive = append(alive, nd)
		}
	}
	st = c.waitSuffrage(60*time.Second, alive, 5, 0)
	restored := time.Since(killed)
	close(stop)
	gap := <-gaps
	t.Logf("voters back to 5 healthy %s after killing %s and %s; longest write gap through %s: %s",
		restored.Round(100*time.Millisecond), victims[0].id, victims[1].id, survivor.id, gap.Round(10*time.Millisecond))
	// The dead-server timeout then removes the dead voters.
	waitFor(t, 30*time.Second, func() error {
		st, err := survivor.status()
		if err != nil {
			return err
		}
		if len(st.Servers) != 5 {
			return fmt.Errorf("configuration %+v", st.Servers)
		}
		return nil
	})
	if gap > 10*time.Second {
		t.Errorf("writes through %s stopped for %s", survivor.id, gap)
	}
}

// Acceptance 3 and 5: voters spread over zones; a pinned non-voter holds
// a replicas: 1 provider and calls through voters reach it.
func TestVotersSpreadOverZones(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "only6.yaml")
	if err := os.WriteFile(cfg, []byte("providers:\n  - name: only6\n    type: builtin\n    prefix: only6_\n    replicas: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	zones := []string{"a", "a", "b", "b", "c", "c"}
	c := newScaleCluster(t, 6, func(i int) []string {
		f := []string{"--zone", zones[i]}
		if i == 5 {
			f = append(f, "--voter=false", "--config", cfg)
		}
		return f
	}, "--max-voters", "3")
	st := c.waitSuffrage(90*time.Second, c.nodes, 3, 3)
	// The spread may take a swap or two after the first three voters.
	waitFor(t, 30*time.Second, func() error {
		var err error
		if st, err = c.nodes[0].status(); err != nil {
			return err
		}
		var vz []string
		for _, s := range st.Servers {
			if s.Suffrage == "Voter" {
				vz = append(vz, s.Zone)
			}
		}
		sort.Strings(vz)
		if strings.Join(vz, ",") != "a,b,c" {
			return fmt.Errorf("voters in zones %v: %+v", vz, st.Servers)
		}
		return nil
	})
	if r := suffrages(st)["node6"]; r != "Nonvoter" {
		t.Errorf("node6 started with --voter=false is %q", r)
	}

	// node6 alone offers only6_echo; a voter forwards the call to it.
	if got := c.nodes[0].holders(t, "only6_echo", 1); got[0] != "node6" {
		t.Fatalf("only6_echo held by %v", got)
	}
	for _, nd := range c.nodes[:5] {
		if suffrages(st)[nd.id] != "Voter" {
			continue
		}
		cl := mcpgoClient(t, nd.mcpURL(), modern)
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		text, ranOn, err := callTool(ctx, cl, "only6_echo", map[string]any{"text": "to the non-voter"})
		cancel()
		if err != nil || text != "to the non-voter" || ranOn != "node6" {
			t.Errorf("via voter %s: %q ran on %q, %v", nd.id, text, ranOn, err)
		}
	}
}

// Acceptance 4: a node pinned with --voter=false stays non-voting even
// when a voter is missing and it is the only candidate; the cluster runs
// with fewer voters and its status says so.
func TestPinnedNonvoterStaysNonvoting(t *testing.T) {
	c := newScaleCluster(t, 4, func(i int) []string {
		if i == 3 {
			return []string{"--voter=false"}
		}
		return nil
	}, "--max-voters", "3")
	st := c.waitSuffrage(60*time.Second, c.nodes, 3, 1)
	if r := suffrages(st)["node4"]; r != "Nonvoter" {
		t.Fatalf("node4 is %q", r)
	}
	var victim *node
	for _, nd := range c.nodes[:3] {
		if nd.id != st.Node {
			victim = nd
			break
		}
	}
	victim.kill()
	alive := c.except(victim.id)
	st = c.waitSuffrage(30*time.Second, alive, 2, 1)
	waitFor(t, 15*time.Second, func() error {
		var err error
		if st, err = alive[0].status(); err != nil {
			return err
		}
		if st.Voters.Warning == "" || !strings.Contains(st.Voters.Warning, "node4") {
			return fmt.Errorf("voters %+v", st.Voters)
		}
		return nil
	})
	// Give the leader several reconcile passes: node4 must still not vote.
	node4 := c.node("node4")
	deadline := time.Now().Add(3 * time.Second)
	for time.Now().Before(deadline) {
		st, err := node4.status()
		if err == nil && suffrages(st)["node4"] == "Voter" {
			t.Fatalf("node4 promoted: %+v", st.Servers)
		}
		time.Sleep(200 * time.Millisecond)
	}
	code, out, _ := runCLI(t, "status", "--http-addr", alive[0].http)
	if code != 0 || !strings.Contains(out, "pinned non-voting") {
		t.Errorf("mcpcluster status: %d\n%s", code, out)
	}
	node4.mustPut("still", "writable")
}

// Nine processes: five voters and four non-voters; every node serves; the
// leader and a non-voter die, a non-voter takes the lost vote, and writes
// and calls go on through every survivor.
func TestNineNodes(t *testing.T) {
	c := newScaleCluster(t, 9, nil, "--dead-server-timeout", "4s")
	st := c.waitSuffrage(120*time.Second, c.nodes, 5, 4)
	roles := suffrages(st)
	var nonvoter *node
	for _, nd := range c.nodes {
		if roles[nd.id] == "Nonvoter" {
			nonvoter = nd
			break
		}
	}
	leader := c.node(st.Node)
	leader.kill()
	nonvoter.kill()
	alive := c.except(leader.id, nonvoter.id)
	st = c.waitSuffrage(60*time.Second, alive, 5, 2)
	t.Logf("after killing leader %s and non-voter %s: leader %s, voters %v", leader.id, nonvoter.id, st.Node, voters(st))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i, nd := range alive {
		writer := alive[(i+3)%len(alive)]
		key, value := "nine-"+nd.id, "via-"+writer.id
		writer.mustPut(key, value)
		if code, body, err := nd.get(ctx, key, "linearizable"); err != nil || code != http.StatusOK || body != value {
			t.Errorf("%s reads %s: %d %q %v", nd.id, key, code, body, err)
		}
		if code, body := rawMCP(t, nd, http.MethodPost, "", "application/json", echoCall); code != http.StatusOK || !strings.Contains(body, "still here") {
			t.Errorf("%s: tools/call: %d %s", nd.id, code, body)
		}
	}
}
