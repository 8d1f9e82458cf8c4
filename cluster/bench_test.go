package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkCacheSet measures acknowledged cache sets through the node Go
// API on an in-process 3-node cluster (real raft, boltdb with fsync, TCP
// on loopback), writers spread over all nodes so two thirds are forwarded.
//
//	go test -run '^$' -bench CacheSet -benchtime 20000x ./cluster/
func BenchmarkCacheSet(b *testing.B) {
	nodes := newTestCluster(b, 3)
	value := []byte(strings.Repeat("v", 100))
	for _, writers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			var next atomic.Int64
			lat := make([][]time.Duration, writers)
			var wg sync.WaitGroup
			b.ResetTimer()
			start := time.Now()
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1) - 1
						if i >= int64(b.N) {
							return
						}
						t0 := time.Now()
						if _, err := nodes[int(i)%3].CacheSet(context.Background(), fmt.Sprintf("w%d-%d", writers, i), value, SetOptions{}); err != nil {
							b.Error(err)
							return
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			all := slices.Concat(lat...)
			slices.Sort(all)
			b.ReportMetric(float64(len(all))/elapsed.Seconds(), "sets/s")
			b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkCacheGet measures reads of one key at each consistency level
// with 16 concurrent readers, on a follower and on the leader.
//
//	go test -run '^$' -bench CacheGet -benchtime 50000x ./cluster/
func BenchmarkCacheGet(b *testing.B) {
	nodes := newTestCluster(b, 3)
	leader := waitStable(b, nodes, 3)
	var follower *Node
	for _, nd := range nodes {
		if nd != leader {
			follower = nd
			break
		}
	}
	if _, err := leader.CacheSet(context.Background(), "k", []byte("value"), SetOptions{}); err != nil {
		b.Fatal(err)
	}
	// Stale reads on the follower need the write applied there first.
	if _, err := follower.ReadBarrier(context.Background(), Default); err != nil {
		b.Fatal(err)
	}
	for _, on := range []struct {
		name string
		n    *Node
	}{{"follower", follower}, {"leader", leader}} {
		for _, level := range []Consistency{Stale, Default, Linearizable} {
			b.Run(fmt.Sprintf("%s/%s", on.name, level), func(b *testing.B) {
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				start := time.Now()
				for range 16 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						for next.Add(1) <= int64(b.N) {
							if _, _, err := on.n.CacheGet(context.Background(), "k", level); err != nil {
								b.Error(err)
								return
							}
						}
					}()
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "gets/s")
			})
		}
	}
}
