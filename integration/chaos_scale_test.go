package integration

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// scaleVoters is the default voter bound: a chaos cluster larger than it
// runs five voters and non-voters, and its own set of faults.
const scaleVoters = 5

// newScaleProviderCluster starts n nodes with --bootstrap-expect 3 whose
// config file declares providers, and waits for five healthy voters.
func newScaleProviderCluster(t *testing.T, n int, providers string, extra ...string) *testCluster {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "providers.yaml")
	if err := os.WriteFile(cfg, []byte("providers:\n"+providers), 0o644); err != nil {
		t.Fatal(err)
	}
	c := newScaleCluster(t, n, nil, append([]string{"--config", cfg}, extra...)...)
	c.waitSuffrage(120*time.Second, c.nodes, scaleVoters, n-scaleVoters)
	return c
}

// suffrageNow returns the nodes that are voters and non-voters in the
// leader's configuration, leader excluded from both.
func (r *chaosRun) suffrageNow() (voters, nonvoters []*node) {
	l := r.leader()
	st, err := l.status()
	if err != nil {
		r.t.Fatalf("status of leader %s: %v", l.id, err)
	}
	for id, s := range suffrages(st) {
		nd := r.c.node(id)
		if nd == nil || id == l.id {
			continue
		}
		if s == "Voter" {
			voters = append(voters, nd)
		} else {
			nonvoters = append(nonvoters, nd)
		}
	}
	return voters, nonvoters
}

// nemesisScale is the fault set of a cluster with non-voters: kills of a
// voter, of a non-voter, of the leader and of the tool's holder, and two
// voters down past the dead-server timeout, replaced by non-voters while
// they are gone and back as non-voters after.
func (r *chaosRun) nemesisScale() {
	c := r.c
	kill := func(nodes ...*node) {
		for _, v := range nodes {
			v.kill()
		}
	}
	restart := func(nodes ...*node) {
		for _, v := range nodes {
			v.start()
		}
	}
	r.fault("kill voter", func() {
		voters, _ := r.suffrageNow()
		r.outage(3*time.Second, kill, restart, voters[0])
	})
	r.fault("kill non-voter", func() {
		_, nonvoters := r.suffrageNow()
		r.outage(3*time.Second, kill, restart, nonvoters[0])
	})
	r.fault("kill leader", func() { r.outage(3*time.Second, kill, restart, r.leader()) })
	r.fault("kill tool holder", func() {
		r.outage(3*time.Second, kill, restart, c.node(c.except()[0].holders(r.t, "pinned_echo", 1)[0]))
	})
	r.fault("two voters down past the dead-server timeout", func() {
		voters, _ := r.suffrageNow()
		down := voters[:2]
		r.setDown(true, down...)
		kill(down...)
		// Non-voters take the two votes while they are gone.
		r.c.waitSuffrage(60*time.Second, c.except(down[0].id, down[1].id), scaleVoters, len(c.nodes)-scaleVoters-2)
		r.hold(chaosDeadServerTimeout + 5*time.Second)
		restart(down...)
		r.waitReady(60*time.Second, down...)
		r.setDown(false, down...)
	})
}
