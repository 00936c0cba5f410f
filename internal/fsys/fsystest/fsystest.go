// Package fsystest wraps an fsys.FS for tests: it numbers every mutation,
// records it, fails a chosen step with a chosen error, or kills the process
// with SIGKILL right after a chosen step, so that no deferred code runs, as
// in a real crash.
package fsystest

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
)

// Op is one recorded mutation. Paths are absolute where the descriptor could
// be resolved.
type Op struct {
	Step  int    // 1-based
	Kind  string // the FS method: "mkdirat", "linkat", ...
	Path  string // the name the op acts on
	Path2 string // the second name of linkat and renameat2
	Flags uint   // renameat2 and unlinkat flags
	Len   int    // bytes written

	// With Record, what a replay of the op needs.
	Mode         uint32        // mkdirat, create, fchmodat
	UID, GID     int           // lchownat
	Atime, Mtime unix.Timespec // lutimesat
	Attr         string        // setxattrat, removexattrat
	Data         []byte        // write: the bytes; symlinkat: the target; setxattrat: the value
	Off          int64         // write: the file offset
	Ino          uint64        // mkdirat, create, symlinkat: the new inode
	Err          error         // what the step returned
}

func (o Op) String() string {
	s := fmt.Sprintf("%d %s %s", o.Step, o.Kind, o.Path)
	if o.Path2 != "" {
		s += " -> " + o.Path2
	}
	if o.Flags != 0 {
		s += fmt.Sprintf(" flags=%#x", o.Flags)
	}
	if o.Kind == "write" {
		s += fmt.Sprintf(" %d bytes", o.Len)
	}
	return s
}

// FS is an fsys.FS that counts, records, fails and crashes.
type FS struct {
	// Inner does the real work; nil means fsys.OS.
	Inner fsys.FS
	// Record keeps every op in Ops (resolving descriptors costs a readlink).
	Record bool
	// FailAt makes step FailAt return FailErr without doing anything.
	FailAt  int
	FailErr error
	// CrashAfter kills the process with SIGKILL right after step CrashAfter
	// is done.
	CrashAfter int
	// SkipSync makes the SkipSync-th fsync or syncfs do nothing (and go
	// unrecorded): a protocol with one sync removed, to show that the
	// power-loss checker finds what that breaks.
	SkipSync int

	mu    sync.Mutex
	n     int
	syncs int
	ops   []Op
	off   map[int]int64 // write offsets of descriptors from Create
}

var _ fsys.FS = (*FS)(nil)

// Steps is the number of mutations so far.
func (f *FS) Steps() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.n
}

// Ops returns the recorded ops, failed ones included (their Err is set).
func (f *FS) Ops() []Op {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Op(nil), f.ops...)
}

func (f *FS) inner() fsys.FS {
	if f.Inner == nil {
		return fsys.OS{}
	}
	return f.Inner
}

// do runs one step: fail it, or run it, record it and crash after it.
func (f *FS) do(op Op, fn func() error) error {
	f.mu.Lock()
	f.n++
	op.Step = f.n
	f.mu.Unlock()
	if op.Step == f.FailAt {
		return f.FailErr
	}
	err := fn()
	op.Err = err
	if f.Record {
		switch op.Kind {
		case "mkdirat", "create", "symlinkat":
			var st unix.Stat_t
			if unix.Lstat(op.Path, &st) == nil {
				op.Ino = st.Ino
			}
		}
		f.mu.Lock()
		f.ops = append(f.ops, op)
		f.mu.Unlock()
	}
	if op.Step == f.CrashAfter {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		time.Sleep(time.Hour)
	}
	return err
}

// at names name relative to dirfd, when recording.
func (f *FS) at(dirfd int, name string) string {
	if !f.Record || filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(FDPath(dirfd), name)
}

// FDPath resolves a directory descriptor to its path through /proc.
func FDPath(fd int) string {
	if fd == unix.AT_FDCWD {
		wd, _ := os.Getwd()
		return wd
	}
	p, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return fmt.Sprintf("fd%d", fd)
	}
	return p
}

// skipSync reports whether this sync is the one to skip.
func (f *FS) skipSync() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs++
	return f.syncs == f.SkipSync
}

// Mkdirat implements fsys.FS.
func (f *FS) Mkdirat(dirfd int, name string, mode uint32) error {
	return f.do(Op{Kind: "mkdirat", Path: f.at(dirfd, name), Mode: mode}, func() error { return f.inner().Mkdirat(dirfd, name, mode) })
}

// Linkat implements fsys.FS.
func (f *FS) Linkat(olddirfd int, oldname string, newdirfd int, newname string) error {
	return f.do(Op{Kind: "linkat", Path: f.at(olddirfd, oldname), Path2: f.at(newdirfd, newname)}, func() error {
		return f.inner().Linkat(olddirfd, oldname, newdirfd, newname)
	})
}

// Symlinkat implements fsys.FS.
func (f *FS) Symlinkat(target string, dirfd int, name string) error {
	return f.do(Op{Kind: "symlinkat", Path: f.at(dirfd, name), Data: []byte(target)}, func() error { return f.inner().Symlinkat(target, dirfd, name) })
}

// Create implements fsys.FS.
func (f *FS) Create(dirfd int, name string, mode uint32) (int, error) {
	fd := -1
	err := f.do(Op{Kind: "create", Path: f.at(dirfd, name), Mode: mode}, func() error {
		var err error
		fd, err = f.inner().Create(dirfd, name, mode)
		return err
	})
	if err == nil {
		f.mu.Lock()
		if f.off == nil {
			f.off = map[int]int64{}
		}
		f.off[fd] = 0
		f.mu.Unlock()
	}
	return fd, err
}

// Write implements fsys.FS.
func (f *FS) Write(fd int, p []byte) error {
	op := Op{Kind: "write", Len: len(p)}
	if f.Record {
		op.Path, op.Data = FDPath(fd), append([]byte(nil), p...)
		f.mu.Lock()
		op.Off = f.off[fd]
		f.off[fd] += int64(len(p))
		f.mu.Unlock()
	}
	return f.do(op, func() error { return f.inner().Write(fd, p) })
}

// Renameat2 implements fsys.FS.
func (f *FS) Renameat2(olddirfd int, oldname string, newdirfd int, newname string, flags uint) error {
	return f.do(Op{Kind: "renameat2", Path: f.at(olddirfd, oldname), Path2: f.at(newdirfd, newname), Flags: flags}, func() error {
		return f.inner().Renameat2(olddirfd, oldname, newdirfd, newname, flags)
	})
}

// Unlinkat implements fsys.FS.
func (f *FS) Unlinkat(dirfd int, name string, flags int) error {
	return f.do(Op{Kind: "unlinkat", Path: f.at(dirfd, name), Flags: uint(flags)}, func() error { return f.inner().Unlinkat(dirfd, name, flags) })
}

// Fsync implements fsys.FS.
func (f *FS) Fsync(fd int) error {
	if f.skipSync() {
		return nil
	}
	path := ""
	if f.Record {
		path = FDPath(fd)
	}
	return f.do(Op{Kind: "fsync", Path: path}, func() error { return f.inner().Fsync(fd) })
}

// Syncfs implements fsys.FS.
func (f *FS) Syncfs(fd int) error {
	if f.skipSync() {
		return nil
	}
	path := ""
	if f.Record {
		path = FDPath(fd)
	}
	return f.do(Op{Kind: "syncfs", Path: path}, func() error { return f.inner().Syncfs(fd) })
}

// Fchmodat implements fsys.FS.
func (f *FS) Fchmodat(dirfd int, name string, mode uint32) error {
	return f.do(Op{Kind: "fchmodat", Path: f.at(dirfd, name), Mode: mode}, func() error { return f.inner().Fchmodat(dirfd, name, mode) })
}

// Lchownat implements fsys.FS.
func (f *FS) Lchownat(dirfd int, name string, uid, gid int) error {
	return f.do(Op{Kind: "lchownat", Path: f.at(dirfd, name), UID: uid, GID: gid}, func() error { return f.inner().Lchownat(dirfd, name, uid, gid) })
}

// Lutimesat implements fsys.FS.
func (f *FS) Lutimesat(dirfd int, name string, atime, mtime unix.Timespec) error {
	return f.do(Op{Kind: "lutimesat", Path: f.at(dirfd, name), Atime: atime, Mtime: mtime}, func() error { return f.inner().Lutimesat(dirfd, name, atime, mtime) })
}

// Setxattrat implements fsys.FS.
func (f *FS) Setxattrat(dirfd int, name, attr string, value []byte) error {
	return f.do(Op{Kind: "setxattrat", Path: f.at(dirfd, name), Attr: attr, Data: append([]byte(nil), value...)}, func() error { return f.inner().Setxattrat(dirfd, name, attr, value) })
}

// Removexattrat implements fsys.FS.
func (f *FS) Removexattrat(dirfd int, name, attr string) error {
	return f.do(Op{Kind: "removexattrat", Path: f.at(dirfd, name), Attr: attr}, func() error { return f.inner().Removexattrat(dirfd, name, attr) })
}
