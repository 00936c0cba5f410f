// Package btrfs is the part of the btrfs ioctl interface treetx uses:
// telling a subvolume's root from a plain directory, creating subvolumes,
// snapshotting and deleting them, and naming a subvolume in a way that
// survives a reboot (its id and UUID: st_dev does not).
//
// It calls the kernel directly (golang.org/x/sys/unix, no cgo, no
// libbtrfsutil). The ioctl numbers and argument layouts are those of
// include/uapi/linux/btrfs.h; a wrong layout makes the kernel answer
// ENOTTY, which the package's tests would show. docs/btrfs.md says what
// each call does on this project's kernel, as measured by those tests, and
// where that is documented.
//
// Durability: a snapshot is created inside a transaction commit, so it is
// on disk when Snapshot returns; CreateSubvolume and DeleteSubvolume are
// not (the first since a 2023 change; docs/btrfs.md). The protocol does not
// lean on the first: callers make each step durable with syncfs(2), which
// on btrfs commits the running transaction and costs next to nothing when
// the snapshot's own commit left nothing to write.
package btrfs

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
)

// FirstFreeObjectID is the inode number of every subvolume's root
// (BTRFS_FIRST_FREE_OBJECTID).
const FirstFreeObjectID = 256

// EmptySubvolDirObjectID is the inode number of the empty directory a
// snapshot holds where its source held a nested subvolume
// (BTRFS_EMPTY_SUBVOL_DIR_OBJECTID).
const EmptySubvolDirObjectID = 2

// SubvolNameMax is the longest name the subvolume ioctls take
// (BTRFS_SUBVOL_NAME_MAX); NAME_MAX (255) is the tighter limit anyway.
const SubvolNameMax = 4039

// ioctl numbers: _IOW/_IOR(BTRFS_IOCTL_MAGIC 0x94, nr, size).
const (
	iocSnapDestroy    = 0x5000940f // _IOW(0x94, 15, struct btrfs_ioctl_vol_args): 4096 bytes
	iocSnapCreateV2   = 0x50009417 // _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2): 4096 bytes
	iocSubvolCreateV2 = 0x50009418 // _IOW(0x94, 24, struct btrfs_ioctl_vol_args_v2)
	iocSubvolGetflags = 0x80089419 // _IOR(0x94, 25, __u64)
	iocGetSubvolInfo  = 0x81f8943c // _IOR(0x94, 60, struct btrfs_ioctl_get_subvol_info_args): 504 bytes
	iocGetSubvolRoot  = 0xd000943d // _IOWR(0x94, 61, struct btrfs_ioctl_get_subvol_rootref_args): 4096 bytes
	iocSnapDestroyV2  = 0x5000943f // _IOW(0x94, 63, struct btrfs_ioctl_vol_args_v2)
)

// Subvolume flags (BTRFS_SUBVOL_*).
const subvolRdonly = 1 << 1

// volArgs is struct btrfs_ioctl_vol_args.
type volArgs struct {
	fd   int64
	name [4088]byte
}

// volArgsV2 is struct btrfs_ioctl_vol_args_v2.
type volArgsV2 struct {
	fd      int64
	transid uint64
	flags   uint64
	unused  [4]uint64
	name    [SubvolNameMax + 1]byte
}

// ioctlTimespec is struct btrfs_ioctl_timespec (16 bytes with padding).
type ioctlTimespec struct {
	sec  uint64
	nsec uint32
	_    uint32
}

// subvolInfoArgs is struct btrfs_ioctl_get_subvol_info_args.
type subvolInfoArgs struct {
	treeid       uint64
	name         [256]byte
	parentID     uint64
	dirid        uint64
	generation   uint64
	flags        uint64
	uuid         [16]byte
	parentUUID   [16]byte
	receivedUUID [16]byte
	ctransid     uint64
	otransid     uint64
	stransid     uint64
	rtransid     uint64
	ctime        ioctlTimespec
	otime        ioctlTimespec
	stime        ioctlTimespec
	rtime        ioctlTimespec
	reserved     [8]uint64
}

// rootrefArgs is struct btrfs_ioctl_get_subvol_rootref_args.
type rootrefArgs struct {
	minTreeid uint64
	rootref   [255]struct{ treeid, dirid uint64 }
	numItems  uint8
	_         [7]uint8
}

// The sizes the ioctl numbers above encode; a mismatch does not compile.
var (
	_ [4096 - unsafe.Sizeof(volArgs{})]struct{}
	_ [unsafe.Sizeof(volArgs{}) - 4096]struct{}
	_ [4096 - unsafe.Sizeof(volArgsV2{})]struct{}
	_ [unsafe.Sizeof(volArgsV2{}) - 4096]struct{}
	_ [4096 - unsafe.Sizeof(rootrefArgs{})]struct{}
	_ [unsafe.Sizeof(rootrefArgs{}) - 4096]struct{}
	_ [504 - unsafe.Sizeof(subvolInfoArgs{})]struct{}
	_ [unsafe.Sizeof(subvolInfoArgs{}) - 504]struct{}
)

// Errors callers branch on.
var (
	// ErrNotBtrfs: the file is not on a btrfs file system.
	ErrNotBtrfs = errors.New("not on btrfs")
	// ErrNotSubvolume: the directory is not the root of a subvolume.
	// BTRFS_IOC_SNAP_CREATE_V2 given a plain directory snapshots the whole
	// subvolume holding it, which is never what a caller means: Snapshot
	// refuses it with this error.
	ErrNotSubvolume = errors.New("not the root of a btrfs subvolume")
	// ErrNotEmpty: DeleteSubvolume, run by a user who may not delete a
	// subvolume with what it holds (not root, and the file system is not
	// mounted with user_subvol_rm_allowed), met a subvolume that is not
	// empty. Delete its entries one by one, then call DeleteSubvolume
	// again: an empty subvolume goes with rmdir(2) (Linux 4.18).
	ErrNotEmpty = errors.New("a subvolume this user may delete only once it is empty")
)

// checkName refuses what is not one file name the ioctls take.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%q is not one file name", name)
	}
	if len(name) > 255 {
		return fmt.Errorf("%q: longer than 255 bytes", name)
	}
	return nil
}

// ioctl calls the ioctl req on fd with arg, retrying on EINTR.
func ioctl(fd int, req uintptr, arg unsafe.Pointer) error {
	for {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
		switch errno {
		case 0:
			return nil
		case unix.EINTR:
			continue
		}
		return errno
	}
}

// IsBtrfs reports whether the open file fd is on a btrfs file system.
func IsBtrfs(fd int) (bool, error) {
	var sfs unix.Statfs_t
	if err := unix.Fstatfs(fd, &sfs); err != nil {
		return false, fmt.Errorf("btrfs: statfs %s: %w", fsys.AtPath(fd, ""), err)
	}
	return sfs.Type == unix.BTRFS_SUPER_MAGIC, nil
}

// IsSubvolumeRoot reports whether the open file fd is the root directory
// of a btrfs subvolume: a directory with inode number 256 on a file system
// whose statfs magic is BTRFS_SUPER_MAGIC. (Inode 256 alone is no proof:
// other file systems number their inodes as they like.)
func IsSubvolumeRoot(fd int) (bool, error) {
	var stx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_SYNC_AS_STAT, unix.STATX_TYPE|unix.STATX_INO, &stx); err != nil {
		return false, fmt.Errorf("btrfs: statx %s: %w", fsys.AtPath(fd, ""), err)
	}
	if stx.Mode&unix.S_IFMT != unix.S_IFDIR || stx.Ino != FirstFreeObjectID {
		return false, nil
	}
	return IsBtrfs(fd)
}

// IsSubvolumeRootAt is IsSubvolumeRoot for name in the directory dirfd
// (unix.AT_FDCWD for a path), not following a symlink: a symlink, or a
// name that is not a directory, is not a subvolume's root.
func IsSubvolumeRootAt(dirfd int, name string) (bool, error) {
	fd, err := openPath(dirfd, name)
	if err != nil {
		if errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
			return false, nil
		}
		return false, err
	}
	defer unix.Close(fd)
	return IsSubvolumeRoot(fd)
}

// openPath opens name in dirfd with O_PATH, not following a symlink, as a
// directory.
func openPath(dirfd int, name string) (int, error) {
	for {
		fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return -1, fmt.Errorf("btrfs: open %s: %w", fsys.AtPath(dirfd, name), err)
		}
		return fd, nil
	}
}

// CreateSubvolume creates an empty subvolume name in the directory
// parentfd (BTRFS_IOC_SUBVOL_CREATE_V2). Any user who may create a
// directory there may create a subvolume. Its root gets mode 0777 less the
// umask and this process's file-system uid and gid (the parent's group
// where it is set-group-ID), as mkdir(2) would. It is not durable when
// this returns (on kernels since a 2023 change): syncfs(2) makes it so.
func CreateSubvolume(parentfd int, name string) error {
	if err := checkName(name); err != nil {
		return fmt.Errorf("btrfs: create subvolume: %w", err)
	}
	var args volArgsV2
	copy(args.name[:], name)
	if err := ioctl(parentfd, iocSubvolCreateV2, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("btrfs: create subvolume %s: %w", fsys.AtPath(parentfd, name), err)
	}
	return nil
}

// Snapshot creates name in the directory dstParentfd as a snapshot of the
// subvolume whose root srcfd is (BTRFS_IOC_SNAP_CREATE_V2), writable or
// read-only. srcfd must be a subvolume's root (ErrNotSubvolume otherwise)
// on the same file system as dstParentfd (EXDEV otherwise). A user who is
// not root may snapshot a subvolume whose root they own into a directory
// they may write (EPERM for another's). Nested subvolumes are not part of
// the snapshot: each appears in it as an empty directory with inode number
// 2 (see docs/btrfs.md). The kernel creates the snapshot during a
// transaction commit, after flushing the source's dirty data: it is on
// disk when Snapshot returns.
func Snapshot(srcfd, dstParentfd int, name string, readonly bool) error {
	if err := checkName(name); err != nil {
		return fmt.Errorf("btrfs: snapshot: %w", err)
	}
	root, err := IsSubvolumeRoot(srcfd)
	if err != nil {
		return err
	}
	if !root {
		return fmt.Errorf("btrfs: snapshot %s: %w", fsys.AtPath(srcfd, ""), ErrNotSubvolume)
	}
	args := volArgsV2{fd: int64(srcfd)}
	if readonly {
		args.flags |= subvolRdonly
	}
	copy(args.name[:], name)
	if err := ioctl(dstParentfd, iocSnapCreateV2, unsafe.Pointer(&args)); err != nil {
		return fmt.Errorf("btrfs: snapshot %s as %s: %w", fsys.AtPath(srcfd, ""), fsys.AtPath(dstParentfd, name), err)
	}
	return nil
}

// DeleteSubvolume deletes the subvolume name in the directory parentfd,
// with what it holds (BTRFS_IOC_SNAP_DESTROY_V2; BTRFS_IOC_SNAP_DESTROY on
// kernels before 5.7). Its name goes at once; its blocks are freed later
// by the kernel's cleaner; the deletion is not durable until a transaction
// commit (syncfs(2)), so a crash may bring the subvolume back.
//
// The ioctl is root's (CAP_SYS_ADMIN), or any user's who may remove a
// directory there, and may write the subvolume's root, where the file
// system is mounted with user_subvol_rm_allowed. Otherwise (EPERM) a user
// may still remove an empty subvolume with rmdir(2), which DeleteSubvolume
// then tries: a subvolume that is not empty gives ErrNotEmpty. The kernel
// refuses a subvolume holding another subvolume (ENOTEMPTY), the default
// subvolume and one being sent (EPERM). name must be a subvolume's root: a
// plain directory is refused (ErrNotSubvolume), nothing done.
func DeleteSubvolume(parentfd int, name string) error {
	if err := checkName(name); err != nil {
		return fmt.Errorf("btrfs: delete subvolume: %w", err)
	}
	path := fsys.AtPath(parentfd, name)
	root, err := IsSubvolumeRootAt(parentfd, name)
	if err != nil {
		return err
	}
	if !root {
		return fmt.Errorf("btrfs: delete subvolume %s: %w", path, ErrNotSubvolume)
	}
	var args volArgsV2
	copy(args.name[:], name)
	err = ioctl(parentfd, iocSnapDestroyV2, unsafe.Pointer(&args))
	if errors.Is(err, unix.ENOTTY) {
		var v1 volArgs
		copy(v1.name[:], name)
		err = ioctl(parentfd, iocSnapDestroy, unsafe.Pointer(&v1))
	}
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		// Not root, no user_subvol_rm_allowed: rmdir takes an empty one.
		switch rerr := unix.Unlinkat(parentfd, name, unix.AT_REMOVEDIR); {
		case rerr == nil:
			return nil
		case errors.Is(rerr, unix.ENOTEMPTY) || errors.Is(rerr, unix.EEXIST):
			return fmt.Errorf("btrfs: delete subvolume %s: %w (ioctl: %w)", path, ErrNotEmpty, err)
		default:
			return fmt.Errorf("btrfs: delete subvolume %s: %w (rmdir: %w)", path, err, rerr)
		}
	}
	if err != nil {
		return fmt.Errorf("btrfs: delete subvolume %s: %w", path, err)
	}
	return nil
}

// Info names a subvolume for good: its id and UUID are kept on disk and
// never change, whereas st_dev, the anonymous device number the kernel
// gives each subvolume when it first reads it, may differ after a remount
// (docs/btrfs.md).
type Info struct {
	// ID is the subvolume's tree id (subvolid, rootid); 5 is the top level.
	ID uint64
	// ParentID is the id of the subvolume holding it (0 for the top level).
	ParentID uint64
	// UUID is the subvolume's own UUID.
	UUID [16]byte
	// ParentUUID is the UUID of the subvolume it is a snapshot of (zero if
	// it is not a snapshot).
	ParentUUID [16]byte
	// Generation is the transaction id of its last change.
	Generation uint64
	// ReadOnly is its read-only flag.
	ReadOnly bool
}

// SubvolumeInfo returns the Info of the subvolume holding the open file fd
// (BTRFS_IOC_GET_SUBVOL_INFO, Linux 4.18, allowed to every user).
func SubvolumeInfo(fd int) (Info, error) {
	var args subvolInfoArgs
	if err := ioctl(fd, iocGetSubvolInfo, unsafe.Pointer(&args)); err != nil {
		return Info{}, fmt.Errorf("btrfs: subvolume information of %s: %w", fsys.AtPath(fd, ""), err)
	}
	return Info{
		ID: args.treeid, ParentID: args.parentID, UUID: args.uuid, ParentUUID: args.parentUUID,
		Generation: args.generation, ReadOnly: args.flags&subvolRdonly != 0,
	}, nil
}

// NestedSubvolumes returns the ids of the subvolumes whose parent is the
// subvolume whose root fd is, wherever they are in it
// (BTRFS_IOC_GET_SUBVOL_ROOTREF, Linux 4.18, allowed to every user): one
// call per 255, however big the tree. A snapshot leaves them out (each
// becomes an empty directory), so a snapshot shadow would lose them.
func NestedSubvolumes(fd int) ([]uint64, error) {
	var ids []uint64
	var args rootrefArgs
	for {
		err := ioctl(fd, iocGetSubvolRoot, unsafe.Pointer(&args))
		if err != nil && !errors.Is(err, unix.EOVERFLOW) {
			return nil, fmt.Errorf("btrfs: subvolumes in %s: %w", fsys.AtPath(fd, ""), err)
		}
		for _, r := range args.rootref[:args.numItems] {
			ids = append(ids, r.treeid)
		}
		if err == nil || args.numItems == 0 {
			return ids, nil
		}
		// EOVERFLOW: more than fit; min_treeid says where to go on.
	}
}

// IsReadOnly reports whether the subvolume holding the open file fd is
// read-only (BTRFS_IOC_SUBVOL_GETFLAGS).
func IsReadOnly(fd int) (bool, error) {
	var flags uint64
	if err := ioctl(fd, iocSubvolGetflags, unsafe.Pointer(&flags)); err != nil {
		return false, fmt.Errorf("btrfs: subvolume flags of %s: %w", fsys.AtPath(fd, ""), err)
	}
	return flags&subvolRdonly != 0, nil
}

// FormatUUID writes u in the usual 8-4-4-4-12 form.
func FormatUUID(u [16]byte) string {
	return fmt.Sprintf("%x-%x-%x-%x-%x", u[0:4], u[4:6], u[6:8], u[8:10], u[10:16])
}

// ZeroUUID reports whether u is all zero (no parent, for ParentUUID).
func ZeroUUID(u [16]byte) bool { return bytes.Equal(u[:], make([]byte, 16)) }
