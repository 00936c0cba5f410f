package snapshot

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/treeimage"
)

// shadowOf builds the shadow of src as parent/name with the given workers.
func shadowOf(t *testing.T, src, parent, name string, workers int, opts Options) (*Stats, []byte) {
	t.Helper()
	pfd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pfd)
	if err := unix.Mkdirat(pfd, name, 0o700); err != nil {
		t.Fatal(err)
	}
	var manifest bytes.Buffer
	opts.Manifest, opts.Workers = NewManifestWriter(&manifest), workers
	stats, err := Build(src, pfd, name, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := opts.Manifest.Close(); err != nil {
		t.Fatal(err)
	}
	return stats, manifest.Bytes()
}

func TestBuildMakesAnExactShadow(t *testing.T) {
	for _, workers := range []int{1, 2, 8} {
		t.Run(fmt.Sprintf("%d workers", workers), func(t *testing.T) {
			parent := t.TempDir()
			src := filepath.Join(parent, "src")
			if err := treeimage.BuildSample(src); err != nil {
				t.Fatal(err)
			}
			if err := unix.Setxattr(filepath.Join(src, "a"), "user.treetx", []byte("dir attr"), 0); err != nil {
				t.Fatal(err)
			}
			want := treeimage.MustCapture(t, src, treeimage.Options{})
			copies, _ := NewMatcher(CVSCopies()...)
			stats, manifest := shadowOf(t, src, parent, "shadow", workers, Options{Copy: copies})
			got := treeimage.MustCapture(t, filepath.Join(parent, "shadow"), treeimage.Options{})
			treeimage.AssertEqual(t, "source", want, "shadow", got)
			if stats.Copies != 3 || stats.Symlinks != 4 || stats.Dirs == 0 || stats.Links == 0 {
				t.Errorf("stats %+v: want 3 copies, 4 symlinks, some dirs and links", stats)
			}
			n := 0
			if err := ReadManifest(bytes.NewReader(manifest), func(Record) error { n++; return nil }); err != nil {
				t.Fatal(err)
			}
			if int64(n) != stats.Links {
				t.Errorf("manifest has %d records, %d links made", n, stats.Links)
			}
			buf := make([]byte, 64)
			if sz, err := unix.Getxattr(filepath.Join(parent, "shadow/a"), "user.treetx", buf); err != nil || string(buf[:sz]) != "dir attr" {
				t.Errorf("shadow directory's xattr = %q, %v", buf[:max(sz, 0)], err)
			}
			if err := Remove(parent, "shadow", nil); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Lstat(filepath.Join(parent, "shadow")); !os.IsNotExist(err) {
				t.Errorf("shadow still there after Remove: %v", err)
			}
			treeimage.AssertEqual(t, "source before", want, "source after", treeimage.MustCapture(t, src, treeimage.Options{}))
		})
	}
}

func TestRemoveConcurrentlyAndIdempotently(t *testing.T) {
	parent := t.TempDir()
	tree := filepath.Join(parent, "tree")
	for d := range 50 {
		dir := filepath.Join(tree, fmt.Sprintf("m%d", d%5), fmt.Sprintf("d%d", d))
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for f := range 20 {
			os.WriteFile(filepath.Join(dir, fmt.Sprint(f)), nil, 0o644)
		}
		if d%7 == 0 {
			os.Chmod(dir, 0o555)
		}
	}
	os.Symlink("/", filepath.Join(tree, "to-root"))
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = Remove(parent, "tree", nil)
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Remove %d: %v", i, err)
		}
	}
	if _, err := os.Lstat(tree); !os.IsNotExist(err) {
		t.Errorf("tree still there: %v", err)
	}
	if err := Remove(parent, "tree", nil); err != nil {
		t.Errorf("Remove of a removed tree: %v", err)
	}
}
