package treeimage

import (
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
)

// BuildSampleSubvolume is BuildSample with root made a btrfs subvolume
// (its parent must be on btrfs): the tree a transaction in snapshot mode
// runs on.
func BuildSampleSubvolume(root string) error {
	return buildSampleWith(root, func(root string, n sampleNode) error {
		if n.path != "." {
			return createNode(root, n)
		}
		pfd, err := unix.Open(filepath.Dir(root), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("treeimage: build sample: %w", err)
		}
		defer unix.Close(pfd)
		if err := btrfs.CreateSubvolume(pfd, filepath.Base(root)); err != nil {
			return fmt.Errorf("treeimage: build sample: %w", err)
		}
		return unix.Chmod(root, 0o700)
	})
}
