package integration

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// Scripts that change the sample tree at $T. Every file or symlink they
// create gets a fixed mtime, so that the tree treetx committed and the copy
// changed without treetx capture equal (directory mtimes aside).
const (
	addFiles = `printf 'new\n' > "$T/added.txt"
printf 'deep\n' > "$T/a/b/c/added2"
touch -d @1000000000 "$T/added.txt" "$T/a/b/c/added2"
`
	replaceByRename = `printf 'v2\n' > "$T/a/.tmp"
chmod 444 "$T/a/.tmp"
touch -d @1000000000 "$T/a/.tmp"
mv -f "$T/a/.tmp" "$T/a/readonly.txt"
mv -f "$T/a/run.sh" "$T/a/b/notes.txt"
mv -f "$T/mod/d1/f1.c,v" "$T/mod/d2/f2.c,v"
`
	deleteEntries = `rm "$T/with space.txt" "$T/private/secret.txt" "$T/fifo"
rm -r "$T/a/b"
rmdir "$T/empty"
`
	addDirs = `mkdir -p "$T/n1/n2/n3" "$T/sticky/sub"
mkdir -m 2770 "$T/n1/g"
printf x > "$T/n1/n2/n3/f"
touch -d @1000000000 "$T/n1/n2/n3/f"
`
	changeModes = `chmod 600 "$T/a/run.sh"
chmod 700 "$T/private"
chmod g-s "$T/shared"
chmod 4755 "$T/shared/data.bin"
chmod 755 "$T/ro"
`
	addSymlinks = `ln -s a/run.sh "$T/newlink"
ln -s /nowhere "$T/a/dangling2"
touch -h -d @1000000000 "$T/newlink" "$T/a/dangling2"
`
	swapKinds = `rm -r "$T/links"
printf l > "$T/links"
touch -d @1000000000 "$T/links"
rm "$T/fifo"
mkdir "$T/fifo"
`
)

// TestCommitKeepsExactlyTheChanges runs change scripts through treetx and,
// without it, on a copy of the same tree: the committed tree must equal the
// copy, and nothing but the lock file may be left beside it.
func TestCommitKeepsExactlyTheChanges(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		script string
		root   bool // needs root (chown)
	}{
		{"add files", addFiles, false},
		{"replace by rename", replaceByRename, false},
		{"delete files and directories", deleteEntries, false},
		{"add directories", addDirs, false},
		{"change modes", changeModes, false},
		{"change owner", `chown -R nobody "$T/mod" "$T/a/run.sh"` + "\n", true},
		{"add symlinks", addSymlinks, false},
		{"replace a directory by a file and a fifo by a directory", swapKinds, false},
		{"replace DIR itself", `mv "$T" "$O/moved"
mkdir "$T"
printf x > "$T/only"
touch -d @1000000000 "$T/only"
`, false},
		{"all at once", addFiles + replaceByRename + `rm "$T/with space.txt" "$T/private/secret.txt"
rmdir "$T/empty"
chmod 700 "$T/private"
chmod g-s "$T/shared"
chmod 4755 "$T/shared/data.bin"
` + addDirs + addSymlinks + swapKinds, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.root {
				testenv.Require(t, testenv.Root)
			}
			_, want := newSample(t)
			sh(t, env(want, t.TempDir()), "set -e\n"+tt.script)

			parent, tree := newSample(t)
			before := capture(t, tree)
			r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script("set -e\n"+tt.script))...)
			wantCode(t, r, 0)
			if r.stderr != "" {
				t.Errorf("stderr after a clean commit is not empty:\n%s", r.stderr)
			}

			opts := treeimage.Options{IgnoreDirMtime: true}
			got := treeimage.MustCapture(t, tree, opts)
			treeimage.AssertEqual(t, "changed without treetx", treeimage.MustCapture(t, want, opts), "committed", got)
			if before.Equal(capture(t, tree)) {
				t.Errorf("the committed tree equals the tree from before: the change was lost")
			}
			noLeftovers(t, parent, "tree")
			sameListing(t, parent, []string{"tree"}, lockName("tree"))
		})
	}
}

// TestCommitOnSymlinkToDirTransactsOnTarget: DIR may be a symlink to a
// directory; the transaction (lock and shadow names) is the target's, and
// the symlink stays a symlink.
func TestCommitOnSymlinkToDirTransactsOnTarget(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		status int
	}{{"commit", 0}, {"rollback", 1}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parent, real := newTree(t, map[string]string{"keep.txt": "keep\n", "sub/": ""})
			link := filepath.Join(parent, "link")
			if err := os.Symlink("tree", link); err != nil {
				t.Fatal(err)
			}
			before := capture(t, real)
			s := `printf n > "$T/new"; rm "$T/keep.txt"; exit ` + strconv.Itoa(tt.status)
			r := treetx(t, env(link, t.TempDir()), runArgs(link, script(s))...)
			wantCode(t, r, tt.status)
			if target, err := os.Readlink(link); err != nil || target != "tree" {
				t.Errorf("link: readlink = %q, %v; want it still a symlink to tree", target, err)
			}
			if tt.status == 0 {
				if !exists(filepath.Join(real, "new")) || exists(filepath.Join(real, "keep.txt")) {
					t.Errorf("the target does not hold the committed changes: %v", listing(t, real))
				}
			} else {
				treeimage.AssertEqual(t, "before", before, "after rollback", capture(t, real))
			}
			for _, name := range listing(t, parent) {
				if strings.HasPrefix(name, ".#treetx.link.") {
					t.Errorf("treetx made %q: the transaction must be the target's, not the link's", name)
				}
			}
			if !exists(filepath.Join(parent, lockName("tree"))) {
				t.Errorf("no %s: the transaction was not on the target", lockName("tree"))
			}
			noLeftovers(t, parent, "tree")
		})
	}
}

// TestDirSpellings: DIR may be relative, have a trailing slash or dots, or
// be the working directory itself; it is the same transaction.
func TestDirSpellings(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, cwd, dir string }{
		{"relative", "parent", "tree"},
		{"trailing slash", "parent", "./tree/"},
		{"dot inside", "parent", "tree/."},
		{"dot-dot", "tree", "sub/../../tree"},
		{"working directory", "tree", "."},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parent, tree := newTree(t, map[string]string{"f": "f\n", "sub/": ""})
			before := capture(t, tree)
			cwd := map[string]string{"parent": parent, "tree": tree}[tt.cwd]
			s := `printf n > "$T/new"; rm "$T/f"; exit 1`
			r := invoke(t, invocation{args: runArgs(tt.dir, script(s)), env: env(tree, t.TempDir()), dir: cwd})
			wantCode(t, r, 1)
			treeimage.AssertEqual(t, "before", before, "after rollback", capture(t, tree))
			noLeftovers(t, parent, "tree")
			sameListing(t, parent, []string{"tree"}, lockName("tree"))
			r = invoke(t, invocation{args: runArgs(tt.dir, script(`printf n > "$T/new"`)), env: env(tree, t.TempDir()), dir: cwd})
			wantCode(t, r, 0)
			if !exists(filepath.Join(tree, "new")) {
				t.Errorf("the change was not committed")
			}
			sameListing(t, parent, []string{"tree"}, lockName("tree"))
		})
	}
}
