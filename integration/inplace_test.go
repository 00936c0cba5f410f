package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

var failedName = regexp.MustCompile(`^\.#treetx\.tree\.failed\.[0-9a-f]{16}$`)

// inPlaceFiles is the tree of the in-place tests.
var inPlaceFiles = map[string]string{"file": "old\n", "keep.txt": "keep\n", "sub/g": "g\n", "gone.txt": "gone\n"}

// inPlaceScript appends to file in place (through the inode the shadow
// shares), and changes other entries by name.
const inPlaceScript = `echo x >> "$T/file"
printf n > "$T/added"
rm "$T/gone.txt"
mkdir "$T/sub/d"
`

// TestInPlaceWriteFailingCommand: the old content of a file written in
// place is lost to a rollback. treetx says so (exit 125, the file listed),
// keeps the failed tree beside DIR, and restores everything else.
func TestInPlaceWriteFailingCommand(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, inPlaceFiles)
	notFile := treeimage.Options{Ignore: func(p string) bool { return p == "file" }}
	before := treeimage.MustCapture(t, tree, notFile)
	r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script(inPlaceScript+"exit 1"))...)
	wantCode(t, r, 125)
	contains(t, "stderr", r.stderr, "lost old content: file")
	if strings.Contains(r.stderr, "lost old content: keep.txt") || strings.Contains(r.stderr, "lost old content: sub/g") {
		t.Errorf("files not written in place are listed as lost:\n%s", r.stderr)
	}
	treeimage.AssertEqual(t, "before", before, "after rollback", treeimage.MustCapture(t, tree, notFile))
	if b, err := os.ReadFile(filepath.Join(tree, "file")); err != nil || string(b) != "old\nx\n" {
		t.Errorf("file = %q, %v; want what the command wrote (the old content is lost)", b, err)
	}
	var kept []string
	for _, name := range listing(t, parent) {
		if failedName.MatchString(name) {
			kept = append(kept, name)
		} else if name != "tree" && name != lockName("tree") && !gateName.MatchString(name) && !removalName.MatchString(name) {
			t.Errorf("%s: unexpected %q", parent, name)
		}
	}
	if len(kept) != 1 {
		t.Fatalf("want one failed tree .#treetx.tree.failed.<16 hex> in %s, have %q", parent, kept)
	}
	contains(t, "stderr", r.stderr, kept[0])
	failed := filepath.Join(parent, kept[0])
	if !exists(filepath.Join(failed, "added")) || exists(filepath.Join(failed, "gone.txt")) {
		t.Errorf("the kept tree is not the failed one: %v", listing(t, failed))
	}
	r = treetx(t, nil, "status", tree)
	wantCode(t, r, 0)
}

// TestInPlaceWriteCommit: a commit keeps what was written in place, and
// warns that a failure would have lost the old content.
func TestInPlaceWriteCommit(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, inPlaceFiles)
	r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script(inPlaceScript))...)
	wantCode(t, r, 0)
	contains(t, "stderr", r.stderr, "warning", "file", "--copy")
	for _, line := range strings.Split(r.stderr, "\n") {
		if strings.HasSuffix(line, " keep.txt") || strings.HasSuffix(line, " sub/g") {
			t.Errorf("a file not written in place is listed: %q", line)
		}
	}
	if b, err := os.ReadFile(filepath.Join(tree, "file")); err != nil || string(b) != "old\nx\n" {
		t.Errorf("file = %q, %v; want the appended content", b, err)
	}
	if !exists(filepath.Join(tree, "added")) || exists(filepath.Join(tree, "gone.txt")) {
		t.Errorf("the other changes were not committed: %v", listing(t, tree))
	}
	noLeftovers(t, parent, "tree")
}

// TestInPlaceWriteCopyProtects: --copy gives the file a real copy in the
// shadow, so a rollback restores its old content and the command's status
// passes through.
func TestInPlaceWriteCopyProtects(t *testing.T) {
	t.Parallel()
	for _, glob := range []string{"file", "fi*", "**/file"} {
		t.Run(glob, func(t *testing.T) {
			t.Parallel()
			parent, tree := newTree(t, inPlaceFiles)
			before := capture(t, tree)
			r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script(inPlaceScript+"exit 1"), "--copy", glob)...)
			wantCode(t, r, 1)
			if strings.Contains(r.stderr, "lost") {
				t.Errorf("stderr reports lost content despite --copy:\n%s", r.stderr)
			}
			treeimage.AssertEqual(t, "before", before, "after rollback", capture(t, tree))
			noLeftovers(t, parent, "tree")
		})
	}
}

// TestWatchAndFullCheckAgree: run as root, treetx checks only the files the
// file-system watch saw touched (-v says how many); --full-check checks
// every file. Both find the write in place, restore a chmod and a chown of
// linked files, and say the same.
func TestWatchAndFullCheckAgree(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.Root)
	const s = `echo x >> "$T/file"; chmod 4700 "$T/keep.txt"; chown 65534 "$T/sub/g"; exit 1`
	for _, flags := range [][]string{nil, {"--full-check"}} {
		_, tree := newTree(t, inPlaceFiles)
		notFile := treeimage.Options{Ignore: func(p string) bool { return p == "file" }}
		before := treeimage.MustCapture(t, tree, notFile)
		r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script(s), append([]string{"-v"}, flags...)...)...)
		wantCode(t, r, 125)
		contains(t, "stderr", r.stderr, "lost old content: file")
		treeimage.AssertEqual(t, "before", before, "after rollback "+strings.Join(flags, " "), treeimage.MustCapture(t, tree, notFile))
		if watched := strings.Contains(r.stderr, `msg="file-system watch"`); watched == (flags != nil) {
			t.Errorf("flags %q: file-system watch used: %v\n%s", flags, watched, r.stderr)
		}
	}
}
