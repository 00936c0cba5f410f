package snapshot

import (
	"os"

	"github.com/karrick/godirwalk"
)

// This file is the only user of godirwalk, so the directory reader can be
// swapped without touching the builder.

// dirent is one directory entry with the type its d_type gave.
type dirent struct {
	name string
	typ  os.FileMode // os.ModeDir, os.ModeSymlink, 0 for regular, other type bits
}

// readDir lists the entries of the directory at dirPath, without "." and "..",
// with their types from getdents (lstat only where the file system gives no
// type). scratch is reused between calls.
func readDir(dirPath string, scratch []byte) ([]dirent, error) {
	ents, err := godirwalk.ReadDirents(dirPath, scratch)
	if err != nil {
		return nil, err
	}
	out := make([]dirent, len(ents))
	for i, e := range ents {
		out[i] = dirent{name: e.Name(), typ: e.ModeType() & os.ModeType}
	}
	return out, nil
}

// newScratch returns a buffer for readDir.
func newScratch() []byte { return make([]byte, godirwalk.MinimumScratchBufferSize) }
