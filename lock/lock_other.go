//go:build !linux

package lock

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"
)

// lockFD would find the descriptor holding the lock; it needs Linux's /proc.
func lockFD(fs.FileInfo, int) (int, error) {
	return -1, fmt.Errorf("find lock descriptor: %w", errors.ErrUnsupported)
}

// dupLockFD is never reached: lockFD fails first.
func dupLockFD(int, fs.FileInfo, string) (*os.File, error) {
	return nil, fmt.Errorf("duplicate lock descriptor: %w", errors.ErrUnsupported)
}

// detachFD is never reached: Inheritable never succeeds here.
func detachFD(int, fs.FileInfo) error {
	return fmt.Errorf("detach lock descriptor: %w", errors.ErrUnsupported)
}

// processRunning cannot check processes here; it reports every valid pid as
// running, so that no record is taken for stale.
func processRunning(pid int, _ time.Time) bool { return pid > 0 }
