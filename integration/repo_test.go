package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// Deploy acceptance 4: no build output and no file over 5 MB is tracked.
func TestRepositoryClean(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Dir(filepath.Dir(file))
	cmd := exec.Command("git", "ls-files", "-z")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Skipf("not a git checkout (or no git): %v", err)
	}
	const maxSize = 5 << 20
	for _, f := range bytes.Split(bytes.TrimRight(out, "\x00"), []byte{0}) {
		name := string(f)
		if name == "" {
			continue
		}
		switch {
		case name == "mcpcluster", strings.HasPrefix(name, "bin/"), strings.HasPrefix(name, "chaos-out/"),
			strings.HasPrefix(name, "data/"), strings.HasSuffix(name, ".test"), name == "deploy/mcpcluster":
			t.Errorf("build output is tracked: %s", name)
		}
		st, err := os.Stat(filepath.Join(root, name))
		if err != nil {
			continue // deleted in the work tree
		}
		if st.Size() > maxSize {
			t.Errorf("%s is tracked and %d bytes (over 5 MB)", name, st.Size())
		}
	}
}
