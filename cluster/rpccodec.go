package cluster

import (
	"bufio"
	"encoding/gob"
	"fmt"
	"io"
	"net"
	"net/rpc"
)

// maxRPCMessage bounds one message of the node RPC: a request header or
// body (a batch of forwarded writes is at most maxForwardBatchBytes of
// commands). A peer that announces more is disconnected before the
// message is read.
const maxRPCMessage = 64 << 20

// serveRPC returns the mux's node-RPC handler: one rpc.Server per
// connection, so every method knows which node (proven by its certificate)
// is calling, and a gob codec that refuses oversized messages.
func (n *Node) serveRPC(conn net.Conn, peer string) {
	srv := rpc.NewServer()
	if err := srv.RegisterName("Cluster", &rpcService{n: n, peer: peer}); err != nil {
		n.logger.Error("register rpc service", "error", err)
		return
	}
	srv.ServeCodec(newServerCodec(conn, maxRPCMessage))
}

func newRPCClient(conn net.Conn) *rpc.Client { return rpc.NewClient(conn) }

// serverCodec is net/rpc's gob codec with a bound on incoming messages.
type serverCodec struct {
	rwc    io.ReadWriteCloser
	dec    *gob.Decoder
	enc    *gob.Encoder
	encBuf *bufio.Writer
	closed bool
}

func newServerCodec(conn io.ReadWriteCloser, limit uint64) *serverCodec {
	buf := bufio.NewWriter(conn)
	return &serverCodec{
		rwc:    conn,
		dec:    gob.NewDecoder(&frameLimitReader{r: bufio.NewReader(conn), max: limit}),
		enc:    gob.NewEncoder(buf),
		encBuf: buf,
	}
}

func (c *serverCodec) ReadRequestHeader(r *rpc.Request) error { return c.dec.Decode(r) }
func (c *serverCodec) ReadRequestBody(body any) error         { return c.dec.Decode(body) }

func (c *serverCodec) WriteResponse(r *rpc.Response, body any) error {
	if err := c.enc.Encode(r); err != nil {
		if c.encBuf.Flush() == nil {
			c.Close()
		}
		return err
	}
	if err := c.enc.Encode(body); err != nil {
		if c.encBuf.Flush() == nil {
			c.Close()
		}
		return err
	}
	return c.encBuf.Flush()
}

func (c *serverCodec) Close() error {
	if c.closed {
		return nil
	}
	c.closed = true
	return c.rwc.Close()
}

// frameLimitReader passes a gob stream through unchanged and fails as soon
// as a message announces more than max bytes. gob prefixes every message
// with its length as an unsigned integer: one byte below 128, otherwise a
// byte holding the negated count of big-endian bytes that follow.
type frameLimitReader struct {
	r    *bufio.Reader
	max  uint64
	left uint64 // bytes of the current message (prefix included) not yet passed on
}

func (f *frameLimitReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if f.left == 0 {
		first, err := f.r.Peek(1)
		if err != nil {
			return 0, err
		}
		var size uint64
		prefix := 1
		if first[0] < 0x80 {
			size = uint64(first[0])
		} else {
			nb := int(-int8(first[0]))
			if nb < 1 || nb > 8 {
				return 0, fmt.Errorf("rpc: bad gob message length prefix 0x%02x", first[0])
			}
			b, err := f.r.Peek(1 + nb)
			if err != nil {
				return 0, err
			}
			for _, x := range b[1:] {
				size = size<<8 | uint64(x)
			}
			prefix += nb
		}
		if size > f.max {
			return 0, fmt.Errorf("rpc: message of %d bytes exceeds the maximum of %d", size, f.max)
		}
		f.left = uint64(prefix) + size
	}
	if uint64(len(p)) > f.left {
		p = p[:f.left]
	}
	n, err := f.r.Read(p)
	f.left -= uint64(n)
	return n, err
}
