package cluster

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestInternalKeysReserved: the public cache writes refuse the cluster's
// own keys, CacheSetInternal writes only those, and the admin API answers
// 400 for them but may still read them.
func TestInternalKeysReserved(t *testing.T) {
	n := newTestCluster(t, 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := InternalKeyPrefix + "result/echo/abc"
	const want = "key prefix mcpcluster/ is reserved for the cluster's own use"

	if _, err := n.CacheSet(ctx, key, []byte("planted"), SetOptions{}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
		t.Fatalf("CacheSet of an internal key: %v", err)
	}
	if _, err := n.CacheDelete(ctx, key, SetOptions{}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
		t.Fatalf("CacheDelete of an internal key: %v", err)
	}
	if _, err := n.CacheSetInternal(ctx, "user/key", []byte("v"), SetOptions{}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("CacheSetInternal of a public key: %v", err)
	}
	if _, err := n.CacheSetInternal(ctx, key, []byte("real"), SetOptions{TTL: time.Minute}); err != nil {
		t.Fatalf("CacheSetInternal: %v", err)
	}
	if _, err := n.CacheSet(ctx, "mcpcluster", []byte("v"), SetOptions{}); err != nil {
		t.Fatalf("a key that only looks like the prefix: %v", err)
	}

	api := httptest.NewServer(NewAPI(n, DefaultAPIConfig()))
	defer api.Close()
	do := func(method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(ctx, method, api.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, method := range []string{http.MethodPut, http.MethodDelete} {
		if code, body := do(method, "/v1/cache/"+key, "planted"); code != http.StatusBadRequest || !strings.Contains(body, want) {
			t.Fatalf("%s of an internal key: %d %s", method, code, body)
		}
	}
	if code, body := do(http.MethodGet, "/v1/cache/"+key, ""); code != http.StatusOK || !strings.Contains(body, "real") {
		t.Fatalf("admin read of an internal key: %d %s", code, body)
	}
}
