package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mark3labs/mcp-go/client"
	"github.com/mark3labs/mcp-go/client/transport"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/mcp"
)

var benchClient = &http.Client{
	Timeout:   30 * time.Second,
	Transport: withToken(&http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 128, IdleConnTimeout: time.Minute}),
}

func benchPut(ctx context.Context, nd *node, key, value string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+nd.http+"/v1/cache/"+key, strings.NewReader(value))
	if err != nil {
		return err
	}
	resp, err := benchClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("put: %s", resp.Status)
	}
	return nil
}

func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p * float64(len(sorted)-1))
	return sorted[i]
}

// BenchmarkClusterWrite measures acknowledged cache sets per second on a
// 3-node loopback cluster (fsync on), with writers spread over all nodes
// so two thirds of the writes are forwarded to the leader.
//
//	make bench, or: go test -run '^$' -bench ClusterWrite -benchtime 3000x ./integration/
func BenchmarkClusterWrite(b *testing.B) {
	c := newCluster(b, 3, "--log-level", "warn")
	c.waitStable(30*time.Second, c.nodes, c.ids()...)
	for _, writers := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) { benchWrites(b, c.nodes, writers) })
	}
}

// BenchmarkVoterCount compares writes on nine nodes with three voters (and
// six non-voters) against nine voters: every write waits for a majority of
// the voters, and the leader replicates to every server either way.
func BenchmarkVoterCount(b *testing.B) {
	for _, voters := range []int{3, 9} {
		b.Run(fmt.Sprintf("voters=%d", voters), func(b *testing.B) {
			c := newScaleCluster(b, 9, nil, "--log-level", "warn", "--max-voters", fmt.Sprint(voters))
			st := c.waitSuffrage(120*time.Second, c.nodes, voters, 9-voters)
			leader := c.node(st.Node)
			for _, writers := range []int{1, 16} {
				b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) { benchWrites(b, []*node{leader}, writers) })
			}
		})
	}
}

// benchWrites runs b.N cache sets of 100 bytes from writers goroutines,
// round-robin over nodes, and reports throughput and latency.
func benchWrites(b *testing.B, nodes []*node, writers int) {
	value := strings.Repeat("v", 100)
	ctx := context.Background()
	var next atomic.Int64
	lat := make([][]time.Duration, writers)
	var failed atomic.Int64
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
				if err := benchPut(ctx, nodes[int(i)%len(nodes)], fmt.Sprintf("w%d-%d", writers, i), value); err != nil {
					failed.Add(1)
					continue
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
	b.ReportMetric(float64(percentile(all, 0.50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(percentile(all, 0.99).Microseconds()), "p99-µs")
	if f := failed.Load(); f > 0 {
		b.Errorf("%d sets failed", f)
	}
}

// BenchmarkLeaderFailover measures, per iteration, the time from SIGKILL of
// the leader to the first acknowledged write through a survivor (default
// raft timings: 1 s heartbeat and election timeouts).
//
//	go test -run '^$' -bench LeaderFailover -benchtime 5x ./integration/
func BenchmarkLeaderFailover(b *testing.B) {
	for _, timing := range []struct{ name, timeout string }{{"raft=1s", "1s"}, {"raft=500ms", "500ms"}} {
		b.Run(timing.name, func(b *testing.B) {
			c := newCluster(b, 3, "--log-level", "warn", "--raft-heartbeat-timeout", timing.timeout, "--raft-election-timeout", timing.timeout)
			c.waitStable(30*time.Second, c.nodes, c.ids()...)
			var total, worst time.Duration
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				leader := c.waitStable(60*time.Second, c.nodes, c.ids()...)
				victim := c.node(leader)
				survivor := c.except(leader)[i%2]
				b.StartTimer()
				killedAt := time.Now()
				victim.kill()
				for attempt := 0; ; attempt++ {
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					err := benchPut(ctx, survivor, fmt.Sprintf("failover-%d", i), "x")
					cancel()
					if err == nil {
						break
					}
					if time.Since(killedAt) > 60*time.Second {
						b.Fatalf("no write succeeded within 60s of killing the leader: %v", err)
					}
				}
				took := time.Since(killedAt)
				b.StopTimer()
				total += took
				worst = max(worst, took)
				victim.start()
				b.StartTimer()
			}
			b.StopTimer()
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/failover")
			b.ReportMetric(float64(worst.Milliseconds()), "max-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkGossipFailureDetection measures, per iteration, the time from
// SIGKILL of a node until every survivor's gossip marks it failed, for the
// lan (default) and local gossip profiles.
//
//	go test -run '^$' -bench GossipFailureDetection -benchtime 5x ./integration/
func BenchmarkGossipFailureDetection(b *testing.B) {
	for _, profile := range []string{"lan", "local"} {
		b.Run("profile="+profile, func(b *testing.B) {
			c := newCluster(b, 3, "--log-level", "warn", "--gossip-profile", profile, "--dead-server-timeout", "10m")
			c.waitStable(30*time.Second, c.nodes, c.ids()...)
			var total, worst time.Duration
			b.ResetTimer()
			for i := range b.N {
				b.StopTimer()
				victim := c.nodes[i%3]
				others := c.except(victim.id)
				c.waitStable(60*time.Second, c.nodes, c.ids()...)
				b.StartTimer()
				killedAt := time.Now()
				victim.kill()
				for {
					detected := 0
					for _, nd := range others {
						st, err := nd.status()
						if err != nil {
							continue
						}
						for _, m := range st.Members {
							if m.ID == victim.id && m.State == "failed" {
								detected++
							}
						}
					}
					if detected == len(others) {
						break
					}
					if time.Since(killedAt) > 60*time.Second {
						b.Fatal("failure not detected within 60s")
					}
					time.Sleep(20 * time.Millisecond)
				}
				took := time.Since(killedAt)
				b.StopTimer()
				total += took
				worst = max(worst, took)
				victim.start()
				b.StartTimer()
			}
			b.StopTimer()
			b.ReportMetric(float64(total.Milliseconds())/float64(b.N), "ms/detection")
			b.ReportMetric(float64(worst.Milliseconds()), "max-ms")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// BenchmarkToolCall compares, in one run with the same client, tool and
// concurrency: (a) a bare mcp-go server with mcpcluster's built-in tools,
// (b) a call that runs on the cluster node the client talks to, and (c) a
// call forwarded to the tool's holder on another node.
//
//	go test -run '^$' -bench ToolCall -benchtime 20000x ./integration/
func BenchmarkToolCall(b *testing.B) {
	bare := startBareServer(b)
	c := newProviderCluster(b, 3, pinnedProvider, "--log-level", "warn")
	holder := c.node(c.nodes[0].holders(b, "pinned_echo", 1)[0])
	via := c.except(holder.id)[0]
	targets := []struct{ name, url, tool string }{
		{"bare", bare, "echo"},
		{"local", via.mcpURL(), "echo"},
		{"forwarded", via.mcpURL(), "pinned_echo"},
	}
	for _, version := range []string{legacy, modern} {
		for _, workers := range []int{1, 16} {
			for _, tg := range targets {
				b.Run(fmt.Sprintf("%s/clients=%d/%s", version, workers, tg.name), func(b *testing.B) {
					benchCalls(b, tg.url, tg.tool, version, workers)
				})
			}
		}
	}
}

// startBareServer serves the built-in tools from a plain mcp-go server on
// loopback, in this process.
func startBareServer(b *testing.B) string {
	s := server.NewMCPServer("bare", "1", server.WithToolCapabilities(true))
	s.AddTools(mcp.BuiltinTools(nil)...)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: server.NewStreamableHTTPServer(s), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	b.Cleanup(func() { srv.Close() })
	return "http://" + ln.Addr().String() + "/mcp"
}

// benchCalls runs b.N calls of tool over workers concurrent mcp-go clients
// and reports calls/s and latency percentiles.
func benchCalls(b *testing.B, url, tool, version string, workers int) {
	clients := make([]*client.Client, workers)
	for i := range clients {
		clients[i] = mcpgoClient(b, url, version, transport.WithHTTPBasicClient(benchClient))
	}
	var next atomic.Int64
	lat := make([][]time.Duration, workers)
	var failed atomic.Int64
	var wg sync.WaitGroup
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if _, _, err := callTool(ctx, clients[w], tool, map[string]any{"text": "hello"}); err != nil {
					failed.Add(1)
					continue
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
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "calls/s")
	b.ReportMetric(float64(percentile(all, 0.50).Microseconds()), "p50-µs")
	b.ReportMetric(float64(percentile(all, 0.99).Microseconds()), "p99-µs")
	b.ReportMetric(0, "ns/op")
	if f := failed.Load(); f > 0 {
		b.Errorf("%d calls failed", f)
	}
}

// BenchmarkBackpressure drives one node with 16 slots and a queue of 16 at
// its limit and at twice it (closed loop, 20 ms calls): admitted calls/s,
// the p99 of admitted calls, and how many were refused with 429.
//
//	go test -run '^$' -bench Backpressure -benchtime 2000x ./integration/
func BenchmarkBackpressure(b *testing.B) {
	n := newNode(b, "solo", "--bootstrap-expect", "1", "--max-concurrent", "16", "--max-queue", "16", "--log-level", "warn")
	n.start()
	c := &testCluster{t: b, nodes: []*node{n}}
	c.waitStable(30*time.Second, c.nodes, "solo")
	for _, clients := range []int{16, 32, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			var next, refused atomic.Int64
			lat := make([][]time.Duration, clients)
			var wg sync.WaitGroup
			ctx := context.Background()
			b.ResetTimer()
			start := time.Now()
			for w := range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						t0 := time.Now()
						code, _, _, err := postCall(ctx, benchClient, n, "sleep", map[string]any{"ms": 20})
						switch {
						case err == nil && code == 200:
							lat[w] = append(lat[w], time.Since(t0))
						case err == nil && code == 429:
							refused.Add(1)
						default:
							b.Errorf("call: %d %v", code, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			all := slices.Concat(lat...)
			slices.Sort(all)
			b.ReportMetric(float64(len(all))/elapsed.Seconds(), "admitted/s")
			b.ReportMetric(float64(percentile(all, 0.99).Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(refused.Load())/elapsed.Seconds(), "refused/s")
			b.ReportMetric(0, "ns/op")
		})
	}
}
