package reflink

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.Announce(testenv.Btrfs, testenv.XFS, testenv.Ext4)
	os.Exit(m.Run())
}

// sparse writes a file of 9 MiB + 4 KiB: 1 MiB of data, an 8 MiB hole,
// 4 KiB of data, and returns its content.
func sparse(t *testing.T, path string, nocow bool) []byte {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if nocow {
		// FS_NOCOW_FL, set while the file is empty (btrfs).
		if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, 0x00800000); err != nil {
			t.Fatal(err)
		}
	}
	want := make([]byte, 9<<20+4096)
	for i := range 1 << 20 {
		want[i] = byte(i * 7)
	}
	for i := 9 << 20; i < len(want); i++ {
		want[i] = byte(i)
	}
	if _, err := f.WriteAt(want[:1<<20], 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(want[9<<20:], 9<<20); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return want
}

// fiemap lists the flags of every extent of fd (FS_IOC_FIEMAP, synced).
func fiemap(t *testing.T, fd int) []uint32 {
	t.Helper()
	const count = 64
	type extent struct {
		logical, physical, length uint64
		_                         [2]uint64
		flags                     uint32
		_                         [3]uint32
	}
	var req struct {
		start, length        uint64
		flags, mapped, count uint32
		_                    uint32
		extents              [count]extent
	}
	req.length, req.flags, req.count = ^uint64(0), 1 /* FIEMAP_FLAG_SYNC */, count
	const fsIocFiemap = 0xc020660b
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fsIocFiemap, uintptr(unsafe.Pointer(&req))); e != 0 {
		t.Fatalf("FIEMAP: %v", e)
	}
	var flags []uint32
	for _, e := range req.extents[:req.mapped] {
		flags = append(flags, e.flags)
	}
	return flags
}

// TestCopy copies a sparse file on each file system and checks the method,
// the content, that holes stay holes and that a clone shares its extents.
func TestCopy(t *testing.T) {
	t.Parallel()
	type fsKind struct {
		fstype string
		mkfs   []string
	}
	btrfs, xfs, xfsNoReflink, ext4 := fsKind{"btrfs", nil}, fsKind{"xfs", []string{"-m", "reflink=1"}}, fsKind{"xfs", []string{"-m", "reflink=0"}}, fsKind{"ext4", nil}
	tests := []struct {
		name     string
		src, dst fsKind
		nocow    bool // the source is nodatacow (btrfs chattr +C)
		want     Method
	}{
		{"btrfs", btrfs, btrfs, false, Clone},
		{"xfs reflink=1", xfs, xfs, false, Clone},
		{"xfs reflink=0", xfsNoReflink, xfsNoReflink, false, CopyRange},
		{"ext4", ext4, ext4, false, CopyRange},
		{"btrfs nodatacow source to datacow destination", btrfs, btrfs, true, CopyRange},
		{"btrfs to ext4", btrfs, ext4, false, ReadWrite},
	}
	images := map[string]*testenv.Image{}
	image := func(k fsKind) string {
		key := k.fstype + " " + filepath.Join(k.mkfs...)
		if images[key] == nil {
			images[key] = testenv.FSImage(t, k.fstype, testenv.ImageOptions{Mkfs: k.mkfs})
		}
		return images[key].Dir
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srcPath := filepath.Join(image(tc.src), "src"+string(rune('a'+i)))
			dstPath := filepath.Join(image(tc.dst), "dst"+string(rune('a'+i)))
			want := sparse(t, srcPath, tc.nocow)
			src, err := os.Open(srcPath)
			if err != nil {
				t.Fatal(err)
			}
			defer src.Close()
			dst, err := os.OpenFile(dstPath, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			defer dst.Close()
			m, err := Copy(int(dst.Fd()), int(src.Fd()))
			if err != nil {
				t.Fatal(err)
			}
			if m != tc.want {
				t.Errorf("method %v, want %v", m, tc.want)
			}
			got, err := os.ReadFile(dstPath)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("content differs (%d bytes, want %d)", len(got), len(want))
			}
			if err := dst.Sync(); err != nil {
				t.Fatal(err)
			}
			var st unix.Stat_t
			if err := unix.Fstat(int(dst.Fd()), &st); err != nil {
				t.Fatal(err)
			}
			if used := st.Blocks * 512; used > 4<<20 {
				t.Errorf("the copy takes %d bytes of disk: the 8 MiB hole was filled", used)
			}
			if m == Clone {
				for i, fl := range fiemap(t, int(dst.Fd())) {
					if fl&0x2000 == 0 { // FIEMAP_EXTENT_SHARED
						t.Errorf("extent %d of the clone is not shared (flags %#x)", i, fl)
					}
				}
			}
		})
	}
}
