package convert

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// The crash tests run Convert in a child process (this test binary again),
// which kills itself with SIGKILL right after its Nth change to the file
// system; the parent looks at what is left, runs Convert again, and checks
// that DIR ends as the subvolume holding the old tree, with nothing left.
const (
	envChild  = "TREETX_TEST_CONVERT_CHILD" // the directory to convert
	envKillAt = "TREETX_TEST_CONVERT_KILL_AT"
)

// Exit statuses of the child.
const (
	childOK = iota
	childNested
	childUnsupported
	childNeedsPerson
	childChanged
	childNotBtrfs
	childNeedsRecovery
	childOther
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(envChild); dir != "" {
		os.Exit(child(dir))
	}
	testenv.Announce(testenv.Btrfs)
	os.Exit(m.Run())
}

// child runs Convert on dir, dying after change number $envKillAt (none:
// 0), and prints the steps it made, one a line.
func child(dir string) int {
	killAt, _ := strconv.Atoi(os.Getenv(envKillAt))
	n := 0
	var steps []string
	_, err := Convert(context.Background(), dir, Options{LockTimeout: -1, Step: func(step string) {
		n++
		steps = append(steps, step)
		if n == killAt {
			unix.Kill(os.Getpid(), unix.SIGKILL)
			select {}
		}
	}})
	fmt.Println(strings.Join(steps, "\n"))
	for _, c := range []struct {
		err    error
		status int
	}{{ErrNested, childNested}, {ErrUnsupported, childUnsupported}, {ErrNeedsPerson, childNeedsPerson},
		{ErrChanged, childChanged}, {ErrNotBtrfs, childNotBtrfs}, {ErrNeedsRecovery, childNeedsRecovery}} {
		if errors.Is(err, c.err) {
			fmt.Fprintln(os.Stderr, err)
			return c.status
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return childOther
	}
	return childOK
}

// runChild runs Convert on dir in a child process as uid (-1: as this
// process), killed after change killAt (0: not), and returns its exit
// status (-1 if it was killed) and the steps it printed.
func runChild(t *testing.T, bin, dir string, killAt, uid int) (int, []string) {
	t.Helper()
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), envChild+"="+dir, envKillAt+"="+strconv.Itoa(killAt))
	if uid >= 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid), Groups: []uint32{}}}
	}
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, strings.Fields(out.String())
	case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signaled():
		return -1, nil
	case errors.As(err, &ee):
		t.Logf("child on %s: %s", dir, strings.TrimSpace(errOut.String()))
		return ee.ExitCode(), strings.Fields(out.String())
	}
	t.Fatalf("child: %v", err)
	return 0, nil
}

// testBinary returns a copy of this test binary that every user may run.
func testBinary(t *testing.T) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "convert.test")
	in, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return bin
}

// acl encodes a POSIX ACL as its extended attribute: owner rw, user uid r,
// group r, mask r, other r.
func acl(uid uint32) []byte {
	var b []byte
	b = binary.LittleEndian.AppendUint32(b, 2)
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 6, ^uint32(0)}, {0x02, 4, uid}, {0x04, 4, ^uint32(0)}, {0x10, 4, ^uint32(0)}, {0x20, 4, ^uint32(0)}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, e.id)
	}
	return b
}

// buildTree makes under dir (which must not exist) treeimage's sample tree
// and, in x/, what else a copy must keep: hard links within the tree and
// to a file outside it (outside, beside dir), a sparse file, a nodatacow
// and a noatime file, set-uid and set-gid modes, another user's files,
// ACLs and other extended attributes and, as root, a device file and a
// socket. Everything belongs to uid (root's files too, when uid is not 0).
func buildTree(t *testing.T, dir string, asRoot bool) {
	t.Helper()
	if err := treeimage.BuildSample(dir); err != nil {
		t.Fatal(err)
	}
	x := filepath.Join(dir, "x")
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(x, "sub"), 0o755))
	must(os.WriteFile(filepath.Join(x, "hard1"), []byte("linked\n"), 0o644))
	must(os.Link(filepath.Join(x, "hard1"), filepath.Join(x, "hard2")))
	must(os.Link(filepath.Join(x, "hard1"), filepath.Join(x, "sub/hard3")))
	must(os.WriteFile(filepath.Join(x, "linked-outside"), []byte("also outside\n"), 0o644))
	must(os.Link(filepath.Join(x, "linked-outside"), filepath.Join(filepath.Dir(dir), "outside")))
	must(os.Symlink("hard1", filepath.Join(x, "sym")))
	must(unix.Linkat(unix.AT_FDCWD, filepath.Join(x, "sym"), unix.AT_FDCWD, filepath.Join(x, "sym-link"), 0))
	must(unix.Mkfifo(filepath.Join(x, "fifo"), 0o640))
	must(os.Link(filepath.Join(x, "fifo"), filepath.Join(x, "sub/fifo-link")))
	f, err := os.Create(filepath.Join(x, "sparse"))
	must(err)
	_, err = f.WriteAt([]byte("end"), 4<<20)
	must(err)
	must(f.Close())
	for _, a := range []struct {
		name string
		flag int
	}{{"nocow", flagNocow}, {"noatime", flagNoatime}} {
		f, err := os.Create(filepath.Join(x, a.name))
		must(err)
		must(unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, a.flag))
		_, err = f.WriteString(a.name + "\n")
		must(err)
		must(f.Close())
	}
	must(os.WriteFile(filepath.Join(x, "setuid"), []byte("#!/bin/sh\n"), 0o755))
	must(os.Chmod(filepath.Join(x, "setuid"), 0o4755|os.ModeSetuid))
	must(os.WriteFile(filepath.Join(x, "attrs"), []byte("attrs\n"), 0o644))
	must(unix.Setxattr(filepath.Join(x, "attrs"), "user.one", []byte("1"), 0))
	must(unix.Setxattr(filepath.Join(x, "attrs"), "user.bin", []byte{0, 1, 2, 255}, 0))
	must(unix.Setxattr(filepath.Join(x, "attrs"), "system.posix_acl_access", acl(65534), 0))
	must(unix.Setxattr(filepath.Join(x, "sub"), "system.posix_acl_default", acl(65534), 0))
	must(unix.Setxattr(x, "user.dir", []byte("d"), 0))
	if asRoot {
		must(unix.Setxattr(filepath.Join(x, "attrs"), "trusted.t", []byte("root's"), 0))
		must(unix.Mknod(filepath.Join(x, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		sock, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		must(err)
		must(unix.Bind(sock, &unix.SockaddrUnix{Name: filepath.Join(x, "sock")}))
		unix.Close(sock)
		must(os.Lchown(filepath.Join(x, "sub"), 65534, 65534))
		must(os.Lchown(filepath.Join(x, "sym"), 65534, 65534))
		must(os.WriteFile(filepath.Join(x, "nobodys"), []byte("n\n"), 0o600))
		must(os.Chown(filepath.Join(x, "nobodys"), 65534, 65534))
		must(os.Chmod(filepath.Join(dir, "shared"), 0o2775|os.ModeSetgid))
	}
}

// extras records, for each entry, what treeimage does not: extended
// attributes, file attributes, device numbers and which entries are links
// to one file (by the first path found).
func extras(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	firstOf := map[uint64]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		var b strings.Builder
		x := pathXattrs(p)
		xs, err := x.read()
		if err != nil {
			return err
		}
		for _, a := range xs {
			fmt.Fprintf(&b, "%s=%x ", a.name, a.value)
		}
		if fi.Mode().IsRegular() || fi.IsDir() {
			fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
			if err != nil {
				return err
			}
			flags, err := getFlags(fd)
			unix.Close(fd)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, "flags=%#x ", flags&copiedFlags)
		}
		if fi.Mode()&os.ModeDevice != 0 {
			fmt.Fprintf(&b, "rdev=%d ", st.Rdev)
		}
		if fi.Mode().IsRegular() {
			fmt.Fprintf(&b, "blocks<=%d ", (st.Blocks+2047)/2048) // MiB, sparse files stay sparse
		}
		if !fi.IsDir() && st.Nlink > 1 {
			if first, ok := firstOf[st.Ino]; ok {
				fmt.Fprintf(&b, "link-to=%s ", first)
			} else {
				firstOf[st.Ino] = rel
			}
		}
		out[rel] = b.String()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// state is what a test compares: the tree and its extras.
type state struct {
	img    treeimage.Image
	extras map[string]string
}

func capture(t *testing.T, dir string) state {
	t.Helper()
	return state{treeimage.MustCapture(t, dir, treeimage.Options{}), extras(t, dir)}
}

func (s state) assertEqual(t *testing.T, label string, got state) {
	t.Helper()
	treeimage.AssertEqual(t, "before", s.img, label, got.img)
	for k, v := range s.extras {
		if got.extras[k] != v {
			t.Errorf("%s: %s: %q, want %q", label, k, got.extras[k], v)
		}
	}
}

// listDir lists the entries of dir.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// assertConverted checks that p/tree is a subvolume holding want and that
// p holds nothing else but the lock files and what the test put there.
func assertConverted(t *testing.T, p string, want state, others ...string) {
	t.Helper()
	tree := filepath.Join(p, "tree")
	if ok, err := btrfs.IsSubvolumeRootAt(unix.AT_FDCWD, tree); err != nil || !ok {
		t.Errorf("%s is not a subvolume's root (%v)", tree, err)
	}
	want.assertEqual(t, "converted", capture(t, tree))
	allowed := append([]string{"tree", ".#treetx.tree.lock", ".#treetx.tree.gate"}, others...)
	for _, n := range listDir(t, p) {
		if !slices.Contains(allowed, n) {
			t.Errorf("%s: %s left", p, n)
		}
	}
}

// TestConvert converts the sample tree, as root and as another user, and
// checks the subvolume holds the same tree, file data shared.
func TestConvert(t *testing.T) {
	img := testenv.FSImage(t, "btrfs", testenv.ImageOptions{MiB: 256})
	bin := testBinary(t)
	for _, tc := range []struct {
		name string
		uid  int
	}{{"root", -1}, {"nobody", 65534}} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(img.Dir, tc.name)
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			tree := filepath.Join(p, "tree")
			buildTree(t, tree, tc.uid < 0)
			if tc.uid >= 0 {
				if err := exec.Command("chown", "-hR", strconv.Itoa(tc.uid)+":"+strconv.Itoa(tc.uid), p).Run(); err != nil {
					t.Fatal(err)
				}
			}
			before := capture(t, tree)
			status, _ := runChild(t, bin, tree, 0, tc.uid)
			if status != childOK {
				t.Fatalf("convert: status %d", status)
			}
			assertConverted(t, p, before, "outside")
			// Run again: nothing to do.
			if status, _ := runChild(t, bin, tree, 0, tc.uid); status != childOK {
				t.Errorf("second convert: status %d", status)
			}
			res, err := Convert(context.Background(), tree, Options{})
			if err != nil || !res.Already {
				t.Errorf("third convert: %+v, %v; want Already", res, err)
			}
		})
	}
	// The files outside the tree linked to it are reported.
	p := filepath.Join(img.Dir, "report")
	if err := os.Mkdir(p, 0o755); err != nil {
		t.Fatal(err)
	}
	buildTree(t, filepath.Join(p, "tree"), true)
	res, err := Convert(context.Background(), filepath.Join(p, "tree"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Converted || !slices.Equal(res.LinkedOutside, []string{"x/linked-outside"}) || res.Copies != 0 || res.Clones == 0 {
		t.Errorf("result %+v: want converted, x/linked-outside linked outside, every file cloned", res)
	}
}

// TestRefused: what Convert refuses, and that it then leaves DIR and its
// parent as they were.
func TestRefused(t *testing.T) {
	img := testenv.FSImage(t, "btrfs", testenv.ImageOptions{})
	bin := testBinary(t)
	tests := []struct {
		name   string
		setup  func(t *testing.T, p, tree string)
		uid    int
		status int
	}{
		{"not on btrfs", nil, -1, childNotBtrfs},
		{"a nested subvolume", func(t *testing.T, p, tree string) {
			fd, err := unix.Open(filepath.Join(tree, "a/b"), unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := btrfs.CreateSubvolume(fd, "nested"); err != nil {
				t.Fatal(err)
			}
		}, -1, childNested},
		{"an immutable file", func(t *testing.T, p, tree string) {
			setFlag(t, filepath.Join(tree, "a/run.sh"), flagImmut)
			t.Cleanup(func() { setFlag(t, filepath.Join(tree, "a/run.sh"), 0) })
		}, -1, childUnsupported},
		{"another user's file, not as root", func(t *testing.T, p, tree string) {
			if err := exec.Command("chown", "-hR", "65534:65534", p).Run(); err != nil {
				t.Fatal(err)
			}
			if err := os.Lchown(filepath.Join(tree, "a/run.sh"), 0, 0); err != nil {
				t.Fatal(err)
			}
		}, 65534, childUnsupported},
		{"an unfinished transaction", func(t *testing.T, p, tree string) {
			if err := os.WriteFile(filepath.Join(p, ".#treetx.tree.journal"), []byte("{}"), 0o600); err != nil {
				t.Fatal(err)
			}
		}, -1, childNeedsRecovery},
		{"a symlink at .converting", func(t *testing.T, p, tree string) {
			if err := os.Symlink(tree, filepath.Join(p, ".#treetx.tree.converting")); err != nil {
				t.Fatal(err)
			}
		}, -1, childNeedsPerson},
		{"a plain directory at .converting", func(t *testing.T, p, tree string) {
			if err := os.Mkdir(filepath.Join(p, ".#treetx.tree.converting"), 0o755); err != nil {
				t.Fatal(err)
			}
		}, -1, childNeedsPerson},
		{"another user's subvolume at .converting", func(t *testing.T, p, tree string) {
			fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := btrfs.CreateSubvolume(fd, ".#treetx.tree.converting"); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(filepath.Join(p, ".#treetx.tree.converting"), 65534, 65534); err != nil {
				t.Fatal(err)
			}
		}, -1, childNeedsPerson},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(img.Dir, strconv.Itoa(i))
			if tc.setup == nil {
				p = filepath.Join(t.TempDir(), "p") // not btrfs
			}
			if err := os.Mkdir(p, 0o755); err != nil {
				t.Fatal(err)
			}
			tree := filepath.Join(p, "tree")
			if err := treeimage.BuildSample(tree); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { os.Chmod(filepath.Join(tree, "ro"), 0o755) })
			if tc.setup != nil {
				tc.setup(t, p, tree)
			}
			before, listing := treeimage.MustCapture(t, tree, treeimage.Options{}), listDir(t, p)
			status, _ := runChild(t, bin, tree, 0, tc.uid)
			if status != tc.status {
				t.Errorf("status %d, want %d", status, tc.status)
			}
			treeimage.AssertEqual(t, "before", before, "after", treeimage.MustCapture(t, tree, treeimage.Options{}))
			for _, n := range listDir(t, p) {
				if !slices.Contains(listing, n) && n != ".#treetx.tree.lock" && n != ".#treetx.tree.gate" {
					t.Errorf("%s left", n)
				}
			}
			if ok, _ := btrfs.IsSubvolumeRootAt(unix.AT_FDCWD, tree); ok {
				t.Error("the tree became a subvolume")
			}
		})
	}
}

func setFlag(t *testing.T, path string, flag int) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, flag); err != nil {
		t.Fatal(err)
	}
}

// crashState names what a crash left in p, as the package documentation's
// table does; "" is a state outside the table.
func crashState(t *testing.T, p string) string {
	t.Helper()
	conv := filepath.Join(p, ".#treetx.tree.converting")
	treeRoot, _ := btrfs.IsSubvolumeRootAt(unix.AT_FDCWD, filepath.Join(p, "tree"))
	removing := slices.ContainsFunc(listDir(t, p), func(n string) bool { return strings.HasPrefix(n, ".#treetx.tree.removing.") })
	fi, err := os.Lstat(conv)
	switch {
	case errors.Is(err, os.ErrNotExist) && !treeRoot && !removing:
		return "not started"
	case errors.Is(err, os.ErrNotExist) && treeRoot && removing:
		return "deleting"
	case errors.Is(err, os.ErrNotExist) && treeRoot:
		return "converted"
	case err != nil || !fi.IsDir():
		return ""
	}
	convRoot, _ := btrfs.IsSubvolumeRootAt(unix.AT_FDCWD, conv)
	switch {
	case convRoot && !treeRoot && !removing:
		return "copying"
	case !convRoot && treeRoot && !removing:
		return "exchanged"
	}
	return ""
}

// TestCrash kills Convert after each change it makes (a sample, unless
// TREETX_EXHAUSTIVE=1), checks that what is left is a state of the table,
// and that running Convert again ends with DIR converted, nothing left.
// For a few of those states, the second run is killed after each of its
// own changes in turn, and a third finishes.
func TestCrash(t *testing.T) {
	img := testenv.FSImage(t, "btrfs", testenv.ImageOptions{MiB: 256})
	bin := testBinary(t)
	rng := rand.New(rand.NewPCG(testenv.Seed(t), 0))
	// A run to the end, for the list of steps.
	n := 0
	fresh := func() (string, state) {
		n++
		p := filepath.Join(img.Dir, strconv.Itoa(n))
		if err := os.Mkdir(p, 0o755); err != nil {
			t.Fatal(err)
		}
		buildTree(t, filepath.Join(p, "tree"), true)
		return p, capture(t, filepath.Join(p, "tree"))
	}
	p, want := fresh()
	status, steps := runChild(t, bin, filepath.Join(p, "tree"), 0, -1)
	if status != childOK {
		t.Fatalf("convert: status %d", status)
	}
	assertConverted(t, p, want, "outside")
	// Every step but the copy of each entry is a point that matters, and
	// the first and last copies.
	must := func(steps []string) func(int) bool {
		return func(i int) bool {
			return steps[i] != "V4" || i == 0 || steps[i-1] != "V4" || i+1 == len(steps) || steps[i+1] != "V4"
		}
	}
	seen := map[string]int{}
	checked := 0
	for _, k := range testenv.Sample(len(steps), must(steps), 2, rng) {
		p, want := fresh()
		tree := filepath.Join(p, "tree")
		if status, _ := runChild(t, bin, tree, k+1, -1); status != -1 {
			t.Fatalf("kill after change %d (%s): the child was not killed (status %d)", k+1, steps[k], status)
		}
		st := crashState(t, p)
		if st == "" {
			t.Errorf("kill after change %d (%s): a state outside the table: %v", k+1, steps[k], listDir(t, p))
			continue
		}
		first := seen[st] == 0
		seen[st]++
		// The first time each state is met, kill the next run too, after
		// each of its changes in turn (a sample of them).
		if first && st != "converted" && st != "not started" {
			p2, _ := fresh()
			runChild(t, bin, filepath.Join(p2, "tree"), k+1, -1)
			_, steps2 := runChild(t, bin, filepath.Join(p2, "tree"), 0, -1)
			for _, j := range testenv.Sample(len(steps2), must(steps2), 2, rng) {
				j++
				p2, want2 := fresh()
				tree2 := filepath.Join(p2, "tree")
				runChild(t, bin, tree2, k+1, -1)
				if status, _ := runChild(t, bin, tree2, j, -1); status != -1 {
					t.Fatalf("after a kill at %d (%s), the second run was not killed after change %d (status %d)", k+1, st, j, status)
				}
				if s := crashState(t, p2); s == "" {
					t.Errorf("kill after change %d (%s), then after change %d of the next run: a state outside the table: %v", k+1, st, j, listDir(t, p2))
				}
				if status, _ := runChild(t, bin, tree2, 0, -1); status != childOK {
					t.Errorf("kill after change %d, then %d of the next run: third run status %d", k+1, j, status)
				}
				assertConverted(t, p2, want2, "outside")
				checked++
			}
		}
		if status, _ := runChild(t, bin, tree, 0, -1); status != childOK {
			t.Errorf("kill after change %d (%s): rerun status %d", k+1, steps[k], status)
		}
		assertConverted(t, p, want, "outside")
		checked++
	}
	t.Logf("crash points: %d checked; states met: %v", checked, seen)
	for _, st := range []string{"copying", "exchanged", "deleting", "converted"} {
		if seen[st] == 0 {
			t.Errorf("no crash point left the state %q", st)
		}
	}
}
