package fsm

import (
	"bytes"
	"io"
	"reflect"
	"strings"
	"testing"
)

func TestReindexSnapshot(t *testing.T) {
	src := populate(t, 50)
	orig := persist(t, src.FSM)
	for _, index := range []uint64{1, src.LastIndex(), 1 << 40} {
		r, delta, err := ReindexSnapshot(bytes.NewReader(orig), index)
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(out)) != int64(len(orig))+delta {
			t.Fatalf("index %d: %d bytes, want %d%+d", index, len(out), len(orig), delta)
		}
		dst := New()
		if err := dst.Restore(io.NopCloser(bytes.NewReader(out))); err != nil {
			t.Fatalf("index %d: restore: %v", index, err)
		}
		if got := dst.LastIndex(); got != index {
			t.Fatalf("LastIndex() = %d, want %d", got, index)
		}
		want := readAll(src.FSM)
		want.Last = index
		if got := readAll(dst); !reflect.DeepEqual(got, want) {
			t.Fatalf("index %d: state differs after reindexing", index)
		}
	}

	for name, bad := range map[string]string{
		"empty":       "",
		"no newline":  `{"kind":"header","format":1,"index":3}`,
		"not header":  "{\"kind\":\"end\",\"count\":0}\n",
		"format":      "{\"kind\":\"header\",\"format\":9,\"index\":3}\n",
		"unknown":     "{\"kind\":\"header\",\"format\":1,\"index\":3,\"x\":1}\n",
		"payload":     "{\"kind\":\"header\",\"format\":1,\"node\":{\"id\":\"n\"}}\n",
		"long header": "{\"kind\":\"header\",\"format\":1" + strings.Repeat(" ", maxHeaderLine) + "}\n",
		"garbage":     "\x00\x01\n",
	} {
		if _, _, err := ReindexSnapshot(strings.NewReader(bad), 7); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}
