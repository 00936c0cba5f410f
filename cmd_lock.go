package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/command"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/nest"
	"github.com/treetx/treetx/internal/protocol"
	"github.com/treetx/treetx/lock"
	"github.com/treetx/treetx/txn"
)

type lockOptions struct {
	wait      *lockWait
	shared    bool
	exclusive bool
	quiet     bool
}

func newLockCommand() *cobra.Command {
	o := &lockOptions{wait: newLockWait()}
	c := &cobra.Command{
		Use:                   "lock [flags] DIR -- COMMAND [ARG...]",
		DisableFlagsInUseLine: true,
		Short:                 "Run COMMAND under DIR's lock, without a transaction",
		Long: `Run COMMAND under DIR's lock, without a transaction.

The lock is the one treetx run holds from the start of a transaction to the
end of its commit or rollback: exclusive by default, shared with --shared.
Readers (cvs checkout, rsync of a site) run under --shared: they run together,
wait while a transaction runs, and so never see a half-applied change or the
instant of a rollback's swap; a transaction waits for them. DIR must not need
recovery (a journal beside it): then COMMAND is not run and the exit status is
125. COMMAND inherits the lock as descriptor 3; SIGINT, SIGTERM, SIGHUP and
SIGQUIT sent to treetx are forwarded to it. On a terminal, a wait of more
than a second for the lock is shown, with the lock's holder.

Exit status: COMMAND's own; 128+N if it died of signal N; 126 if it could not
be executed, 127 if it was not found; 75 (or --conflict-exit-code) if the lock
was not had within --lock-timeout; 125 if treetx failed or DIR needs recovery;
64 for a bad command line.`,
		Example: `  treetx lock --shared /srv/cvsroot -- cvs -d /srv/cvsroot checkout mod
  treetx lock -w 10 /srv/site -- rsync -a /srv/site/ mirror:/srv/site/
  treetx lock -s -n -E 0 /srv/site -- make -C /srv/site check   # busy: exit 0, not 75`,
		Args:              cobra.ArbitraryArgs,
		ValidArgsFunction: completeDirThenCommand,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.wait.check(cmd); err != nil {
				return err
			}
			if o.shared && o.exclusive {
				return usageErrorf("lock: --shared (-s) and --exclusive (-x) exclude each other (see %s --help)", cmd.CommandPath())
			}
			if err := dirCommandArgs(cmd, args, "treetx lock [--shared] DIR -- COMMAND [ARG...]"); err != nil {
				return err
			}
			return runLock(cmd.Context(), args[0], args[1:], o, cmd.ErrOrStderr())
		},
	}
	f := c.Flags()
	f.BoolVarP(&o.shared, "shared", "s", false, "take the lock shared (readers), not exclusive")
	f.BoolVarP(&o.exclusive, "exclusive", "x", false, "take the lock exclusive (the default)")
	o.wait.addFlags(c)
	f.BoolVarP(&o.quiet, "quiet", "q", false, "say nothing on stderr of an ordinary outcome (no wait shown); only what needs attention")
	return c
}

func runLock(ctx context.Context, dir string, argv []string, o *lockOptions, stderr io.Writer) error {
	if status, err := command.Check(argv[0]); err != nil {
		fmt.Fprintf(stderr, "treetx: %v\n", err)
		return exitStatus(status)
	}
	n, err := layout.Resolve(dir, layout.ResolveOptions{Use: layout.ForLock})
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	mode := lock.Exclusive
	if o.shared {
		mode = lock.Shared
	}
	held := nest.FromEnv(layout.LockOf)
	joined, err := nest.Join(held, n.Dir, mode)
	if err != nil {
		return o.wait.conflict(err)
	}
	if joined != nil {
		// Nested in a treetx that holds DIR: run the command inside its lock.
		status, startErr, err := command.Run(argv, command.Options{Signals: sigs})
		if err != nil {
			return err
		}
		if startErr != nil {
			fmt.Fprintf(stderr, "treetx: %v\n", startErr)
		}
		return exitStatus(status)
	}
	// A signal while waiting for the lock cancels the wait, before the
	// command could take over the signals.
	stopShowing := showLockWait(newProgressLine(stderr, o.quiet), n.Dir, n.Path(n.Lock))
	var lk *lock.Lock
	s := command.WhileWaiting(ctx, sigs, func(ctx context.Context) {
		lk, err = lock.Acquire(ctx, n.Path(n.Lock), lock.Options{Mode: mode, Timeout: o.wait.wait(), Gate: n.Path(n.Gate), Tree: n.Dir})
	})
	stopShowing()
	if s != nil {
		if lk != nil {
			lk.Release()
		}
		fmt.Fprintf(stderr, "treetx: lock: interrupted by %v while waiting for the lock; the command was not run\n", s)
		sig, _ := s.(syscall.Signal) // signal.Notify sends only those
		return exitStatus(128 + int(sig))
	}
	if err != nil {
		return o.wait.conflict(err)
	}
	defer lk.Release()
	// Under the lock, the directory is what the last transaction left: it
	// must have finished, or been recovered.
	if _, err := os.Lstat(n.Path(n.Journal)); err == nil {
		return fmt.Errorf("%s: %w: %s records an unfinished transaction, so the directory may be half changed; the command was not run; run: treetx recover %s", n.Dir, txn.ErrNeedsRecovery, n.Path(n.Journal), n.Dir)
	}
	if fi, err := os.Stat(n.Dir); err != nil || !fi.IsDir() {
		return fmt.Errorf("%s: no such directory", n.Dir)
	}
	if err := protocol.CheckAncestors(n); err != nil {
		return err
	}
	files, env, err := lockInheritable(lk, n, mode, held)
	if err != nil {
		return fmt.Errorf("pass the lock to the command: %w", err)
	}
	status, startErr, err := command.Run(argv, command.Options{Env: env, ExtraFiles: files, Signals: sigs})
	if err != nil {
		return err
	}
	if startErr != nil {
		fmt.Fprintf(stderr, "treetx: %v\n", startErr)
	}
	if err := lk.Release(); err != nil {
		fmt.Fprintf(stderr, "treetx: warning: %v\n", err)
	}
	return exitStatus(status)
}

// showLockWait shows on p, once the wait has lasted a second and then every
// second, how long treetx has waited for the lock at path and who holds it.
// The function it returns stops that and erases the line.
func showLockWait(p *progressLine, dir, path string) (stop func()) {
	if p == nil {
		return func() {}
	}
	done, stopped := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(stopped)
		start := time.Now()
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				who := "another process"
				if h, err := lock.ReadHolder(path); err == nil && h != nil && !h.Stale {
					who = h.String()
				}
				p.status(fmt.Sprintf("treetx: waiting for the lock on %s, held by %s: %s", dir, who, now.Sub(start).Round(time.Second)))
			}
		}
	}()
	return func() {
		close(done)
		<-stopped
		p.clear()
	}
}

// lockInheritable returns what the command inherits (the lock file as
// descriptor 3, the directory locks, the trees an enclosing treetx holds)
// and its environment, which names the trees held (nest.Env), this one
// first.
func lockInheritable(lk *lock.Lock, n layout.Names, mode lock.Mode, held []nest.Tree) ([]*os.File, []string, error) {
	files, err := lk.InheritableAll()
	if err != nil {
		return nil, nil, err
	}
	var st unix.Stat_t
	if err := unix.Stat(n.Dir, &st); err != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, fmt.Errorf("stat %s: %w", n.Dir, err)
	}
	passed, renumbered := nest.Pass(held, 3+len(files))
	files = append(files, passed...)
	own := nest.Tree{FD: 3, Mode: mode.String(), Dir: n.Dir, Dev: st.Dev, Ino: st.Ino}
	return files, nest.Environ(os.Environ(), append([]nest.Tree{own}, renumbered...)), nil
}
