package snapshot

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

func TestMain(m *testing.M) {
	if os.Getenv("TREETX_TEST_REMOVE") == "" { // not a child of the tests
		testenv.Announce(testenv.Root)
	}
	os.Exit(m.Run())
}

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

// TestRemoveAsOwnerOfLockedDirectories removes, as a user who is not root,
// a tree of that user's whose directories deny the owner reading, writing or
// searching (the bits are given back as needed): Remove runs in a child
// process of this test as uid and gid 65534.
func TestRemoveAsOwnerOfLockedDirectories(t *testing.T) {
	if p := os.Getenv("TREETX_TEST_REMOVE"); p != "" {
		if err := Remove(filepath.Dir(p), filepath.Base(p), nil); err != nil {
			t.Fatal(err)
		}
		return
	}
	testenv.Require(t, testenv.Root) // to run a child as another user
	parent := t.TempDir()
	os.Chmod(filepath.Dir(parent), 0o755) // the test's temporary root
	os.Chmod(parent, 0o777)
	tree := filepath.Join(parent, "tree")
	// The test binary's directory is root's alone: copy it where the user
	// can run it.
	bin := filepath.Join(parent, "snapshot.test")
	if b, err := os.ReadFile(os.Args[0]); err != nil || os.WriteFile(bin, b, 0o755) != nil {
		t.Fatalf("copy the test binary: %v", err)
	}
	modes := map[string]os.FileMode{
		"r-x": 0o555, "none": 0o000, "wx-only": 0o300, "only-dirs": 0o555, "only-dirs/sub": 0o500, "plain": 0o755,
	}
	for _, d := range []string{"r-x", "none", "wx-only", "only-dirs/sub", "plain"} {
		if err := os.MkdirAll(filepath.Join(tree, d), 0o755); err != nil {
			t.Fatal(err)
		}
		if d != "only-dirs/sub" {
			os.WriteFile(filepath.Join(tree, d, "f"), nil, 0o644)
		}
	}
	os.WriteFile(filepath.Join(tree, "only-dirs/sub/f"), nil, 0o644)
	err := filepath.Walk(tree, func(p string, _ os.FileInfo, err error) error {
		if err == nil {
			err = os.Lchown(p, 65534, 65534)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	// Deepest first, so that the walk above could pass.
	for _, d := range []string{"only-dirs/sub", "only-dirs", "r-x", "none", "wx-only", "plain"} {
		os.Chmod(filepath.Join(tree, d), modes[d])
	}
	os.Chmod(tree, 0o500)
	cmd := exec.Command(bin, "-test.run=^TestRemoveAsOwnerOfLockedDirectories$")
	cmd.Env = append(os.Environ(), "TREETX_TEST_REMOVE="+tree)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("Remove as uid 65534: %v\n%s", err, out)
	}
	if _, err := os.Lstat(tree); !os.IsNotExist(err) {
		t.Errorf("tree still there: %v", err)
	}
}
