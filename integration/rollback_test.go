package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// Scripts that damage the sample tree at $T in every way a command can.
const (
	renameOver = `mv -f "$T/a/run.sh" "$T/a/readonly.txt"
mv -f "$T/mod/d1/f1.c,v" "$T/mod/d2/f2.c,v"
mv -f "$T/links/to-file" "$T/links/dangling"
mv -f "$T/a/b/c" "$T/empty/c"
`
	deleteAll = `rm -f "$T/a/b/notes.txt" "$T/fifo" "$T/new
line.txt"
rm -r "$T/links" "$T/a/b/c" "$T/ro"
rmdir "$T/empty"
`
	createDirs = `mkdir -p "$T/x/y/z" "$T/empty/sub" "$T/sticky/s"
printf n > "$T/x/y/z/f"
mkfifo "$T/empty/sub/p"
`
	chmodR = `chmod -R 700 "$T" 2>/dev/null
`
	chownR = `chown -R nobody "$T" 2>/dev/null
`
	touchD = `touch -d '2011-11-11 11:11:11' "$T/a/run.sh" "$T/shared/data.bin" "$T/mod/d1/f1.c,v"
`
)

// TestRollbackRestoresTreeByteForByte damages the sample tree and fails:
// the tree must come back exactly (modes, owners, directory mtimes,
// symlinks, empty directories, the fifo, setgid and sticky directories),
// with nothing left beside it but the lock file.
func TestRollbackRestoresTreeByteForByte(t *testing.T) {
	t.Parallel()
	all := renameOver + createDirs + chmodR + chownR
	tests := []struct {
		name   string
		script string
		want   int
		root   bool
	}{
		{"rename over", renameOver + "exit 1", 1, false},
		{"delete", deleteAll + "exit 1", 1, false},
		{"create directories", createDirs + "exit 1", 1, false},
		{"chmod -R", chmodR + "exit 1", 1, false},
		{"chown -R nobody", chownR + "exit 1", 1, true},
		{"all but touch", all + "exit 1", 1, true},
		{"killed by SIGKILL", all + `kill -9 $$`, 137, true},
		{"killed by SIGTERM", all + `kill -TERM $$`, 143, true},
		{"command removes DIR", all + `rm -rf "$T"; exit 1`, 1, true},
		{"command renames DIR away", all + `mv "$T" "$O/moved"; exit 1`, 1, true},
		{"command replaces DIR by an empty directory", all + `mv "$T" "$O/moved"; mkdir "$T"; exit 1`, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.root {
				testenv.Require(t, testenv.Root)
			}
			parent, tree := newSample(t)
			before := capture(t, tree)
			r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script(tt.script))...)
			wantCode(t, r, tt.want)
			contains(t, "stderr", r.stderr, "rolled back")
			treeimage.AssertEqual(t, "before", before, "after rollback", capture(t, tree))
			noLeftovers(t, parent, "tree")
			sameListing(t, parent, []string{"tree"}, lockName("tree"))
		})
	}
}

// TestRollbackReportsMtimeChangeAsWrittenInPlace: from stat alone, a file
// whose mtime changed (touch -d) cannot be told from one written in place
// with the same size, so treetx reports it as possibly lost (exit 125, the
// failed tree kept), restores everything else, and leaves such a file its
// new mtime so that it still looks changed. A false alarm is recoverable; a
// missed write in place would be silent data loss.
func TestRollbackReportsMtimeChangeAsWrittenInPlace(t *testing.T) {
	t.Parallel()
	parent, tree := newSample(t)
	touched := []string{"a/run.sh", "shared/data.bin", "mod/d1/f1.c,v"}
	isTouched := func(p string) bool { return slices.Contains(touched, p) }
	before := treeimage.MustCapture(t, tree, treeimage.Options{Ignore: isTouched})
	r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script(touchD+"chmod 600 \"$T/with space.txt\"; exit 1"))...)
	wantCode(t, r, 125)
	for _, p := range touched {
		contains(t, "stderr", r.stderr, "lost old content: "+p)
	}
	treeimage.AssertEqual(t, "before", before, "after rollback", treeimage.MustCapture(t, tree, treeimage.Options{Ignore: isTouched}))
	for _, p := range touched {
		fi, err := os.Stat(filepath.Join(tree, p))
		if err != nil || fi.ModTime().Year() != 2011 {
			t.Errorf("%s: mtime %v, %v; want the one touch -d set", p, fi.ModTime(), err)
		}
	}
	kept, _ := filepath.Glob(filepath.Join(parent, ".#treetx.tree.failed.*"))
	if len(kept) != 1 {
		t.Errorf("failed trees kept: %v, want one", kept)
	}
}

// TestRollbackUnchangedKeepsWorkingDirectory: a failed command that changed
// nothing is rolled back without putting the shadow back, so a process
// whose working directory is inside the tree still has one; one that really
// rolled back leaves such a process in the failed tree, deleted (empty),
// where "cd $PWD" finds the restored directory.
func TestRollbackUnchangedKeepsWorkingDirectory(t *testing.T) {
	t.Parallel()
	_, tree := newTree(t, map[string]string{"sub/f": "f\n"})
	time.Sleep(20 * time.Millisecond)
	sub := filepath.Join(tree, "sub")
	// The command fails without changing anything; afterwards the shell,
	// whose working directory is sub, can still list it.
	cmd := exec.Command("sh", "-c", `"$TX" run -q "$T" -- sh -c 'cat f >/dev/null; exit 1'; echo "status $?"; ls`)
	cmd.Dir = sub
	cmd.Env = append(os.Environ(), "TX="+treetxPath, "T="+tree)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := string(out); got != "status 1\nf\n" {
		t.Errorf("an unchanged rollback: got %q, want %q (the working directory kept)", got, "status 1\nf\n")
	}
	// A real rollback: the old working directory is gone, cd $PWD finds
	// the restored one.
	cmd = exec.Command("sh", "-c", `"$TX" run -q --wait-cleanup "$T" -- sh -c 'echo x > g; exit 1'; ls; echo gone; cd "$PWD" && ls`)
	cmd.Dir = sub
	cmd.Env = append(os.Environ(), "TX="+treetxPath, "T="+tree)
	out, err = cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if got := string(out); got != "gone\nf\n" {
		t.Errorf("a rollback: got %q, want %q", got, "gone\nf\n")
	}
}
