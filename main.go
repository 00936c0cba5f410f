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

type rootOptions struct {
	version bool
}

func newRootCommand() *cobra.Command {
	o := &rootOptions{}
	root := &cobra.Command{
		Use:                   "treetx [--version]",
		DisableFlagsInUseLine: true,
		Short:                 "Make what a command does to a directory tree atomic and crash-safe",
		Long: `treetx makes what a command does to a directory tree atomic and crash-safe.

  treetx run /srv/cvsroot -- cvs -d /srv/cvsroot commit -m "fix"

If the command fails, is killed, or the machine loses power, the tree is put
back exactly as it was (after a crash: by treetx recover); if it succeeds, its
changes are kept.`,
		SilenceErrors:              true,
		SilenceUsage:               true,
		SuggestionsMinimumDistance: 2,
		Args:                       unknownSubcommand,
		RunE: func(cmd *cobra.Command, args []string) error {
			if o.version {
				return runVersion(&versionOptions{}, cmd.OutOrStdout())
			}
			return cmd.Help()
		},
	}
	root.Flags().BoolVarP(&o.version, "version", "V", false, "print treetx's version and exit")
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageErrorf("%v (see %s --help)", err, c.CommandPath())
	})
	root.AddCommand(newRunCommand(), newRecoverCommand(), newStatusCommand(), newGCCommand(), newLockCommand(),
		newVersionCommand(), newManCommand(), newCleanupCommand())
	root.AddCommand(newConvertCommand())
	// cobra's completion command (completion bash|zsh|fish|powershell),
	// made now to refuse an unknown shell as root refuses an unknown
	// command.
	root.InitDefaultCompletionCmd()
	if c, _, err := root.Find([]string{"completion"}); err == nil && c != root {
		c.Args, c.SuggestionsMinimumDistance = unknownSubcommand, 2
		c.RunE = func(cmd *cobra.Command, args []string) error { return cmd.Help() }
	}
	return root
}

// unknownSubcommand is the Args of a command that has subcommands: a word
// that names none of them is a usage error (exit 64), with cobra's
// suggestion when one is close, rather than cobra's own error. The command
// must have a RunE, or cobra never checks its Args.
func unknownSubcommand(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q", args[0])
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %s?)", strings.Join(s, " or "))
	}
	return usageErrorf("%s (see %s --help)", msg, c.CommandPath())
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
