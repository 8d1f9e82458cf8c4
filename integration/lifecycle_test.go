package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// steadyCalls calls tool through every node in vias from workers
// goroutines until stop is closed; it counts successes and failures.
type steadyCalls struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	errs       []string
	ranOn      map[string]int
	wg         sync.WaitGroup
	stop       chan struct{}
}

func startSteadyCalls(t *testing.T, vias []*node, tool string, args map[string]any, workers int) *steadyCalls {
	s := &steadyCalls{stop: make(chan struct{}), ranOn: map[string]int{}}
	for w := range workers {
		cl := mcpgoClient(t, vias[w%len(vias)].mcpURL(), legacy)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			for i := 0; ; i++ {
				select {
				case <-s.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				_, ranOn, err := callTool(ctx, cl, tool, args)
				cancel()
				s.mu.Lock()
				if err != nil {
					s.failed.Add(1)
					s.errs = append(s.errs, fmt.Sprintf("worker %d call %d: %v", w, i, err))
				} else {
					s.ok.Add(1)
					s.ranOn[ranOn]++
				}
				s.mu.Unlock()
			}
		}()
	}
	return s
}

func (s *steadyCalls) finish() {
	close(s.stop)
	s.wg.Wait()
}

// waitCalls waits until n more calls have succeeded.
func (s *steadyCalls) waitCalls(t *testing.T, n int64) {
	t.Helper()
	target := s.ok.Load() + n
	waitFor(t, 60*time.Second, func() error {
		if got := s.ok.Load(); got < target {
			return fmt.Errorf("%d of %d calls", got, target)
		}
		return nil
	})
}

// Acceptance 5.5: SIGTERM the node that holds a replicas-1 tool and leads
// raft, during a steady stream of calls through the other nodes: no call
// fails, the tool gets a new holder, leadership moves, and the node exits 0
// within the grace period.
func TestDrainLeaderHolder(t *testing.T) {
	c := newProviderCluster(t, 3, pinnedProvider, "--drain-grace", "10s")
	holder := c.node(c.nodes[0].holders(t, "pinned_sleep", 1)[0])
	// Make the holder the leader too, by moving leadership until it is.
	waitFor(t, 30*time.Second, func() error {
		st, err := holder.status()
		if err != nil {
			return err
		}
		if st.Leader.ID == holder.id {
			return nil
		}
		leader := c.node(st.Leader.ID)
		code, body, err := leader.do(context.Background(), "POST", "/v1/agent/transfer-leadership?to="+holder.id, "")
		if err != nil || code != 200 {
			return fmt.Errorf("transfer: %d %s %v", code, body, err)
		}
		return fmt.Errorf("leader was %s", st.Leader.ID)
	})
	others := c.except(holder.id)
	calls := startSteadyCalls(t, others, "pinned_sleep", map[string]any{"ms": 50}, 6)
	calls.waitCalls(t, 40)

	start := time.Now()
	holder.signal(syscall.SIGTERM)
	code, exited := holder.wait(15 * time.Second)
	drained := time.Since(start)
	if !exited || code != 0 {
		t.Fatalf("holder after SIGTERM: exited=%v code=%d", exited, code)
	}
	if drained > 10*time.Second {
		t.Fatalf("drain took %s, grace is 10s", drained)
	}
	calls.waitCalls(t, 40)
	calls.finish()
	if n := calls.failed.Load(); n != 0 {
		t.Fatalf("%d of %d calls failed:\n%s", n, n+calls.ok.Load(), strings.Join(calls.errs, "\n"))
	}
	newHolder := others[0].holders(t, "pinned_sleep", 1)[0]
	if newHolder == holder.id {
		t.Fatal("the drained node still holds the tool")
	}
	st, err := others[0].status()
	if err != nil || st.Leader.ID == holder.id || st.Leader.ID == "" {
		t.Fatalf("leader after the drain: %q %v", st.Leader.ID, err)
	}
	if !strings.Contains(holder.log(), "drained") {
		t.Fatal("the node did not log its drain")
	}
	t.Logf("SIGTERM of leader+holder %s: exited 0 after %s; %d calls, none failed; new holder %s, new leader %s",
		holder.id, drained.Round(time.Millisecond), calls.ok.Load(), newHolder, st.Leader.ID)
}
