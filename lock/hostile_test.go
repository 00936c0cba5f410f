package lock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/safeopen"
)

// TestPlantedLockFile plants what another user could under a lock file's
// name: Acquire and ReadHolder must refuse it at once, with the outside file
// unchanged.
func TestPlantedLockFile(t *testing.T) {
	cases := []struct {
		name  string
		plant func(t *testing.T, path, outside string)
	}{
		{"symlink to a file", func(t *testing.T, path, outside string) { must(t, os.Symlink(outside, path)) }},
		{"symlink to a directory", func(t *testing.T, path, outside string) { must(t, os.Symlink(filepath.Dir(outside), path)) }},
		{"dangling symlink", func(t *testing.T, path, outside string) { must(t, os.Symlink(outside+".none", path)) }},
		{"FIFO", func(t *testing.T, path, outside string) { must(t, unix.Mkfifo(path, 0o666)) }},
		{"directory", func(t *testing.T, path, outside string) { must(t, os.Mkdir(path, 0o755)) }},
		{"hard link to an outside file", func(t *testing.T, path, outside string) { must(t, os.Link(outside, path)) }},
	}
	for _, c := range cases {
		for _, mode := range []Mode{Exclusive, Shared} {
			t.Run(c.name+"/"+mode.String(), func(t *testing.T) {
				dir := t.TempDir()
				outside := filepath.Join(dir, "outside")
				must(t, os.WriteFile(outside, []byte("precious\n"), 0o644))
				path := filepath.Join(dir, ".#treetx.d.lock")
				c.plant(t, path, outside)
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				for _, timeout := range []time.Duration{0, time.Second} {
					l, err := Acquire(ctx, path, Options{Mode: mode, Timeout: timeout, Gate: filepath.Join(dir, ".#treetx.d.gate")})
					if err == nil {
						l.Release()
						t.Fatalf("Acquire(timeout %v) took a lock on a planted %s", timeout, c.name)
					}
					if !errors.Is(err, safeopen.ErrRefused) {
						t.Errorf("Acquire(timeout %v): %v, want a refusal", timeout, err)
					}
				}
				if _, err := ReadHolder(path); err == nil && c.name != "dangling symlink" {
					t.Errorf("ReadHolder read a planted %s", c.name)
				}
				data, err := os.ReadFile(outside)
				if err != nil || string(data) != "precious\n" {
					t.Errorf("outside file: %q, %v", data, err)
				}
				if _, err := os.Lstat(outside + ".none"); err == nil {
					t.Errorf("a file was created through the dangling symlink")
				}
			})
		}
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestHolderStringQuotesControls: a holder record another user wrote
// cannot send escape sequences to a terminal through the wait message.
func TestHolderStringQuotesControls(t *testing.T) {
	h := Holder{PID: 1, Host: "h\x1b]0;pwned\x07", User: "u\x1b[2J", Command: []string{"cvs", "x\x1b[31m"}}
	s := h.String()
	for _, c := range s {
		if c < ' ' || c == 0x7f {
			t.Fatalf("String() = %q holds a control character", s)
		}
	}
}
