package snapshot

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/safeopen"
	"github.com/treetx/treetx/internal/testenv"
)

// TestInodeReuseRefused: a manifest record matches a file by inode
// number; a file born after the manifest was complete that reuses the
// number is not the recorded file. Restore leaves it alone and Changed
// fails, where the file system keeps birth times.
func TestInodeReuseRefused(t *testing.T) {
	root := t.TempDir()
	f := filepath.Join(root, "f")
	if err := os.WriteFile(f, []byte("planted"), 0o644); err != nil {
		t.Fatal(err)
	}
	born, ok := safeopen.Born(unix.AT_FDCWD, f)
	if !ok {
		testenv.Unavailable(t, "no birth times on the file system of %s", root)
	}
	var st unix.Stat_t
	if err := unix.Lstat(f, &st); err != nil {
		t.Fatal(err)
	}
	rec := Record{Path: "f", Ino: st.Ino, Mode: 0o4755, UID: 0, GID: 0, Size: st.Size, Atime: st.Atim, Mtime: st.Mtim}
	recs := func(fn func(Record) error) error { return fn(rec) }
	rootfd, err := safeopen.OpenDir(root)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rootfd)
	taken := unix.Timespec{Sec: born.Sec - 1, Nsec: born.Nsec}

	if _, err := Changed(rootfd, root, recs, taken); err == nil || !strings.Contains(err.Error(), "born after the manifest") {
		t.Errorf("Changed: %v, want a refusal of the reused inode", err)
	}
	restored, skipped, err := Restore(rootfd, root, recs, taken, nil)
	if err != nil || restored != 0 || skipped != 1 {
		t.Errorf("Restore: restored %d skipped %d err %v, want the reused inode skipped", restored, skipped, err)
	}
	if err := unix.Lstat(f, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&0o7777 != 0o644 {
		t.Errorf("mode of the reused inode is %o", st.Mode&0o7777)
	}
	// The same record, taken after the file was born, is restored.
	if _, _, err := Restore(rootfd, root, recs, unix.Timespec{Sec: born.Sec + 1}, nil); err != nil {
		t.Fatal(err)
	}
	if err := unix.Lstat(f, &st); err != nil || st.Mode&0o7777 != 0o4755 {
		t.Errorf("a record of the file itself was not restored: mode %o, %v", st.Mode&0o7777, err)
	}
}
