package membership

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

const waitTimeout = 30 * time.Second

// waitFor polls fn until it returns nil or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: %v", timeout, err)
		}
		time.Sleep(20 * time.Millisecond) // polling interval, not synchronisation
	}
}

func testLogger() *slog.Logger {
	if os.Getenv("MEMBERSHIP_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func testConfig(id string, seeds ...string) Config {
	cfg := DefaultConfig()
	cfg.NodeID = id
	cfg.BindAddr = "127.0.0.1:0"
	cfg.Join = seeds
	cfg.Profile = "local"
	cfg.RetryJoinInterval = 50 * time.Millisecond
	cfg.RejoinInterval = 200 * time.Millisecond
	cfg.Meta = Meta{HTTPAddr: "http-" + id, RPCAddr: "rpc-" + id, Status: StatusRunning, Capacity: 10, Expect: 3}
	cfg.Logger = testLogger()
	return cfg
}

func start(t *testing.T, cfg Config) *Membership {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("new %s: %v", cfg.NodeID, err)
	}
	t.Cleanup(func() {
		if err := m.Shutdown(); err != nil {
			t.Errorf("shutdown %s: %v", cfg.NodeID, err)
		}
	})
	return m
}

// newCluster starts n nodes "n0".."n(n-1)"; all join through n0.
func newCluster(t *testing.T, n int, mutate func(*Config)) []*Membership {
	t.Helper()
	var nodes []*Membership
	for i := range n {
		var cfg Config
		if i == 0 {
			cfg = testConfig("n0")
		} else {
			cfg = testConfig(fmt.Sprintf("n%d", i), nodes[0].GossipAddr())
		}
		if mutate != nil {
			mutate(&cfg)
		}
		nodes = append(nodes, start(t, cfg))
	}
	waitState(t, nodes, nodes, StateAlive)
	return nodes
}

// waitState waits until every observer sees every target in state.
func waitState(t *testing.T, observers, targets []*Membership, state State) {
	t.Helper()
	waitFor(t, waitTimeout, func() error {
		for _, o := range observers {
			for _, tg := range targets {
				if mem, ok := o.Member(tg.LocalID()); !ok || mem.State != state {
					return fmt.Errorf("%s sees %s as %+v (present %v), want %s", o.LocalID(), tg.LocalID(), mem, ok, state)
				}
			}
		}
		return nil
	})
}

// waitEvent reads m's events until one matches.
func waitEvent(t *testing.T, m *Membership, typ EventType, id string, state State) {
	t.Helper()
	timeout := time.After(waitTimeout)
	for {
		select {
		case ev := <-m.Events():
			if ev.Type == typ && ev.Member.ID == id && ev.Member.State == state {
				return
			}
		case <-timeout:
			t.Fatalf("%s: no %s event for %s (%s)", m.LocalID(), typ, id, state)
		}
	}
}

func TestJoinThreeNodes(t *testing.T) {
	t.Parallel()
	nodes := newCluster(t, 3, nil)
	for _, o := range nodes {
		if !o.Joined() {
			t.Errorf("%s: Joined() = false", o.LocalID())
		}
		ms := o.Members()
		if len(ms) != 3 {
			t.Fatalf("%s: %d members, want 3", o.LocalID(), len(ms))
		}
		for i, mem := range ms {
			want := testConfig(nodes[i].LocalID()).Meta
			want.ID = nodes[i].LocalID()
			if mem.Meta != want || mem.GossipAddr != nodes[i].GossipAddr() || mem.State != StateAlive || mem.Since.IsZero() {
				t.Errorf("%s sees %+v, want meta %+v at %s", o.LocalID(), mem, want, nodes[i].GossipAddr())
			}
		}
	}
	if !strings.HasPrefix(nodes[0].GossipAddr(), "127.0.0.1:") || strings.HasSuffix(nodes[0].GossipAddr(), ":0") {
		t.Errorf("GossipAddr = %q", nodes[0].GossipAddr())
	}
}

func TestUpdateMeta(t *testing.T) {
	t.Parallel()
	nodes := newCluster(t, 3, nil)
	err := nodes[1].UpdateMeta(func(m *Meta) { m.InFlight, m.Status, m.ID = 7, StatusStopping, "evil" })
	if err != nil {
		t.Fatal(err)
	}
	if got := nodes[1].LocalMeta(); got.ID != "n1" || got.InFlight != 7 {
		t.Errorf("LocalMeta = %+v", got)
	}
	waitFor(t, waitTimeout, func() error {
		for _, o := range nodes {
			mem, _ := o.Member("n1")
			if mem.ID != "n1" || mem.InFlight != 7 || mem.Status != StatusStopping || mem.HTTPAddr != "http-n1" {
				return fmt.Errorf("%s sees %+v", o.LocalID(), mem.Meta)
			}
		}
		return nil
	})
	waitEvent(t, nodes[0], EventUpdate, "n1", StateAlive)

	err = nodes[1].UpdateMeta(func(m *Meta) { m.HTTPAddr = strings.Repeat("x", 600) })
	if err == nil {
		t.Fatal("oversized meta accepted")
	}
	if got := nodes[1].LocalMeta(); got.HTTPAddr != "http-n1" {
		t.Errorf("oversized meta applied: %q", got.HTTPAddr)
	}
}

func TestLeave(t *testing.T) {
	t.Parallel()
	nodes := newCluster(t, 3, nil)
	if err := nodes[2].Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := nodes[2].Leave(time.Second); err != nil {
		t.Fatalf("second leave: %v", err)
	}
	if nodes[2].Joined() {
		t.Error("Joined() after Leave")
	}
	waitState(t, nodes[:2], nodes[2:], StateLeft)
	waitEvent(t, nodes[0], EventLeave, "n2", StateLeft)
	if err := nodes[2].UpdateMeta(func(m *Meta) { m.InFlight = 1 }); err != nil {
		t.Errorf("update after leave: %v", err)
	}
	if err := nodes[2].Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := nodes[2].Leave(time.Second); err == nil {
		t.Error("leave after shutdown succeeded")
	}
}

func TestShutdownIsFailure(t *testing.T) {
	t.Parallel()
	nodes := newCluster(t, 3, nil)
	if err := nodes[2].Shutdown(); err != nil {
		t.Fatal(err)
	}
	if err := nodes[2].Shutdown(); err != nil {
		t.Fatalf("second shutdown: %v", err)
	}
	for range nodes[2].Events() { // must be closed
	}
	if err := nodes[2].UpdateMeta(func(*Meta) {}); err == nil {
		t.Error("update after shutdown succeeded")
	}
	waitState(t, nodes[:2], nodes[2:], StateFailed)
	waitEvent(t, nodes[1], EventFail, "n2", StateFailed)

	// A peer's push/pull state saying n2 left turns failed into left, but
	// never marks an alive member.
	d := &delegate{m: nodes[1]}
	d.MergeRemoteState([]byte("garbage"), false)
	d.MergeRemoteState([]byte(`["n0","n2","unknown"]`), false)
	waitEvent(t, nodes[1], EventLeave, "n2", StateLeft)
	if mem, _ := nodes[1].Member("n0"); mem.State != StateAlive {
		t.Errorf("n0 is %s", mem.State)
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func TestRetryJoin(t *testing.T) {
	t.Parallel()
	seedAddr := freeAddr(t)
	b := start(t, testConfig("b", seedAddr))
	if b.Joined() {
		t.Fatal("joined a seed that is not up")
	}
	cfg := testConfig("a")
	cfg.BindAddr = seedAddr
	a := start(t, cfg)
	waitFor(t, waitTimeout, func() error {
		if !b.Joined() {
			return errors.New("b not joined")
		}
		return nil
	})
	waitState(t, []*Membership{a, b}, []*Membership{a, b}, StateAlive)
}

// TestRejoinAfterFailure restarts the seed with no seeds of its own: only the
// other node's periodic re-join can bring the two back together.
func TestRejoinAfterFailure(t *testing.T) {
	t.Parallel()
	nodes := newCluster(t, 2, nil)
	seedAddr := nodes[0].GossipAddr()
	if err := nodes[0].Shutdown(); err != nil {
		t.Fatal(err)
	}
	waitState(t, nodes[1:], nodes[:1], StateFailed)

	cfg := testConfig("n0")
	cfg.BindAddr = seedAddr
	cfg.Meta.HTTPAddr = "reborn"
	a := start(t, cfg)
	both := []*Membership{a, nodes[1]}
	waitState(t, both, both, StateAlive)
	waitFor(t, waitTimeout, func() error {
		if mem, _ := nodes[1].Member("n0"); mem.HTTPAddr != "reborn" {
			return fmt.Errorf("n1 sees n0 meta %+v", mem.Meta)
		}
		return nil
	})
}

func TestReap(t *testing.T) {
	t.Parallel()
	nodes := newCluster(t, 2, func(c *Config) { c.ReapInterval = 300 * time.Millisecond })
	if err := nodes[1].Leave(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitTimeout, func() error {
		if mem, ok := nodes[0].Member("n1"); ok {
			return fmt.Errorf("n1 still known as %s", mem.State)
		}
		return nil
	})
	if _, ok := nodes[1].Member("n1"); !ok {
		t.Error("self was reaped")
	}
}

func TestGarbageOnGossipPort(t *testing.T) {
	t.Parallel()
	nodes := newCluster(t, 3, nil)
	addr := nodes[0].GossipAddr()

	// An idle connection that never sends anything stays open throughout.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()

	junk := make([]byte, 2048)
	for i := range 300 {
		_, _ = rand.Read(junk)
		junk[0] = byte(i) // every message type tag, incl. label/compound/encrypt
		if i%2 == 0 {
			junk[1], junk[2], junk[3], junk[4] = 0xff, 0xff, 0xff, 0x7f // absurd lengths
		}
		if c, err := net.Dial("tcp", addr); err == nil {
			_, _ = c.Write(junk[:1+i%len(junk)])
			c.Close()
		}
		if c, err := net.Dial("udp", addr); err == nil {
			_, _ = c.Write(junk[:1+(i*7)%1400])
			c.Close()
		}
	}

	if err := nodes[0].UpdateMeta(func(m *Meta) { m.InFlight = 3 }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, waitTimeout, func() error {
		for _, o := range nodes {
			if mem, _ := o.Member("n0"); mem.InFlight != 3 {
				return fmt.Errorf("%s sees n0 inflight %d", o.LocalID(), mem.InFlight)
			}
		}
		return nil
	})
	d := start(t, testConfig("n3", addr))
	all := append(nodes, d)
	waitState(t, all, all, StateAlive)
}

func TestSecretKeyAndTinyEventBuffer(t *testing.T) {
	t.Parallel()
	key := bytes.Repeat([]byte{7}, 32)
	// EventBuffer 1 also proves a full event buffer never blocks gossip.
	newCluster(t, 3, func(c *Config) { c.SecretKey, c.EventBuffer = key, 1 })
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	for name, mutate := range map[string]func(*Config){
		"empty id":           func(c *Config) { c.NodeID = "" },
		"bad profile":        func(c *Config) { c.Profile = "wan" },
		"unspecified adv":    func(c *Config) { c.AdvertiseAddr = "0.0.0.0:7946" },
		"unspecified v6":     func(c *Config) { c.AdvertiseAddr = "[::]:7946" },
		"unspecified bind":   func(c *Config) { c.BindAddr = "0.0.0.0:0" },
		"hostname adv":       func(c *Config) { c.AdvertiseAddr = "localhost:7946" },
		"no port":            func(c *Config) { c.BindAddr = "127.0.0.1" },
		"bad key length":     func(c *Config) { c.SecretKey = []byte("short") },
		"meta too large":     func(c *Config) { c.Meta.HTTPAddr = strings.Repeat("x", 600) },
		"bind hostname":      func(c *Config) { c.BindAddr = "localhost:0" },
		"advertise bad port": func(c *Config) { c.AdvertiseAddr = "127.0.0.1:99999" },
	} {
		cfg := testConfig("x")
		mutate(&cfg)
		if m, err := New(cfg); err == nil {
			_ = m.Shutdown()
			t.Errorf("%s: New succeeded", name)
		} else if !strings.HasPrefix(err.Error(), "membership: ") {
			t.Errorf("%s: error %q lacks context", name, err)
		}
	}
}

func TestAdvertiseAddr(t *testing.T) {
	t.Parallel()
	cfg := testConfig("adv")
	cfg.BindAddr = "0.0.0.0:0"
	cfg.AdvertiseAddr = "127.0.0.1:0"
	m := start(t, cfg)
	if !strings.HasPrefix(m.GossipAddr(), "127.0.0.1:") || strings.HasSuffix(m.GossipAddr(), ":0") {
		t.Fatalf("GossipAddr = %q", m.GossipAddr())
	}
	b := start(t, testConfig("b", m.GossipAddr()))
	both := []*Membership{m, b}
	waitState(t, both, both, StateAlive)
}

type recordHandler struct {
	mu   sync.Mutex
	recs []slog.Record
}

func (h *recordHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *recordHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recs = append(h.recs, r)
	return nil
}
func (h *recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *recordHandler) WithGroup(string) slog.Handler      { return h }

func TestLogWriter(t *testing.T) {
	t.Parallel()
	h := &recordHandler{}
	w := &logWriter{logger: slog.New(h)}
	for _, line := range []string{
		"2024/01/02 03:04:05 [DEBUG] memberlist: a\n",
		"[INFO] memberlist: b\n",
		"2024/01/02 03:04:05 [WARN] memberlist: c\n",
		"[ERR] memberlist: d\n",
		"no level here\n",
	} {
		if n, err := w.Write([]byte(line)); n != len(line) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	want := []struct {
		level slog.Level
		msg   string
	}{
		{slog.LevelDebug, "memberlist: a"}, {slog.LevelInfo, "memberlist: b"},
		{slog.LevelWarn, "memberlist: c"}, {slog.LevelError, "memberlist: d"},
		{slog.LevelInfo, "no level here"},
	}
	if len(h.recs) != len(want) {
		t.Fatalf("%d records, want %d", len(h.recs), len(want))
	}
	for i, w := range want {
		if h.recs[i].Level != w.level || h.recs[i].Message != w.msg {
			t.Errorf("record %d = %s %q, want %s %q", i, h.recs[i].Level, h.recs[i].Message, w.level, w.msg)
		}
	}
}

func TestEventTypeString(t *testing.T) {
	t.Parallel()
	for typ, want := range map[EventType]string{EventJoin: "join", EventUpdate: "update", EventLeave: "leave", EventFail: "fail", 0: "EventType(0)"} {
		if got := typ.String(); got != want {
			t.Errorf("%d.String() = %q, want %q", int(typ), got, want)
		}
	}
}
