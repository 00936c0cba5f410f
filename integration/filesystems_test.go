package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// fsImage makes a file-system image of the given type and size (MiB) in a
// temporary directory, loop-mounts it and returns the mount point; it is
// unmounted in t.Cleanup.
func fsImage(t *testing.T, fstype string, mib int) string {
	t.Helper()
	testenv.Require(t, map[string]testenv.Group{"ext4": testenv.Ext4, "xfs": testenv.XFS, "btrfs": testenv.Btrfs}[fstype])
	mkfs := "mkfs." + fstype
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "image"), filepath.Join(dir, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, int64(mib)<<20); err != nil {
		if f, cerr := os.Create(img); cerr == nil {
			f.Close()
		}
		if err := os.Truncate(img, int64(mib)<<20); err != nil {
			t.Fatal(err)
		}
	}
	args := map[string][]string{"ext4": {"-q", "-F"}, "xfs": {"-q", "-f"}, "btrfs": {"-q", "-f", "--mixed"}}[fstype]
	if out, err := exec.Command(mkfs, append(args, img)...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", mkfs, img, err, out)
	}
	mount(t, mnt, "-o", "loop", img, mnt)
	return mnt
}

// fill takes all but keep bytes of the file system holding dir, with one
// preallocated file.
func fill(t *testing.T, dir string, keep int64) {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bfree) * int64(st.Bsize) // root may use the reserved blocks
	if free <= keep {
		return
	}
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Give back what fallocate cannot take exactly: try smaller sizes.
	for size := free - keep; size > 0; size -= 1 << 20 {
		if err := unix.Fallocate(int(f.Fd()), 0, 0, size); err == nil {
			return
		}
	}
}

// padUntilFull makes directories under dir until the file system is full
// (metadata included: btrfs keeps it apart from data), then removes 45% of
// them, so that the tree takes more than half of what is left: a shadow of
// it cannot fit.
func padUntilFull(t *testing.T, dir string) {
	t.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	n := 0
	for ; n < 200000; n++ {
		if err := os.Mkdir(filepath.Join(dir, strconv.Itoa(n)), 0o755); err != nil {
			if errors.Is(err, unix.ENOSPC) {
				break
			}
			t.Fatal(err)
		}
	}
	if n == 200000 {
		t.Fatalf("%s: no ENOSPC after %d directories", dir, n)
	}
	for i := range n * 45 / 100 {
		if err := os.Remove(filepath.Join(dir, strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
}

var fsTypes = []string{"ext4", "xfs", "btrfs"}

// fsSize is the smallest size each mkfs accepts, in MiB.
var fsSize = map[string]int{"ext4": 16, "xfs": 320, "btrfs": 40}

// fsKeep is what fill leaves free before padUntilFull takes the rest:
// btrfs holds a reserve back that statfs counts as free.
var fsKeep = map[string]int64{"ext4": 1 << 20, "xfs": 1 << 20, "btrfs": 4 << 20}

// TestRealFileSystems runs a failing and a succeeding transaction on each
// loop-mounted file system: rename exchange, syncfs, hard links and the
// metadata of each must do what the protocol expects.
func TestRealFileSystems(t *testing.T) {
	t.Parallel()
	for _, fstype := range fsTypes {
		t.Run(fstype, func(t *testing.T) {
			t.Parallel()
			mnt := fsImage(t, fstype, fsSize[fstype])
			parent := filepath.Join(mnt, "parent")
			tree := filepath.Join(parent, "tree")
			if err := os.Mkdir(parent, 0o755); err != nil {
				t.Fatal(err)
			}
			sh(t, []string{"T=" + tree}, `set -e; mkdir -p "$T/a/b" "$T/empty"; echo x > "$T/a/f"; echo y > "$T/a/b/g"; ln -s a/f "$T/link"; chmod 640 "$T/a/f"`)
			before := capture(t, tree)
			r := treetx(t, env(tree, t.TempDir()), runArgs(tree, script(`mv "$T/a/f" "$T/a/b/g"; rm -r "$T/empty"; mkdir "$T/new"; chmod 600 "$T/a/b/g"; exit 3`))...)
			wantCode(t, r, 3)
			treeimage.AssertEqual(t, "before", before, "after", capture(t, tree))
			noLeftovers(t, parent, "tree")
			r = treetx(t, env(tree, t.TempDir()), runArgs(tree, script(`echo z > "$T/a/new" && mv "$T/a/new" "$T/a/f"`))...)
			wantCode(t, r, 0)
			if b, err := os.ReadFile(filepath.Join(tree, "a/f")); err != nil || string(b) != "z\n" {
				t.Errorf("after commit a/f = %q, %v", b, err)
			}
			noLeftovers(t, parent, "tree")
		})
	}
}

// TestDiskFullDuringSnapshot fills each file system so that the shadow
// cannot be built: treetx reports it in one line, exits 125, and leaves the
// tree unchanged and nothing of its own but the lock file.
func TestDiskFullDuringSnapshot(t *testing.T) {
	t.Parallel()
	for _, fstype := range fsTypes {
		t.Run(fstype, func(t *testing.T) {
			t.Parallel()
			mnt := fsImage(t, fstype, fsSize[fstype])
			parent := filepath.Join(mnt, "parent")
			tree := filepath.Join(parent, "tree")
			var b strings.Builder
			for d := range 400 {
				fmt.Fprintf(&b, "mkdir -p \"$T/m%d/d%d\" && echo %d > \"$T/m%d/d%d/f,v\"\n", d%8, d, d, d%8, d)
			}
			sh(t, []string{"T=" + tree}, "set -e\n"+b.String())
			fill(t, mnt, fsKeep[fstype])
			padUntilFull(t, filepath.Join(tree, "pad"))
			before := capture(t, tree)
			beforeParent := listing(t, parent)
			r := treetx(t, nil, runArgs(tree, []string{"touch", filepath.Join(tree, "ran")})...)
			wantCode(t, r, 125)
			oneLine(t, r.stderr, "no space left on device")
			treeimage.AssertEqual(t, "before", before, "after", capture(t, tree))
			sameListing(t, parent, beforeParent, lockName("tree"))
			// With room again, the same transaction goes through.
			if err := os.Remove(filepath.Join(mnt, "filler")); err != nil {
				t.Fatal(err)
			}
			r = treetx(t, nil, runArgs(tree, []string{"touch", filepath.Join(tree, "ran")})...)
			wantCode(t, r, 0)
			noLeftovers(t, parent, "tree")
		})
	}
}
