package main

import (
	"errors"
	"fmt"
	"io"

	"github.com/spf13/cobra"

	txrecover "github.com/treetx/treetx/recover"
)

type recoverOptions struct {
	dryRun bool
	json   bool
	scan   bool
}

func newRecoverCommand() *cobra.Command {
	o := &recoverOptions{}
	c := &cobra.Command{
		Use:                   "recover [--dry-run] [--json] DIR... | --scan ROOT...",
		DisableFlagsInUseLine: true,
		Short:                 "Finish or undo what a crash left on each DIR",
		Long: `Finish or undo what a crash left on each DIR.

For each DIR, recover takes its lock without waiting. If a live transaction
holds it, DIR is left alone. Otherwise recover reads the journal and the names
beside DIR and rolls back a transaction that had not committed, finishes a
commit or rollback that was half done, and removes abandoned leftovers. It
never installs a tree whose root is not the inode the journal records, and it
does nothing destructive when the journal is unreadable.

With --dry-run, nothing is changed: each DIR's line says what recover would
do, followed by its plan, one step a line, each named by its ID in the
protocol (docs/protocol.md): C4..C8 and R1..R7 resume a commit or a
rollback, G1..G3 remove what no journal claims.

With --scan, the arguments are roots: every directory under them (the roots
included) that has something of treetx's beside it other than its lock file is
recovered, one line each. The walk does not follow symlinks, does not cross
mount points and does not descend into treetx's own trees (.#treetx.*).

Exit status: 0 every DIR is consistent now; 75 some DIR is busy; 125 some DIR
needs a person (or recovery failed, or it is not a directory; 125 wins over
75); 64 bad command line.`,
		Example:           "  treetx recover /srv/cvsroot\n  treetx recover --dry-run --json /srv/cvsroot\n  treetx recover --scan /srv/cvs",
		Args:              usageArgs(cobra.MinimumNArgs(1)),
		ValidArgsFunction: completeDirs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runRecover(args, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	c.Flags().BoolVar(&o.dryRun, "dry-run", false, "say what would be done, step by step, change nothing")
	c.Flags().BoolVar(&o.json, "json", false, "print one JSON object per DIR (see docs/protocol.md)")
	c.Flags().BoolVar(&o.scan, "scan", false, "the arguments are roots: recover every directory under them that has leftovers")
	return c
}

func runRecover(args []string, o *recoverOptions, stdout, stderr io.Writer) error {
	var codes exitCodes
	dirs := args
	if o.scan {
		dirs = scanRoots(args, &codes, "recover", stderr)
	}
	progress := newProgressLine(stderr, false)
	for _, dir := range dirs {
		var r *txrecover.Report
		err := notDirectory(dir)
		if err != nil {
			r = refusedReport(dir, err)
		} else {
			r, err = txrecover.Recover(dir, txrecover.Options{DryRun: o.dryRun, NoFollow: o.scan, Progress: progress.report()})
			progress.clear()
		}
		printReport(stdout, r, o.json, o.dryRun)
		if o.dryRun && !o.json {
			printPlan(stdout, r)
		}
		if err != nil {
			if !errors.Is(err, txrecover.ErrBusy) {
				fmt.Fprintf(stderr, "treetx: recover: %v\n", err)
			}
			codes.add(exitCode(err))
		}
	}
	return codes.err()
}
