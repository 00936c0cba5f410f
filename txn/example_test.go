package txn_test

import (
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"path/filepath"

	"github.com/treetx/treetx/txn"
)

// A program makes its own file operations on a tree atomic: Begin before
// the first change, then Commit to keep them all or Rollback to undo them
// all. After a crash in between, `treetx recover DIR` rolls back.
func Example() {
	parent, err := os.MkdirTemp("", "example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(parent)
	site := filepath.Join(parent, "site")
	os.Mkdir(site, 0o755)
	os.WriteFile(filepath.Join(site, "index.html"), []byte("old\n"), 0o644)

	tx, err := txn.Begin(site, txn.Options{})
	if err != nil {
		log.Fatal(err)
	}
	// Change the tree: replace a file by rename, add another.
	os.WriteFile(filepath.Join(site, "index.html.new"), []byte("new\n"), 0o644)
	os.Rename(filepath.Join(site, "index.html.new"), filepath.Join(site, "index.html"))
	os.WriteFile(filepath.Join(site, "extra.html"), []byte("extra\n"), 0o644)

	// Something went wrong: undo everything.
	if _, err := tx.Rollback(); err != nil {
		log.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(site, "index.html"))
	_, err = os.Stat(filepath.Join(site, "extra.html"))
	fmt.Printf("index.html: %sextra.html gone: %v\n", b, errors.Is(err, fs.ErrNotExist))
	// Output:
	// index.html: old
	// extra.html gone: true
}
