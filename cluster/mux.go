package cluster

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// The cluster port carries raft, the node-to-node RPC and internal HTTP
// (forwarded tool calls) on one TCP listener; the first byte a dialer
// writes says which. HTTP needs no marker: its requests start with the
// method, and only GET and POST are served there.
const (
	connRaft byte = 'R'
	connRPC  byte = 'C'
)

// handshakeTimeout bounds how long an accepted connection may take to send
// its first byte, so a silent or garbage peer cannot hold a goroutine.
const handshakeTimeout = 5 * time.Second

var errMuxClosed = errors.New("cluster listener closed")

// mux accepts connections on the cluster port and routes them by first byte.
type mux struct {
	ln        net.Listener
	advertise net.Addr
	logger    *slog.Logger
	raftCh    chan net.Conn
	httpCh    chan net.Conn
	rpc       func(net.Conn)

	mu    sync.Mutex
	conns map[net.Conn]struct{} // open accepted connections, closed with the mux

	closeOnce sync.Once
	closed    chan struct{}
	wg        sync.WaitGroup
}

func newMux(ln net.Listener, advertise net.Addr, logger *slog.Logger, rpc func(net.Conn)) *mux {
	return &mux{
		ln:        ln,
		advertise: advertise,
		logger:    logger,
		raftCh:    make(chan net.Conn, 16),
		httpCh:    make(chan net.Conn, 64),
		rpc:       rpc,
		conns:     make(map[net.Conn]struct{}),
		closed:    make(chan struct{}),
	}
}

// serve accepts until the listener is closed.
func (m *mux) serve() {
	m.wg.Add(1)
	defer m.wg.Done()
	for {
		conn, err := m.ln.Accept()
		if err != nil {
			select {
			case <-m.closed:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			m.logger.Error("cluster port accept failed", "error", err)
			return
		}
		if !m.track(conn) {
			conn.Close()
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.route(conn)
		}()
	}
}

func (m *mux) route(conn net.Conn) {
	var b [1]byte
	_ = conn.SetReadDeadline(time.Now().Add(handshakeTimeout))
	if _, err := conn.Read(b[:]); err != nil {
		m.logger.Debug("cluster connection closed before handshake", "remote", conn.RemoteAddr(), "error", err)
		m.untrack(conn)
		conn.Close()
		return
	}
	_ = conn.SetReadDeadline(time.Time{})
	switch b[0] {
	case connRaft:
		select {
		case m.raftCh <- trackedConn{Conn: conn, m: m}:
		case <-m.closed:
			conn.Close()
		}
	case connRPC:
		m.rpc(conn)
		m.untrack(conn)
		conn.Close()
	case 'G', 'P':
		select {
		case m.httpCh <- &replayConn{trackedConn: trackedConn{Conn: conn, m: m}, first: b[0]}:
		case <-m.closed:
			conn.Close()
		}
	default:
		m.logger.Warn("unknown protocol on cluster port, closing connection", "remote", conn.RemoteAddr(), "first_byte", fmt.Sprintf("0x%02x", b[0]))
		m.untrack(conn)
		conn.Close()
	}
}

func (m *mux) track(c net.Conn) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conns == nil {
		return false
	}
	m.conns[c] = struct{}{}
	return true
}

func (m *mux) untrack(c net.Conn) {
	m.mu.Lock()
	delete(m.conns, c)
	m.mu.Unlock()
}

func (m *mux) close() {
	m.closeOnce.Do(func() {
		close(m.closed)
		m.ln.Close()
		m.mu.Lock()
		for c := range m.conns {
			c.Close()
		}
		m.conns = nil
		m.mu.Unlock()
	})
}

// trackedConn forgets itself in the mux when raft closes it.
type trackedConn struct {
	net.Conn
	m *mux
}

func (c trackedConn) Close() error {
	c.m.untrack(c.Conn)
	return c.Conn.Close()
}

// replayConn gives back the byte the mux read to route the connection.
type replayConn struct {
	trackedConn
	first  byte
	served bool
}

func (c *replayConn) Read(p []byte) (int, error) {
	if !c.served && len(p) > 0 {
		c.served = true
		p[0] = c.first
		return 1, nil
	}
	return c.Conn.Read(p)
}

// httpListener is the net.Listener view of the mux's HTTP connections.
type httpListener struct{ m *mux }

func (l httpListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.m.httpCh:
		return c, nil
	case <-l.m.closed:
		return nil, errMuxClosed
	}
}

func (l httpListener) Close() error   { return nil } // the mux owns the socket
func (l httpListener) Addr() net.Addr { return l.m.advertise }

// raftLayer is the raft.StreamLayer view of the mux.
type raftLayer struct{ m *mux }

var _ raft.StreamLayer = raftLayer{}

func (l raftLayer) Accept() (net.Conn, error) {
	select {
	case c := <-l.m.raftCh:
		return c, nil
	case <-l.m.closed:
		return nil, errMuxClosed
	}
}

func (l raftLayer) Close() error   { l.m.close(); return nil }
func (l raftLayer) Addr() net.Addr { return l.m.advertise }

func (l raftLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	return dialCluster(string(addr), connRaft, timeout)
}

func dialCluster(addr string, kind byte, timeout time.Duration) (net.Conn, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write([]byte{kind}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("cluster handshake with %s: %w", addr, err)
	}
	return conn, nil
}
