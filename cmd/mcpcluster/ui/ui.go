// Package ui is mcpcluster's status page: static files embedded in the
// binary that poll the node's admin API (/v1/status, /v1/catalog,
// /v1/events) from the browser. The files hold no cluster data, so they
// are served without a token; the page sends the operator's admin token
// on its API requests.
package ui

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var static embed.FS

// Handler serves the status page's files; mount it at /ui/.
func Handler() http.Handler {
	files, err := fs.Sub(static, "static")
	if err != nil {
		panic("ui: embedded files missing: " + err.Error())
	}
	fileServer := http.StripPrefix("/ui/", http.FileServerFS(files))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		// Everything the page loads comes from this node; nothing may
		// frame it or guess content types.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		fileServer.ServeHTTP(w, r)
	})
}
