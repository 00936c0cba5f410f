// Command mkcorpus builds a deterministic CVS-like tree for benchmarks:
// FILES files of 4 KB ("f00.c,v".."f09.c,v", ten to a directory) in
// directories nested three and four levels deep, a CVSROOT with history and
// val-tags, and a few symlinks.
//
//	go run ./scripts/mkcorpus DIR FILES
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: mkcorpus DIR FILES")
		os.Exit(64)
	}
	n, err := strconv.Atoi(os.Args[2])
	if err != nil || n < 10 {
		fmt.Fprintln(os.Stderr, "mkcorpus: FILES must be a number of at least 10")
		os.Exit(64)
	}
	if err := build(os.Args[1], n); err != nil {
		fmt.Fprintf(os.Stderr, "mkcorpus: %v\n", err)
		os.Exit(1)
	}
}

func build(root string, files int) error {
	if _, err := os.Lstat(root); err == nil {
		return fmt.Errorf("%s exists", root)
	}
	data := make([]byte, 4096)
	for i := range data {
		data[i] = byte('a' + i%26)
	}
	if err := os.MkdirAll(filepath.Join(root, "CVSROOT"), 0o775); err != nil {
		return err
	}
	for _, f := range []string{"history", "val-tags", "modules"} {
		if err := os.WriteFile(filepath.Join(root, "CVSROOT", f), []byte(f+"\n"), 0o664); err != nil {
			return err
		}
	}
	dirs := files / 10
	for d := range dirs {
		// Three levels for most directories, four for every fourth.
		dir := filepath.Join(root, fmt.Sprintf("m%02d", d%20), fmt.Sprintf("d%03d", (d/20)%100), fmt.Sprintf("s%06d", d))
		if d%4 == 3 {
			dir = filepath.Join(dir, "attic")
		}
		if err := os.MkdirAll(dir, 0o775); err != nil {
			return err
		}
		for f := range 10 {
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%02d.c,v", f)), data, 0o444); err != nil {
				return err
			}
		}
		if d%1000 == 0 {
			if err := os.Symlink("f00.c,v", filepath.Join(dir, "link")); err != nil {
				return err
			}
		}
	}
	return nil
}
