package main

import (
	"io"

	"github.com/spf13/cobra"

	txrecover "github.com/treetx/treetx/recover"
)

func newStatusCommand(g *globals) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "status [--json] DIR",
		Short: "Tell whether DIR is idle, in a transaction, or needs recovery",
		Long: `Tell whether DIR is idle, in a transaction, or needs recovery.

Exit status: 0 idle or in progress; 3 needs recovery (treetx recover DIR would
fix it); 125 needs a person, or an error; 64 bad command line.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runStatus(args[0], asJSON, cmd.OutOrStdout())
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print a JSON object (see docs/protocol.md)")
	return c
}

func runStatus(dir string, asJSON bool, stdout io.Writer) error {
	r, err := txrecover.Inspect(dir)
	if err != nil {
		return err
	}
	printReport(stdout, r, asJSON, true)
	switch r.State {
	case txrecover.StateNeedsRecovery:
		return exitStatus(exitNeedsRecov)
	case txrecover.StateNeedsPerson:
		return exitStatus(exitTreetxError)
	}
	return nil
}
