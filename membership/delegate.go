package membership

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"strconv"
	"time"

	"github.com/hashicorp/memberlist"
)

// delegate implements memberlist.Delegate and memberlist.EventDelegate.
// memberlist calls the event methods while holding its own locks, so they
// only take m.mu briefly and never block on the events channel.
type delegate struct{ m *Membership }

// NodeMeta returns the encoded local metadata (size checked on every change).
func (d *delegate) NodeMeta(limit int) []byte {
	d.m.mu.Lock()
	defer d.m.mu.Unlock()
	if len(d.m.metaWire) > limit {
		return nil
	}
	return bytes.Clone(d.m.metaWire)
}

// msgLeaveIntent tags a user message announcing that the node named in the
// rest of the message is leaving.
const msgLeaveIntent byte = 1

func leaveIntent(id string) []byte { return append([]byte{msgLeaveIntent}, id...) }

// leaveBroadcast is a leave intent in the broadcast queue.
type leaveBroadcast struct {
	msg  []byte
	sent chan struct{} // closed when transmitted enough times; may be nil
}

func (b *leaveBroadcast) Invalidates(o memberlist.Broadcast) bool {
	ob, ok := o.(*leaveBroadcast)
	return ok && bytes.Equal(ob.msg, b.msg)
}

func (b *leaveBroadcast) Message() []byte { return b.msg }

func (b *leaveBroadcast) Finished() {
	if b.sent != nil {
		close(b.sent)
	}
}

// NotifyMsg handles a leave intent: the member is marked leaving (or, if it
// was already seen failing, left) and the intent is passed on once.
func (d *delegate) NotifyMsg(b []byte) {
	if len(b) < 2 || b[0] != msgLeaveIntent {
		d.m.logger.Debug("ignoring unknown gossip message", "len", len(b))
		return
	}
	if id := string(b[1:]); d.m.markLeaving(id, true) {
		d.m.bcast.QueueBroadcast(&leaveBroadcast{msg: leaveIntent(id)})
	}
}

func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte {
	return d.m.bcast.GetBroadcasts(overhead, limit)
}

// LocalState shares the ids of left members in push/pull syncs, so a node
// that missed a leave intent still reports StateLeft rather than failed.
func (d *delegate) LocalState(join bool) []byte {
	var left []string
	for _, mem := range d.m.Members() {
		if mem.State == StateLeft {
			left = append(left, mem.ID)
		}
	}
	b, _ := json.Marshal(left) // a []string always encodes
	return b
}

// MergeRemoteState turns members we saw fail into left ones if the peer knows
// they left. It never marks an alive member: the peer's view may be stale.
func (d *delegate) MergeRemoteState(buf []byte, join bool) {
	var left []string
	if err := json.Unmarshal(buf, &left); err != nil {
		d.m.logger.Debug("ignoring undecodable remote state", "error", err)
		return
	}
	for _, id := range left {
		d.m.markLeaving(id, false)
	}
}

// markLeaving records that member id announced its leave and reports whether
// that was news. A failed member becomes left; an alive one is only marked
// (it will leave, not fail) when alive is true.
func (m *Membership) markLeaving(id string, alive bool) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	mem, ok := m.members[id]
	if !ok || id == m.cfg.NodeID || mem.leaving || mem.State == StateLeft {
		return false
	}
	switch {
	case mem.State == StateFailed:
		m.setState(&mem.Member, StateLeft, EventLeave, time.Now())
	case !alive:
		return false
	}
	mem.leaving = true
	return true
}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.m.observe(n, EventJoin) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.m.observe(n, EventUpdate) }

// NotifyLeave can't trust n.State (always alive in memberlist v0.6.0, see
// hashicorp/memberlist#293); observe uses the leave intent instead.
func (d *delegate) NotifyLeave(n *memberlist.Node) { d.m.observe(n, EventFail) }

// observe records what memberlist reported about node n and emits an event.
// A node that announced its leave (or self after Leave) leaves, not fails.
func (m *Membership) observe(n *memberlist.Node, typ EventType) {
	meta := Meta{ID: n.Name}
	if len(n.Meta) > 0 {
		if err := json.Unmarshal(n.Meta, &meta); err != nil {
			m.logger.Warn("undecodable member meta", "member", n.Name, "error", err)
			meta = Meta{ID: n.Name}
		}
		meta.ID = n.Name
	}
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	mem, ok := m.members[n.Name]
	if !ok {
		mem = &member{Member: Member{State: StateAlive, Since: now}}
		m.members[n.Name] = mem
	}
	mem.Meta = meta
	mem.GossipAddr = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	state := StateAlive
	switch {
	case typ == EventJoin:
		mem.leaving = false
	case typ == EventFail && (mem.leaving || n.Name == m.cfg.NodeID && m.left.Load()):
		typ, state = EventLeave, StateLeft
	case typ == EventFail:
		state = StateFailed
	}
	m.setState(&mem.Member, state, typ, now)
	m.logger.Debug("member "+typ.String(), "member", n.Name, "addr", mem.GossipAddr)
}

// setState changes mem's state (keeping Since if unchanged) and emits an
// event without blocking. m.mu must be held.
func (m *Membership) setState(mem *Member, state State, typ EventType, now time.Time) {
	if mem.State != state {
		mem.State, mem.Since = state, now
	}
	if m.closed {
		return
	}
	select {
	case m.events <- Event{Type: typ, Member: *mem}:
	default:
		m.logger.Warn("event buffer full, dropping event", "type", typ.String(), "member", mem.ID)
	}
}

// logWriter adapts memberlist's log.Logger output to slog, mapping the
// "[DEBUG]", "[INFO]", "[WARN]" and "[ERR]" prefixes to levels.
type logWriter struct{ logger *slog.Logger }

var logLevels = map[string]slog.Level{
	"TRACE": slog.LevelDebug, "DEBUG": slog.LevelDebug, "INFO": slog.LevelInfo,
	"WARN": slog.LevelWarn, "ERR": slog.LevelError, "ERROR": slog.LevelError,
}

func (w *logWriter) Write(p []byte) (int, error) {
	line := string(bytes.TrimSpace(p))
	level, msg := slog.LevelInfo, line
	if i := bytes.IndexByte(p, '['); i >= 0 {
		if j := bytes.IndexByte(p[i:], ']'); j > 0 {
			if l, ok := logLevels[string(p[i+1:i+j])]; ok {
				level, msg = l, string(bytes.TrimSpace(p[i+j+1:]))
			}
		}
	}
	w.logger.Log(context.Background(), level, msg)
	return len(p), nil
}
