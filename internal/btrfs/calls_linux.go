package btrfs

import "github.com/treetx/treetx/internal/fsys"

// Calls is the kernel's own fsys.Subvolumes: Snapshot (writable) and
// DeleteSubvolume of this package.
type Calls struct{}

var _ fsys.Subvolumes = Calls{}

// Snapshot implements fsys.Subvolumes: a writable snapshot.
func (Calls) Snapshot(srcfd, dstParentfd int, name string) error {
	return Snapshot(srcfd, dstParentfd, name, false)
}

// DeleteSubvolume implements fsys.Subvolumes.
func (Calls) DeleteSubvolume(parentfd int, name string) error {
	return DeleteSubvolume(parentfd, name)
}

// Via returns the subvolume calls of fs where it has them (a test wrapper
// that records or stops after them), else the kernel's own (Calls).
func Via(fs fsys.FS) fsys.Subvolumes {
	if s, ok := fs.(fsys.Subvolumes); ok {
		return s
	}
	return Calls{}
}
