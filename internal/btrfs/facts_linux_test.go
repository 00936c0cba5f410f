package btrfs

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/creds"
	"github.com/treetx/treetx/internal/testenv"
)

// These tests pin down, on real loop-mounted btrfs, the kernel behaviour
// docs/btrfs.md reports and the snapshot mode's design relies on; a kernel
// that behaves otherwise fails them.

func TestMain(m *testing.M) {
	testenv.Announce(testenv.Btrfs)
	os.Exit(m.Run())
}

// nobody is the user the unprivileged facts are checked as.
func nobody() *creds.ID { return &creds.ID{UID: 65534, GID: 65534} }

// fixture is a btrfs image with a directory p to work in.
type fixture struct {
	t   *testing.T
	img *testenv.Image
	p   string // a plain directory of the top-level subvolume
	pfd int
}

func newFixture(t *testing.T, mount ...string) *fixture {
	t.Helper()
	img := testenv.FSImage(t, "btrfs", testenv.ImageOptions{Mount: mount})
	f := &fixture{t: t, img: img, p: filepath.Join(img.Dir, "p")}
	if err := os.Mkdir(f.p, 0o755); err != nil {
		t.Fatal(err)
	}
	f.pfd = f.open(f.p)
	return f
}

// open opens a directory for the test's life.
func (f *fixture) open(path string) int {
	f.t.Helper()
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// subvol creates a subvolume name in p holding one file.
func (f *fixture) subvol(name string) string {
	f.t.Helper()
	if err := CreateSubvolume(f.pfd, name); err != nil {
		f.t.Fatal(err)
	}
	p := filepath.Join(f.p, name)
	if err := os.WriteFile(filepath.Join(p, "file"), []byte(name), 0o644); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fixture) mkdir(name string) string {
	f.t.Helper()
	p := filepath.Join(f.p, name)
	if err := os.Mkdir(p, 0o755); err != nil {
		f.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "file"), []byte(name), 0o644); err != nil {
		f.t.Fatal(err)
	}
	return p
}

func (f *fixture) isRoot(path string) bool {
	f.t.Helper()
	ok, err := IsSubvolumeRootAt(unix.AT_FDCWD, path)
	if err != nil {
		f.t.Fatal(err)
	}
	return ok
}

func (f *fixture) content(path string) string {
	f.t.Helper()
	b, err := os.ReadFile(filepath.Join(path, "file"))
	if err != nil {
		f.t.Fatal(err)
	}
	return string(b)
}

func stat(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

func wantErrno(t *testing.T, what string, err error, want error) {
	t.Helper()
	if want == nil && err != nil || want != nil && !errors.Is(err, want) {
		t.Errorf("%s: got %v, want %v", what, err, want)
	}
}

// TestRenames: renameat2 on subvolume roots, within one parent and across
// subvolumes.
func TestRenames(t *testing.T) {
	f := newFixture(t)
	other := f.subvol("other") // a second subvolume, to rename into
	if err := os.Mkdir(filepath.Join(other, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	ofd := f.open(other)
	tests := []struct {
		name string
		// setup makes the names, run renames, check looks at the result
		run   func() error
		want  error
		check func()
	}{
		{"exchange a subvolume with a plain directory beside it", func() error {
			f.subvol("sv1")
			f.mkdir("d1")
			return unix.Renameat2(f.pfd, "sv1", f.pfd, "d1", unix.RENAME_EXCHANGE)
		}, nil, func() {
			if !f.isRoot(filepath.Join(f.p, "d1")) || f.isRoot(filepath.Join(f.p, "sv1")) || f.content(filepath.Join(f.p, "d1")) != "sv1" {
				t.Error("names not exchanged")
			}
		}},
		{"exchange two subvolumes beside each other", func() error {
			f.subvol("sv2")
			f.subvol("sv3")
			return unix.Renameat2(f.pfd, "sv2", f.pfd, "sv3", unix.RENAME_EXCHANGE)
		}, nil, func() {
			if f.content(filepath.Join(f.p, "sv3")) != "sv2" {
				t.Error("names not exchanged")
			}
		}},
		{"rename a subvolume to a free name with RENAME_NOREPLACE", func() error {
			f.subvol("sv4")
			return unix.Renameat2(f.pfd, "sv4", f.pfd, "sv4b", unix.RENAME_NOREPLACE)
		}, nil, func() {
			if !f.isRoot(filepath.Join(f.p, "sv4b")) {
				t.Error("not renamed")
			}
		}},
		{"RENAME_NOREPLACE of a subvolume onto a taken name", func() error {
			f.subvol("sv5")
			f.mkdir("d5")
			return unix.Renameat2(f.pfd, "sv5", f.pfd, "d5", unix.RENAME_NOREPLACE)
		}, unix.EEXIST, nil},
		{"plain rename of a subvolume over an empty directory", func() error {
			f.subvol("sv6")
			if err := os.Mkdir(filepath.Join(f.p, "empty6"), 0o755); err != nil {
				t.Fatal(err)
			}
			return unix.Renameat2(f.pfd, "sv6", f.pfd, "empty6", 0)
		}, nil, func() {
			if !f.isRoot(filepath.Join(f.p, "empty6")) {
				t.Error("not renamed")
			}
		}},
		{"move a subvolume into another subvolume's directory", func() error {
			f.subvol("sv7")
			return unix.Renameat2(f.pfd, "sv7", ofd, "d/sv7", unix.RENAME_NOREPLACE)
		}, nil, func() {
			if !f.isRoot(filepath.Join(other, "d/sv7")) {
				t.Error("not moved")
			}
		}},
		{"move a plain directory into another subvolume", func() error {
			f.mkdir("d8")
			return unix.Renameat2(f.pfd, "d8", ofd, "d8", unix.RENAME_NOREPLACE)
		}, unix.EXDEV, nil},
		{"exchange a plain directory with one in another subvolume", func() error {
			f.mkdir("d9")
			return unix.Renameat2(f.pfd, "d9", ofd, "d", unix.RENAME_EXCHANGE)
		}, unix.EXDEV, nil},
		{"exchange a subvolume with a subvolume inside another subvolume", func() error {
			f.subvol("sv10")
			if err := CreateSubvolume(ofd, "sv10in"); err != nil {
				t.Fatal(err)
			}
			return unix.Renameat2(f.pfd, "sv10", ofd, "sv10in", unix.RENAME_EXCHANGE)
		}, nil, func() {
			if f.content(filepath.Join(other, "sv10in")) != "sv10" {
				t.Error("names not exchanged")
			}
		}},
		{"hard link from a subvolume to its parent", func() error {
			sv := f.subvol("sv11")
			return os.Link(filepath.Join(sv, "file"), filepath.Join(f.p, "link11"))
		}, unix.EXDEV, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.run()
			wantErrno(t, tc.name, err, tc.want)
			if err == nil && tc.check != nil {
				tc.check()
			}
		})
	}
}

// TestSnapshotIdentity: a snapshot is a new subvolume, with its own st_dev
// and UUID, that names its source as parent; a nested subvolume is left
// out as an empty directory with inode number 2.
func TestSnapshotIdentity(t *testing.T) {
	f := newFixture(t)
	src := f.subvol("src")
	if err := CreateSubvolume(f.open(src), "nested"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "nested/inner"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if ids, err := NestedSubvolumes(f.open(src)); err != nil || len(ids) != 1 {
		t.Errorf("NestedSubvolumes(src) = %v, %v; want one", ids, err)
	}
	if err := Snapshot(f.open(src), f.pfd, "snap", false); err != nil {
		t.Fatal(err)
	}
	snap := filepath.Join(f.p, "snap")
	if ids, err := NestedSubvolumes(f.open(snap)); err != nil || len(ids) != 0 {
		t.Errorf("NestedSubvolumes(snap) = %v, %v; want none", ids, err)
	}
	sp, ss, sn := stat(t, f.p), stat(t, src), stat(t, snap)
	if ss.Ino != FirstFreeObjectID || sn.Ino != FirstFreeObjectID {
		t.Errorf("inodes: source %d, snapshot %d, want %d", ss.Ino, sn.Ino, FirstFreeObjectID)
	}
	if sp.Dev == ss.Dev || ss.Dev == sn.Dev || sp.Dev == sn.Dev {
		t.Errorf("st_dev: parent %d, source %d, snapshot %d: want three different", sp.Dev, ss.Dev, sn.Dev)
	}
	if got := f.content(snap); got != "src" {
		t.Errorf("snapshot's file = %q", got)
	}
	si, err := SubvolumeInfo(f.open(src))
	if err != nil {
		t.Fatal(err)
	}
	ni, err := SubvolumeInfo(f.open(snap))
	if err != nil {
		t.Fatal(err)
	}
	if ni.ParentUUID != si.UUID || ni.UUID == si.UUID || ni.ID == si.ID || !ZeroUUID(si.ParentUUID) {
		t.Errorf("source %+v, snapshot %+v: want the snapshot's parent UUID to be the source's UUID", si, ni)
	}

	// The nested subvolume: an empty directory, inode 2, in the snapshot.
	stub := filepath.Join(snap, "nested")
	st := stat(t, stub)
	ents, err := os.ReadDir(stub)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Ino != EmptySubvolDirObjectID || len(ents) != 0 {
		t.Errorf("nested subvolume in the snapshot: mode %o inode %d, %d entries; want an empty directory, inode %d", st.Mode, st.Ino, len(ents), EmptySubvolDirObjectID)
	}
	t.Logf("st_dev: parent %d, source %d, snapshot %d, stub %d", sp.Dev, ss.Dev, sn.Dev, st.Dev)
	wantErrno(t, "create a file in the stub", os.WriteFile(filepath.Join(stub, "f"), nil, 0o644), unix.EACCES)
	wantErrno(t, "rmdir the stub", os.Remove(stub), nil)

	// Deleting a subvolume that holds another is refused.
	wantErrno(t, "delete a subvolume holding a subvolume", DeleteSubvolume(f.pfd, "src"), unix.ENOTEMPTY)
	// Snapshot refuses a plain directory: the ioctl would snapshot the
	// whole subvolume holding it.
	dir := f.mkdir("plain")
	wantErrno(t, "Snapshot of a plain directory", Snapshot(f.open(dir), f.pfd, "plainsnap", false), ErrNotSubvolume)
	args := volArgsV2{fd: int64(f.open(dir))}
	copy(args.name[:], "rawsnap")
	wantErrno(t, "raw SNAP_CREATE_V2 of a plain directory", ioctl(f.pfd, iocSnapCreateV2, unsafe.Pointer(&args)), unix.EINVAL)
	// A read-only snapshot.
	if err := Snapshot(f.open(src), f.pfd, "ro", true); err != nil {
		t.Fatal(err)
	}
	rofd := f.open(filepath.Join(f.p, "ro"))
	if ro, err := IsReadOnly(rofd); err != nil || !ro {
		t.Errorf("IsReadOnly(ro) = %v, %v", ro, err)
	}
	wantErrno(t, "write in a read-only snapshot", os.WriteFile(filepath.Join(f.p, "ro/new"), nil, 0o644), unix.EROFS)
	wantErrno(t, "delete a read-only snapshot", DeleteSubvolume(f.pfd, "ro"), nil)
	wantErrno(t, "DeleteSubvolume of a plain directory", DeleteSubvolume(f.pfd, "plain"), ErrNotSubvolume)
}

// TestDevAfterRemount: st_dev of a subvolume is given when the kernel
// first reads it after a mount, so it changes with the order of first
// access; the subvolume's id and UUID do not.
func TestDevAfterRemount(t *testing.T) {
	f := newFixture(t)
	a, b := f.subvol("a"), f.subvol("b")
	// A plain directory inside b: what a hard-link transaction's journal
	// records the device of.
	inB := filepath.Join(b, "dir")
	if err := os.Mkdir(inB, 0o755); err != nil {
		t.Fatal(err)
	}
	afd, err := unix.Open(a, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	ia, err := SubvolumeInfo(afd)
	unix.Close(afd)
	if err != nil {
		t.Fatal(err)
	}
	da, db := stat(t, a).Dev, stat(t, b).Dev
	// Open descriptors would keep the file system busy.
	unix.Close(f.pfd)
	f.img.Remount(t)
	db2, da2 := stat(t, b).Dev, stat(t, a).Dev // the other order
	t.Logf("st_dev before remount: a %d b %d; after, b read first: a %d b %d", da, db, da2, db2)
	if da == da2 && db == db2 {
		t.Errorf("st_dev of a and b unchanged after remount and reading in the other order (a %d, b %d)", da, db)
	}
	if d := stat(t, inB).Dev; d != db2 {
		t.Errorf("st_dev of a directory in b is %d, b's %d", d, db2)
	}
	fd, err := unix.Open(a, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	ia2, err := SubvolumeInfo(fd)
	if err != nil {
		t.Fatal(err)
	}
	if ia2.ID != ia.ID || ia2.UUID != ia.UUID {
		t.Errorf("id and UUID changed across remount: %+v, %+v", ia, ia2)
	}
}

// superGeneration reads the generation of the primary superblock (at
// 64 KiB; generation at offset 72) from the image file: what is on disk.
func superGeneration(t *testing.T, image string) uint64 {
	t.Helper()
	fh, err := os.Open(image)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var b [8]byte
	if _, err := fh.ReadAt(b[:], 64<<10+72); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:])
}

// TestDurability: which calls commit a transaction (write the superblock)
// before they return. Mounted with commit=300 so that no periodic commit
// falls inside the test.
func TestDurability(t *testing.T) {
	f := newFixture(t, "commit=300")
	src := f.subvol("src")
	if err := unix.Syncfs(f.pfd); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		op     func() error
		commit bool
	}{
		{"create a directory", func() error { return os.Mkdir(filepath.Join(f.p, "d"), 0o755) }, false},
		{"CreateSubvolume", func() error { return CreateSubvolume(f.pfd, "sv") }, false},
		{"Snapshot", func() error { return Snapshot(f.open(src), f.pfd, "snap", false) }, true},
		{"exchange a subvolume with a directory", func() error {
			return unix.Renameat2(f.pfd, "snap", f.pfd, "d", unix.RENAME_EXCHANGE)
		}, false},
		{"fsync the parent after that exchange", func() error { return unix.Fsync(f.pfd) }, true},
		{"DeleteSubvolume", func() error { return DeleteSubvolume(f.pfd, "d") }, false},
		{"syncfs", func() error { return unix.Syncfs(f.pfd) }, true},
		{"syncfs with nothing to write", func() error { return unix.Syncfs(f.pfd) }, false},
	}
	for _, tc := range tests {
		before := superGeneration(t, f.img.File)
		if err := tc.op(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		after := superGeneration(t, f.img.File)
		if committed := after > before; committed != tc.commit {
			t.Errorf("%s: superblock generation %d -> %d: committed %v, want %v", tc.name, before, after, committed, tc.commit)
		}
	}
}

// TestUnprivileged: what a user who is not root may do, with and without
// user_subvol_rm_allowed.
func TestUnprivileged(t *testing.T) {
	for _, rmAllowed := range []bool{false, true} {
		name := "default"
		var mount []string
		if rmAllowed {
			name, mount = "user_subvol_rm_allowed", []string{"user_subvol_rm_allowed"}
		}
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, mount...)
			rootsv := f.subvol("rootsv") // root's
			home := filepath.Join(f.p, "home")
			if err := os.Mkdir(home, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Chown(home, int(nobody().UID), int(nobody().GID)); err != nil {
				t.Fatal(err)
			}
			hfd, rfd := f.open(home), f.open(rootsv)
			as := func(fn func() error) error { return creds.Do(nobody(), fn) }
			wantErrno(t, "create a subvolume", as(func() error { return CreateSubvolume(hfd, "mine") }), nil)
			if err := as(func() error { return os.WriteFile(filepath.Join(home, "mine/f"), []byte("x"), 0o644) }); err != nil {
				t.Fatal(err)
			}
			mfd := f.open(filepath.Join(home, "mine"))
			wantErrno(t, "snapshot one's own subvolume", as(func() error { return Snapshot(mfd, hfd, "snap", false) }), nil)
			wantErrno(t, "snapshot root's subvolume", as(func() error { return Snapshot(rfd, hfd, "rootsnap", false) }), unix.EPERM)
			wantErr := ErrNotEmpty
			if rmAllowed {
				wantErr = nil
			}
			wantErrno(t, "delete one's own snapshot, not empty", as(func() error { return DeleteSubvolume(hfd, "snap") }), wantErr)
			if !rmAllowed {
				if err := as(func() error { return os.Remove(filepath.Join(home, "snap/f")) }); err != nil {
					t.Fatal(err)
				}
				wantErrno(t, "delete one's own snapshot, emptied", as(func() error { return DeleteSubvolume(hfd, "snap") }), nil)
			}
			if _, err := os.Lstat(filepath.Join(home, "snap")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("snapshot still there: %v", err)
			}
		})
	}
}

// TestNestedSubvolumes lists more subvolumes than one ioctl returns (255),
// as a user who is not root.
func TestNestedSubvolumes(t *testing.T) {
	f := newFixture(t)
	outer := f.subvol("outer")
	if err := os.Mkdir(filepath.Join(outer, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	dfd := f.open(filepath.Join(outer, "d"))
	const n = 300
	for i := range n {
		if err := CreateSubvolume(dfd, "s"+strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	ofd := f.open(outer)
	var ids []uint64
	err := creds.Do(nobody(), func() (err error) { ids, err = NestedSubvolumes(ofd); return err })
	if err != nil || len(ids) != n {
		t.Errorf("NestedSubvolumes: %d ids, %v; want %d", len(ids), err, n)
	}
}
