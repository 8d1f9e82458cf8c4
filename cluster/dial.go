package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/mcpcluster/mcpcluster/membership"
)

// dial opens a connection of the given kind (connRaft, connRPC, connHTTP)
// to the cluster port at addr. With TLS it verifies that the peer holds a
// certificate of the cluster CA naming expectID (or, when expectID is
// empty, the node gossip or the raft configuration places at addr) and
// announces this node's id; in plaintext it writes the protocol byte.
func (n *Node) dial(addr string, kind byte, expectID string, timeout time.Duration) (net.Conn, error) {
	start := time.Now()
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	if n.tls == nil {
		if kind != connHTTP {
			if _, err := conn.Write([]byte{kind}); err != nil {
				conn.Close()
				return nil, fmt.Errorf("cluster handshake with %s: %w", addr, err)
			}
		}
		return conn, nil
	}
	if expectID == "" {
		expectID = n.nodeAt(addr)
	}
	tc := tls.Client(conn, n.tls.clientConfig(expectID))
	_ = conn.SetDeadline(start.Add(max(timeout, tlsHandshakeTimeout)))
	if err := tc.Handshake(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("tls handshake with %s: %w", addr, err)
	}
	if err := writeHello(tc, kind, n.id); err != nil {
		conn.Close()
		return nil, fmt.Errorf("cluster hello to %s: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return tc, nil
}

// nodeAt returns the id of the node whose cluster address is addr, from
// gossip or the raft configuration, or "" if none is known.
func (n *Node) nodeAt(addr string) string {
	if n.members != nil {
		for _, m := range n.members.Members() {
			if m.RPCAddr == addr && m.State != membership.StateLeft {
				return m.ID
			}
		}
	}
	if n.raft != nil {
		if f := n.raft.GetConfiguration(); f.Error() == nil {
			for _, s := range f.Configuration().Servers {
				if string(s.Address) == addr {
					return string(s.ID)
				}
			}
		}
	}
	return ""
}

// authorizePeer decides whether a node that proved its identity with a
// certificate of the cluster CA may use the cluster port: it must also be
// a member of the cluster, alive in gossip (which needs the gossip key)
// or a server of the raft configuration.
func (n *Node) authorizePeer(id string) error {
	if id == n.id {
		return nil
	}
	if n.members != nil {
		if m, ok := n.members.Member(id); ok && (m.State == membership.StateAlive || m.State == membership.StateSuspect) {
			return nil
		}
	}
	if n.raft != nil {
		if f := n.raft.GetConfiguration(); f.Error() == nil {
			for _, s := range f.Configuration().Servers {
				if string(s.ID) == id {
					return nil
				}
			}
		}
	}
	return fmt.Errorf("node %q is neither a gossip member nor a raft server", id)
}

// DialInternal opens a connection to the internal HTTP server on the
// cluster port at addr (forwarded tool calls): TLS with the peer's
// identity checked when TLS is configured. Requests on it use http://.
func (n *Node) DialInternal(ctx context.Context, addr string) (net.Conn, error) {
	timeout := 2 * time.Second
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	if timeout <= 0 {
		return nil, context.DeadlineExceeded
	}
	return n.dial(addr, connHTTP, "", timeout)
}

// newProbeClient returns the client of the leader's liveness pings: no
// connection reuse, so a dead peer is not mistaken for a pooled
// connection's stale state.
func (n *Node) newProbeClient() *http.Client {
	return &http.Client{Timeout: probeTimeout, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return n.DialInternal(ctx, addr)
		},
		DisableKeepAlives: true,
	}}
}

// verifyIdentity checks that the node at addr is node id: with TLS, its
// certificate of the cluster CA names id; in every case it answers the
// Peers RPC as id. The leader admits a raft server only after this.
func (n *Node) verifyIdentity(ctx context.Context, id, addr string) error {
	_, err := n.peerInfo(ctx, id, addr)
	return err
}

// peerInfo asks node id at addr, over a fresh connection, for its Peers
// reply, and checks that it answers as id.
func (n *Node) peerInfo(ctx context.Context, id, addr string) (PeersReply, error) {
	var reply PeersReply
	timeout := time.Second
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < timeout {
		timeout = time.Until(dl)
	}
	conn, err := n.dial(addr, connRPC, id, timeout)
	if err != nil {
		return reply, fmt.Errorf("verify %s at %s: %w", id, addr, err)
	}
	c := newRPCClient(conn)
	defer c.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if err := c.Call("Cluster.Peers", PeersArgs{}, &reply); err != nil {
		return reply, fmt.Errorf("verify %s at %s: %w", id, addr, err)
	}
	if reply.ID != id {
		return reply, fmt.Errorf("verify %s at %s: it answers as %q", id, addr, reply.ID)
	}
	return reply, nil
}
