package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

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

// dirCommandArgs checks the arguments of a command that runs COMMAND on
// DIR (run, lock): exactly one DIR, then --, then COMMAND. usage is the
// command's usage line, for the message.
func dirCommandArgs(c *cobra.Command, args []string, usage string) error {
	return dirsCommandArgs(c, args, usage, false)
}

// dirsCommandArgs is dirCommandArgs where several DIRs are allowed if
// several is set.
func dirsCommandArgs(c *cobra.Command, args []string, usage string, several bool) error {
	dash := c.ArgsLenAtDash()
	switch {
	case dash < 0:
		return usageErrorf("%s: missing -- before the command (usage: %s)", c.Name(), usage)
	case dash == 0 && several:
		return usageErrorf("%s: want at least one DIR before -- (usage: %s)", c.Name(), usage)
	case dash != 1 && !several:
		return usageErrorf("%s: want exactly one DIR before --, got %d (usage: %s)", c.Name(), dash, usage)
	case len(args) == dash:
		return usageErrorf("%s: no command after -- (usage: %s)", c.Name(), usage)
	}
	return nil
}

// refusedReport is the report of a DIR that could not be inspected, as
// package recover makes it.
func refusedReport(dir string, err error) *txrecover.Report {
	return &txrecover.Report{Dir: dir, State: txrecover.StateError, Found: err.Error(), Error: err.Error()}
}

// completeDirs completes every argument as a directory.
func completeDirs(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return nil, cobra.ShellCompDirectiveFilterDirs
}

// completeDirThenCommand completes the first argument (DIR) as a directory
// and the others (--, COMMAND and its arguments) as files, as the shell
// would.
func completeDirThenCommand(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) == 0 {
		return nil, cobra.ShellCompDirectiveFilterDirs
	}
	return nil, cobra.ShellCompDirectiveDefault
}
