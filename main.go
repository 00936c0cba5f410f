// Command treetx makes whatever a command does to a directory tree atomic
// and crash-safe.
//
//	treetx run DIR -- COMMAND [ARG...]
//
// runs COMMAND under an exclusive lock on DIR, with a hard-link shadow of DIR
// beside it: if COMMAND fails, is killed, or the machine crashes, DIR is put
// back exactly as it was; if it succeeds, its changes are kept. treetx
// recover finishes or undoes what a crash left (on each DIR, or on every
// directory under a root with --scan), treetx status tells the state of a
// directory, treetx gc removes what finished transactions left (for cron),
// and treetx lock runs a command under a directory's lock without a
// transaction (readers, with --shared). See README.md and docs/protocol.md.
package main

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// globals are the settings every command shares.
type globals struct {
	verbose bool
}

func newRootCommand() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "treetx",
		Short: "Make what a command does to a directory tree atomic and crash-safe",
		Long: `treetx makes what a command does to a directory tree atomic and crash-safe.

  treetx run /srv/cvsroot -- cvs -d /srv/cvsroot commit -m "fix"

If the command fails, is killed, or the machine loses power, the tree is put
back exactly as it was (after a crash: by treetx recover); if it succeeds, its
changes are kept.`,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.PersistentFlags().BoolVarP(&g.verbose, "verbose", "v", false, "log every step of the protocol to stderr")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageErrorf("%v (see %s --help)", err, c.CommandPath())
	})
	root.AddCommand(newRunCommand(g), newRecoverCommand(g), newStatusCommand(g), newGCCommand(g), newLockCommand(g), newCleanupCommand())
	return root
}

func main() {
	root := newRootCommand()
	err := root.ExecuteContext(context.Background())
	code := exitCode(err)
	if err != nil {
		if _, silent := err.(exitStatus); !silent {
			// One line: joined errors are separated by "; ".
			fmt.Fprintf(os.Stderr, "treetx: %s\n", strings.ReplaceAll(err.Error(), "\n", "; "))
		}
	}
	os.Exit(code)
}
