package fsm

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// BenchmarkStateAtScale builds the replicated state of a cluster of n
// members, each offering 10 providers that run everywhere and 10 with
// replicas: 3, every provider with 10 tools of a 500-byte definition, and
// reports its size and the cost of the commands that grow with n.
// docs/scaling.md records the figures:
//
//	go test -run '^$' -bench StateAtScale -benchtime 1x ./fsm/
func BenchmarkStateAtScale(b *testing.B) {
	spec := json.RawMessage(`{"description":"` + strings.Repeat("d", 450) + `"}`)
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprintf("members=%d", n), func(b *testing.B) {
			for range b.N {
				f := newTestFSM(b)
				var provs []Provider
				for p := range 20 {
					r := 0
					if p >= 10 {
						r = 3
					}
					provs = append(provs, Provider{Name: fmt.Sprintf("p%02d", p), Replicas: r})
				}
				var declare time.Duration
				for i := range n {
					id := fmt.Sprintf("node-%04d", i)
					f.apply(&Command{Type: TypeNodeRegister, Node: &Node{ID: id, HTTPAddr: "10.0.0.1:8700", RPCAddr: "10.0.0.1:8701", GossipAddr: "10.0.0.1:8702"}})
					t0 := time.Now()
					f.apply(&Command{Type: TypeProviders, NodeID: id, Providers: provs})
					declare += time.Since(t0)
				}
				var assignBytes int
				for _, p := range provs {
					var tools []Tool
					for k := range 10 {
						tools = append(tools, Tool{Name: fmt.Sprintf("%s_t%d", p.Name, k), Spec: spec})
					}
					f.apply(&Command{Type: TypeCatalogPut, Provider: p.Name, Tools: tools})
					prov, _ := f.Provider(p.Name)
					holders := prov.Nodes
					if p.Replicas > 0 {
						holders = holders[:p.Replicas]
					}
					cmd := &Command{Type: TypeAssign, Assignment: &Assignment{Provider: p.Name, Holders: holders}}
					if p.Replicas == 0 {
						assignBytes = len(mustEncode(b, cmd))
					}
					f.apply(cmd)
				}
				snap, err := f.Snapshot()
				if err != nil {
					b.Fatal(err)
				}
				var sink memSink
				t0 := time.Now()
				if err := snap.Persist(&sink); err != nil {
					b.Fatal(err)
				}
				persist := time.Since(t0)
				b.ReportMetric(float64(sink.Len())/1024, "snapshot-KiB")
				b.ReportMetric(float64(assignBytes)/1024, "everywhere-assign-KiB")
				b.ReportMetric(float64(declare.Microseconds())/float64(n), "µs/declare")
				b.ReportMetric(float64(persist.Milliseconds()), "ms/persist")
				b.ReportMetric(0, "ns/op")
			}
		})
	}
}
