package txn

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"syscall"
)

// Exit statuses Run reports for a command that did not run, as shells do.
const (
	StatusNotExecutable = 126
	StatusNotFound      = 127
)

// InterruptedError reports a signal that reached Run before the command
// started: the transaction was abandoned, the directory is untouched.
type InterruptedError struct {
	Signal syscall.Signal
}

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
	// Result is the transaction's result.
	Result *Result
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
// SIGQUIT reaching this process while the command runs are forwarded to it;
// before it starts, they cancel the transaction.
//
// The error is non-nil when treetx itself failed, or when a rollback lost the
// content of files written in place (*LostContentError); the RunResult is
// filled as far as it got.
func Run(ctx context.Context, dir string, argv []string, opts RunOptions) (*RunResult, error) {
	if len(argv) == 0 {
		return nil, errors.New("no command to run")
	}
	rr := &RunResult{}
	if _, err := exec.LookPath(argv[0]); err != nil {
		rr.StartErr = err
		rr.Status = StatusNotExecutable // a directory, no permission...
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			rr.Status = StatusNotFound
		}
		return rr, nil
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT)
	defer signal.Stop(sigs)
	bctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case s := <-sigs:
			cancel(&InterruptedError{Signal: s.(syscall.Signal)})
		case <-bctx.Done():
		}
	}()
	if opts.Command == nil {
		opts.Command = argv
	}
	tx, err := BeginContext(bctx, dir, opts.Options)
	if err != nil {
		var ie *InterruptedError
		if errors.As(context.Cause(bctx), &ie) {
			return rr, ie
		}
		return rr, err
	}
	// From here on the signals go to the command, not to the build.
	cancel(nil)
	if opts.Started != nil {
		opts.Started(tx)
	}
	status, startErr, err := runCommand(tx, argv, opts, sigs)
	rr.Status, rr.StartErr = status, startErr
	if err != nil {
		_, rbErr := tx.Rollback()
		return rr, errors.Join(err, rbErr)
	}
	if status == 0 && startErr == nil {
		rr.Result, err = tx.Commit()
		rr.Committed = err == nil
		return rr, err
	}
	rr.Result, err = tx.Rollback()
	return rr, err
}

// runCommand starts argv with the lock descriptor inherited, forwards
// signals to it and waits. It returns the command's status, why it could not
// start, and treetx's own failure.
func runCommand(tx *Tx, argv []string, opts RunOptions, sigs <-chan os.Signal) (status int, startErr, err error) {
	lockFile, err := tx.LockFile()
	if err != nil {
		return 0, nil, fmt.Errorf("pass the lock to the command: %w", err)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = orFile(opts.Stdin, os.Stdin), orWriter(opts.Stdout, os.Stdout), orWriter(opts.Stderr, os.Stderr)
	cmd.ExtraFiles = []*os.File{lockFile}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Pdeathsig fires when the thread that started the child exits: keep
	// this goroutine on its thread until the child is waited for.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err = cmd.Start()
	lockFile.Close()
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return StatusNotFound, err, nil
		}
		return StatusNotExecutable, err, nil
	}
	done := make(chan struct{})
	go func() {
		for {
			select {
			case s := <-sigs:
				cmd.Process.Signal(s)
			case <-done:
				return
			}
		}
	}()
	werr := cmd.Wait()
	close(done)
	ps := cmd.ProcessState
	if ps == nil {
		return 0, nil, fmt.Errorf("wait for %s: %w", argv[0], werr)
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal()), nil, nil
	}
	return ps.ExitCode(), nil, nil
}

func orFile(r io.Reader, f *os.File) io.Reader {
	if r == nil {
		return f
	}
	return r
}

func orWriter(w io.Writer, f *os.File) io.Writer {
	if w == nil {
		return f
	}
	return w
}
