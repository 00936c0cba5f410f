package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// TestConvertCommand: treetx convert's exit statuses and words, and a
// convert killed with SIGKILL at random instants and run again.
func TestConvertCommand(t *testing.T) {
	t.Parallel()
	mnt := fsImage(t, "btrfs", 256)
	isRoot := func(dir string) bool {
		ok, err := btrfs.IsSubvolumeRootAt(unix.AT_FDCWD, dir)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	// A tree of 1,000 files in 100 directories, on disk (as a tree at
	// rest is: a clone of a file with dirty pages waits for them): long
	// enough to kill in the middle.
	mkTree := func(parent string) string {
		tree := filepath.Join(parent, "tree")
		for d := range 100 {
			dir := filepath.Join(tree, fmt.Sprintf("m%d/d%d", d%8, d))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			for f := range 10 {
				if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d,v", f)), fmt.Appendf(nil, "%d.%d\n", d, f), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		}
		fd, err := unix.Open(tree, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		if err := unix.Syncfs(fd); err != nil {
			t.Fatal(err)
		}
		return tree
	}

	t.Run("exit statuses", func(t *testing.T) {
		parent := filepath.Join(mnt, "statuses")
		if err := os.Mkdir(parent, 0o755); err != nil {
			t.Fatal(err)
		}
		tree := mkTree(parent)
		before := capture(t, tree)
		r := treetx(t, nil, "convert", tree)
		wantCode(t, r, 0)
		if !strings.Contains(r.stdout, "now a btrfs subvolume") || !isRoot(tree) {
			t.Errorf("not converted:\n%v", r)
		}
		treeimage.AssertEqual(t, "before", before, "converted", capture(t, tree))
		noLeftovers(t, parent, "tree")
		r = treetx(t, nil, "convert", tree)
		wantCode(t, r, 0)
		if !strings.Contains(r.stdout, "already the root of a btrfs subvolume") {
			t.Errorf("second convert:\n%v", r)
		}
		r = treetx(t, nil, "convert", t.TempDir())
		wantCode(t, r, 125)
		oneLine(t, r.stderr, "not on btrfs", "nothing was changed")
		wantCode(t, treetx(t, nil, "convert"), 64)
	})

	t.Run("killed", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(testenv.Seed(t), 1))
		// How long a whole convert takes here, to kill within it.
		parent := filepath.Join(mnt, "timing")
		if err := os.Mkdir(parent, 0o755); err != nil {
			t.Fatal(err)
		}
		tree := mkTree(parent)
		full := treetx(t, nil, "convert", tree)
		wantCode(t, full, 0)
		for i := range 3 {
			parent := filepath.Join(mnt, fmt.Sprintf("killed%d", i))
			if err := os.Mkdir(parent, 0o755); err != nil {
				t.Fatal(err)
			}
			tree := mkTree(parent)
			before := capture(t, tree)
			p := start(t, invocation{args: []string{"convert", tree}})
			after := time.Duration(rng.Int64N(int64(full.elapsed)))
			time.Sleep(after)
			p.signal(t, syscall.SIGKILL)
			r := p.wait(t)
			t.Logf("killed after %v of %v: exit %d", after, full.elapsed, r.code)
			// Whatever is left, DIR is the old tree or the subvolume.
			treeimage.AssertEqual(t, "before", before, "after the kill", capture(t, tree))
			r = treetx(t, nil, "convert", tree)
			wantCode(t, r, 0)
			if !isRoot(tree) {
				t.Errorf("not a subvolume after the second run:\n%v", r)
			}
			treeimage.AssertEqual(t, "before", before, "converted", capture(t, tree))
			noLeftovers(t, parent, "tree")
		}
	})
}
