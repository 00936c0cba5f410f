package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Image is a loop-mounted file-system image made by FSImage.
type Image struct {
	Dir  string // the mount point
	File string // the image file
	Type string // "btrfs", "xfs", "ext4"
	opts []string
}

// ImageOptions configures FSImage.
type ImageOptions struct {
	// MiB is the image's size (a sparse file); 0 means the smallest size
	// mkfs accepts for the type (btrfs 128, xfs 320, ext4 16).
	MiB int
	// Mkfs are extra arguments for mkfs.TYPE (before the image), such as
	// "-m", "reflink=1" for XFS.
	Mkfs []string
	// Mount are mount options ("user_subvol_rm_allowed", "commit=300"),
	// passed with -o after "loop".
	Mount []string
}

// imageGroup is the Group of the tests that need an image of type fstype.
func imageGroup(fstype string) Group {
	switch fstype {
	case "btrfs":
		return Btrfs
	case "xfs":
		return XFS
	case "ext4":
		return Ext4
	}
	return Group{Name: fstype + " image", Tools: []string{"mkfs." + fstype, "mount", "umount"}, Root: true}
}

// FSImage makes a file-system image of type fstype in a temporary
// directory, loop-mounts it and returns it; it is unmounted in t.Cleanup.
// It requires the type's Group (root, mkfs.TYPE, mount): missing, the test
// is skipped, or fails under CI=true.
func FSImage(t testing.TB, fstype string, o ImageOptions) *Image {
	t.Helper()
	Require(t, imageGroup(fstype))
	mib := o.MiB
	if mib == 0 {
		mib = map[string]int{"btrfs": 128, "xfs": 320, "ext4": 16}[fstype]
	}
	dir := t.TempDir()
	// Other users' tests reach the mount by path: t.TempDir's 0700 would
	// stop them on the way.
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	img := &Image{Dir: filepath.Join(dir, "mnt"), File: filepath.Join(dir, "image"), Type: fstype, opts: o.Mount}
	if err := os.Mkdir(img.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(img.File)
	if err != nil {
		t.Fatal(err)
	}
	err = f.Truncate(int64(mib) << 20)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	quiet := map[string][]string{"btrfs": {"-q", "-f"}, "xfs": {"-q", "-f"}, "ext4": {"-q", "-F"}}[fstype]
	args := append(append(quiet, o.Mkfs...), img.File)
	if out, err := exec.Command("mkfs."+fstype, args...).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.%s %s: %v\n%s", fstype, strings.Join(args, " "), err, out)
	}
	img.mount(t)
	t.Cleanup(func() { img.unmount(t) })
	return img
}

func (img *Image) mount(t testing.TB) {
	t.Helper()
	opts := strings.Join(append([]string{"loop"}, img.opts...), ",")
	if out, err := exec.Command("mount", "-o", opts, img.File, img.Dir).CombinedOutput(); err != nil {
		Unavailable(t, "mount -o %s %s: %v: %s", opts, img.File, err, out)
	}
}

// unmount unmounts the image if it is mounted, retrying while it is busy
// (a process that just deleted a tree may hold a directory a moment more).
func (img *Image) unmount(t testing.TB) {
	t.Helper()
	if !img.mounted() {
		return
	}
	var out []byte
	var err error
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		out, err = exec.Command("umount", img.Dir).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "busy") || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Errorf("umount %s: %v: %s", img.Dir, err, out)
		exec.Command("umount", "-l", img.Dir).Run()
	}
}

// mounted reports whether something is mounted on img.Dir.
func (img *Image) mounted() bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return true
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == img.Dir {
			return true
		}
	}
	return false
}

// Remount unmounts the image and mounts it again with the same options:
// what a reboot does to the file system's in-memory state.
func (img *Image) Remount(t testing.TB) {
	t.Helper()
	img.unmount(t)
	img.mount(t)
}
