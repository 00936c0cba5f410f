package main

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"github.com/spf13/cobra"

	"github.com/treetx/treetx/internal/convert"
)

type convertOptions struct {
	wait    *lockWait
	verbose bool
}

func newConvertCommand() *cobra.Command {
	o := &convertOptions{wait: newLockWait()}
	c := &cobra.Command{
		Use:                   "convert [-w SECONDS | -n] [-v] DIR",
		DisableFlagsInUseLine: true,
		Short:                 "Turn a directory on btrfs into a subvolume, in place",
		Long: `Turn a directory on btrfs into a btrfs subvolume holding the same tree, in
place, under DIR's lock, so that transactions on it can use a snapshot as
their shadow.

A subvolume is created beside DIR (.#treetx.NAME.converting), the tree is
copied into it (file data as reflink clones: no data is written; owners,
modes, times, extended attributes and ACLs, file attributes, hard links,
symlinks, device files, FIFOs and sockets kept), compared with DIR, made
durable, and exchanged with DIR in one atomic rename; the old tree is then
deleted. If treetx convert is killed or the machine crashes, run it again:
it finishes or undoes what was left, and DIR is at every instant either the
old tree or the subvolume. docs/btrfs.md has every step.

Refused (exit 125, nothing changed): a DIR not on btrfs, one holding a
nested subvolume or a mount point, an immutable or append-only file, as a
user other than root a file of another owner, a DIR with an unfinished
transaction (run treetx recover first). A DIR that is already a subvolume's
root: nothing to do, exit 0. Stop what writes DIR without taking its lock
first: a change during the copy fails the comparison (exit 125, run again).

Exit status: 0 converted or already a subvolume; 75 (or
--conflict-exit-code) DIR's lock was not had in time; 125 refused or failed;
64 bad command line.`,
		Example: `  treetx convert /srv/cvsroot
  treetx convert -v -w 30 /srv/site`,
		Args:              usageArgs(cobra.ExactArgs(1)),
		ValidArgsFunction: completeDirs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.wait.check(cmd); err != nil {
				return err
			}
			return runConvert(cmd, args[0], o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	o.wait.addFlags(c)
	c.Flags().BoolVarP(&o.verbose, "verbose", "v", false, "log every step (V1..V10 of docs/btrfs.md) to stderr")
	return c
}

func runConvert(cmd *cobra.Command, dir string, o *convertOptions, stdout, stderr io.Writer) error {
	if err := notDirectory(dir); err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if o.verbose {
		log = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	res, err := convert.Convert(cmd.Context(), dir, convert.Options{LockTimeout: o.wait.wait(), Logger: log})
	if res != nil && res.Finished != "" {
		fmt.Fprintf(stdout, "%s: %s\n", res.Dir, res.Finished)
	}
	if err != nil {
		if errors.Is(err, convert.ErrNotBtrfs) || errors.Is(err, convert.ErrNested) || errors.Is(err, convert.ErrUnsupported) {
			err = fmt.Errorf("%w; nothing was changed", err)
		}
		return o.wait.conflict(err)
	}
	switch {
	case res.Already:
		fmt.Fprintf(stdout, "%s: already the root of a btrfs subvolume; nothing to do\n", res.Dir)
	case res.Converted:
		fmt.Fprintf(stdout, "%s: now a btrfs subvolume (%d entries copied: %d files cloned, %d copied)\n", res.Dir, res.Entries, res.Clones, res.Copies)
	}
	if n := len(res.LinkedOutside); n > 0 {
		show := res.LinkedOutside[:min(n, 5)]
		more := ""
		if n > len(show) {
			more = fmt.Sprintf(" and %d more", n-len(show))
		}
		fmt.Fprintf(stderr, "treetx: convert: %d file(s) had hard links outside %s; their copy in the subvolume is a file of its own: %s%s\n", n, res.Dir, strings.Join(show, ", "), more)
	}
	return nil
}
