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
	// Result is the transaction's result (the first directory's, over
	// several); nil when Joined.
	Result *Result
	// Trees are the directories of the transaction, in the order of their
	// paths, and Results each one's result.
	Trees   []string
	Results []*Result
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
	return RunGroup(ctx, []string{dir}, argv, opts)
}

// RunGroup is Run over several directories, as one transaction (see
// BeginGroup): the command's exit status commits or rolls back all of them.
// RunResult.Results holds each directory's result, in the order of their
// paths (Trees), and Result the first's. With one directory it is Run.
func RunGroup(ctx context.Context, dirs []string, argv []string, opts RunOptions) (*RunResult, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command to run")
	}
	if len(dirs) == 0 {
		return nil, errors.New("no directory given")
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
	joined, err := joinAll(held, dirs)
	if err != nil {
		return rr, err
	}
	if joined != "" {
		// Nested: the enclosing transaction holds every directory, and
		// decides.
		rr.Joined = joined
		status, startErr, err := command.Run(argv, command.Options{
			Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr, Signals: sigs, Received: received,
		})
		rr.Status, rr.StartErr = status, startErr
		return rr, err
	}
	u, err := begin(ctx, dirs, opts.Options, sigs)
	if err != nil {
		return rr, err
	}
	for _, tx := range u.txs {
		rr.Trees = append(rr.Trees, tx.Dir())
	}
	if opts.Started != nil {
		opts.Started(u.txs[0])
	}
	end := func(commit bool) error {
		f := u.rollback
		if commit {
			f = u.commit
		}
		rs, err := f()
		rr.Results = rs
		if len(rs) > 0 {
			rr.Result = rs[0]
		}
		return err
	}
	files, env, err := inheritable(u.txs, held)
	if err != nil {
		return rr, errors.Join(fmt.Errorf("pass the lock to the command: %w", err), end(false))
	}
	status, startErr, err := command.Run(argv, command.Options{
		Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr,
		Env: env, ExtraFiles: files, Signals: sigs, Received: received,
	})
	rr.Status, rr.StartErr = status, startErr
	if err != nil {
		return rr, errors.Join(err, end(false))
	}
	if status == 0 && startErr == nil && rr.Signal == 0 {
		err = end(true)
		rr.Committed = err == nil
		return rr, err
	}
	return rr, end(false)
}

// joinAll says whether every directory of dirs is held by an enclosing
// treetx (the tree it joins, or one of them), or none is; a mix, or a
// directory that would wait for the enclosing treetx, is an error.
func joinAll(held []nest.Tree, dirs []string) (string, error) {
	joined, free := "", ""
	for _, dir := range dirs {
		n, err := layout.Resolve(dir, layout.ResolveOptions{Use: layout.ForTransaction})
		if err != nil {
			free = dir // Begin reports it
			continue
		}
		t, err := nest.Join(held, n.Dir, lock.Exclusive)
		if err != nil {
			return "", err
		}
		if t == nil {
			free = n.Dir
			continue
		}
		joined = t.Dir
	}
	if joined != "" && free != "" {
		return "", &nest.Error{Dir: free, Held: nest.Tree{Mode: lock.Exclusive.String(), Dir: joined}, Why: "is not held by the enclosing treetx, while another directory given is: one transaction cannot both join it and stand apart"}
	}
	return joined, nil
}

// unit is what Run runs the command in: one transaction, or a group.
type unit struct {
	txs      []*Tx
	commit   func() ([]*Result, error)
	rollback func() ([]*Result, error)
}

// begin begins the transaction over dirs, cancelled by the first of sigs
// that arrives before it returns. A signal that arrives as it returns still
// counts: the transaction is then rolled back before the command starts.
func begin(ctx context.Context, dirs []string, opts Options, sigs <-chan os.Signal) (u *unit, err error) {
	s := command.WhileWaiting(ctx, sigs, func(ctx context.Context) {
		if len(dirs) == 1 {
			var tx *Tx
			if tx, err = BeginContext(ctx, dirs[0], opts); err == nil {
				one := func(r *Result, err error) ([]*Result, error) { return []*Result{r}, err }
				u = &unit{txs: []*Tx{tx}, commit: func() ([]*Result, error) { return one(tx.Commit()) }, rollback: func() ([]*Result, error) { return one(tx.Rollback()) }}
			}
			return
		}
		var g *Group
		if g, err = BeginGroup(ctx, dirs, opts); err == nil {
			u = &unit{txs: g.Txs(), commit: g.Commit, rollback: g.Rollback}
		}
	})
	if s == nil {
		return u, err
	}
	sig, _ := s.(syscall.Signal) // signal.Notify sends only those
	got := &InterruptedError{Signal: sig}
	if u != nil {
		if _, rbErr := u.rollback(); rbErr != nil {
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
func inheritable(txs []*Tx, held []nest.Tree) ([]*os.File, []string, error) {
	var files []*os.File
	var own []nest.Tree
	for _, tx := range txs {
		fs, t, err := tx.tx.Inheritable(3 + len(files))
		if err != nil {
			for _, f := range files {
				f.Close()
			}
			return nil, nil, err
		}
		files = append(files, fs...)
		own = append(own, t)
	}
	passed, renumbered := nest.Pass(held, 3+len(files))
	files = append(files, passed...)
	return files, nest.Environ(os.Environ(), append(own, renumbered...)), nil
}
