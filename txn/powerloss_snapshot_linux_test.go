package txn_test

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
	"github.com/treetx/treetx/internal/fsys/fsystest"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
	"github.com/treetx/treetx/txn"
)

// The power-loss model of powerloss_test.go, extended to snapshot mode. A
// snapshot is an entry made in the parent whose content is a copy of the
// source subvolume's tree as the model holds it at that step (new nodes,
// sharing nothing with the source), atomic like every step, and volatile
// until an fsync of the parent or a syncfs covers it: more pessimistic
// than btrfs, which commits a snapshot before the ioctl returns. A
// subvolume deletion removes the entry, volatile likewise (btrfs makes it
// durable at the next commit). A model node that is a subvolume's root
// remembers the recorded subvolume's id; writing a state creates such
// nodes as subvolumes, on a btrfs image, and the journal is made to name
// their new ids, as it is made to name the new inodes.

// subvolRoot returns, for a path that is the root of a btrfs subvolume,
// that subvolume's id; 0 for anything else.
func subvolRoot(t *testing.T, p string) uint64 {
	t.Helper()
	if ok, err := btrfs.IsSubvolumeRootAt(unix.AT_FDCWD, p); err != nil || !ok {
		return 0
	}
	var stx unix.Statx_t
	if err := unix.Statx(unix.AT_FDCWD, p, unix.AT_SYMLINK_NOFOLLOW, unix.STATX_SUBVOL, &stx); err != nil || stx.Mask&unix.STATX_SUBVOL == 0 {
		t.Fatalf("statx %s: no subvolume id (%v)", p, err)
	}
	return stx.Subvol
}

// applySubvolume replays a snapshot or a subvolume deletion on the model
// (see apply). The snapshot op's Ino is the recorded snapshot's subvolume
// id (recordSnapshot sets it).
func (m *fsModel) applySubvolume(op fsystest.Op) (bool, []*mnode) {
	now := opTime(op.Step)
	switch op.Kind {
	case "snapshot":
		src, _, _ := m.lookup(op.Path)
		dst, parent, name := m.lookup(op.Path2)
		if src == nil || src.subvol == 0 || parent == nil || dst != nil {
			return false, nil
		}
		c := (&fsModel{root: src}).clone().root
		c.subvol = op.Ino
		parent.kids[name] = c
		parent.mtime = now
		return true, []*mnode{parent}
	case "deletesubvolume":
		n, parent, name := m.lookup(op.Path)
		if n == nil || n.subvol == 0 {
			return false, nil
		}
		delete(parent.kids, name)
		parent.mtime = now
		return true, []*mnode{parent}
	}
	panic("not a subvolume op: " + op.Kind)
}

// mkdirModel makes the directory of n at p: a subvolume when n is a
// subvolume's root, whose new id it records in sub.
func mkdirModel(p string, n *mnode, sub map[uint64]uint64) error {
	if n.subvol == 0 {
		return os.Mkdir(p, 0o700)
	}
	pfd, err := unix.Open(filepath.Dir(p), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	if err := btrfs.CreateSubvolume(pfd, filepath.Base(p)); err != nil {
		return err
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	info, err := btrfs.SubvolumeInfo(fd)
	sub[n.subvol] = info.ID
	return err
}

// patchSubvols makes the journal at path name the subvolumes a state was
// written with (sub: recorded id to new id); one this state lost gets an
// id no subvolume has.
func patchSubvols(t *testing.T, path string, sub map[uint64]uint64) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var j layout.Journal
	if json.Unmarshal(data, &j) != nil || j.Subvols == nil {
		return
	}
	for _, s := range []*layout.Subvol{&j.Subvols.Dir, &j.Subvols.Shadow} {
		if id, ok := sub[s.ID]; ok {
			s.ID = id
		} else {
			s.ID += 1 << 40
		}
	}
	out, err := json.MarshalIndent(&j, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	rewrite(t, path, out)
}

// recordSnapshot runs a transaction of path in snapshot mode on the small
// tree, the root of a subvolume on img, through a recording FS (skipping
// the skipSync-th sync), and returns its history.
func recordSnapshot(t *testing.T, img *testenv.Image, path string, skipSync int) *history {
	t.Helper()
	parent := scratchOn(t, img)
	pfd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = btrfs.CreateSubvolume(pfd, "repo")
	unix.Close(pfd)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "repo")
	if err := smallTree(dir); err != nil {
		t.Fatal(err)
	}
	initial := loadModel(t, parent)
	rec := &fsystest.FS{Record: true, SkipSync: skipSync}
	tx, err := txn.Begin(dir, txn.Options{FS: rec, Mode: txn.ModeSnapshot})
	if err != nil {
		t.Fatal(err)
	}
	j, err := layout.ReadJournal(filepath.Join(parent, ".#treetx.repo.journal"))
	if err != nil {
		t.Fatal(err)
	}
	if err := mutateFS(dir, rec); err != nil {
		t.Fatal(err)
	}
	if path == "commit" {
		_, err = tx.Commit()
	} else {
		_, err = tx.Rollback()
	}
	if err != nil {
		t.Fatal(err)
	}
	var ops []fsystest.Op
	for _, op := range rec.Ops() {
		if op.Err != nil {
			continue
		}
		if op.Kind == "snapshot" {
			op.Ino = j.Subvols.Shadow.ID
		}
		ops = append(ops, op)
	}
	if !slices.ContainsFunc(ops, func(o fsystest.Op) bool { return o.Kind == "snapshot" }) ||
		!slices.ContainsFunc(ops, func(o fsystest.Op) bool { return o.Kind == "deletesubvolume" }) {
		t.Fatalf("%s: no snapshot and subvolume deletion among %v", path, ops)
	}
	return analyze(t, initial, ops)
}

// newImageChecker is newChecker writing its states on img.
func newImageChecker(t *testing.T, img *testenv.Image, h *history) *checker {
	c := &checker{t: t, h: h, seen: map[string]bool{}, scratch: scratchOn(t, img), to: len(h.ops), trees: []string{"repo"}}
	c.old = c.images(h.initial, treeimage.Options{})
	c.new = c.images(h.final, treeimage.Options{IgnoreDirMtime: true})
	return c
}

// TestPowerLossSnapshot: the crash states a power cut can leave of a
// transaction in snapshot mode on a small tree, recovered and checked
// against the invariant: at each crash point every subset of the volatile
// steps when there are at most 6 of them, else the two extremes and 8
// random subsets (10 and 64 with TREETX_EXHAUSTIVE=1: some 720 states).
func TestPowerLossSnapshot(t *testing.T) {
	testenv.Require(t, testenv.Btrfs)
	img := btrfsImage(t)
	seed := powerLossSeed(t)
	for i, path := range []string{"commit", "rollback"} {
		t.Run(path, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, uint64(40+i)))
			c := newImageChecker(t, img, recordSnapshot(t, img, path, 0))
			exhaustive, samples := 6, 8
			if testenv.Exhaustive() {
				exhaustive, samples = 10, 64
			}
			c.run(exhaustive, samples, rng)
			c.report("snapshot/" + path)
		})
	}
}

// TestPowerLossSnapshotFindsMissingSync removes a sync of the snapshot
// commit, as TestPowerLossCheckerFindsMissingSync does, and prints whether
// the model then finds violations: each of the two syncfs calls by default
// (B6's, which the model does not need: the snapshot is one entry in the
// parent, which B7's fsync covers; and C1's, which it must need), every
// sync with TREETX_EXHAUSTIVE=1.
func TestPowerLossSnapshotFindsMissingSync(t *testing.T) {
	testenv.Require(t, testenv.Btrfs)
	img := btrfsImage(t)
	rng := rand.New(rand.NewPCG(powerLossSeed(t), 50))
	base := recordSnapshot(t, img, "commit", 0)
	var needed []string
	c1, syncfs, syncs := -1, 0, 0
	for k, op := range base.ops {
		if op.Kind != "fsync" && op.Kind != "syncfs" {
			continue
		}
		syncs++
		if op.Kind == "syncfs" {
			if syncfs++; syncfs == 2 {
				c1 = op.Step // B6's is the first
			}
		} else if !testenv.Exhaustive() {
			continue
		}
		c := newImageChecker(t, img, recordSnapshot(t, img, "commit", syncs))
		if !testenv.Exhaustive() {
			c.from, c.to = syncWindow(c.h, k)
		}
		c.run(6, 4, rng)
		what := strings.TrimPrefix(op.String(), strconv.Itoa(op.Step)+" ")
		fmt.Printf("snapshot commit without sync %d (step %d %s): %d states, %d violations\n", syncs, op.Step, what, c.checked, len(c.violations))
		if len(c.violations) > 0 {
			needed = append(needed, strconv.Itoa(op.Step))
		}
	}
	t.Logf("syncs the model needs: steps %v", needed)
	if !slices.Contains(needed, strconv.Itoa(c1)) {
		t.Errorf("without the command's syncfs (step %d) the checker found nothing", c1)
	}
}
