package mcp

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	mcplib "github.com/mark3labs/mcp-go/mcp"
	"github.com/mark3labs/mcp-go/server"
	"github.com/mcpcluster/mcpcluster/cluster"
	"github.com/mcpcluster/mcpcluster/fsm"
)

// ToolCache is the shared cache as the cache tools see it.
type ToolCache interface {
	CacheGet(ctx context.Context, key string, level cluster.Consistency) (fsm.CacheEntry, cluster.ReadInfo, error)
	CacheSet(ctx context.Context, key string, value []byte, opt cluster.SetOptions) (*fsm.Result, error)
	CacheDelete(ctx context.Context, key string, opt cluster.SetOptions) (*fsm.Result, error)
}

// Cache is the shared cache as the front door uses it: what the tools see,
// and the writes of the tool-result cache under cluster.InternalKeyPrefix,
// which CacheSet refuses.
type Cache interface {
	ToolCache
	CacheSetInternal(ctx context.Context, key string, value []byte, opt cluster.SetOptions) (*fsm.Result, error)
}

// CacheTools returns cache_get, cache_set and cache_delete over c. They
// refuse keys under cluster.InternalKeyPrefix, reads included: those hold
// other principals' cached tool results.
func CacheTools(c ToolCache) []server.ServerTool {
	get := mcplib.NewTool("cache_get",
		mcplib.WithDescription("Reads a key of the cluster's shared cache. consistency: linearizable (default), default or stale."),
		mcplib.WithString("key", mcplib.Required()),
		mcplib.WithString("consistency", mcplib.Enum("linearizable", "default", "stale")),
		readOnlyTool,
	)
	set := mcplib.NewTool("cache_set",
		mcplib.WithDescription("Writes a key of the cluster's shared cache, optionally with a ttl (e.g. 30s) and a cas version (0: only if absent)."),
		mcplib.WithString("key", mcplib.Required()),
		mcplib.WithString("value", mcplib.Required()),
		mcplib.WithString("ttl", mcplib.Description("lifetime such as 30s or 5m")),
		mcplib.WithNumber("cas", mcplib.Description("write only if the current version is this (0: only if absent)")),
		annotate(false, true, true), // overwrites or deletes; the same request twice leaves the same state
	)
	del := mcplib.NewTool("cache_delete",
		mcplib.WithDescription("Deletes a key of the cluster's shared cache, optionally only at a cas version."),
		mcplib.WithString("key", mcplib.Required()),
		mcplib.WithNumber("cas", mcplib.Description("delete only if the current version is this")),
		annotate(false, true, true), // overwrites or deletes; the same request twice leaves the same state
	)
	return []server.ServerTool{
		{Tool: get, Handler: func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			key, msg := toolKey(req)
			if msg != "" {
				return mcplib.NewToolResultError(msg), nil
			}
			level, err := cluster.ParseConsistency(req.GetString("consistency", ""))
			if err != nil {
				return mcplib.NewToolResultError(err.Error()), nil
			}
			e, info, err := c.CacheGet(ctx, key, level)
			switch {
			case errors.Is(err, fsm.ErrNotFound):
				return mcplib.NewToolResultErrorf("key %q not found (read at %s on %s)", key, info.Level, info.Node), nil
			case errors.Is(err, cluster.ErrInvalid):
				return mcplib.NewToolResultError(err.Error()), nil
			case err != nil:
				return nil, err
			}
			res := mcplib.NewToolResultText(string(e.Value))
			res.StructuredContent = map[string]any{"key": key, "value": string(e.Value), "version": e.Version, "consistency": string(info.Level)}
			return res, nil
		}},
		{Tool: set, Handler: func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			key, msg := toolKey(req)
			if msg != "" {
				return mcplib.NewToolResultError(msg), nil
			}
			value, err := req.RequireString("value")
			if err != nil {
				return mcplib.NewToolResultError(err.Error()), nil
			}
			opt, msg := toolWriteOptions(req, true)
			if msg != "" {
				return mcplib.NewToolResultError(msg), nil
			}
			res, err := c.CacheSet(ctx, key, []byte(value), opt)
			return writeToolResult(key, res, err)
		}},
		{Tool: del, Handler: func(ctx context.Context, req mcplib.CallToolRequest) (*mcplib.CallToolResult, error) {
			key, msg := toolKey(req)
			if msg != "" {
				return mcplib.NewToolResultError(msg), nil
			}
			opt, msg := toolWriteOptions(req, false)
			if msg != "" {
				return mcplib.NewToolResultError(msg), nil
			}
			res, err := c.CacheDelete(ctx, key, opt)
			return writeToolResult(key, res, err)
		}},
	}
}

// toolKey reads the key argument of a cache tool; a non-empty message is
// the tool error. Internal keys are refused.
func toolKey(req mcplib.CallToolRequest) (string, string) {
	key, err := req.RequireString("key")
	if err != nil {
		return "", err.Error()
	}
	if cluster.IsInternalKey(key) {
		return "", fmt.Sprintf("key prefix %s is reserved for the cluster's own use", cluster.InternalKeyPrefix)
	}
	return key, ""
}

// toolWriteOptions reads ttl and cas; a non-empty message is the tool error.
func toolWriteOptions(req mcplib.CallToolRequest, withTTL bool) (cluster.SetOptions, string) {
	var opt cluster.SetOptions
	args := req.GetArguments()
	if withTTL {
		if s := req.GetString("ttl", ""); s != "" {
			ttl, err := time.ParseDuration(s)
			if err != nil || ttl <= 0 {
				return opt, fmt.Sprintf("ttl %q must be a positive duration such as 30s", s)
			}
			opt.TTL = ttl
		}
	}
	if v, ok := args["cas"]; ok {
		f, isNum := v.(float64)
		if !isNum || f < 0 || f != float64(uint64(f)) {
			return opt, fmt.Sprintf("cas %v is not a version number", v)
		}
		u := uint64(f)
		opt.CAS = &u
	}
	return opt, ""
}

func writeToolResult(key string, res *fsm.Result, err error) (*mcplib.CallToolResult, error) {
	switch {
	case errors.Is(err, cluster.ErrInvalid):
		return mcplib.NewToolResultError(err.Error()), nil
	case err != nil:
		return nil, err
	case errors.Is(res.Err(), fsm.ErrCASMismatch):
		return mcplib.NewToolResultErrorf("cas mismatch on %q: current version %d", key, res.Version), nil
	case errors.Is(res.Err(), fsm.ErrNotFound):
		return mcplib.NewToolResultErrorf("key %q not found", key), nil
	}
	out := mcplib.NewToolResultText(fmt.Sprintf("ok, version %d", res.Version))
	out.StructuredContent = map[string]any{"key": key, "version": res.Version, "index": res.Index}
	return out, nil
}

// resultPrefix starts the cache keys of tool results: internal keys, which
// neither the cache API nor the cache tools write.
const resultPrefix = cluster.InternalKeyPrefix + "result/"

// resultKey is the cache key of a tool's result for these arguments and
// this principal: the tool name and a hash of the principal and of the
// arguments' canonical JSON (object keys sorted, as encoding/json writes
// maps). principal is "" for results every caller shares.
func resultKey(tool, principal string, args any) (string, error) {
	b, err := json.Marshal(args)
	if err != nil {
		return "", fmt.Errorf("encode arguments: %w", err)
	}
	h := sha256.New()
	if principal != "" {
		// Length-prefixed, so no principal and arguments pair can
		// collide with another.
		fmt.Fprintf(h, "principal:%d:%s\n", len(principal), principal)
	}
	h.Write(b)
	return resultPrefix + tool + "/" + hex.EncodeToString(h.Sum(nil)), nil
}

// markShared returns meta with the shared-cache mark.
func markShared(meta *mcplib.Meta) *mcplib.Meta {
	out := &mcplib.Meta{AdditionalFields: map[string]any{}}
	if meta != nil {
		out.ProgressToken = meta.ProgressToken
		for k, v := range meta.AdditionalFields {
			out.AdditionalFields[k] = v
		}
	}
	out.AdditionalFields[sharedCacheMeta] = true
	return out
}

// takeShared returns meta without the shared-cache mark, and whether it
// had it.
func takeShared(meta *mcplib.Meta) (*mcplib.Meta, bool) {
	if meta == nil {
		return nil, false
	}
	v, ok := meta.AdditionalFields[sharedCacheMeta]
	if !ok {
		return meta, false
	}
	shared, _ := v.(bool)
	rest := map[string]any{}
	for k, v := range meta.AdditionalFields {
		if k != sharedCacheMeta {
			rest[k] = v
		}
	}
	if len(rest) == 0 && meta.ProgressToken == nil {
		return nil, shared
	}
	return &mcplib.Meta{ProgressToken: meta.ProgressToken, AdditionalFields: rest}, shared
}

// cachePrincipal is the principal a call's cached result belongs to: the
// caller, or "" when the tool's results are shared.
func (s *Server) cachePrincipal(ctx context.Context, tool string) string {
	if v, _ := s.shared.Load(tool); v == true {
		return ""
	}
	return principalFrom(ctx)
}

// cacheTTL returns how long results of tool name are cached (the tool's
// own setting, else its provider's).
func (s *Server) cacheTTL(name string) time.Duration {
	f := s.cfg.Cluster.FSM()
	provider, ttl, ok := f.ToolProvider(name)
	if !ok {
		return 0
	}
	if ttl > 0 {
		return time.Duration(ttl)
	}
	if p, ok := f.Provider(provider); ok {
		return time.Duration(p.CacheTTL)
	}
	return 0
}

// cachedResult returns a cached result of the call, if there is one.
func (s *Server) cachedResult(ctx context.Context, key string) (*mcplib.CallToolResult, bool) {
	e, _, err := s.cfg.Cluster.CacheGet(ctx, key, cluster.Default)
	if err != nil {
		return nil, false
	}
	var res mcplib.CallToolResult
	if err := json.Unmarshal(e.Value, &res); err != nil {
		return nil, false
	}
	if res.Meta == nil || res.Meta.AdditionalFields == nil {
		res.Meta = &mcplib.Meta{AdditionalFields: map[string]any{}}
	}
	res.Meta.AdditionalFields["mcpcluster/cache"] = "hit"
	return &res, true
}

// storeResult caches a successful result for ttl; a failure to store is
// logged, never the caller's problem.
func (s *Server) storeResult(ctx context.Context, key string, res *mcplib.CallToolResult, ttl time.Duration) {
	b, err := json.Marshal(res)
	if err == nil {
		_, err = s.cfg.Cluster.CacheSetInternal(ctx, key, b, cluster.SetOptions{TTL: ttl})
	}
	if err != nil {
		s.logger.Debug("tool result not cached", "key", key, "error", err)
	}
}
