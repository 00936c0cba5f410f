package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// TestBadDirRefused: a DIR treetx cannot work on exits 125 with one line on
// stderr naming the problem; the command does not run, and nothing changes
// in DIR or beside it.
func TestBadDirRefused(t *testing.T) {
	t.Parallel()
	type setup struct {
		dir     string   // DIR argument
		parent  string   // where nothing may appear
		allowed []string // names that may appear in parent anyway
		cred    *syscall.Credential
		after   func(t *testing.T) // extra checks
	}
	tests := []struct {
		name  string
		setup func(t *testing.T, tmp string) setup
		want  []string // in the one stderr line
	}{
		{"DIR missing", func(t *testing.T, tmp string) setup {
			return setup{dir: filepath.Join(tmp, "missing"), parent: tmp}
		}, []string{"missing", "no such directory"}},
		{"DIR is a regular file", func(t *testing.T, tmp string) setup {
			writeFiles(t, tmp, map[string]string{"file": "x\n"})
			return setup{dir: filepath.Join(tmp, "file"), parent: tmp}
		}, []string{"file", "not a directory"}},
		{"DIR is a symlink to a file", func(t *testing.T, tmp string) setup {
			writeFiles(t, tmp, map[string]string{"file": "x\n"})
			if err := os.Symlink("file", filepath.Join(tmp, "link")); err != nil {
				t.Fatal(err)
			}
			return setup{dir: filepath.Join(tmp, "link"), parent: tmp}
		}, []string{"not a directory"}},
		{"DIR is /", func(t *testing.T, tmp string) setup {
			return setup{dir: "/", parent: "/"}
		}, []string{"/", "root directory"}},
		{"DIR is a mount point", func(t *testing.T, tmp string) setup {
			mnt := filepath.Join(tmp, "mnt")
			if err := os.Mkdir(mnt, 0o755); err != nil {
				t.Fatal(err)
			}
			mountTmpfs(t, mnt)
			writeFiles(t, mnt, map[string]string{"f": "f\n"})
			inside := listing(t, mnt)
			return setup{dir: mnt, parent: tmp, after: func(t *testing.T) {
				sameListing(t, mnt, inside)
			}}
		}, []string{"mnt", "mount point"}},
		{"DIR is a bind mount on the same file system", func(t *testing.T, tmp string) setup {
			writeFiles(t, tmp, map[string]string{"tree/f": "f\n"})
			tree := filepath.Join(tmp, "tree")
			mount(t, tree, "--bind", tree, tree)
			return setup{dir: tree, parent: tmp}
		}, []string{"tree", "mount point"}},
		{"DIR on a read-only file system", func(t *testing.T, tmp string) setup {
			mnt := filepath.Join(tmp, "mnt")
			if err := os.Mkdir(mnt, 0o755); err != nil {
				t.Fatal(err)
			}
			mountTmpfs(t, mnt)
			writeFiles(t, mnt, map[string]string{"tree/f": "f\n"})
			if out, err := exec.Command("mount", "-o", "remount,ro", mnt).CombinedOutput(); err != nil {
				t.Fatalf("remount ro: %v: %s", err, out)
			}
			return setup{dir: filepath.Join(mnt, "tree"), parent: mnt}
		}, []string{"tree", "read-only"}},
		{"parent not writable", func(t *testing.T, tmp string) setup {
			testenv.Require(t, testenv.Root)
			// nobody must reach DIR: open up the temporary directories.
			for _, d := range []string{filepath.Dir(tmp), tmp} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			parent := filepath.Join(tmp, "parent")
			writeFiles(t, parent, map[string]string{"tree/f": "f\n"})
			if err := os.Chmod(filepath.Join(parent, "tree"), 0o777); err != nil {
				t.Fatal(err)
			}
			return setup{dir: filepath.Join(parent, "tree"), parent: parent,
				cred: &syscall.Credential{Uid: 65534, Gid: 65534}}
		}, []string{"parent", "not writable"}},
		{"shadow name present but not ours", func(t *testing.T, tmp string) setup {
			writeFiles(t, tmp, map[string]string{"tree/f": "f\n", ".#treetx.tree.complete/planted": "mine\n"})
			planted := filepath.Join(tmp, ".#treetx.tree.complete")
			img := capture(t, planted)
			// The lock is taken before the names beside DIR are read, so
			// its file may appear (it is never deleted, by design).
			return setup{dir: filepath.Join(tmp, "tree"), parent: tmp, allowed: []string{lockName("tree")},
				after: func(t *testing.T) {
					tree := filepath.Join(tmp, "tree")
					r := treetx(t, nil, "status", tree)
					wantCode(t, r, 125)
					contains(t, "status", r.stdout, "needs a person")
					wantCode(t, treetx(t, nil, "recover", tree), 125)
					treeimage.AssertEqual(t, "planted before", img, "planted after", capture(t, planted))
				}}
		}, []string{".#treetx.tree.complete"}},
		{"name too long for the shadow names", func(t *testing.T, tmp string) setup {
			name := strings.Repeat("n", 230)
			writeFiles(t, tmp, map[string]string{name + "/f": "f\n"})
			return setup{dir: filepath.Join(tmp, name), parent: tmp}
		}, []string{"230 bytes"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tmp := t.TempDir()
			s := tt.setup(t, tmp)
			var before treeimage.Image
			if fi, err := os.Stat(s.dir); err == nil && fi.IsDir() && s.dir != "/" {
				before = capture(t, s.dir)
			}
			names := listing(t, s.parent)
			marker := filepath.Join(t.TempDir(), "ran")
			r := invoke(t, invocation{args: runArgs(s.dir, []string{"touch", marker}), cred: s.cred, dir: "/"})
			wantCode(t, r, 125)
			oneLine(t, r.stderr, tt.want...)
			if exists(marker) {
				t.Errorf("the command ran")
			}
			if before != nil {
				treeimage.AssertEqual(t, "before", before, "after", capture(t, s.dir))
			}
			sameListing(t, s.parent, names, s.allowed...)
			if s.after != nil {
				s.after(t)
			}
		})
	}
}
