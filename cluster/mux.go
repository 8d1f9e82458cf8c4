package cluster

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// The cluster port carries raft, the node-to-node RPC and internal HTTP
// (forwarded tool calls, pings) on one TCP listener.
//
// Plaintext (loopback experiments only): the first byte a dialer writes
// says which protocol follows. HTTP needs no marker: its requests start
// with the method, and only GET and POST are served there.
//
// With TLS: the dialer starts a TLS 1.3 handshake at once (its first byte
// is a TLS handshake record), presenting a certificate of the cluster CA
// that names its node id. Inside the TLS connection it sends a hello: the
// protocol byte, then the node id it claims, which must be the one its
// certificate names. Anything else is refused before a byte of raft, gob
// or JSON is read.
const (
	connRaft byte = 'R'
	connRPC  byte = 'C'
	connHTTP byte = 'H' // in a TLS hello only

	tlsRecordHandshake byte = 0x16
)

// handshakeTimeout bounds how long an accepted connection may take to send
// its first byte (and, with TLS, to finish the handshake and the hello), so
// a silent or garbage peer cannot hold a goroutine.
const handshakeTimeout = 5 * time.Second

var errMuxClosed = errors.New("cluster listener closed")

// muxConfig is what the mux needs from its node.
type muxConfig struct {
	ln        net.Listener
	advertise net.Addr
	logger    *slog.Logger
	// tls, when set, requires mutual TLS on every connection.
	tls *tlsConfigurator
	// authorize says whether a peer that proved its identity (TLS) may use
	// the port: a member of the cluster, not just a holder of a certificate.
	authorize func(id string) error
	// rpc serves a node-RPC connection from peer ("" in plaintext) until it ends.
	rpc func(conn net.Conn, peer string)
	// maxPerIP bounds the open connections of one remote IP (0: no bound).
	maxPerIP int
}

// mux accepts connections on the cluster port and routes them.
type mux struct {
	muxConfig
	raftCh chan net.Conn
	httpCh chan net.Conn

	mu    sync.Mutex
	conns map[net.Conn]struct{} // open accepted connections, closed with the mux
	perIP map[string]int

	lastRefusalLog atomic.Int64 // unix ns of the last "too many connections" line

	closeOnce sync.Once
	closed    chan struct{}
	wg        sync.WaitGroup
}

func newMux(cfg muxConfig) *mux {
	return &mux{
		muxConfig: cfg,
		raftCh:    make(chan net.Conn, 16),
		httpCh:    make(chan net.Conn, 64),
		conns:     make(map[net.Conn]struct{}),
		perIP:     make(map[string]int),
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
		if err := m.track(conn); err != nil {
			conn.Close()
			if errors.Is(err, errMuxClosed) {
				return
			}
			m.logRefusal(conn, err)
			continue
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.route(conn)
		}()
	}
}

// logRefusal logs a refused connection at most once a second.
func (m *mux) logRefusal(conn net.Conn, err error) {
	now := time.Now().UnixNano()
	last := m.lastRefusalLog.Load()
	if now-last < int64(time.Second) || !m.lastRefusalLog.CompareAndSwap(last, now) {
		return
	}
	m.logger.Warn("cluster connection refused", "remote", conn.RemoteAddr(), "error", err)
}

// refuse closes a connection that failed the handshake, saying why.
func (m *mux) refuse(conn net.Conn, msg string, args ...any) {
	m.logger.Warn(msg, append([]any{"remote", conn.RemoteAddr()}, args...)...)
	m.untrack(conn)
	conn.Close()
}

func (m *mux) route(raw net.Conn) {
	var b [1]byte
	_ = raw.SetReadDeadline(time.Now().Add(handshakeTimeout))
	if _, err := raw.Read(b[:]); err != nil {
		m.logger.Debug("cluster connection closed before handshake", "remote", raw.RemoteAddr(), "error", err)
		m.untrack(raw)
		raw.Close()
		return
	}
	if m.tls != nil {
		if b[0] != tlsRecordHandshake {
			m.refuse(raw, "plaintext connection refused: the cluster port requires TLS", "first_byte", fmt.Sprintf("0x%02x", b[0]))
			return
		}
		m.routeTLS(raw, b[0])
		return
	}
	_ = raw.SetReadDeadline(time.Time{})
	conn := &trackedConn{Conn: raw, raw: raw, m: m}
	switch b[0] {
	case connRaft:
		m.toRaft(conn)
	case connRPC:
		m.rpc(conn, "")
		conn.Close()
	case 'G', 'P':
		m.toHTTP(&replayConn{Conn: conn, first: b[0]})
	case tlsRecordHandshake:
		m.refuse(raw, "TLS connection refused: this node has no TLS configured (--tls-ca-file, --tls-cert-file, --tls-key-file)")
	default:
		m.refuse(raw, "unknown protocol on cluster port, closing connection", "first_byte", fmt.Sprintf("0x%02x", b[0]))
	}
}

// routeTLS completes the TLS handshake and the hello, checks the peer's
// identity, and hands the connection on.
func (m *mux) routeTLS(raw net.Conn, first byte) {
	tc := tls.Server(&replayConn{Conn: raw, first: first}, m.tls.serverConfig())
	_ = raw.SetDeadline(time.Now().Add(handshakeTimeout))
	if err := tc.Handshake(); err != nil {
		m.refuse(raw, "tls handshake on cluster port failed", "error", err)
		return
	}
	// The chain was verified in the handshake and the id parsed there.
	peer, err := NodeIDFromCert(tc.ConnectionState().PeerCertificates[0])
	if err != nil {
		m.refuse(raw, "peer certificate names no node", "error", err)
		return
	}
	kind, claimed, err := readHello(tc)
	if err != nil {
		m.refuse(raw, "bad hello on cluster port", "peer", peer, "error", err)
		return
	}
	if claimed != peer {
		m.refuse(raw, "peer claims another node's identity", "certificate", peer, "claimed", claimed)
		return
	}
	if err := m.authorize(peer); err != nil {
		m.refuse(raw, "peer refused", "peer", peer, "error", err)
		return
	}
	_ = raw.SetDeadline(time.Time{})
	conn := &trackedConn{Conn: tc, raw: raw, m: m, peer: peer}
	switch kind {
	case connRaft:
		m.toRaft(conn)
	case connRPC:
		m.rpc(conn, peer)
		conn.Close()
	case connHTTP:
		m.toHTTP(conn)
	default:
		m.refuse(raw, "unknown protocol in hello", "peer", peer, "kind", fmt.Sprintf("0x%02x", kind))
	}
}

func (m *mux) toRaft(c net.Conn) {
	select {
	case m.raftCh <- c:
	case <-m.closed:
		c.Close()
	}
}

func (m *mux) toHTTP(c net.Conn) {
	select {
	case m.httpCh <- c:
	case <-m.closed:
		c.Close()
	}
}

// maxHelloID bounds the node id in a hello.
const maxHelloID = 64

// writeHello sends the protocol byte and this node's id.
func writeHello(w io.Writer, kind byte, id string) error {
	if len(id) > maxHelloID {
		return fmt.Errorf("node id %q longer than %d bytes", id, maxHelloID)
	}
	b := make([]byte, 0, 2+len(id))
	b = append(b, kind, byte(len(id)))
	_, err := w.Write(append(b, id...))
	return err
}

func readHello(r io.Reader) (kind byte, id string, err error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, "", err
	}
	if h[1] == 0 || h[1] > maxHelloID {
		return 0, "", fmt.Errorf("node id length %d out of range", h[1])
	}
	buf := make([]byte, h[1])
	if _, err := io.ReadFull(r, buf); err != nil {
		return 0, "", err
	}
	return h[0], string(buf), nil
}

var errTooManyConns = errors.New("too many connections from this address")

func remoteIP(c net.Conn) string {
	if a, ok := c.RemoteAddr().(*net.TCPAddr); ok {
		return a.IP.String()
	}
	host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
	return host
}

func (m *mux) track(c net.Conn) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.conns == nil {
		return errMuxClosed
	}
	ip := remoteIP(c)
	if m.maxPerIP > 0 && m.perIP[ip] >= m.maxPerIP {
		return fmt.Errorf("%w (%d open, limit %d)", errTooManyConns, m.perIP[ip], m.maxPerIP)
	}
	m.perIP[ip]++
	m.conns[c] = struct{}{}
	return nil
}

func (m *mux) untrack(c net.Conn) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, ok := m.conns[c]; !ok {
		return
	}
	delete(m.conns, c)
	ip := remoteIP(c)
	if m.perIP[ip]--; m.perIP[ip] <= 0 {
		delete(m.perIP, ip)
	}
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

// trackedConn is an accepted connection (TLS or plain) that forgets
// itself in the mux when closed, and knows the peer's proven node id.
type trackedConn struct {
	net.Conn
	raw  net.Conn // the accepted TCP connection, the mux's key
	m    *mux
	peer string // "" in plaintext
}

func (c *trackedConn) Close() error {
	c.m.untrack(c.raw)
	return c.Conn.Close()
}

func (c *trackedConn) peerID() string { return c.peer }

// replayConn gives back the byte read to route the connection.
type replayConn struct {
	net.Conn
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

func (c *replayConn) peerID() string {
	if p, ok := c.Conn.(interface{ peerID() string }); ok {
		return p.peerID()
	}
	return ""
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
type raftLayer struct {
	m    *mux
	dial func(addr string, kind byte, expectID string, timeout time.Duration) (net.Conn, error)
}

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
	return l.dial(string(addr), connRaft, "", timeout)
}

// peerKey is the context key of the proven peer id of an internal HTTP request.
type peerKey struct{}

// PeerFromContext returns the node id that the peer of an internal HTTP
// request (ServeInternal) proved with its certificate; false in plaintext.
func PeerFromContext(ctx context.Context) (string, bool) {
	id, ok := ctx.Value(peerKey{}).(string)
	return id, ok && id != ""
}

func connContext(ctx context.Context, c net.Conn) context.Context {
	if p, ok := c.(interface{ peerID() string }); ok && p.peerID() != "" {
		return context.WithValue(ctx, peerKey{}, p.peerID())
	}
	return ctx
}
