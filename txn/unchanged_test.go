package txn_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/treeimage"
	"github.com/treetx/treetx/txn"
)

// TestRollbackUnchanged checks which failed commands leave a tree that a
// rollback ends without putting the shadow back (its directories keep their
// inodes), and that the tree is the old one either way.
func TestRollbackUnchanged(t *testing.T) {
	tests := []struct {
		name      string
		do        func(p func(string) string) error
		unchanged bool
	}{
		{"nothing", func(func(string) string) error { return nil }, true},
		{"read", func(p func(string) string) error {
			_, err := os.ReadFile(p("CVSROOT/modules"))
			return err
		}, true},
		{"chmod a linked file", func(p func(string) string) error { return os.Chmod(p("a/run.sh"), 0o700) }, true},
		{"create and delete", func(p func(string) string) error {
			if err := os.WriteFile(p("a/tmp"), nil, 0o644); err != nil {
				return err
			}
			return os.Remove(p("a/tmp"))
		}, false},
		{"write a copy in place", func(p func(string) string) error {
			f, err := os.OpenFile(p("CVSROOT/history"), os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				return err
			}
			_, err = f.WriteString("x\n")
			return f.Close()
		}, false},
		{"chmod a directory", func(p func(string) string) error { return os.Chmod(p("a/b"), 0o700) }, false},
		{"touch a directory", func(p func(string) string) error {
			old := time.Unix(1e9, 0)
			return os.Chtimes(p("a/b"), old, old)
		}, false},
		{"chown a symlink", func(p func(string) string) error {
			return unix.Fchownat(unix.AT_FDCWD, p("links/to-dir"), os.Getuid(), os.Getgid(), unix.AT_SYMLINK_NOFOLLOW)
		}, false},
		{"replace a file", func(p func(string) string) error {
			if err := os.WriteFile(p("a/,new"), []byte("x"), 0o644); err != nil {
				return err
			}
			return os.Rename(p("a/,new"), p("a/run.sh"))
		}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := newSample(t)
			// Let the coarse clock of the file system tick past the
			// tree's making, as it has in any tree older than a moment.
			time.Sleep(20 * time.Millisecond)
			old, err := treeimage.Capture(dir, treeimage.Options{})
			if err != nil {
				t.Fatal(err)
			}
			var before unix.Stat_t
			if err := unix.Stat(filepath.Join(dir, "a/b"), &before); err != nil {
				t.Fatal(err)
			}
			tx, err := txn.Begin(dir, txn.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.do(func(rel string) string { return filepath.Join(dir, rel) }); err != nil {
				t.Fatal(err)
			}
			res, err := tx.Rollback()
			if err != nil {
				t.Fatal(err)
			}
			if res.Unchanged != tc.unchanged {
				t.Errorf("Unchanged = %v, want %v", res.Unchanged, tc.unchanged)
			}
			got, err := treeimage.Capture(dir, treeimage.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if d := old.Diff(got); len(d) > 0 {
				t.Errorf("after the rollback the tree differs from the old one:\n%v", d)
			}
			var after unix.Stat_t
			if err := unix.Stat(filepath.Join(dir, "a/b"), &after); err != nil {
				t.Fatal(err)
			}
			if same := after.Ino == before.Ino; same != tc.unchanged {
				t.Errorf("a/b kept its inode: %v, want %v", same, tc.unchanged)
			}
		})
	}
}
