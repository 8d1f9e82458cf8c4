package mcp

import (
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	mcplib "github.com/mark3labs/mcp-go/mcp"
)

// originPolicy decides which browser origins may call /mcp (the transport
// spec: a present Origin that is not allowed gets 403, against DNS
// rebinding). A request without Origin is not from a browser page and
// passes.
type originPolicy struct {
	allowed  map[string]bool // normalised scheme://host[:port]
	loopback bool            // any http(s) origin on a loopback host
}

func newOriginPolicy(allowed []string, loopback bool) originPolicy {
	p := originPolicy{allowed: map[string]bool{}, loopback: loopback}
	for _, o := range allowed {
		p.allowed[normOrigin(o)] = true
	}
	return p
}

// allows reports whether a request with this Origin header may go on.
func (p originPolicy) allows(origin string) bool {
	if origin == "" {
		return true
	}
	if p.allowed[normOrigin(origin)] {
		return true
	}
	if !p.loopback {
		return false
	}
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return false
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// normOrigin lowercases an origin and drops a trailing slash.
func normOrigin(o string) string {
	return strings.TrimSuffix(strings.ToLower(strings.TrimSpace(o)), "/")
}

// writeOriginRefusal answers 403 with a JSON-RPC error that has no id (the
// request was not read).
func writeOriginRefusal(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusForbidden)
	w.Write([]byte(`{"jsonrpc":"2.0","error":{"code":` + strconv.Itoa(mcplib.INVALID_REQUEST) + `,"message":"origin not allowed"}}` + "\n"))
}
