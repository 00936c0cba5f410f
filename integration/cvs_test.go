package integration

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// newCVSRoot makes a CVS repository at PARENT/tree with cvs init, with some
// history, and returns both paths.
func newCVSRoot(t *testing.T) (parent, root string) {
	t.Helper()
	testenv.Require(t, testenv.CVS)
	parent = t.TempDir()
	root = filepath.Join(parent, "tree")
	if out, err := exec.Command("cvs", "-d", root, "init").CombinedOutput(); err != nil {
		t.Fatalf("cvs init: %v\n%s", err, out)
	}
	sh(t, []string{"T=" + root}, `printf 'O6b000000|someone|~/x|mod||mod\n' >> "$T/CVSROOT/history"
printf 'T1 y\n' >> "$T/CVSROOT/val-tags"`)
	return parent, root
}

// TestCVSInPlaceFilesAreCopies: in a CVS repository, CVSROOT/history and
// CVSROOT/val-tags (written in place by cvs) get real copies in the shadow,
// so a failed command leaves them byte for byte as they were.
func TestCVSInPlaceFilesAreCopies(t *testing.T) {
	t.Parallel()
	parent, root := newCVSRoot(t)
	history := filepath.Join(root, "CVSROOT", "history")
	old, err := os.ReadFile(history)
	if err != nil {
		t.Fatal(err)
	}
	before := capture(t, root)
	s := `echo 'M6b111111|root|~/w|mod|1.2|f.c' >> "$T/CVSROOT/history"
printf 'T2 y\n' >> "$T/CVSROOT/val-tags"
exit 1`
	r := treetx(t, env(root, t.TempDir()), runArgs(root, script(s))...)
	wantCode(t, r, 1)
	if strings.Contains(r.stderr, "lost") {
		t.Errorf("stderr reports lost content:\n%s", r.stderr)
	}
	if got, err := os.ReadFile(history); err != nil || !bytes.Equal(got, old) {
		t.Errorf("CVSROOT/history = %q, %v; want %q", got, err, old)
	}
	treeimage.AssertEqual(t, "before", before, "after rollback", capture(t, root))
	noLeftovers(t, parent, "tree")

	// With --no-cvs-copies they are hard links: the append is lost.
	r = treetx(t, env(root, t.TempDir()), runArgs(root, script(s), "--no-cvs-copies")...)
	wantCode(t, r, 125)
	contains(t, "stderr", r.stderr, "lost old content: CVSROOT/history", "lost old content: CVSROOT/val-tags")
}

// TestCVSRealCommitRollsBack runs a real cvs commit inside the transaction,
// then fails: the repository, history included, is as before. The same
// commit, succeeding, is kept without an in-place warning.
func TestCVSRealCommitRollsBack(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("slow (-short)")
	}
	parent, root := newCVSRoot(t)
	out := t.TempDir()
	sh(t, env(root, out), `set -e
mkdir "$O/src" "$O/work"
printf 'int main(void) { return 0; }\n' > "$O/src/f.c"
cd "$O/src" && cvs -Q -d "$T" import -m init mod vendor start
cd "$O/work" && cvs -Q -d "$T" checkout mod
printf '/* change */\n' >> "$O/work/mod/f.c"
cp -a "$O/work" "$O/work.bak"`)
	before := capture(t, root)
	commit := `cd "$O/work/mod" && cvs -Q -d "$T" commit -m change`
	r := treetx(t, env(root, out), runArgs(root, script(commit+" && exit 1"))...)
	wantCode(t, r, 1)
	if strings.Contains(r.stderr, "lost") {
		t.Errorf("stderr reports lost content:\n%s", r.stderr)
	}
	treeimage.AssertEqual(t, "before", before, "after rollback", capture(t, root))
	noLeftovers(t, parent, "tree")

	// The working copy believes it committed: put it back as it was, and
	// commit again, this time for real.
	sh(t, env(root, out), `rm -rf "$O/work" && mv "$O/work.bak" "$O/work"`)
	r = treetx(t, env(root, out), runArgs(root, script(commit))...)
	wantCode(t, r, 0)
	if strings.Contains(r.stderr, "warning") {
		t.Errorf("a cvs commit warns of in-place writes:\n%s", r.stderr)
	}
	if before.Equal(capture(t, root)) {
		t.Errorf("the committed cvs commit left the repository unchanged")
	}
	noLeftovers(t, parent, "tree")
}

// TestCVSLocksLeftOut: CVS lock names present when the shadow is taken are
// left out of it, so a rollback does not bring them back, and treetx says
// so.
func TestCVSLocksLeftOut(t *testing.T) {
	t.Parallel()
	parent, root := newCVSRoot(t)
	writeFiles(t, root, map[string]string{
		"mod/f.c,v":                  "x\n",
		"mod/#cvs.lock/":             "",
		"mod/#cvs.rfl.x.1":           "",
		"CVSROOT/#cvs.history.lock/": "",
		"mod/,f.c,":                  "partial\n",
	})
	isLock := func(p string) bool {
		b := filepath.Base(p)
		return strings.HasPrefix(b, "#cvs.") || strings.HasPrefix(b, ",") && strings.HasSuffix(b, ",") && len(b) > 1
	}
	before := treeimage.MustCapture(t, root, treeimage.Options{Ignore: isLock})
	r := treetx(t, env(root, t.TempDir()), runArgs(root, script(`rm "$T/mod/f.c,v"; exit 1`))...)
	wantCode(t, r, 1)
	contains(t, "stderr", r.stderr, "left out", "mod/#cvs.lock", "mod/#cvs.rfl.x.1")
	for _, p := range []string{"mod/#cvs.lock", "mod/#cvs.rfl.x.1", "CVSROOT/#cvs.history.lock", "mod/,f.c,"} {
		if exists(filepath.Join(root, p)) {
			t.Errorf("%s survived the rollback", p)
		}
	}
	treeimage.AssertEqual(t, "before (locks aside)", before, "after rollback", capture(t, root))
	noLeftovers(t, parent, "tree")
}
