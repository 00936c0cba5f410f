package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	txrecover "github.com/treetx/treetx/recover"
)

type recoverOptions struct {
	dryRun bool
	json   bool
}

func newRecoverCommand(g *globals) *cobra.Command {
	o := &recoverOptions{}
	c := &cobra.Command{
		Use:   "recover [--dry-run] [--json] DIR...",
		Short: "Finish or undo what a crash left on each DIR",
		Long: `Finish or undo what a crash left on each DIR.

For each DIR, recover takes its lock without waiting. If a live transaction
holds it, DIR is left alone. Otherwise recover reads the journal and the names
beside DIR and rolls back a transaction that had not committed, finishes a
commit or rollback that was half done, and removes abandoned leftovers. It
never installs a tree whose root is not the inode the journal records, and it
does nothing destructive when the journal is unreadable.

Exit status: 0 every DIR is consistent now; 75 some DIR is busy; 125 some DIR
needs a person (or recovery failed); 64 bad command line.`,
		Example: "  treetx recover /srv/cvsroot\n  treetx recover --dry-run --json /srv/cvsroot",
		Args:    cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRecover(args, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	c.Flags().BoolVar(&o.dryRun, "dry-run", false, "say what would be done, change nothing")
	c.Flags().BoolVar(&o.json, "json", false, "print one JSON object per DIR (see docs/protocol.md)")
	return c
}

func runRecover(dirs []string, o *recoverOptions, stdout, stderr io.Writer) error {
	code := exitOK
	for _, dir := range dirs {
		r, err := txrecover.Recover(dir, txrecover.Options{DryRun: o.dryRun})
		if r != nil {
			printReport(stdout, r, o.json, o.dryRun)
		}
		if err != nil {
			c := exitCode(err)
			if !errors.Is(err, txrecover.ErrBusy) || r == nil {
				fmt.Fprintf(stderr, "treetx: recover: %v\n", err)
			}
			if code == exitOK || c == exitTreetxError {
				code = c
			}
		}
	}
	if code != exitOK {
		return exitStatus(code)
	}
	return nil
}

// printReport prints one line (or one JSON object) for r.
func printReport(w io.Writer, r *txrecover.Report, asJSON, dryRun bool) {
	if asJSON {
		b, err := json.Marshal(r)
		if err == nil {
			fmt.Fprintf(w, "%s\n", b)
		}
		return
	}
	line := fmt.Sprintf("%s: %s: %s", r.Dir, r.State, r.Found)
	switch {
	case r.Action == "":
	case r.Done:
		line += "; did: " + r.Action
	case dryRun:
		line += "; would: " + r.Action
	default:
		line += "; " + r.Action
	}
	if len(r.Lost) > 0 {
		line += fmt.Sprintf("; the old content of %d file(s) is lost, failed tree kept at %s", len(r.Lost), r.Kept)
	}
	fmt.Fprintln(w, line)
}
