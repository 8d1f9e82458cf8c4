package cluster

import (
	"context"
	"errors"
	"io"
	"net"
	"net/rpc"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// poolTestService answers Fast at once and Slow when released.
type poolTestService struct{ release chan struct{} }

func (s *poolTestService) Fast(_ int, reply *int) error { *reply = 1; return nil }
func (s *poolTestService) Slow(_ int, reply *int) error {
	<-s.release
	*reply = 2
	return nil
}

// serveTest serves handle on a loopback listener until the test ends.
func serveTest(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				handle(conn)
			}()
		}
	}()
	return ln.Addr().String()
}

func plainDial(addr string, timeout time.Duration) (net.Conn, error) {
	return net.DialTimeout("tcp", addr, timeout)
}

// One caller whose deadline passes while the peer answers others does not
// close the connection those others share.
func TestRPCPoolSlowCallerHurtsOnlyItself(t *testing.T) {
	svc := &poolTestService{release: make(chan struct{})}
	srv := rpc.NewServer()
	if err := srv.RegisterName("Cluster", svc); err != nil {
		t.Fatal(err)
	}
	addr := serveTest(t, func(c net.Conn) { srv.ServeConn(c) })
	p := newRPCPool(time.Second, plainDial)
	t.Cleanup(p.close)
	t.Cleanup(func() { close(svc.release) })

	var reply int
	if err := p.call(context.Background(), addr, "Fast", 0, &reply); err != nil {
		t.Fatal(err)
	}
	first := p.clients[addr]

	stop := make(chan struct{})
	var fastErrs atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			var r int
			if err := p.call(ctx, addr, "Fast", 0, &r); err != nil {
				fastErrs.Add(1)
			}
			cancel()
		}
	}()
	time.Sleep(50 * time.Millisecond) // fast calls are flowing
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	err := p.call(ctx, addr, "Slow", 0, &reply)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("slow call: %v", err)
	}
	time.Sleep(50 * time.Millisecond)
	close(stop)
	wg.Wait()
	if n := fastErrs.Load(); n != 0 {
		t.Fatalf("%d fast calls failed when a slow caller gave up", n)
	}
	p.mu.Lock()
	same := p.clients[addr] == first
	p.mu.Unlock()
	if !same {
		t.Fatal("the shared connection was replaced after a slow caller's deadline")
	}
}

// A peer that says nothing after a call was sent (a paused process) loses
// its pooled connection when the call's deadline passes.
func TestRPCPoolDropsSilentPeer(t *testing.T) {
	addr := serveTest(t, func(c net.Conn) { _, _ = io.Copy(io.Discard, c) })
	p := newRPCPool(time.Second, plainDial)
	t.Cleanup(p.close)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	var reply int
	if err := p.call(ctx, addr, "Fast", 0, &reply); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("call to a silent peer: %v", err)
	}
	p.mu.Lock()
	n := len(p.clients)
	p.mu.Unlock()
	if n != 0 {
		t.Fatal("the silent peer's connection was kept")
	}
}
