// Package command runs the program treetx runs on a user's behalf and
// reports on it as a shell would: its exit status, 128+N when signal N killed
// it, 126 when it could not be executed and 127 when it was not found.
//
// Around it, Run does what treetx needs: the program inherits extra
// descriptors (the directory's lock, so that the lock stays held while the
// program or a descendant that keeps the descriptor lives, even if treetx is
// killed); it is killed with SIGKILL if treetx dies (PR_SET_PDEATHSIG, on
// Linux), since no one would then finish the transaction it is part of; and
// signals treetx receives are forwarded to it.
package command

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"runtime"
)

// Exit statuses of a program that did not run, as shells report them.
const (
	StatusNotExecutable = 126
	StatusNotFound      = 127
)

// Options configures Run.
type Options struct {
	// Stdin, Stdout and Stderr are the program's; nil means this process's.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Env is the program's environment; nil means this process's.
	Env []string
	// ExtraFiles are inherited as descriptors 3, 4, ... Run closes them once
	// the program has started (or failed to).
	ExtraFiles []*os.File
	// Signals, if set, is a channel the caller registered with
	// signal.Notify: each signal received on it while the program runs is
	// sent to the program.
	Signals <-chan os.Signal
	// Received, if set, is called with each signal taken from Signals while
	// the program ran: those sent on to it, and those still waiting on the
	// channel when it exited (it could not be sent them). It is called one
	// call at a time, and never after Run returns.
	Received func(os.Signal)
}

// Check reports whether argv0 can be started: if not, it returns the status
// a shell would report (127 not found, 126 not executable: a directory, no
// permission) and why.
func Check(argv0 string) (status int, err error) {
	if _, err := exec.LookPath(argv0); err != nil {
		if errors.Is(err, exec.ErrNotFound) || errors.Is(err, fs.ErrNotExist) {
			return StatusNotFound, err
		}
		return StatusNotExecutable, err
	}
	return 0, nil
}

// Run starts argv in this process's working directory and environment,
// forwards opts.Signals to it and waits for it. status is its exit status
// as a shell reports it; startErr says why it could not be started (status
// is then 127 or 126); err is a failure to wait for it.
//
// If this process dies while the program runs, the program gets SIGKILL
// (Linux); the descriptors it inherited stay open in its own descendants.
func Run(argv []string, opts Options) (status int, startErr, err error) {
	defer func() {
		for _, f := range opts.ExtraFiles {
			f.Close()
		}
	}()
	if len(argv) == 0 {
		return 0, nil, errors.New("no command to run")
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = orReader(opts.Stdin, os.Stdin), orWriter(opts.Stdout, os.Stdout), orWriter(opts.Stderr, os.Stderr)
	cmd.ExtraFiles = opts.ExtraFiles
	cmd.Env = opts.Env
	cmd.SysProcAttr = sysProcAttr()
	// The parent-death signal fires when the thread that started the child
	// exits: keep this goroutine on its thread until the child is waited for.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	err = cmd.Start()
	for _, f := range opts.ExtraFiles {
		f.Close()
	}
	opts.ExtraFiles = nil
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return StatusNotFound, err, nil
		}
		return StatusNotExecutable, err, nil
	}
	received := func(s os.Signal) {
		if opts.Received != nil {
			opts.Received(s)
		}
	}
	done, forwarding := make(chan struct{}), make(chan struct{})
	if opts.Signals != nil {
		go func() {
			defer close(forwarding)
			for {
				select {
				case s := <-opts.Signals:
					cmd.Process.Signal(s)
					received(s)
				case <-done:
					return
				}
			}
		}()
	} else {
		close(forwarding)
	}
	werr := cmd.Wait()
	close(done)
	<-forwarding
	if opts.Signals != nil && opts.Received != nil {
		// A signal sent to the process group (Ctrl-C) reaches the
		// program and this process at once; the program may have exited
		// on it before os/signal passed it on to opts.Signals.
		flushSignals()
	}
	for pending := true; pending && opts.Signals != nil; {
		select {
		case s := <-opts.Signals:
			received(s)
		default:
			pending = false
		}
	}
	ps := cmd.ProcessState
	if ps == nil {
		return 0, nil, fmt.Errorf("wait for %s: %w", argv[0], werr)
	}
	if sig, ok := signaled(ps); ok {
		return 128 + sig, nil, nil
	}
	return ps.ExitCode(), nil, nil
}

func orReader(r io.Reader, f *os.File) io.Reader {
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
