package integration

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// TestRunAsOrdinaryUser runs treetx as user nobody on a sample tree nobody
// owns (a repository owned by its service user): the read-only directory
// "ro" and directories the command makes unreadable must not keep treetx
// from dropping the shadow or the failed tree.
func TestRunAsOrdinaryUser(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.Root)
	tests := []struct {
		name   string
		script string
		want   int
	}{
		{"commit", addFiles + replaceByRename + `mkdir "$T/locked"; chmod 000 "$T/locked"` + "\n", 0},
		{"rollback", renameOver + createDirs + `mkdir -p "$T/locked/in"; chmod 000 "$T/locked/in" "$T/locked"; exit 1`, 1},
		{"rollback after chmod -R 000", `chmod -R 000 "$T"; exit 1`, 1},
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tmp := t.TempDir()
			for _, d := range []string{filepath.Dir(tmp), tmp} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			parent := filepath.Join(tmp, "parent")
			tree := filepath.Join(parent, "tree")
			if err := os.Mkdir(parent, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := treeimage.BuildSample(tree); err != nil {
				t.Fatal(err)
			}
			sh(t, nil, "chown -R -h 65534:65534 "+parent)
			// Root can read what nobody locks itself out of; put it back
			// for cleanup.
			t.Cleanup(func() { sh(t, nil, "chmod -R u+rwx "+tmp) })
			before := capture(t, tree)
			out := filepath.Join(tmp, "out")
			if err := os.Mkdir(out, 0o777); err != nil {
				t.Fatal(err)
			}
			r := invoke(t, invocation{args: runArgs(tree, script(tt.script)), env: env(tree, out), cred: nobody, dir: "/"})
			wantCode(t, r, tt.want)
			if tt.want != 0 {
				treeimage.AssertEqual(t, "before", before, "after rollback", capture(t, tree))
			} else if !exists(filepath.Join(tree, "added.txt")) {
				t.Errorf("the change was not committed")
			}
			noLeftovers(t, parent, "tree")
			r = invoke(t, invocation{args: []string{"status", tree}, cred: nobody, dir: "/"})
			wantCode(t, r, 0)
		})
	}
}

// TestLockFileMadeByRoot: root ran treetx on a repository first (a recover
// at boot), so the lock file is root's, 0644. The repository's own user
// must still be able to run transactions: the lock is taken through a
// read-only descriptor and the holder record, which needs write access, is
// left out.
func TestLockFileMadeByRoot(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.Root)
	tmp := t.TempDir()
	for _, d := range []string{filepath.Dir(tmp), tmp} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	parent := filepath.Join(tmp, "parent")
	tree := filepath.Join(parent, "tree")
	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}
	sh(t, nil, "chown -R 65534:65534 "+parent)
	wantCode(t, treetx(t, nil, runArgs(tree, []string{"true"})...), 0)
	lockPath := filepath.Join(parent, lockName("tree"))
	fi, err := os.Stat(lockPath)
	if err != nil || fi.Sys().(*syscall.Stat_t).Uid != 0 {
		t.Fatalf("lock file %s: %v, want one owned by root", lockPath, err)
	}
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	r := invoke(t, invocation{args: runArgs(tree, script(`touch "$T/by-nobody"`)), env: env(tree, tmp), cred: nobody, dir: "/"})
	wantCode(t, r, 0)
	if !exists(filepath.Join(tree, "by-nobody")) {
		t.Errorf("nobody's change was not committed")
	}
	r = invoke(t, invocation{args: runArgs(tree, script("exit 4")), cred: nobody, dir: "/"})
	wantCode(t, r, 4)
	noLeftovers(t, parent, "tree")
}

// TestForeignOwnerIsRefused: a user other than root cannot give the
// shadow's copy of a directory another user owns its owner. Rather than let
// a rollback change that owner silently, treetx refuses (125, nothing
// changed) unless --allow-owner-change says the owner may change.
func TestForeignOwnerIsRefused(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.Root)
	tmp := t.TempDir()
	for _, d := range []string{filepath.Dir(tmp), tmp} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	parent := filepath.Join(tmp, "parent")
	tree := filepath.Join(parent, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "rootdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFiles(t, tree, map[string]string{"f": "f\n", "rootdir/g": "g\n"})
	// rootdir is root's but writable by nobody's group, as in a
	// repository shared by a group: nobody can change it and delete in it.
	sh(t, nil, "chown -R 65534:65534 "+parent+" && chown 0:65534 "+filepath.Join(tree, "rootdir")+" && chmod 775 "+filepath.Join(tree, "rootdir"))
	before := capture(t, tree)
	beforeParent := listing(t, parent)
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	r := invoke(t, invocation{args: runArgs(tree, script(`touch "$T/new"; exit 1`)), env: env(tree, tmp), cred: nobody, dir: "/"})
	wantCode(t, r, 125)
	oneLine(t, r.stderr, "rootdir", "--allow-owner-change")
	treeimage.AssertEqual(t, "before", before, "after", capture(t, tree))
	sameListing(t, parent, beforeParent, lockName("tree"))

	r = invoke(t, invocation{args: runArgs(tree, script(`touch "$T/new"; exit 1`), "--allow-owner-change"), env: env(tree, tmp), cred: nobody, dir: "/"})
	wantCode(t, r, 1)
	after := capture(t, tree)
	for i := range after {
		if after[i].Path == "rootdir" && after[i].UID == 65534 {
			after[i].UID = 0 // the change the flag allows
		}
	}
	treeimage.AssertEqual(t, "before", before, "after the rollback (owner of rootdir aside)", after)
	noLeftovers(t, parent, "tree")
}
