package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/txn"
)

type runOptions struct {
	wait        *lockWait
	exclude     []string
	copy        []string
	noCVSCopies bool
	waitCleanup bool
	ownerChange bool
	fullCheck   bool
	verbose     bool
	quiet       bool
	mode        string
}

func newRunCommand() *cobra.Command {
	o := &runOptions{wait: newLockWait()}
	c := &cobra.Command{
		Use:                   "run [flags] DIR [DIR...] -- COMMAND [ARG...]",
		DisableFlagsInUseLine: true,
		Short:                 "Run COMMAND as one atomic, crash-safe transaction on DIR",
		Long: `Run COMMAND as one atomic, crash-safe transaction on the tree DIR.

treetx locks DIR, builds a hard-link shadow of it beside it, and runs COMMAND
(in the current directory, with the current environment). If COMMAND exits 0
its changes are made durable and kept; otherwise DIR is put back exactly as it
was. After a crash, run: treetx recover DIR.

With several DIRs, COMMAND runs as one transaction over all of them: every
DIR keeps what COMMAND did, or every DIR is put back, even after a crash at
any instant and a recovery of any one of them. The DIRs may be on different
file systems, and must not lie inside one another.

SIGINT, SIGTERM, SIGHUP and SIGQUIT sent to treetx (Ctrl-C) are forwarded to
COMMAND, and DIR is then rolled back whatever COMMAND returns: an interrupted
transaction is abandoned.

Exit status: COMMAND's own; 128+N if it died of signal N, or if treetx was
sent signal N while it ran; 126 if it could not be executed, 127 if it was
not found (DIR untouched in both); 75 (or --conflict-exit-code) if DIR's lock
was not had in time; 125 if treetx itself failed, or if a rollback found
files written in place whose old content is lost; 64 for a bad command line.

Where DIR is the root of a btrfs subvolume, the shadow is a snapshot of it
instead: no file is linked, and the cost does not grow with the tree
(--mode; treetx convert DIR makes a directory a subvolume).`,
		Example: `  treetx run /srv/cvsroot -- cvs -d /srv/cvsroot commit -m "fix"
  treetx run -w 30 --exclude '*.tmp' site -- make -C site
  treetx run -n -E 0 /srv/site -- make -C /srv/site   # busy: exit 0, not 75
  treetx run /var/mail /var/lib/mailindex -- ./deliver   # both, or neither`,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: completeDirThenCommand,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.wait.check(cmd); err != nil {
				return err
			}
			if o.quiet && o.verbose {
				return usageErrorf("run: --quiet (-q) and --verbose (-v) exclude each other (see %s --help)", cmd.CommandPath())
			}
			if err := dirsCommandArgs(cmd, args, "treetx run DIR [DIR...] -- COMMAND [ARG...]", true); err != nil {
				return err
			}
			if _, err := layout.ParseMode(o.mode); err != nil {
				return usageErrorf("run: --mode: %v (see %s --help)", err, cmd.CommandPath())
			}
			dash := cmd.ArgsLenAtDash()
			return runRun(cmd.Context(), args[:dash], args[dash:], o, cmd.ErrOrStderr())
		},
	}
	o.wait.addFlags(c)
	f := c.Flags()
	f.StringArrayVar(&o.exclude, "exclude", nil, "leave entries matching `GLOB` out of the transaction (repeatable; a GLOB with no / matches base names)")
	f.StringArrayVar(&o.copy, "copy", nil, "give files matching `GLOB` a real copy in the shadow, for programs that write them in place (repeatable)")
	f.BoolVar(&o.ownerChange, "allow-owner-change", false, "as a user other than root, let a rollback give you directories and CVS files that another user owns (else such a tree is refused)")
	f.BoolVar(&o.waitCleanup, "wait-cleanup", false, "delete the thrown-away tree before exiting, instead of in a detached process")
	f.BoolVar(&o.fullCheck, "full-check", false, "at the end, check every linked file for writes in place and changed metadata, not only those the file-system watch saw touched (as root)")
	f.BoolVar(&o.noCVSCopies, "no-cvs-copies", false, "in a CVS repository, do not copy CVSROOT/history, CVSROOT/val-tags and CVS/fileattr by default")
	f.BoolVarP(&o.verbose, "verbose", "v", false, "log every step of the protocol to stderr")
	f.StringVar(&o.mode, "mode", "auto", "how the shadow is made: `auto` (a btrfs snapshot where DIR is the root of a subvolume, else hard links), snapshot or hardlink")
	c.RegisterFlagCompletionFunc("mode", cobra.FixedCompletions([]string{"auto", "snapshot", "hardlink"}, cobra.ShellCompDirectiveNoFileComp))
	f.BoolVarP(&o.quiet, "quiet", "q", false, "say nothing on stderr when COMMAND is committed or rolled back as usual; only what needs attention (lost content, lock not had, a failure of treetx's own)")
	return c
}

func runRun(ctx context.Context, dirs []string, argv []string, o *runOptions, stderr io.Writer) error {
	dir := dirs[0]
	opts := txn.RunOptions{Options: txn.Options{
		Exclude: o.exclude, Copy: o.copy, NoCVSCopies: o.noCVSCopies,
		LockTimeout: o.wait.wait(), NoWait: o.wait.wait() == 0, Command: argv,
		Logger: newLogger(o.verbose, stderr), DeferRemoval: !o.waitCleanup, AllowOwnerChange: o.ownerChange,
		FullCheck: o.fullCheck, Mode: txn.Mode(o.mode),
	}}
	// The progress line is erased before the command starts, so that
	// nothing of it stays among the command's output, and before any
	// message.
	progress := newProgressLine(stderr, o.quiet)
	if progress != nil {
		// A wait for the lock over a second is shown, naming the holder,
		// as treetx lock does.
		if n, err := layout.Resolve(dir, layout.ResolveOptions{Use: layout.ForLock}); err == nil {
			stopWait := sync.OnceFunc(showLockWait(progress, n.Dir, n.Path(n.Lock)))
			defer stopWait()
			opts.Locked = stopWait
		}
		opts.Progress = progress.entries
		opts.Started = func(*txn.Tx) { progress.clear() }
	}
	rr, err := txn.RunGroup(ctx, dirs, argv, opts)
	progress.clear()
	if rr != nil {
		var garbage []string
		for _, r := range rr.Results {
			if r != nil {
				garbage = append(garbage, r.Garbage...)
			}
		}
		if cerr := startCleanup(garbage); cerr != nil {
			fmt.Fprintf(stderr, "treetx: warning: %v (treetx gc removes them later)\n", cerr)
		}
	}
	if rr != nil && rr.StartErr != nil {
		fmt.Fprintf(stderr, "treetx: %v\n", rr.StartErr)
	}
	if rr != nil && rr.Joined != "" && o.verbose {
		fmt.Fprintf(stderr, "treetx: %s is held by the transaction on %s that runs this command: joined it; that transaction commits or rolls back what the command did\n", dir, rr.Joined)
	}
	if rr != nil && !o.quiet {
		for i, r := range rr.Results {
			if r == nil {
				continue
			}
			name := dir // as given
			if len(dirs) > 1 {
				name = rr.Trees[i]
			}
			report(stderr, name, rr, r)
		}
	}
	if err != nil {
		var lost *txn.LostContentError
		if errors.As(err, &lost) {
			fmt.Fprintf(stderr, "treetx: %v\n", err)
			for _, p := range lost.Paths {
				fmt.Fprintf(stderr, "treetx:   lost old content: %s\n", p)
			}
			fmt.Fprintf(stderr, "treetx: the listed files hold what the failed command wrote; list them with --copy to protect them next time\n")
			return exitStatus(exitTreetxError)
		}
		return o.wait.conflict(err)
	}
	if rr.Signal != 0 {
		return exitStatus(128 + int(rr.Signal))
	}
	return exitStatus(rr.Status)
}

// report tells what the transaction did, on stderr.
func report(w io.Writer, dir string, rr *txn.RunResult, res *txn.Result) {
	if rr.Committed {
		if len(res.InPlace) > 0 {
			fmt.Fprintf(w, "treetx: warning: %d file(s) in %s were written in place, through the inode the shadow shared; had the command failed, their old content would have been lost (protect them with --copy):\n", len(res.InPlace), dir)
			for _, p := range res.InPlace {
				fmt.Fprintf(w, "treetx:   %s\n", p)
			}
		}
		return
	}
	why := fmt.Sprintf("command exited with status %d", rr.Status)
	if rr.Status > 128 && rr.StartErr == nil {
		why = fmt.Sprintf("command was killed by signal %d (%s)", rr.Status-128, unix.SignalName(unix.Signal(rr.Status-128)))
	} else if rr.StartErr != nil {
		why = "command could not be started"
	}
	if rr.Signal != 0 {
		why = fmt.Sprintf("interrupted by %s (the %s)", unix.SignalName(rr.Signal), why)
	}
	fmt.Fprintf(w, "treetx: %s: rolled back %s\n", why, dir)
	if res.Unchanged {
		// Nothing was put back: what the shadow left out stays.
		return
	}
	if n := len(res.LeftOut); n > 0 {
		shown := res.LeftOut
		if n > 5 {
			shown = shown[:5]
		}
		more := ""
		if n > 5 {
			more = fmt.Sprintf(" and %d more", n-5)
		}
		fmt.Fprintf(w, "treetx: left out of the transaction and gone with the failed tree: %s%s (lock and temporary files; --exclude)\n", strings.Join(shown, ", "), more)
	}
}

func newLogger(verbose bool, w io.Writer) *slog.Logger {
	if !verbose {
		return nil
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
