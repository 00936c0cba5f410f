package fswatch

import (
	"encoding/binary"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/testenv"
)

func TestMain(m *testing.M) {
	testenv.Announce(testenv.Root)
	os.Exit(m.Run())
}

// start watches dir's file system for content and attribute changes, or
// skips the test where fanotify's file-system marks are not allowed (not
// root); under CI=true, which runs as root, that fails it.
func start(t *testing.T, dir string) *Watch {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	w, err := Start(fd, Content|Attributes)
	if err != nil {
		if os.Geteuid() == 0 {
			t.Fatalf("Start: %v", err)
		}
		testenv.Unavailable(t, "Start: %v (needs CAP_SYS_ADMIN)", err)
	}
	t.Cleanup(w.Close)
	return w
}

func ino(t *testing.T, p string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestStopSeesEveryKindOfTouch touches one file each way a process can
// change or read a file, from this process and from a child that has exited,
// and checks that Stop names each of them and not a file nobody touched.
func TestStopSeesEveryKindOfTouch(t *testing.T) {
	dir := t.TempDir()
	names := []string{"write", "append-child", "truncate", "chmod", "chown", "utimes", "setxattr", "read", "open", "mmap", "link", "untouched", "held"}
	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("0123456789"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := func(n string) string { return filepath.Join(dir, n) }
	held, err := os.Open(p("held")) // open before the watch: counted as touched
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()

	w := start(t, dir)
	touch := map[string]func() error{
		"write": func() error {
			f, err := os.OpenFile(p("write"), os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			_, err = f.WriteAt([]byte("x"), 3)
			return err
		},
		"append-child": func() error {
			return exec.Command("sh", "-c", `printf more >>"$0"`, p("append-child")).Run()
		},
		"truncate": func() error { return os.Truncate(p("truncate"), 2) },
		"chmod":    func() error { return os.Chmod(p("chmod"), 0o600) },
		"chown":    func() error { return os.Lchown(p("chown"), os.Getuid(), os.Getgid()) },
		"utimes": func() error {
			return os.Chtimes(p("utimes"), time.Unix(1, 0), time.Unix(2, 0))
		},
		"setxattr": func() error { return unix.Lsetxattr(p("setxattr"), "user.treetx", []byte("v"), 0) },
		"read": func() error {
			_, err := os.ReadFile(p("read"))
			return err
		},
		"open": func() error {
			f, err := os.Open(p("open"))
			if err != nil {
				return err
			}
			return f.Close()
		},
		"mmap": func() error {
			f, err := os.OpenFile(p("mmap"), os.O_RDWR, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			m, err := unix.Mmap(int(f.Fd()), 0, 10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
			if err != nil {
				return err
			}
			m[0] = 'M'
			return errors.Join(unix.Msync(m, unix.MS_SYNC), unix.Munmap(m))
		},
		"link": func() error { return os.Link(p("link"), p("link2")) },
	}
	for n, fn := range touch {
		if err := fn(); err != nil {
			if n == "setxattr" && errors.Is(err, unix.ENOTSUP) {
				continue
			}
			t.Fatalf("%s: %v", n, err)
		}
	}
	// A file created and deleted meanwhile is not reported.
	if err := os.WriteFile(p("temp"), []byte("t"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p("temp")); err != nil {
		t.Fatal(err)
	}

	got, err := w.Stop()
	if err != nil {
		t.Fatalf("Stop: %v", err)
	}
	for _, n := range names {
		_, isTouched := touch[n]
		if n == "held" {
			isTouched = true
		}
		if _, found := slices.BinarySearch(got, ino(t, p(n))); found != isTouched {
			t.Errorf("%s: reported %v, want %v", n, found, isTouched)
		}
	}
	if !slices.IsSorted(got) {
		t.Errorf("Stop's inodes are not sorted: %v", got)
	}
}

// TestTooManyFilesIsLost checks that a watch that stops keeping files says
// so instead of returning a partial list.
func TestTooManyFilesIsLost(t *testing.T) {
	dir := t.TempDir()
	w := start(t, dir)
	w.limit = 3
	for i := range 5 {
		if err := os.WriteFile(filepath.Join(dir, string(rune('a'+i))), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Stop(); !errors.Is(err, ErrLost) {
		t.Fatalf("Stop after 5 files with a limit of 3: %v, want ErrLost", err)
	}
}

// TestCloseWithoutStop checks that Close ends the reader and can be called
// twice, and after Stop.
func TestCloseWithoutStop(t *testing.T) {
	w := start(t, t.TempDir())
	w.Close()
	w.Close()
	if _, err := w.Stop(); err == nil {
		t.Fatal("Stop after Close succeeded")
	}
}

// TestParseRefusesDamage: a malformed event is an error, never a panic.
func TestParseRefusesDamage(t *testing.T) {
	ev := make([]byte, metaLen)
	binary.NativeEndian.PutUint32(ev, metaLen)
	ev[4] = metaVersion
	for name, set := range map[string]func(b []byte){
		"metadata longer than the event": func(b []byte) { binary.NativeEndian.PutUint16(b[6:], metaLen+8) },
		"event longer than the buffer":   func(b []byte) { binary.NativeEndian.PutUint32(b, 4096) },
		"old version":                    func(b []byte) { b[4] = 2; binary.NativeEndian.PutUint16(b[6:], metaLen) },
	} {
		b := slices.Clone(ev)
		binary.NativeEndian.PutUint16(b[6:], metaLen)
		set(b)
		w := &Watch{handles: map[string]struct{}{}, limit: MaxFiles}
		if err := w.parse(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}
