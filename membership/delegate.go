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

func (d *delegate) NotifyMsg([]byte)                           {}
func (d *delegate) GetBroadcasts(overhead, limit int) [][]byte { return nil }
func (d *delegate) LocalState(join bool) []byte                { return nil }
func (d *delegate) MergeRemoteState(buf []byte, join bool)     {}

func (d *delegate) NotifyJoin(n *memberlist.Node)   { d.m.observe(n, StateAlive, EventJoin) }
func (d *delegate) NotifyUpdate(n *memberlist.Node) { d.m.observe(n, StateAlive, EventUpdate) }

func (d *delegate) NotifyLeave(n *memberlist.Node) {
	if n.State == memberlist.StateLeft {
		d.m.observe(n, StateLeft, EventLeave)
	} else {
		d.m.observe(n, StateFailed, EventFail)
	}
}

// observe records what memberlist reported about node n and emits an event.
func (m *Membership) observe(n *memberlist.Node, state State, typ EventType) {
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
		mem = &Member{State: state, Since: now}
		m.members[n.Name] = mem
	}
	mem.Meta = meta
	mem.GossipAddr = net.JoinHostPort(n.Addr.String(), strconv.Itoa(int(n.Port)))
	if typ == EventUpdate && mem.State == StateSuspect {
		state = StateSuspect // an update doesn't clear suspicion; refresh does
	}
	m.setState(mem, state, typ, now)
	m.logger.Debug("member "+typ.String(), "member", n.Name, "addr", mem.GossipAddr, "state", mem.State)
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
