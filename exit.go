package main

import (
	"errors"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/treetx/treetx/lock"
	txrecover "github.com/treetx/treetx/recover"
	"github.com/treetx/treetx/txn"
)

// Exit codes treetx itself uses (a command's own status passes through).
const (
	exitOK          = 0
	exitNeedsRecov  = 3   // status: the directory needs recovery
	exitUsage       = 64  // bad command line (EX_USAGE)
	exitBusy        = 75  // the lock was not had in time, or a live transaction holds it (EX_TEMPFAIL)
	exitTreetxError = 125 // treetx failed, or a state needs a person
)

// usageError is a bad command line.
type usageError struct{ msg string }

// Error is the message, which names the command and what is wrong.
func (e *usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return &usageError{fmt.Sprintf(format, args...)}
}

// codedError is an error with the exit status it calls for, other than the
// one exitCode would give it (--conflict-exit-code).
type codedError struct {
	err  error
	code int
}

// Error is the error's own message.
func (e *codedError) Error() string { return e.err.Error() }

// Unwrap returns the error.
func (e *codedError) Unwrap() error { return e.err }

// exitStatus carries an exit status whose reason was already printed (or
// needs no message: the command's own status).
type exitStatus int

// Error names the status (it is not printed: its reason was).
func (e exitStatus) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// exitCode maps an error to the process's exit status.
func exitCode(err error) int {
	var usage *usageError
	var status exitStatus
	var interrupted *txn.InterruptedError
	var coded *codedError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &coded):
		return coded.code
	case errors.As(err, &interrupted):
		return 128 + int(interrupted.Signal)
	case errors.As(err, &status):
		return int(status)
	case errors.As(err, &usage):
		return exitUsage
	case errors.Is(err, lock.ErrLocked), errors.Is(err, txrecover.ErrBusy):
		return exitBusy
	default:
		return exitTreetxError
	}
}

// usageArgs makes the failure of a cobra argument check a usage error
// (exit 64), as flag errors are.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(c *cobra.Command, args []string) error {
		if err := check(c, args); err != nil {
			return usageErrorf("%s: %v (see %s --help)", c.Name(), err, c.CommandPath())
		}
		return nil
	}
}

// exitCodes combines the outcomes of several directories: 125 wins over 75,
// which wins over 0.
type exitCodes struct{ code int }

func (c *exitCodes) add(code int) {
	if c.code == exitOK || code == exitTreetxError {
		c.code = code
	}
}

func (c *exitCodes) err() error {
	if c.code != exitOK {
		return exitStatus(c.code)
	}
	return nil
}
