package txn_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
	"github.com/treetx/treetx/txn"
)

// metadata lists, for every non-directory entry of dir but skip, what goes
// through a shared inode and treeimage leaves out: atime and extended
// attributes. It reads no file, so it changes no atime.
func metadata(t *testing.T, dir string, skip []string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		names := make([]byte, 4096)
		n, err := unix.Llistxattr(p, names)
		if err != nil && !errors.Is(err, unix.ENOTSUP) {
			return err
		}
		var xs []string
		for name := range strings.SplitSeq(strings.TrimSuffix(string(names[:n]), "\x00"), "\x00") {
			if name == "" {
				continue
			}
			v := make([]byte, 4096)
			m, err := unix.Lgetxattr(p, name, v)
			if err != nil {
				return err
			}
			xs = append(xs, name+"="+string(v[:m]))
		}
		rel, _ := filepath.Rel(dir, p)
		if slices.Contains(skip, rel) {
			return nil
		}
		out = append(out, fmt.Sprintf("%s atime=%d xattrs=%v", rel, st.Atim.Nano(), xs))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// touches are the ways a command can reach a linked file's inode, each on
// files of the sample tree. Those listed in lost write its content in place.
var touches = []struct {
	name string
	lost []string
	do   func(p func(string) string) error
}{
	{"append", []string{"a/b/c/deep.txt"}, func(p func(string) string) error {
		f, err := os.OpenFile(p("a/b/c/deep.txt"), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		_, err = f.WriteString("more\n")
		return errors.Join(err, f.Close())
	}},
	{"truncate by path", []string{"a/readonly.txt"}, func(p func(string) string) error { return os.Truncate(p("a/readonly.txt"), 3) }},
	{"write from a child", []string{"shared/data.bin"}, func(p func(string) string) error {
		return exec.Command("sh", "-c", `printf X | dd of="$0" bs=1 seek=2 conv=notrunc 2>/dev/null`, p("shared/data.bin")).Run()
	}},
	{"mmap", []string{"with space.txt"}, func(p func(string) string) error {
		f, err := os.OpenFile(p("with space.txt"), os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		m, err := unix.Mmap(int(f.Fd()), 0, 4, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
		if err != nil {
			return err
		}
		m[0] = 'N'
		return errors.Join(unix.Msync(m, unix.MS_SYNC), unix.Munmap(m))
	}},
	{"chmod", nil, func(p func(string) string) error { return os.Chmod(p("a/run.sh"), 0o6700) }},
	{"chown", nil, func(p func(string) string) error { return os.Lchown(p("private/secret.txt"), 65534, 65534) }},
	// A changed mtime cannot be told from a write in place.
	{"utimes", []string{"a/b/notes.txt"}, func(p func(string) string) error {
		return os.Chtimes(p("a/b/notes.txt"), time.Unix(5, 0), time.Unix(7, 0))
	}},
	{"xattrs", nil, func(p func(string) string) error {
		return errors.Join(unix.Lsetxattr(p("mod/d1/f1.c,v"), "user.new", []byte("v"), 0),
			unix.Lsetxattr(p("CVSROOT/modules"), "user.other", []byte("w"), 0))
	}},
	{"read", nil, func(p func(string) string) error {
		_, err := os.ReadFile(p("CVSROOT/modules"))
		return err
	}},
	{"link and unlink", nil, func(p func(string) string) error {
		return errors.Join(os.Link(p("a/run.sh"), p("a/run2.sh")), os.Remove(p("a/b/notes.txt")))
	}},
	{"replace by rename", nil, func(p func(string) string) error {
		if err := os.WriteFile(p("a/,deep"), []byte("new\n"), 0o644); err != nil {
			return err
		}
		return os.Rename(p("a/,deep"), p("a/b/c/deep.txt"))
	}},
}

// endBoth runs each touch in a transaction on a new sample tree and ends it
// with end, once with the file-system watch and once with FullCheck. It
// checks that both report the touch's lost files, and, if restores is set,
// that both leave the tree, its atimes and its attributes as they were,
// but for the lost files.
func endBoth(t *testing.T, restores bool, end func(*txn.Tx) ([]string, error)) {
	for _, tc := range touches {
		t.Run(tc.name, func(t *testing.T) {
			for _, full := range []bool{false, true} {
				dir := newSample(t)
				// An attribute to keep, on a file some touches change.
				if err := unix.Lsetxattr(filepath.Join(dir, "mod/d1/f1.c,v"), "user.kept", []byte("old"), 0); err != nil && !errors.Is(err, unix.ENOTSUP) {
					t.Fatal(err)
				}
				notLost := treeimage.Options{Ignore: func(p string) bool { return slices.Contains(tc.lost, p) }}
				// The image reads every file; the atimes are taken after.
				oldImage := treeimage.MustCapture(t, dir, notLost)
				oldMeta := metadata(t, dir, tc.lost)
				var log bytes.Buffer
				tx, err := txn.Begin(dir, txn.Options{FullCheck: full, Logger: slog.New(slog.NewTextHandler(&log, &slog.HandlerOptions{Level: slog.LevelDebug}))})
				if err != nil {
					t.Fatal(err)
				}
				if err := tc.do(func(rel string) string { return filepath.Join(dir, rel) }); err != nil {
					t.Fatal(err)
				}
				report, err := end(tx)
				if err != nil {
					t.Fatal(err)
				}
				watched := strings.Contains(log.String(), `msg="file-system watch"`)
				if full && watched {
					t.Errorf("FullCheck used the file-system watch")
				}
				if !full && !watched {
					if os.Geteuid() == 0 {
						t.Fatalf("no file-system watch as root; log:\n%s", log.String())
					}
					testenv.Unavailable(t, "no file-system watch (needs CAP_SYS_ADMIN)")
				}
				what := map[bool]string{false: "watched", true: "full check"}[full]
				if !slices.Equal(report, tc.lost) {
					t.Errorf("%s: reported %q, want %q", what, report, tc.lost)
				}
				if !restores {
					continue
				}
				if got := metadata(t, dir, tc.lost); !slices.Equal(got, oldMeta) {
					t.Errorf("%s: atimes or attributes not restored:\nwant %q\ngot  %q", what, oldMeta, got)
				}
				treeimage.AssertEqual(t, "old", oldImage, what, treeimage.MustCapture(t, dir, notLost))
			}
		})
	}
}

// TestWatchedRollbackMatchesFullCheck: a rollback that checks only the files
// the watch saw touched restores what checking every file restores, and
// finds the same lost content.
func TestWatchedRollbackMatchesFullCheck(t *testing.T) {
	endBoth(t, true, func(tx *txn.Tx) ([]string, error) {
		res, err := tx.Rollback()
		if lost := (*txn.LostContentError)(nil); errors.As(err, &lost) {
			return res.Lost, nil
		}
		if err != nil {
			return nil, err
		}
		return res.Lost, nil
	})
}

// TestWatchedCommitMatchesFullCheck: a commit warns of the same writes in
// place either way.
func TestWatchedCommitMatchesFullCheck(t *testing.T) {
	endBoth(t, false, func(tx *txn.Tx) ([]string, error) {
		res, err := tx.Commit()
		if err != nil {
			return nil, err
		}
		return res.InPlace, nil
	})
}

// TestWatchSeesAMappingMadeBeforeBegin: a shared mapping made before the
// transaction began writes without any event; the file counts as touched
// because this process holds it mapped.
func TestWatchSeesAMappingMadeBeforeBegin(t *testing.T) {
	dir := newSample(t)
	f, err := os.OpenFile(filepath.Join(dir, "with space.txt"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := unix.Mmap(int(f.Fd()), 0, 4, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer unix.Munmap(m)
	tx, err := txn.Begin(dir, txn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	m[0] = 'N'
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		t.Fatal(err)
	}
	res, err := tx.Rollback()
	var lost *txn.LostContentError
	if !errors.As(err, &lost) || !slices.Equal(res.Lost, []string{"with space.txt"}) {
		t.Fatalf("Rollback: %v, lost %q; want the mapped file reported lost", err, res.Lost)
	}
}
