// Package lock takes the locks that keep two treetx runs off one directory
// tree.
//
// A lock is an flock(2) lock on a lock file that lives beside the tree, in its
// parent directory, never inside it: the tree itself gets renamed. The caller
// chooses the lock file's path. Lock files are created on first use and never
// deleted: deleting a lock file that another process has open would let two
// processes each hold "the" lock, on two different inodes.
//
// Crashes: the kernel releases an flock lock when the last descriptor of the
// open file description holding it is closed, which happens when the holding
// process exits for any reason, including SIGKILL. No lock is ever left held
// by a dead process, so there is no stale-lock breaking here. What a crash can
// leave behind is the holder record an exclusive holder writes into the lock
// file (see Holder); readers check whether the recorded process still runs,
// and a new exclusive holder overwrites the record.
//
// This package is the only user of github.com/gofrs/flock in treetx.
package lock

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/gofrs/flock"
	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/safeopen"
)

// Mode is the kind of lock to take.
type Mode int

const (
	// Exclusive excludes every other holder, exclusive or shared. An
	// exclusive holder records itself in the lock file (see Holder). If it
	// crashes, the kernel releases the lock and the record stays, stale.
	Exclusive Mode = iota
	// Shared coexists with other shared holders and excludes exclusive
	// ones. A shared holder records nothing, so a crashed one leaves
	// nothing behind.
	Shared
)

// String returns "exclusive" or "shared".
func (m Mode) String() string {
	switch m {
	case Exclusive:
		return "exclusive"
	case Shared:
		return "shared"
	default:
		return "Mode(" + strconv.Itoa(int(m)) + ")"
	}
}

// retryDelay is how long Acquire sleeps between two attempts while it waits.
const retryDelay = 25 * time.Millisecond

// filePerm is the permission a new lock file is created with (before umask).
const filePerm fs.FileMode = 0o644

// ErrLocked is what a *HeldError unwraps to: errors.Is(err, ErrLocked)
// reports whether Acquire failed because someone else holds the lock.
var ErrLocked = errors.New("lock is held")

// Holder describes the process holding an exclusive lock, as it recorded
// itself in the lock file.
//
// The record is written right after the lock is taken and cleared (the file
// truncated) by Release, so an empty lock file means that no exclusive holder
// has recorded itself. A holder that crashes, or is killed, leaves its record
// behind while the kernel releases its lock: ReadHolder marks such a record
// Stale.
type Holder struct {
	PID     int       `json:"pid"`
	Host    string    `json:"host"`
	User    string    `json:"user"`
	Command []string  `json:"command"`
	Since   time.Time `json:"since"`

	// Stale is set by ReadHolder when the record names a process on this
	// host that is not running: its pid does not exist, or it belongs to a
	// process started after Since (the pid was reused, for example after a
	// reboot). A stale record names no one; the lock it describes was
	// released when its holder died. Records from other hosts are never
	// marked stale, since their processes cannot be checked. Stale is not
	// stored in the lock file.
	Stale bool `json:"-"`
}

// String describes h on one line, for example
// `pid 1234 (cvs commit -m x) on host h as user u since 2026-11-22T01:02:03Z`.
// Empty fields are left out.
func (h Holder) String() string {
	var b strings.Builder
	b.WriteString("pid ")
	b.WriteString(strconv.Itoa(h.PID))
	if len(h.Command) > 0 {
		b.WriteString(" (")
		for i, arg := range h.Command {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(printable(arg))
		}
		b.WriteString(")")
	}
	if h.Host != "" {
		b.WriteString(" on host ")
		b.WriteString(printable(h.Host))
	}
	if h.User != "" {
		b.WriteString(" as user ")
		b.WriteString(printable(h.User))
	}
	if !h.Since.IsZero() {
		b.WriteString(" since ")
		b.WriteString(h.Since.UTC().Format(time.RFC3339))
	}
	return b.String()
}

// Options configures Acquire.
type Options struct {
	// Mode is the kind of lock to take.
	Mode Mode
	// Timeout bounds the wait for the lock: negative waits until the lock is
	// had or ctx is done, zero tries once, positive gives up after that
	// long. While it waits, Acquire retries every 25ms.
	Timeout time.Duration
	// Gate, if set, is the path of a second lock file (created if missing,
	// never deleted) that makes the lock fair to writers: every Acquire
	// passes through it, and an exclusive one stays in it while it waits
	// for the lock, so that shared holders arriving meanwhile wait behind
	// it instead of keeping it out forever. All users of a lock that wait
	// for it must pass the same Gate; a single try (Timeout 0) skips it.
	Gate string
	// Self is what an exclusive holder records in the lock file; Shared
	// ignores it. Acquire fills its zero fields with this process's: PID
	// with os.Getpid, Host with os.Hostname, User with the current user's
	// name, Command with os.Args and Since with the time the lock was had.
	// Stale is ignored. If this process crashes, Self stays in the lock
	// file, where ReadHolder reports it as Stale.
	Self Holder
	// Tree, if set, is the directory the lock is for, absolute and
	// resolved. Acquire then also excludes the users of every tree inside
	// it or containing it (hierarchical locks, see tree_linux.go): before
	// the lock file is opened it takes an intention lock on every
	// directory from the root of Tree's mount down to Tree's parent, and
	// once the lock is had, Tree's own lock on Tree, waiting for the users
	// of trees inside it to finish. Every user of a lock file must pass the
	// same Tree.
	Tree string
}

// Lock is a held lock. Release it when done; if the process dies first, the
// kernel releases it (see the package documentation). A Lock is safe for use
// by several goroutines.
type Lock struct {
	path string
	mode Mode
	// pfd is the lock file's directory, open; base its name there. The
	// lock file is opened and written relative to it, never following a
	// symlink (see take).
	pfd  int
	base string

	mu sync.Mutex
	// f is nil once the lock is released.
	f *flock.Flock
	// fi describes the locked file, as opened by f.
	fi fs.FileInfo
	// inheritedFD is f's descriptor once Inheritable has found it, or -1.
	inheritedFD int
	// tree holds the directory locks of Options.Tree, or is nil.
	tree *tree
}

// Acquire opens the lock file at path, creating it with mode 0644 if it is
// missing, and locks it in opts.Mode. The lock file is never deleted.
//
// With Mode Exclusive, once the lock is had, Acquire truncates the file and
// writes opts.Self into it as JSON, so that waiters can name the holder, if
// it may write the file (a lock file another user made is locked all the
// same, without a record). With Mode Shared it writes nothing.
//
// If the lock is not had within opts.Timeout, Acquire returns a *HeldError. If
// ctx is done first, it returns an error wrapping ctx's error. If the process
// dies while Acquire waits, nothing is held; if it dies after, the kernel
// releases the lock, but a recorded Self stays in the file (ReadHolder will
// see it as Stale).
func Acquire(ctx context.Context, path string, opts Options) (*Lock, error) {
	if opts.Mode != Exclusive && opts.Mode != Shared {
		return nil, fmt.Errorf("lock %s: invalid mode %v", path, opts.Mode)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("lock %s: take %v lock: %w", path, opts.Mode, err)
	}
	if opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, opts.Timeout, errTimeout)
		defer cancel()
	}
	if opts.Tree == "" {
		return acquireFile(ctx, path, opts)
	}
	once := opts.Timeout == 0
	for {
		t, err := acquireTree(ctx, opts.Tree, opts.Mode, once)
		if err != nil {
			return nil, treeError(err, path, opts.Mode)
		}
		l, err := acquireFile(ctx, path, opts)
		if err != nil {
			t.close()
			return nil, err
		}
		if err := t.lockNode(ctx, opts.Mode, once); err != nil {
			t.close()
			return nil, errors.Join(treeError(err, path, opts.Mode), l.Release())
		}
		if t.valid() && l.besideTree(t) {
			l.tree = t
			return l, nil
		}
		// A transaction on a tree above swapped a directory of the chain
		// for its shadow meanwhile: start again on the directories there
		// now.
		t.close()
		if err := l.Release(); err != nil {
			return nil, err
		}
	}
}

// acquireFile takes the lock on the lock file at path, waiting as ctx says.
func acquireFile(ctx context.Context, path string, opts Options) (*Lock, error) {
	pfd, err := safeopen.OpenDir(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if opts.Gate != "" && opts.Timeout != 0 {
		// Queue at the gate (a single try needs no queue); a writer keeps it while it waits for the lock,
		// so that readers arriving meanwhile wait behind it.
		g, _, err := take(ctx, pfd, opts.Gate, Exclusive, false)
		if err != nil {
			unix.Close(pfd)
			return nil, gateError(err, path, opts.Mode)
		}
		defer g.Close()
	}
	f, fi, err := take(ctx, pfd, path, opts.Mode, opts.Timeout == 0)
	if err != nil {
		unix.Close(pfd)
		return nil, gateError(err, path, opts.Mode)
	}
	l := &Lock{path: path, mode: opts.Mode, pfd: pfd, base: filepath.Base(path), f: f, fi: fi, inheritedFD: -1}
	if opts.Mode == Exclusive {
		self, err := fillHolder(opts.Self)
		if err != nil {
			err = fmt.Errorf("lock %s: record holder: %w", path, err)
		} else {
			err = l.writeRecord(self)
			// The record is a courtesy to waiters: a lock file this
			// process may lock but not write (another user made it) still
			// locks.
			if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
				err = nil
			}
		}
		if err != nil {
			return nil, errors.Join(err, l.Release())
		}
	}
	return l, nil
}

// Release unlocks the lock and closes the lock file, which stays in place.
// An exclusive holder first clears its record (truncates the file).
//
// The unlock is flock(LOCK_UN) on the open file description, so it also ends
// the lock for every process that inherited a descriptor from Inheritable:
// once the holder has finished, a background process its child left behind
// does not keep the lock. Only a holder that dies without calling Release
// leaves the lock to its children (see Inheritable).
//
// Release is idempotent: once it has succeeded, later calls return nil. If
// the process dies instead of calling Release, the kernel releases the lock
// when the last descriptor of it is closed.
func (l *Lock) Release() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	var errs []error
	if l.mode == Exclusive && l.fi != nil {
		if err := l.clearRecord(); err != nil && !errors.Is(err, fs.ErrPermission) && !errors.Is(err, syscall.EROFS) {
			errs = append(errs, err)
		}
	}
	if err := l.f.Unlock(); err != nil {
		errs = append(errs, fmt.Errorf("lock %s: unlock: %w", l.path, err))
		return errors.Join(errs...)
	}
	l.f = nil
	l.inheritedFD = -1
	unix.Close(l.pfd)
	l.pfd = -1
	if l.tree != nil {
		l.tree.close()
		l.tree = nil
	}
	return errors.Join(errs...)
}

// Inheritable returns a new *os.File referring to the same open file
// description as the one holding the lock. An flock lock belongs to the open
// file description, so it stays held as long as any process has a descriptor
// for it. Pass the file to a child through exec.Cmd.ExtraFiles: the child and
// its descendants then keep the lock held even if this process is killed
// (SIGKILL included), and the lock is released when the last of them exits.
// Close this process's copy once the child has started.
//
// Inheritable works on Linux only (elsewhere it returns an error). It fails if
// this process holds several locks on the same lock file, since it cannot
// tell which descriptor is this Lock's. Release ends the lock for the child
// too; see Release.
func (l *Lock) Inheritable() (*os.File, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil, fmt.Errorf("lock %s: inheritable: lock released", l.path)
	}
	fd, err := lockFD(l.fi, l.inheritedFD)
	if err != nil {
		return nil, fmt.Errorf("lock %s: inheritable: %w", l.path, err)
	}
	file, err := dupLockFD(fd, l.fi, l.path)
	if err != nil {
		return nil, fmt.Errorf("lock %s: inheritable: %w", l.path, err)
	}
	l.inheritedFD = fd
	return file, nil
}

// writeRecord replaces the lock file's content with h as JSON. It writes
// through a descriptor of its own (the locked one is read-only), after
// checking that path still names the locked file.
func (l *Lock) writeRecord(h Holder) error {
	data, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("lock %s: encode holder record: %w", l.path, err)
	}
	data = append(data, '\n')
	w, err := l.openLocked("record holder")
	if err != nil {
		return err
	}
	if err := w.Truncate(0); err != nil {
		w.Close()
		return fmt.Errorf("lock %s: record holder: truncate: %w", l.path, err)
	}
	if _, err := w.WriteAt(data, 0); err != nil {
		w.Close()
		return fmt.Errorf("lock %s: record holder: write: %w", l.path, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("lock %s: record holder: close: %w", l.path, err)
	}
	return nil
}

// clearRecord truncates the lock file, removing the holder record.
func (l *Lock) clearRecord() error {
	w, err := l.openLocked("clear holder record")
	if err != nil {
		return err
	}
	if err := w.Truncate(0); err != nil {
		w.Close()
		return fmt.Errorf("lock %s: clear holder record: truncate: %w", l.path, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("lock %s: clear holder record: close: %w", l.path, err)
	}
	return nil
}

// openLocked opens the lock file for writing and checks that it is the file
// that is locked. step names the caller's step in errors.
func (l *Lock) openLocked(step string) (*os.File, error) {
	fd, _, err := safeopen.OpenAt(l.pfd, l.base, l.path, unix.O_WRONLY, 0, safeopen.Regular, safeopen.Rules{OneLink: true})
	if err != nil {
		return nil, fmt.Errorf("lock %s: %s: %w", l.path, step, err)
	}
	w := os.NewFile(uintptr(fd), l.path)
	wfi, err := w.Stat()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("lock %s: %s: stat: %w", l.path, step, err)
	}
	if !os.SameFile(wfi, l.fi) {
		w.Close()
		return nil, fmt.Errorf("lock %s: %s: path no longer names the locked file (was the lock file removed?)", l.path, step)
	}
	return w, nil
}

// fillHolder fills h's zero fields with this process's values.
func fillHolder(h Holder) (Holder, error) {
	h.Stale = false
	if h.PID == 0 {
		h.PID = os.Getpid()
	}
	if h.Host == "" {
		host, err := os.Hostname()
		if err != nil {
			return h, fmt.Errorf("hostname: %w", err)
		}
		h.Host = host
	}
	if h.User == "" {
		h.User = currentUser()
	}
	if h.Command == nil {
		h.Command = os.Args
	}
	if h.Since.IsZero() {
		h.Since = time.Now().UTC()
	}
	return h, nil
}

// currentUser returns the current user's name, or failing that $USER, or
// failing that the numeric uid.
func currentUser() string {
	if u, err := user.Current(); err == nil && u.Username != "" {
		return u.Username
	}
	if name := os.Getenv("USER"); name != "" {
		return name
	}
	return strconv.Itoa(os.Getuid())
}

// ReadHolder reads the holder record in the lock file at path, without
// locking. It returns (nil, nil) when the file is absent or holds no record
// (it is empty, or blank). A record naming a process on this host that is not
// running is returned with Stale set.
//
// The record is only a description: an exclusive holder writes it after
// taking the lock and clears it in Release, so a record may be missing while
// the lock is held (the holder has not recorded itself yet, or the lock is
// shared) or stale while it is not (the holder died).
func ReadHolder(path string) (*Holder, error) {
	pfd, err := safeopen.OpenDir(filepath.Dir(path))
	if err != nil {
		return nil, fmt.Errorf("lock %s: read holder record: %w", path, err)
	}
	defer unix.Close(pfd)
	data, _, err := safeopen.ReadFile(pfd, filepath.Base(path), path, maxRecord, safeopen.Rules{OneLink: true})
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lock %s: read holder record: %w", path, err)
	}
	h, err := parseHolder(data)
	if h == nil || err != nil {
		if err != nil {
			err = fmt.Errorf("lock %s: read holder record: %w", path, err)
		}
		return nil, err
	}
	h.Stale = false
	if host, err := os.Hostname(); err == nil && host == h.Host {
		h.Stale = !processRunning(h.PID, h.Since)
	}
	return h, nil
}

// printable quotes s if it holds a control character or invalid UTF-8:
// a record another user wrote must not send escape sequences to the
// terminal of whoever reads it.
func printable(s string) string {
	if !utf8.ValidString(s) || strings.ContainsFunc(s, func(r rune) bool { return unicode.IsControl(r) || r == utf8.RuneError }) {
		return strconv.Quote(s)
	}
	return s
}

// parseHolder decodes a holder record: nil for a blank one.
func parseHolder(data []byte) (*Holder, error) {
	data = bytes.TrimSpace(data)
	if len(data) == 0 {
		return nil, nil
	}
	var h Holder
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, err
	}
	return &h, nil
}

// HeldError reports a lock that could not be had in time. The holder that
// kept it is alive (or has handed the lock to a live child; see Inheritable):
// the kernel releases the locks of processes that die.
type HeldError struct {
	// Path is the lock file's path.
	Path string
	// Holder is the recorded exclusive holder, or nil when unknown: the lock
	// is held by shared holders, or by an exclusive holder that had not yet
	// recorded itself, or the record was stale (its process no longer runs).
	Holder *Holder
	// Mode is the mode that was requested.
	Mode Mode
	// Conflict, when set, names the user of an overlapping tree that kept
	// the lock (see Options.Tree), e.g. "a transaction on /srv/a, which
	// contains /srv/a/b"; Holder is then nil.
	Conflict string
}

// newHeldError returns a *HeldError for path, naming the recorded holder if
// there is a live one.
func newHeldError(path string, mode Mode) *HeldError {
	e := &HeldError{Path: path, Mode: mode}
	if h, err := ReadHolder(path); err == nil && h != nil && !h.Stale {
		e.Holder = h
	}
	return e
}

// Error describes the failure on one line, naming the holder when known.
func (e *HeldError) Error() string {
	switch {
	case e.Conflict != "":
		return "lock " + e.Path + " is held by " + e.Conflict
	case e.Holder != nil:
		return "lock " + e.Path + " is held by " + e.Holder.String()
	case e.Mode == Shared:
		// Only an exclusive holder keeps out a shared one.
		return "lock " + e.Path + " is held by another process (an exclusive holder that has not recorded itself)"
	default:
		return "lock " + e.Path + " is held by another process (a shared reader, or a holder that has not recorded itself)"
	}
}

// Unwrap returns ErrLocked.
func (e *HeldError) Unwrap() error { return ErrLocked }

// errTimeout is the cause of a context that Acquire's own timeout ended.
var errTimeout = errors.New("lock timeout")

// take locks the file path (creating it 0644), whose directory is open as
// pfd, in mode: once if once is set, else retrying every retryDelay until
// ctx is done. A lock not had is reported as errLockHeld.
//
// The directory may be writable by others, so anything may stand under the
// name: the file is opened relative to pfd (through its /proc/self/fd
// entry, since gofrs/flock opens by path), never following a symlink
// (O_NOFOLLOW) and never blocking on a FIFO (O_NONBLOCK), and once it is
// locked it must be a regular file with one link, or it is refused with a
// *safeopen.RefusedError: the holder record is written into it, which must
// never reach another file.
func take(ctx context.Context, pfd int, path string, mode Mode, once bool) (*flock.Flock, fs.FileInfo, error) {
	at := "/proc/self/fd/" + strconv.Itoa(pfd) + "/" + filepath.Base(path)
	f := flock.New(at, flock.SetFlag(os.O_CREATE|os.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_NOCTTY), flock.SetPermissions(filePerm))
	f, err := tryTake(ctx, f, path, mode, once)
	if err != nil {
		// Whatever the open said (ELOOP for a symlink, EISDIR, ENXIO for
		// a socket, EACCES where a protection refused it), a name that is
		// not a regular file with one link is refused as such.
		var st unix.Stat_t
		if !errors.Is(err, errLockHeld) && safeopen.Lstat(pfd, filepath.Base(path), &st) == nil {
			if cerr := safeopen.Check(path, &st, safeopen.Regular, safeopen.Rules{OneLink: true}); cerr != nil {
				return nil, nil, fmt.Errorf("lock %s: %w", path, cerr)
			}
		}
		return nil, nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("lock %s: stat locked file: %w", path, err)
	}
	sst := fi.Sys().(*syscall.Stat_t)
	st := unix.Stat_t{Mode: sst.Mode, Nlink: sst.Nlink, Uid: sst.Uid}
	if err := safeopen.Check(path, &st, safeopen.Regular, safeopen.Rules{OneLink: true}); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return f, fi, nil
}

func tryTake(ctx context.Context, f *flock.Flock, path string, mode Mode, once bool) (*flock.Flock, error) {
	try, tryCtx := f.TryLock, f.TryLockContext
	if mode == Shared {
		try, tryCtx = f.TryRLock, f.TryRLockContext
	}
	var ok bool
	var err error
	if once {
		ok, err = try()
	} else {
		ok, err = tryCtx(ctx, retryDelay)
	}
	switch {
	case ok:
		return f, nil
	case err == nil, errors.Is(context.Cause(ctx), errTimeout):
		f.Close()
		return nil, errLockHeld
	case ctx.Err() != nil:
		f.Close()
		return nil, fmt.Errorf("lock %s: wait for %v lock: %w", path, mode, ctx.Err())
	default:
		f.Close()
		return nil, fmt.Errorf("lock %s: take %v lock: %w", path, mode, err)
	}
}

// maxRecord bounds the holder record read from a lock file.
const maxRecord = 64 << 10

// errLockHeld is take's report of a lock not had in time.
var errLockHeld = errors.New("held")

// gateError turns take's report into Acquire's: a *HeldError naming the
// holder of the lock at path.
func gateError(err error, path string, mode Mode) error {
	if errors.Is(err, errLockHeld) {
		return newHeldError(path, mode)
	}
	return err
}

// treeError turns a conflict with an overlapping tree into Acquire's
// *HeldError; other errors pass unchanged.
func treeError(err error, path string, mode Mode) error {
	var c *treeConflict
	if errors.As(err, &c) {
		return &HeldError{Path: path, Mode: mode, Conflict: c.Error()}
	}
	return err
}

// besideTree reports whether the locked file is still at its path, in the
// directory t's chain holds as its parent.
func (l *Lock) besideTree(t *tree) bool {
	var pst, st unix.Stat_t
	if unix.Fstat(l.pfd, &pst) != nil || safeopen.Lstat(l.pfd, l.base, &st) != nil {
		return false
	}
	if dev, ino, err := fileID(l.fi); err != nil || dev != uint64(st.Dev) || ino != st.Ino {
		return false
	}
	dir := filepath.Dir(l.path)
	for _, d := range t.chain {
		if d.path == dir {
			return d.dev == uint64(pst.Dev) && d.ino == pst.Ino
		}
	}
	return true
}

// Cover extends a lock taken with Options.Tree to the directory open as
// dirfd (the tree's shadow, which a rollback puts in the tree's place), so
// that users of trees inside it wait for this lock wherever the tree's name
// points. dirfd stays the caller's. Without Options.Tree, Cover does
// nothing.
func (l *Lock) Cover(dirfd int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return fmt.Errorf("lock %s: cover: lock released", l.path)
	}
	if l.tree == nil {
		return nil
	}
	return l.tree.cover(dirfd, l.mode)
}

// InheritableAll returns what a child must inherit to keep the whole lock
// held: Inheritable's file, then InheritableDirs'.
func (l *Lock) InheritableAll() ([]*os.File, error) {
	f, err := l.Inheritable()
	if err != nil {
		return nil, err
	}
	dirs, err := l.InheritableDirs()
	if err != nil {
		f.Close()
		return nil, err
	}
	return append([]*os.File{f}, dirs...), nil
}

// InheritableDirs returns copies of the descriptors that hold the directory
// locks of Options.Tree (none without it), to pass to a child with the one
// Inheritable returns: the child then keeps the whole lock held if this
// process dies. Release ends them for the child too.
func (l *Lock) InheritableDirs() ([]*os.File, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil, fmt.Errorf("lock %s: inheritable: lock released", l.path)
	}
	if l.tree == nil {
		return nil, nil
	}
	return l.tree.files()
}
