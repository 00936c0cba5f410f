package main

import (
	"fmt"
	"os"

	txrecover "github.com/treetx/treetx/recover"
)

// notDirectory refuses a DIR that exists and is not a directory (a symlink
// is followed), as treetx run does, before a command inspects or recovers
// it: treetx never made such a thing. A DIR that does not exist is left to
// the command, since a crash in the middle of a rollback's swap leaves
// DIR's name empty, with its journal beside it.
func notDirectory(dir string) error {
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return fmt.Errorf("%s: not a directory", dir)
	}
	return nil
}

// refusedReport is the report of a DIR that could not be inspected, as
// package recover makes it.
func refusedReport(dir string, err error) *txrecover.Report {
	return &txrecover.Report{Dir: dir, State: txrecover.StateError, Found: err.Error(), Error: err.Error()}
}
