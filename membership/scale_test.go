package membership

import (
	"fmt"
	"testing"
	"time"
)

// BenchmarkGossipAtScale measures, with the production "lan" timings and
// n in-process members on loopback, how long an update of one member's
// metadata takes to reach every member, and how long until every member
// sees a member that stopped without leaving as failed. docs/scaling.md
// records the figures:
//
//	go test -run '^$' -bench GossipAtScale -benchtime 3x ./membership/
func BenchmarkGossipAtScale(b *testing.B) {
	for _, n := range []int{10, 50, 100} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			nodes := make([]*Membership, 0, n)
			defer func() {
				for _, m := range nodes {
					_ = m.Shutdown()
				}
			}()
			for i := range n {
				cfg := testConfig(fmt.Sprintf("n%d", i))
				cfg.Profile = "lan"
				if i > 0 {
					cfg.Join = []string{nodes[0].GossipAddr()}
				}
				m, err := New(cfg)
				if err != nil {
					b.Fatal(err)
				}
				nodes = append(nodes, m)
			}
			if err := pollAll(60*time.Second, nodes, func(o *Membership) bool { return len(o.Members()) == n }); err != nil {
				b.Fatal(err)
			}
			var update, detect time.Duration
			b.ResetTimer()
			for i := range b.N {
				src := nodes[1+i%(n-1)]
				start := time.Now()
				if err := src.UpdateMeta(func(m *Meta) { m.InFlight = i + 1 }); err != nil {
					b.Fatal(err)
				}
				if err := pollAll(60*time.Second, nodes, func(o *Membership) bool {
					mem, ok := o.Member(src.LocalID())
					return ok && mem.InFlight == i+1
				}); err != nil {
					b.Fatal(err)
				}
				update += time.Since(start)
			}
			// Failure detection, once: the stopped member is gone for good.
			victim := nodes[n-1]
			nodes = nodes[:n-1]
			start := time.Now()
			_ = victim.Shutdown()
			if err := pollAll(120*time.Second, nodes, func(o *Membership) bool {
				mem, ok := o.Member(victim.LocalID())
				return ok && mem.State == StateFailed
			}); err != nil {
				b.Fatal(err)
			}
			detect = time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(update.Milliseconds())/float64(b.N), "ms/update")
			b.ReportMetric(float64(detect.Milliseconds()), "ms/failure-seen-by-all")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// pollAll polls until ok holds for every member in nodes.
func pollAll(timeout time.Duration, nodes []*Membership, ok func(*Membership) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		all := true
		for _, o := range nodes {
			if !ok(o) {
				all = false
				break
			}
		}
		if all {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not every member got there within %s", timeout)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}
