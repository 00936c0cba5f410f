package testenv

import (
	"flag"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// visible returns where a line reaches the person running the tests, and
// a function to call when done writing.
//
// go test captures a test binary's output and, for a package whose tests
// pass, throws it away unless -v is given. Without -v, then, the line goes
// to the standard error of the process that started this one (go test, or
// the shell that ran the binary by hand): through a duplicate of that
// descriptor (pidfd_getfd: same open file, same offset; it needs the right
// to ptrace the parent, which root has), else by opening it again when it
// is a pipe, socket or terminal (where no offset is shared). Failing both,
// or when this process's standard error is already the parent's, the line
// goes to this process's standard error.
func visible() (w io.Writer, done func()) {
	own := func() (io.Writer, func()) { return os.Stderr, func() {} }
	if !flag.Parsed() {
		flag.Parse()
	}
	if v := flag.Lookup("test.v"); v != nil && v.Value.String() != "false" {
		return own() // -v or -json: go test shows everything
	}
	fd := parentStderr()
	if fd < 0 {
		return own()
	}
	var ours, theirs unix.Stat_t
	if unix.Fstat(2, &ours) == nil && unix.Fstat(fd, &theirs) == nil && ours.Dev == theirs.Dev && ours.Ino == theirs.Ino && ours.Rdev == theirs.Rdev {
		unix.Close(fd)
		return own()
	}
	f := os.NewFile(uintptr(fd), "parent's stderr")
	return f, func() { f.Close() }
}

// parentStderr returns a descriptor of the parent's standard error, or -1.
func parentStderr() int {
	ppid := os.Getppid()
	if ppid <= 1 {
		return -1
	}
	if pfd, err := unix.PidfdOpen(ppid, 0); err == nil {
		fd, err := unix.PidfdGetfd(pfd, 2, 0)
		unix.Close(pfd)
		if err == nil {
			unix.CloseOnExec(fd)
			return fd
		}
	}
	fd, err := unix.Open(fmt.Sprintf("/proc/%d/fd/2", ppid), unix.O_WRONLY|unix.O_NOCTTY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return -1
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		unix.Close(fd)
		return -1
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFIFO, unix.S_IFSOCK, unix.S_IFCHR:
		// Blocking writes from here on: a full pipe must not drop the line.
		unix.SetNonblock(fd, false)
		return fd
	}
	unix.Close(fd)
	return -1
}
