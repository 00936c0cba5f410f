package main

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/treetx/treetx/lock"
)

// lockWait holds the flags of the commands that wait for DIR's lock (run
// and lock), named as flock(1) names them: -w, -n, -E.
type lockWait struct {
	timeout      timeoutFlag // negative: wait indefinitely
	nonblock     bool
	conflictCode int
}

func newLockWait() *lockWait {
	return &lockWait{timeout: -1, conflictCode: exitBusy}
}

// addFlags declares the flags on c.
func (w *lockWait) addFlags(c *cobra.Command) {
	f := c.Flags()
	f.VarP(&w.timeout, "lock-timeout", "w", "give up waiting for DIR's lock after `SECONDS` (10, 2.5) or a Go duration (30s, 1m30s), and exit 75 (0: try once; default: wait indefinitely)")
	f.BoolVarP(&w.nonblock, "nonblock", "n", false, "try DIR's lock once; if it is held, exit 75 at once (as --lock-timeout 0)")
	f.IntVarP(&w.conflictCode, "conflict-exit-code", "E", exitBusy, "exit with status `N` (0 to 255) when DIR's lock is not had")
	c.RegisterFlagCompletionFunc("lock-timeout", cobra.NoFileCompletions)
	c.RegisterFlagCompletionFunc("conflict-exit-code", cobra.NoFileCompletions)
}

// check reports a bad combination of the flags as a usage error.
func (w *lockWait) check(c *cobra.Command) error {
	if w.nonblock && c.Flags().Changed("lock-timeout") {
		return usageErrorf("%s: --nonblock (-n) and --lock-timeout (-w) exclude each other (see %s --help)", c.Name(), c.CommandPath())
	}
	if w.conflictCode < 0 || w.conflictCode > 255 {
		return usageErrorf("%s: --conflict-exit-code %d: want 0 to 255 (see %s --help)", c.Name(), w.conflictCode, c.CommandPath())
	}
	return nil
}

// wait is the wait for the lock as lock.Options.Timeout takes it.
func (w *lockWait) wait() time.Duration {
	if w.nonblock {
		return 0
	}
	return time.Duration(w.timeout)
}

// conflict gives an error that says the lock was not had the exit status
// of --conflict-exit-code.
func (w *lockWait) conflict(err error) error {
	if err != nil && errors.Is(err, lock.ErrLocked) && w.conflictCode != exitBusy {
		return &codedError{err: err, code: w.conflictCode}
	}
	return err
}

// timeoutFlag is a wait given in seconds (a decimal number: 10, 2.5) or as
// a Go duration (30s, 1m30s). Negative means "no limit" and is not shown as
// a default.
type timeoutFlag time.Duration

func (d *timeoutFlag) String() string {
	if *d < 0 {
		return ""
	}
	return time.Duration(*d).String()
}

func (d *timeoutFlag) Set(s string) error {
	if isDecimal(s) {
		secs, err := strconv.ParseFloat(s, 64)
		if err != nil || secs > math.MaxInt64/float64(time.Second) {
			return fmt.Errorf("%s seconds is out of range", s)
		}
		*d = timeoutFlag(math.Round(secs * float64(time.Second)))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("want seconds (10, 2.5) or a duration (30s, 1m30s): %w", err)
	}
	if v < 0 {
		return fmt.Errorf("negative duration %s", s)
	}
	*d = timeoutFlag(v)
	return nil
}

func (d *timeoutFlag) Type() string { return "seconds" }

// isDecimal reports whether s is digits with at most one decimal point
// (10, 2.5, .5).
func isDecimal(s string) bool {
	whole, frac, _ := strings.Cut(s, ".")
	return whole+frac != "" && strings.Trim(whole+frac, "0123456789") == ""
}

// durationFlag is a Go duration (720h, 30m) that may not be negative.
type durationFlag time.Duration

func (d *durationFlag) String() string { return time.Duration(*d).String() }

func (d *durationFlag) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("negative duration %s", s)
	}
	*d = durationFlag(v)
	return nil
}

func (d *durationFlag) Type() string { return "duration" }
