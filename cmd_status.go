package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	txrecover "github.com/treetx/treetx/recover"
)

type statusOptions struct {
	json bool
}

func newStatusCommand() *cobra.Command {
	o := &statusOptions{}
	c := &cobra.Command{
		Use:                   "status [--json] DIR",
		DisableFlagsInUseLine: true,
		Short:                 "Tell whether DIR is idle, in a transaction, or needs recovery",
		Long: `Tell whether DIR is idle, in a transaction, or needs recovery.

One line: DIR, its state (idle, in progress, needs recovery, needs a person),
what is there (for a transaction in progress: the lock's holder, its pid,
host, user, command and since when, and the transaction's phase), and what
treetx recover would do. status changes nothing, and does not wait for the
lock. --json prints the object docs/protocol.md describes.

Exit status: 0 idle or in progress; 3 needs recovery (treetx recover DIR would
fix it); 125 needs a person, or an error (DIR is not a directory); 64 bad
command line.`,
		Example: `  treetx status /srv/cvsroot
  treetx status --json /srv/cvsroot`,
		Args:              usageArgs(cobra.ExactArgs(1)),
		ValidArgsFunction: completeDirs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runStatus(args[0], o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	c.Flags().BoolVar(&o.json, "json", false, "print a JSON object (see docs/protocol.md)")
	return c
}

func runStatus(dir string, o *statusOptions, stdout, stderr io.Writer) error {
	var r *txrecover.Report
	err := notDirectory(dir)
	if err != nil {
		r = refusedReport(dir, err)
	} else {
		r, err = txrecover.Inspect(dir)
	}
	printReport(stdout, r, o.json, true)
	if err != nil {
		fmt.Fprintf(stderr, "treetx: status: %v\n", err)
		return exitStatus(exitTreetxError)
	}
	switch r.State {
	case txrecover.StateNeedsRecovery:
		return exitStatus(exitNeedsRecov)
	case txrecover.StateNeedsPerson, txrecover.StateError:
		return exitStatus(exitTreetxError)
	}
	return nil
}
