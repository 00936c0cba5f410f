// Package snapshot builds, checks, restores and removes the hard-link shadow
// of a directory tree.
//
// A shadow is a copy of a tree in which every directory is recreated (mode,
// owner and times), every regular or special file is a hard link to the
// original's inode, every symlink is recreated without being followed, and
// files named by a copy list get a real copy of their content. Building it
// copies no file data, but a hard link shares its inode, so the metadata of
// every linked file is recorded in a manifest: a rollback restores it, and
// detects linked files whose content was written in place (their old content
// is lost: the shadow shares it).
//
// Every mutation goes through an fsys.FS. Nothing here syncs: making a
// shadow durable is the caller's step (one syncfs covers it).
package snapshot

import (
	"context"
	"errors"
	"log/slog"

	"github.com/treetx/treetx/internal/fsys"
)

// FS is the set of file-system mutations building, restoring and removing
// a tree perform: every one goes through it, so that tests can record, fail
// or stop them step by step. nil means the kernel's own calls. It is
// internal/fsys.FS, named here so that callers can name it.
type FS = fsys.FS

// Options configures Build.
type Options struct {
	// Context, if set, stops the build when done.
	Context context.Context
	// FS performs every mutation. Nil means fsys.OS.
	FS FS
	// Exclude names entries (and, for directories, whole subtrees) the shadow
	// leaves out.
	Exclude *Matcher
	// Copy names regular files that get a real copy instead of a hard link.
	Copy *Matcher
	// Refuse names entries the shadow may not hold: Build fails on the
	// first one it meets, with an error satisfying errors.Is(err,
	// ErrRefusedEntry) that names it.
	Refuse *Matcher
	// Manifest receives a record for every hard-linked file. Required.
	Manifest *ManifestWriter
	// Progress, if set, is called with the number of entries done so far,
	// about every 10,000 entries (from the building goroutines, one call at
	// a time).
	Progress func(entries int64)
	// Workers is how many directories are processed at once; zero means
	// GOMAXPROCS.
	Workers int
	// AllowOwnerChange lets the shadow's directories, symlinks and copies
	// belong to this process's user where it may not give them their
	// source's owner (it is not root, and another user owns them): a
	// rollback then changes their owner. Without it, Build fails there with
	// ErrOwner.
	AllowOwnerChange bool
	// Logger receives debug messages. Nil discards them.
	Logger *slog.Logger
}

// ErrRefusedEntry reports an entry that Options.Refuse names.
var ErrRefusedEntry = errors.New("an entry the shadow may not hold")

// ErrOwner reports an entry whose owner the shadow cannot keep: only root
// may give a file to another user.
var ErrOwner = errors.New("cannot keep the owner: only root may give a file to another user")

// Stats counts what Build made.
type Stats struct {
	Dirs, Links, Copies, Symlinks int64
	// Excluded lists the relative paths left out (a directory stands for its
	// whole subtree).
	Excluded []string
}
