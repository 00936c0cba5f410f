package main

// Helpers the commands that report on directories share: recover, status
// and gc.

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"

	txrecover "github.com/treetx/treetx/recover"
)

// scanRoots returns the directories with leftovers under roots, sorted and
// without duplicates. A root that cannot be walked whole is reported on
// stderr and makes the exit status 125.
func scanRoots(roots []string, codes *exitCodes, verb string, stderr io.Writer) []string {
	var dirs []string
	for _, root := range roots {
		found, err := txrecover.Scan(root)
		if err != nil {
			fmt.Fprintf(stderr, "treetx: %s: %v\n", verb, err)
			codes.add(exitTreetxError)
		}
		dirs = append(dirs, found...)
	}
	slices.Sort(dirs)
	return slices.Compact(dirs)
}

// printReport prints one line (or one JSON object) for r. In text, a
// directory that could not be inspected gets no line (its error goes to
// stderr).
func printReport(w io.Writer, r *txrecover.Report, asJSON, dryRun bool) {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetEscapeHTML(false)
		enc.Encode(r)
		return
	}
	if r.State == txrecover.StateError {
		return
	}
	fmt.Fprintln(w, r.Line(dryRun))
}

// printPlan prints the steps of r's plan under its line, one an indented
// line: its ID in docs/protocol.md, what it does, the path it acts on.
func printPlan(w io.Writer, r *txrecover.Report) {
	for _, s := range r.Plan {
		fmt.Fprintf(w, "  %s\n", s)
	}
}
