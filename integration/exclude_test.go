package integration

import (
	"os"
	"path"
	"path/filepath"
	"strings"
	"testing"

	"github.com/treetx/treetx/internal/treeimage"
)

// TestExcludeLeavesOut: entries matching --exclude are not in the shadow;
// a rollback does not bring them back, and treetx names them.
func TestExcludeLeavesOut(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, map[string]string{
		"keep.txt": "k\n", "a.tmp": "a\n", "sub/b.tmp": "b\n", "sub/c.txt": "c\n", "dir.tmp/inside": "i\n",
	})
	out := t.TempDir()
	isTmp := func(p string) bool {
		m, _ := path.Match("*.tmp", path.Base(p))
		return m || strings.HasPrefix(p, "dir.tmp/")
	}
	before := treeimage.MustCapture(t, tree, treeimage.Options{Ignore: isTmp})
	// The command looks into the shadow beside DIR, then fails.
	s := `S="$(dirname "$T")/.#treetx.tree.complete"
for f in keep.txt sub/c.txt a.tmp sub/b.tmp dir.tmp; do
	if [ -e "$S/$f" ]; then echo "$f in"; else echo "$f out"; fi
done > "$O/shadow"
printf n > "$T/new.txt"
rm "$T/keep.txt"
exit 1`
	r := treetx(t, env(tree, out), runArgs(tree, script(s), "--exclude", "*.tmp")...)
	wantCode(t, r, 1)
	shadow, err := os.ReadFile(filepath.Join(out, "shadow"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "keep.txt in\nsub/c.txt in\na.tmp out\nsub/b.tmp out\ndir.tmp out\n"; string(shadow) != want {
		t.Errorf("the shadow held:\n%s\nwant:\n%s", shadow, want)
	}
	for _, p := range []string{"a.tmp", "sub/b.tmp", "dir.tmp"} {
		if exists(filepath.Join(tree, p)) {
			t.Errorf("excluded %s survived the rollback", p)
		}
	}
	contains(t, "stderr", r.stderr, "left out", "a.tmp", "sub/b.tmp", "dir.tmp")
	treeimage.AssertEqual(t, "before (excluded aside)", before, "after rollback", capture(t, tree))
	noLeftovers(t, parent, "tree")
}

// TestExcludeCommitKeepsExcluded: on commit, excluded entries are simply
// what the command left.
func TestExcludeCommitKeepsExcluded(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, map[string]string{"keep.txt": "k\n", "a.tmp": "a\n"})
	r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script(`printf b > "$T/b.tmp"; printf n > "$T/new"`), "--exclude", "*.tmp")...)
	wantCode(t, r, 0)
	for _, p := range []string{"a.tmp", "b.tmp", "new", "keep.txt"} {
		if !exists(filepath.Join(tree, p)) {
			t.Errorf("%s is missing after commit", p)
		}
	}
	noLeftovers(t, parent, "tree")
}
