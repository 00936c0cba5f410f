// Command snapbench times what a snapshot shadow costs on btrfs, with
// treetx's own calls (internal/btrfs): a writable snapshot of the
// subvolume SUBVOL beside it, the syncfs the protocol makes after it, and
// the deletion of the snapshot, with a syncfs that makes the deletion
// durable. It prints one "NAME NANOSECONDS" line for each, for
// scripts/bench.sh -b.
//
//	go run ./scripts/snapbench SUBVOL
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: snapbench SUBVOL")
		os.Exit(64)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "snapbench: %v\n", err)
		os.Exit(1)
	}
}

func run(subvol string) error {
	src, err := unix.Open(subvol, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", subvol, err)
	}
	defer unix.Close(src)
	parent := filepath.Dir(subvol)
	pfd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", parent, err)
	}
	defer unix.Close(pfd)
	name := ".#treetx." + filepath.Base(subvol) + ".snapbench"
	steps := []struct {
		name string
		fn   func() error
	}{
		{"snapshot", func() error { return btrfs.Snapshot(src, pfd, name, false) }},
		{"snapsync", func() error { return syncfs(pfd, parent) }},
		{"delete", func() error { return btrfs.DeleteSubvolume(pfd, name) }},
		{"delsync", func() error { return syncfs(pfd, parent) }},
	}
	for _, s := range steps {
		t0 := time.Now()
		if err := s.fn(); err != nil {
			return err
		}
		fmt.Printf("%s %d\n", s.name, time.Since(t0).Nanoseconds())
	}
	return nil
}

func syncfs(fd int, path string) error {
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("syncfs %s: %w", path, err)
	}
	return nil
}
