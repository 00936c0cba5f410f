package integration

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// The binary in snapshot mode, on loop-mounted btrfs images (as root;
// under CI=true a missing mkfs.btrfs or loop device fails these tests).

// subvolSample builds the sample tree as the subvolume PARENT/tree, in a
// new directory of the image mounted at mnt.
func subvolSample(t *testing.T, mnt string) (parent, tree string) {
	t.Helper()
	parent, err := os.MkdirTemp(mnt, "p")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	tree = filepath.Join(parent, "tree")
	if err := treeimage.BuildSampleSubvolume(tree); err != nil {
		t.Fatal(err)
	}
	return parent, tree
}

// subvolumeID is the id of the subvolume whose root is dir.
func subvolumeID(t *testing.T, dir string) uint64 {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	info, err := btrfs.SubvolumeInfo(fd)
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

// TestSnapshotRun: treetx run on the root of a subvolume takes a snapshot
// (-v says so): a commit keeps the changes and the subvolume, a failure
// puts the snapshot in its place, nothing is left beside it; what the mode
// cannot do is refused, exit 125 (64 for a bad --mode), nothing changed.
func TestSnapshotRun(t *testing.T) {
	t.Parallel()
	img := testenv.FSImage(t, "btrfs", testenv.ImageOptions{MiB: 256})
	change := `echo new > "$T/a/run.sh"; rm -r "$T/a/b"; mkdir "$T/new"; chmod 700 "$T/ro"; `
	for _, tt := range []struct {
		name   string
		flags  []string
		script string
		code   int
	}{
		{"commit", []string{"-v"}, change, 0},
		{"rollback", []string{"-v", "--mode", "snapshot"}, change + "exit 3", 3},
		{"killed command", nil, change + "kill -9 $$", 137},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parent, tree := subvolSample(t, img.Dir)
			before, id := capture(t, tree), subvolumeID(t, tree)
			r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script(tt.script), tt.flags...)...)
			wantCode(t, r, tt.code)
			if len(tt.flags) > 0 {
				contains(t, "stderr", r.stderr, "mode=snapshot", "step=B3 do=snapshot")
			}
			if tt.code == 0 {
				if b, err := os.ReadFile(filepath.Join(tree, "a/run.sh")); err != nil || string(b) != "new\n" {
					t.Errorf("after commit a/run.sh = %q, %v", b, err)
				}
				if got := subvolumeID(t, tree); got != id {
					t.Errorf("the commit made the tree subvolume %d, was %d", got, id)
				}
			} else {
				treeimage.AssertEqual(t, "before", before, "after rollback", capture(t, tree))
				if got := subvolumeID(t, tree); got == id {
					t.Errorf("after the rollback the tree is still subvolume %d, not its snapshot", id)
				}
			}
			noLeftovers(t, parent, "tree")
		})
	}

	t.Run("refused", func(t *testing.T) {
		t.Parallel()
		plainParent, err := os.MkdirTemp(img.Dir, "p")
		if err != nil {
			t.Fatal(err)
		}
		plain := filepath.Join(plainParent, "tree")
		if err := treeimage.BuildSample(plain); err != nil {
			t.Fatal(err)
		}
		nestedParent, nested := subvolSample(t, img.Dir)
		if err := treeimage.BuildSampleSubvolume(filepath.Join(nested, "a", "inner")); err != nil {
			t.Fatal(err)
		}
		p3, sv := subvolSample(t, img.Dir)
		for _, tc := range []struct {
			name, parent, tree string
			flags              []string
			code               int
			want               string
		}{
			{"--mode snapshot on a plain directory", plainParent, plain, []string{"--mode", "snapshot"}, 125, "needs the root of a btrfs subvolume"},
			{"--mode hardlink on a subvolume", p3, sv, []string{"--mode", "hardlink"}, 125, "hard links from its parent cannot reach"},
			{"nested subvolumes", nestedParent, nested, nil, 125, "nested subvolume"},
			{"--exclude", p3, sv, []string{"--exclude", "*.txt"}, 125, "--exclude"},
			{"bad --mode", p3, sv, []string{"--mode", "reflink"}, 64, "--mode"},
		} {
			before, names := capture(t, tc.tree), listing(t, tc.parent)
			r := treetx(t, nil, runArgs(tc.tree, []string{"touch", filepath.Join(tc.tree, "ran")}, tc.flags...)...)
			wantCode(t, r, tc.code)
			oneLine(t, r.stderr, tc.want)
			treeimage.AssertEqual(t, tc.name+": before", before, "after", capture(t, tc.tree))
			sameListing(t, tc.parent, names, lockName("tree"))
		}
	})

	t.Run("killed treetx, then status and recover --scan", func(t *testing.T) {
		t.Parallel()
		// The tree is a subvolume in a subvolume: sv/p/tree.
		top, err := os.MkdirTemp(img.Dir, "scan")
		if err != nil {
			t.Fatal(err)
		}
		sh(t, nil, "btrfs subvolume create -q "+top+"/sv || btrfs subvolume create "+top+"/sv >/dev/null")
		parent, tree := subvolSample(t, filepath.Join(top, "sv"))
		before := capture(t, tree)
		out := t.TempDir()
		p := start(t, invocation{args: runArgs(tree, script(change+`touch "$O/changed"; sleep 100`)), env: env(tree, out), group: true})
		waitForFile(t, p, filepath.Join(out, "changed"))
		p.signalGroup(t, syscall.SIGKILL)
		p.wait(t)
		waitFor(t, "the command to die", runTimeout, func() bool {
			return exec.Command("flock", "-n", filepath.Join(parent, lockName("tree")), "true").Run() == nil
		})
		r := treetx(t, nil, "status", "--json", tree)
		wantCode(t, r, 3)
		m := decodeReport(t, r.stdout)
		j, _ := m["journal"].(map[string]any)
		if m["row"] != "22" || m["mode"] != "snapshot" || m["state"] != "needs recovery" || j == nil || j["mode"] != "snapshot" || j["subvols"] == nil {
			t.Errorf("status of a killed snapshot transaction: %s", r.stdout)
		}
		if !strings.Contains(m["found"].(string), "its shadow is a btrfs snapshot") {
			t.Errorf("status does not say the shadow is a snapshot: %s", m["found"])
		}
		var plan []string
		for _, s := range m["plan"].([]any) {
			plan = append(plan, s.(map[string]any)["step"].(string))
		}
		if strings.Join(plan, " ") != "R2 R4 R5 R6 R7" {
			t.Errorf("plan %v, want R2 R4 R5 R6 R7", plan)
		}
		// Recovery at boot: --scan from above the subvolume the tree's
		// parent is in (it has a device number of its own, and is
		// entered all the same).
		r = treetx(t, nil, "recover", "--scan", filepath.Dir(filepath.Dir(parent)))
		wantCode(t, r, 0)
		contains(t, "recover --scan", r.stdout, tree+": needs recovery", "did: roll back")
		treeimage.AssertEqual(t, "before", before, "after recover", capture(t, tree))
		noLeftovers(t, parent, "tree")
	})
}

// TestSnapshotAsUser: user nobody runs transactions on a subvolume of
// theirs, in a parent they may write: the snapshot is theirs to take, and
// the thrown-away subvolume, which they may not delete with the ioctl
// (the image is mounted without user_subvol_rm_allowed), is deleted entry
// by entry, then removed empty. With user_subvol_rm_allowed, the ioctl.
func TestSnapshotAsUser(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.Root)
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	for _, mountOpts := range [][]string{nil, {"user_subvol_rm_allowed"}} {
		name := "default mount"
		if mountOpts != nil {
			name = "user_subvol_rm_allowed"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			img := testenv.FSImage(t, "btrfs", testenv.ImageOptions{Mount: mountOpts})
			parent, tree := subvolSample(t, img.Dir)
			sh(t, nil, "chown -R -h 65534:65534 "+parent)
			t.Cleanup(func() { sh(t, nil, "chmod -R u+rwx "+parent) })
			before := capture(t, tree)
			r := invoke(t, invocation{args: runArgs(tree, script(`rm -r "$T/a"; mkdir -p "$T/locked/in"; chmod 000 "$T/locked/in"; exit 1`), "-v"), env: env(tree, "/nonexistent"), cred: nobody, dir: "/"})
			wantCode(t, r, 1)
			contains(t, "stderr", r.stderr, "mode=snapshot")
			treeimage.AssertEqual(t, "before", before, "after rollback", capture(t, tree))
			noLeftovers(t, parent, "tree")
			r = invoke(t, invocation{args: runArgs(tree, script(`echo new > "$T/added.txt"`), "--wait-cleanup"), env: env(tree, "/nonexistent"), cred: nobody, dir: "/"})
			wantCode(t, r, 0)
			if !exists(filepath.Join(tree, "added.txt")) {
				t.Errorf("the change was not committed")
			}
			noLeftovers(t, parent, "tree")
			r = invoke(t, invocation{args: []string{"status", "--json", tree}, cred: nobody, dir: "/"})
			wantCode(t, r, 0)
			var m map[string]any
			if err := json.Unmarshal([]byte(r.stdout), &m); err != nil || m["state"] != "idle" {
				t.Errorf("status: %s (%v)", r.stdout, err)
			}
		})
	}
}

// TestSnapshotDiskFull: a small btrfs image filled up, data and metadata
// (snapshots made until none more can be): treetx run on a subvolume
// there (its lock file made before) fails to take the snapshot, exits 125
// with one line, and leaves the tree and its parent as they were; with
// room again it commits.
func TestSnapshotDiskFull(t *testing.T) {
	t.Parallel()
	img := testenv.FSImage(t, "btrfs", testenv.ImageOptions{MiB: 32, Mkfs: []string{"--mixed"}})
	parent, tree := subvolSample(t, img.Dir)
	r := treetx(t, nil, runArgs(tree, []string{"true"}, "-n")...)
	wantCode(t, r, 0)
	noLeftovers(t, parent, "tree")
	fill(t, img.Dir, 0)
	pad := filepath.Join(img.Dir, "pad")
	if err := os.Mkdir(pad, 0o755); err != nil {
		t.Fatal(err)
	}
	// Then snapshots of the tree, until one fails: what is left does not
	// hold another (btrfs keeps metadata space apart: data alone does not
	// fill it).
	tfd, err := unix.Open(tree, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	pfd, err := unix.Open(pad, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	snaps := 0
	for ; btrfs.Snapshot(tfd, pfd, "s"+strconv.Itoa(snaps), false) == nil; snaps++ {
	}
	unix.Close(tfd)
	unix.Close(pfd)
	t.Logf("full after %d snapshots more", snaps)
	before, names := capture(t, tree), listing(t, parent)
	r = treetx(t, nil, runArgs(tree, []string{"touch", filepath.Join(tree, "ran")}, "-n")...)
	wantCode(t, r, 125)
	oneLine(t, r.stderr, "no space left on device", "B3: snapshot "+tree)
	treeimage.AssertEqual(t, "before", before, "after", capture(t, tree))
	sameListing(t, parent, names, lockName("tree"))
	// Room again (a file system of mixed block groups gives the data
	// back to metadata).
	if err := os.Remove(filepath.Join(img.Dir, "filler")); err != nil {
		t.Fatal(err)
	}
	r = treetx(t, nil, runArgs(tree, []string{"touch", filepath.Join(tree, "ran")}, "-n")...)
	wantCode(t, r, 0)
	noLeftovers(t, parent, "tree")
}
