package main

import (
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/treetx/treetx/txn"
)

// The trees a finished transaction throws away (the old shadow after a
// commit, the failed tree after a rollback) are first renamed to removal
// names, durably; deleting them takes time proportional to the tree and
// nothing depends on it, so treetx run leaves it to a detached process
// running this hidden command, and exits at once.

func newCleanupCommand() *cobra.Command {
	return &cobra.Command{
		Use:    "_cleanup PATH...",
		Short:  "Delete trees named for removal (run detached by treetx run)",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return txn.RemoveGarbage(args, nil)
		},
	}
}

// startCleanup deletes the garbage trees in a detached process (its own
// session, no standard streams, not waited for); if that process cannot be
// started, it deletes them here.
func startCleanup(paths []string) error {
	if len(paths) == 0 {
		return nil
	}
	self, err := os.Executable()
	if err == nil {
		cmd := exec.Command(self, append([]string{"_cleanup"}, paths...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		if err = cmd.Start(); err == nil {
			return cmd.Process.Release()
		}
	}
	if rmErr := txn.RemoveGarbage(paths, nil); rmErr != nil {
		return fmt.Errorf("remove old trees: %w", rmErr)
	}
	return nil
}
