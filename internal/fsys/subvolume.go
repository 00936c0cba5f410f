package fsys

// Subvolumes is what an FS offers for btrfs subvolumes: the two mutations
// of the protocol's snapshot mode (docs/protocol.md, "Snapshot mode"). It
// is apart from FS so that an FS that does not know subvolumes stays one:
// callers take it with btrfs.Via, which falls back to the kernel's own
// calls. Test wrappers implement it to record, fail or stop after these
// steps as after any other.
type Subvolumes interface {
	// Snapshot creates name in the directory dstParentfd as a writable
	// snapshot of the subvolume whose root srcfd is.
	Snapshot(srcfd, dstParentfd int, name string) error
	// DeleteSubvolume deletes the subvolume name in the directory
	// parentfd, with what it holds, as far as this process may
	// (btrfs.DeleteSubvolume says how far).
	DeleteSubvolume(parentfd int, name string) error
}
