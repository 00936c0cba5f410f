package txn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/treetx/treetx/internal/command"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/nest"
	"github.com/treetx/treetx/lock"
)

// InterruptedError reports a signal that reached Run before the command
// started: the transaction was abandoned, the directory is untouched.
type InterruptedError struct {
	Signal syscall.Signal
}

// Error says which signal interrupted the transaction, and that nothing
// was changed.
func (e *InterruptedError) Error() string {
	return fmt.Sprintf("interrupted by %v before the command started; nothing was changed", e.Signal)
}

// RunOptions configures Run.
type RunOptions struct {
	Options
	// Stdin, Stdout and Stderr are the command's; nil means this process's.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Started, if set, is called once the shadow is complete, just before the
	// command starts.
	Started func(tx *Tx)
}

// RunResult is what Run did.
type RunResult struct {
	// Status is the command's exit status as a shell reports it: its exit
	// code, 128+N for death by signal N, 126 if it could not be executed,
	// 127 if it was not found.
	Status int
	// Committed is true when the command's changes were kept.
	Committed bool
	// StartErr is why the command could not start, if it could not.
	StartErr error
	// Signal is the first of SIGINT, SIGTERM, SIGHUP and SIGQUIT that
	// reached this process while the command ran (and was forwarded to it),
	// or 0. Whoever interrupts a transaction means to abandon it: it was
	// rolled back, whatever the command's status.
	Signal syscall.Signal
	// Result is the transaction's result; nil when Joined.
	Result *Result
	// Joined is the tree of the enclosing transaction that this run joined
	// (see Run), or "".
	Joined string
}

// Run runs argv as a transaction on dir: Begin, run the command on dir, then
// Commit if it exits 0 and Rollback otherwise. A command that is not found or
// not executable is reported (Status 127 or 126) before anything is done.
//
// The command gets this process's working directory and environment, and a
// descriptor of the directory's lock as file descriptor 3, so that the lock
// stays held as long as the command or any descendant that keeps the
// descriptor lives, even if this process is killed (SIGKILL). The command is
// also killed (SIGKILL) if this process dies. SIGINT, SIGTERM, SIGHUP and
// SIGQUIT reaching this process while the command runs are forwarded to it,
// and the transaction is then rolled back even if the command exits 0
// (RunResult.Signal); before it starts, they cancel the transaction.
//
// The error is non-nil when treetx itself failed, or when a rollback lost the
// content of files written in place (*LostContentError); the RunResult is
// filled as far as it got.
func Run(ctx context.Context, dir string, argv []string, opts RunOptions) (*RunResult, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command to run")
	}
	rr := &RunResult{}
	if status, err := command.Check(argv[0]); err != nil {
		rr.Status, rr.StartErr = status, err
		return rr, nil
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	if opts.Command == nil {
		opts.Command = argv
	}
	received := func(s os.Signal) {
		if rr.Signal == 0 {
			rr.Signal, _ = s.(syscall.Signal)
		}
	}
	held := nest.FromEnv(layout.LockOf)
	if n, err := layout.Resolve(dir, layout.ResolveOptions{Use: layout.ForTransaction}); err == nil {
		joined, err := nest.Join(held, n.Dir, lock.Exclusive)
		if err != nil {
			return rr, err
		}
		if joined != nil {
			// Nested: the enclosing transaction holds dir, and decides.
			rr.Joined = joined.Dir
			status, startErr, err := command.Run(argv, command.Options{
				Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr, Signals: sigs, Received: received,
			})
			rr.Status, rr.StartErr = status, startErr
			return rr, err
		}
	}
	tx, err := begin(ctx, dir, opts.Options, sigs)
	if err != nil {
		return rr, err
	}
	if opts.Started != nil {
		opts.Started(tx)
	}
	files, env, err := inheritable(tx, held)
	if err != nil {
		_, rbErr := tx.Rollback()
		return rr, errors.Join(fmt.Errorf("pass the lock to the command: %w", err), rbErr)
	}
	status, startErr, err := command.Run(argv, command.Options{
		Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr,
		Env: env, ExtraFiles: files, Signals: sigs, Received: received,
	})
	rr.Status, rr.StartErr = status, startErr
	if err != nil {
		_, rbErr := tx.Rollback()
		return rr, errors.Join(err, rbErr)
	}
	if status == 0 && startErr == nil && rr.Signal == 0 {
		rr.Result, err = tx.Commit()
		rr.Committed = err == nil
		return rr, err
	}
	rr.Result, err = tx.Rollback()
	return rr, err
}

// begin is BeginContext, cancelled by the first of sigs that arrives before
// it returns. A signal that arrives as it returns still counts: the
// transaction is then rolled back before the command starts.
func begin(ctx context.Context, dir string, opts Options, sigs <-chan os.Signal) (tx *Tx, err error) {
	s := command.WhileWaiting(ctx, sigs, func(ctx context.Context) { tx, err = BeginContext(ctx, dir, opts) })
	if s == nil {
		return tx, err
	}
	sig, _ := s.(syscall.Signal) // signal.Notify sends only those
	got := &InterruptedError{Signal: sig}
	if tx != nil {
		if _, rbErr := tx.Rollback(); rbErr != nil {
			return nil, errors.Join(got, rbErr)
		}
	}
	return nil, got
}

// inheritable returns what the command inherits: the lock file as
// descriptor 3, then the descriptors of the directory locks that keep the
// trees inside and around the tree out, then those of the trees an
// enclosing treetx holds (held); and its environment, which names the trees
// held (nest.Env), this one first.
func inheritable(tx *Tx, held []nest.Tree) ([]*os.File, []string, error) {
	files, own, err := tx.tx.Inheritable(3)
	if err != nil {
		return nil, nil, err
	}
	passed, renumbered := nest.Pass(held, 3+len(files))
	files = append(files, passed...)
	return files, nest.Environ(os.Environ(), append([]nest.Tree{own}, renumbered...)), nil
}
