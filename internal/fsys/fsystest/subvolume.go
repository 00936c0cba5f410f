package fsystest

import (
	"github.com/treetx/treetx/internal/btrfs"
	"github.com/treetx/treetx/internal/fsys"
)

var _ fsys.Subvolumes = (*FS)(nil)

// Snapshot implements fsys.Subvolumes: one step, "snapshot", from Path
// (the source's root) to Path2 (the new snapshot).
func (f *FS) Snapshot(srcfd, dstParentfd int, name string) error {
	op := Op{Kind: "snapshot", Path: f.at(srcfd, ""), Path2: f.at(dstParentfd, name)}
	return f.do(op, func() error { return btrfs.Via(f.inner()).Snapshot(srcfd, dstParentfd, name) })
}

// DeleteSubvolume implements fsys.Subvolumes: one step,
// "deletesubvolume", of Path.
func (f *FS) DeleteSubvolume(parentfd int, name string) error {
	op := Op{Kind: "deletesubvolume", Path: f.at(parentfd, name)}
	return f.do(op, func() error { return btrfs.Via(f.inner()).DeleteSubvolume(parentfd, name) })
}
