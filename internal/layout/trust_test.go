package layout

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/safeopen"
	"github.com/treetx/treetx/internal/testenv"
)

// TestCheckShadowTrust: the directory under a shadow's inode is the
// journal's shadow only when the journal's owner could have made it, and,
// where birth times are kept, it was born before the journal was written.
func TestCheckShadowTrust(t *testing.T) {
	testenv.Require(t, testenv.Root)
	p := t.TempDir()
	jpath := filepath.Join(p, ".#treetx.repo.journal")
	data := `{"version":1,"id":"3f9c0a1b2c3d4e5f","phase":"running","shadow":{"dev":1,"ino":3}}`
	shadow := filepath.Join(p, ".#treetx.repo.complete")
	if err := os.Mkdir(shadow, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(jpath, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(shadow, &st); err != nil {
		t.Fatal(err)
	}
	check := func() error {
		j, err := ReadJournal(jpath)
		if err != nil {
			t.Fatal(err)
		}
		return j.CheckShadow(unix.AT_FDCWD, shadow, shadow, &st)
	}
	if err := check(); err != nil {
		t.Fatalf("root's journal, shadow made before it: %v", err)
	}
	// Another user's journal: the shadow must be that user's.
	if err := os.Lchown(jpath, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := check(); !errors.Is(err, safeopen.ErrRefused) {
		t.Errorf("nobody's journal, root's shadow: %v, want a refusal", err)
	}
	if err := os.Lchown(shadow, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(shadow, &st); err != nil {
		t.Fatal(err)
	}
	if err := check(); err != nil {
		t.Errorf("nobody's journal and shadow: %v", err)
	}
	// A journal last written before the directory was born.
	if _, ok := safeopen.Born(unix.AT_FDCWD, shadow); ok {
		old := time.Now().Add(-time.Hour)
		if err := os.Chtimes(jpath, old, old); err != nil {
			t.Fatal(err)
		}
		if err := check(); !errors.Is(err, safeopen.ErrRefused) {
			t.Errorf("a shadow born after the journal was written: %v, want a refusal", err)
		}
	}
	// A journal others may write, or with a second link, is not read.
	if err := os.Chmod(jpath, 0o666); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadJournal(jpath); !errors.Is(err, safeopen.ErrRefused) {
		t.Errorf("a world-writable journal: %v, want a refusal", err)
	}
	if err := os.Chmod(jpath, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(jpath, filepath.Join(p, "other")); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadJournal(jpath); !errors.Is(err, safeopen.ErrRefused) {
		t.Errorf("a journal with two links: %v, want a refusal", err)
	}
}
