// Package fsys is the one seam through which treetx mutates a file system.
//
// Every file-system mutation of the protocol (snapshot, txn and recover) goes
// through an FS: directory creation, links, symlinks, file creation and
// writes, renames, unlinks, metadata changes and the syncs that make them
// durable. Reads (open for reading, stat, getdents, readlink) do not. The
// production implementation, OS, calls the kernel directly; tests wrap it to
// record the sequence of operations, to fail a chosen step with a chosen errno,
// or to stop the process dead after step N, the way a crash would.
//
// Names are resolved relative to a directory file descriptor, as the *at
// system calls do; an absolute name ignores the descriptor.
package fsys

import (
	"strconv"
	"unsafe"

	"golang.org/x/sys/unix"
)

// FS is the set of file-system mutations the protocol may perform.
// Implementations must be safe for concurrent use.
type FS interface {
	// Mkdirat creates directory name in dirfd with mode (before umask).
	Mkdirat(dirfd int, name string, mode uint32) error
	// Linkat makes newname in newdirfd a hard link to oldname in olddirfd,
	// without following symlinks.
	Linkat(olddirfd int, oldname string, newdirfd int, newname string) error
	// Symlinkat creates name in dirfd as a symbolic link to target.
	Symlinkat(target string, dirfd int, name string) error
	// Create creates name in dirfd exclusively (O_CREAT|O_EXCL), open for
	// writing, and returns its descriptor. The caller closes it.
	Create(dirfd int, name string, mode uint32) (int, error)
	// Write writes all of p to fd.
	Write(fd int, p []byte) error
	// Renameat2 renames oldname in olddirfd to newname in newdirfd with
	// renameat2(2) flags (unix.RENAME_NOREPLACE, unix.RENAME_EXCHANGE).
	Renameat2(olddirfd int, oldname string, newdirfd int, newname string, flags uint) error
	// Unlinkat removes name from dirfd; flags may be unix.AT_REMOVEDIR.
	Unlinkat(dirfd int, name string, flags int) error
	// Fsync flushes fd's data and metadata to stable storage.
	Fsync(fd int) error
	// Syncfs flushes every dirty page and inode of the file system holding fd.
	Syncfs(fd int) error
	// Fchmodat sets the mode of name in dirfd, never following a symlink.
	Fchmodat(dirfd int, name string, mode uint32) error
	// Lchownat sets the owner of name in dirfd without following symlinks.
	Lchownat(dirfd int, name string, uid, gid int) error
	// Lutimesat sets the access and modification times of name in dirfd
	// without following symlinks.
	Lutimesat(dirfd int, name string, atime, mtime unix.Timespec) error
	// Setxattrat sets an extended attribute of name in dirfd, without
	// following a symlink.
	Setxattrat(dirfd int, name, attr string, value []byte) error
	// Removexattrat removes an extended attribute of name in dirfd, without
	// following a symlink.
	Removexattrat(dirfd int, name, attr string) error
}

// OS is the production FS: each method is the system call it names.
type OS struct{}

var _ FS = OS{}

// Mkdirat implements FS.
func (OS) Mkdirat(dirfd int, name string, mode uint32) error {
	return ignoringEINTR(func() error { return unix.Mkdirat(dirfd, name, mode) })
}

// Linkat implements FS.
func (OS) Linkat(olddirfd int, oldname string, newdirfd int, newname string) error {
	return ignoringEINTR(func() error { return unix.Linkat(olddirfd, oldname, newdirfd, newname, 0) })
}

// Symlinkat implements FS.
func (OS) Symlinkat(target string, dirfd int, name string) error {
	return ignoringEINTR(func() error { return unix.Symlinkat(target, dirfd, name) })
}

// Create implements FS.
func (OS) Create(dirfd int, name string, mode uint32) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// Write implements FS.
func (OS) Write(fd int, p []byte) error {
	for len(p) > 0 {
		n, err := unix.Write(fd, p)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		p = p[n:]
	}
	return nil
}

// Renameat2 implements FS.
func (OS) Renameat2(olddirfd int, oldname string, newdirfd int, newname string, flags uint) error {
	return ignoringEINTR(func() error { return unix.Renameat2(olddirfd, oldname, newdirfd, newname, flags) })
}

// Unlinkat implements FS.
func (OS) Unlinkat(dirfd int, name string, flags int) error {
	return ignoringEINTR(func() error { return unix.Unlinkat(dirfd, name, flags) })
}

// Fsync implements FS.
func (OS) Fsync(fd int) error {
	return ignoringEINTR(func() error { return unix.Fsync(fd) })
}

// Syncfs implements FS.
func (OS) Syncfs(fd int) error {
	return ignoringEINTR(func() error { return unix.Syncfs(fd) })
}

// Fchmodat implements FS. It never follows a symlink: fchmodat2 with
// AT_SYMLINK_NOFOLLOW (Linux 6.6), so that a name swapped for a symlink
// after it was checked cannot redirect the change; older kernels, which
// lack it, and seccomp filters that refuse it, get fchmodat, which follows
// one.
func (OS) Fchmodat(dirfd int, name string, mode uint32) error {
	return ignoringEINTR(func() error {
		p, err := unix.BytePtrFromString(name)
		if err != nil {
			return err
		}
		_, _, errno := unix.Syscall6(unix.SYS_FCHMODAT2, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(mode), unix.AT_SYMLINK_NOFOLLOW, 0, 0)
		switch errno {
		case 0:
			return nil
		case unix.ENOSYS, unix.EPERM:
			// A kernel without it; or a seccomp filter that does not
			// know it (systemd 252's refuses it with EPERM): a real
			// EPERM comes back from fchmodat too.
			return unix.Fchmodat(dirfd, name, mode, 0)
		}
		return errno
	})
}

// Lchownat implements FS.
func (OS) Lchownat(dirfd int, name string, uid, gid int) error {
	return ignoringEINTR(func() error { return unix.Fchownat(dirfd, name, uid, gid, unix.AT_SYMLINK_NOFOLLOW) })
}

// Lutimesat implements FS.
func (OS) Lutimesat(dirfd int, name string, atime, mtime unix.Timespec) error {
	ts := []unix.Timespec{atime, mtime}
	return ignoringEINTR(func() error { return unix.UtimesNanoAt(dirfd, name, ts, unix.AT_SYMLINK_NOFOLLOW) })
}

func ignoringEINTR(fn func() error) error {
	for {
		if err := fn(); err != unix.EINTR {
			return err
		}
	}
}

// Setxattrat sets extended attribute attr of name in dirfd to value, without
// following a symlink at name.
func (OS) Setxattrat(dirfd int, name, attr string, value []byte) error {
	return ignoringEINTR(func() error { return unix.Lsetxattr(AtPath(dirfd, name), attr, value, 0) })
}

// Removexattrat removes extended attribute attr of name in dirfd, without
// following a symlink at name.
func (OS) Removexattrat(dirfd int, name, attr string) error {
	return ignoringEINTR(func() error { return unix.Lremovexattr(AtPath(dirfd, name), attr) })
}

// AtPath turns (dirfd, name) into a path the non-*at system calls accept:
// name itself if it is absolute or dirfd is AT_FDCWD, else name under the
// descriptor's /proc/self/fd link.
func AtPath(dirfd int, name string) string {
	if dirfd == unix.AT_FDCWD || (len(name) > 0 && name[0] == '/') {
		return name
	}
	return "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
}
