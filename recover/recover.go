// Package recover reads what a crash left beside a directory and finishes
// or undoes it, as the crash-state table of docs/protocol.md says; it also
// finds such directories under a root (Scan) and collects the garbage of
// finished transactions (GC).
//
// The package is named recover after its folder; a file that imports it
// cannot call the builtin recover() unless it imports it under another name
// (the treetx command imports it as txrecover).
package recover

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/safeopen"
	"github.com/treetx/treetx/lock"
	"github.com/treetx/treetx/snapshot"
	"github.com/treetx/treetx/txn"
)

// State is what Inspect, Recover or GC found.
type State string

// The states of a directory.
const (
	// StateIdle: no transaction, nothing left over.
	StateIdle State = "idle"
	// StateInProgress: a live process holds the directory's lock.
	StateInProgress State = "in progress"
	// StateNeedsRecovery: a crash left something that Recover will finish or
	// undo.
	StateNeedsRecovery State = "needs recovery"
	// StateNeedsPerson: what is there does not match any crash state (a
	// corrupt journal, a shadow name no journal claims...); Recover refuses.
	StateNeedsPerson State = "needs a person"
	// StateError: the directory could not be inspected (it does not exist,
	// its parent cannot be read...).
	StateError State = "error"
)

// Errors Recover returns, for exit codes.
var (
	// ErrBusy: a live transaction holds the directory; it was left alone.
	ErrBusy = errors.New("busy: a live process holds the lock")
	// ErrNeedsPerson: the state is not one recovery may act on.
	ErrNeedsPerson = errors.New("needs a person")
)

// Holder is the process that holds a directory's lock, as it recorded itself
// in the lock file.
type Holder struct {
	PID     int       `json:"pid"`
	Host    string    `json:"host"`
	User    string    `json:"user"`
	Command []string  `json:"command"`
	Since   time.Time `json:"since"`
	// Running is false when the recorded process is known to have exited
	// (it ran on this host): the lock is then held by a process that
	// inherited it (the command of a treetx that was killed) or by a reader.
	Running bool `json:"running"`
}

// Report describes a directory's state and, after Recover or GC, what was
// done. Its JSON form is documented in docs/protocol.md ("status and recover
// output"); every field is always present.
type Report struct {
	// Dir is the directory, absolute and resolved (as given, when it could
	// not be resolved).
	Dir   string `json:"dir"`
	State State  `json:"state"`
	// Phase is the journal's phase, "" without a readable journal.
	Phase txn.Phase `json:"phase"`
	// LockHeld is true when another process held the directory's lock.
	LockHeld bool `json:"lock_held"`
	// Holder is the lock's recorded holder when LockHeld, if it recorded
	// itself (shared holders do not).
	Holder *Holder `json:"holder"`
	// Journal is the transaction's journal, if there is a readable one.
	Journal *txn.Journal `json:"journal"`
	// Found describes what is there; Action what Recover does (or did, or
	// would do). Both are for people.
	Found  string `json:"found"`
	Action string `json:"action"`
	// Done is true once Action was carried out.
	Done bool `json:"done"`
	// Removed lists the leftovers (paths) removed, or with Done false those
	// that would be.
	Removed []string `json:"removed"`
	// Lost lists files whose old content a rollback could not restore.
	Lost []string `json:"lost"`
	// Kept is a failed tree kept for inspection by that rollback.
	Kept string `json:"kept"`
	// Error is why recovery failed or the directory could not be inspected.
	Error string `json:"error"`

	garbage []string // names to delete when there is no journal
	failed  []string // names of failed trees kept for inspection
}

// MarshalJSON writes every field, lists as [] rather than null.
func (r Report) MarshalJSON() ([]byte, error) {
	type plain Report
	c := plain(r)
	c.Removed, c.Lost = nonNil(c.Removed), nonNil(c.Lost)
	if c.Holder != nil {
		h := *c.Holder
		h.Command = nonNil(h.Command)
		c.Holder = &h
	}
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n")), nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// Options configures Recover.
type Options struct {
	// DryRun inspects and says what would be done, without doing it.
	DryRun bool
	// FS performs every mutation; nil means fsys.OS.
	FS txn.FS
	// Progress, if set, reports the phases that grow with the tree
	// (checking and restoring the linked files, deleting a tree), as
	// txn.Options.Progress does.
	Progress txn.Progress
	// NoFollow takes the directory path as it is, in a parent whose path
	// holds no symlink (as Scan returns them), rather than resolving
	// symlinks: a directory that is a symlink is then refused (treetx's
	// names beside a symlink were not made for it).
	NoFollow bool
}

// Inspect reports the state of dir without changing anything. It takes no
// lock beyond a shared try, to tell a live transaction from a dead one, and
// does not create the lock file when there is none.
func Inspect(dir string) (*Report, error) {
	n, err := resolve(dir, false)
	if err != nil {
		return errorReport(dir, err), err
	}
	r, err := look(n)
	return finishInspect(n, r, err)
}

// look classifies n's state under a shared lock taken without waiting (a
// report in progress if another process holds it exclusively), and without
// creating the lock file: a transaction creates it before anything else, so
// without one nothing is live, unless one began meanwhile, which a second
// look under the lock then sees.
func look(n txn.Names) (*Report, error) {
	if !exists(n.Path(n.Lock)) {
		r, err := classify(n)
		if !exists(n.Path(n.Lock)) {
			return r, err
		}
	}
	lk, err := lock.Acquire(context.Background(), n.Path(n.Lock), lock.Options{Mode: lock.Shared, Timeout: 0})
	if err != nil {
		var held *lock.HeldError
		if errors.As(err, &held) {
			return busyReport(n), nil
		}
		if errors.Is(err, safeopen.ErrRefused) {
			return refusedReport(n, err), nil
		}
		return nil, err
	}
	defer lk.Release()
	return classify(n)
}

func finishInspect(n txn.Names, r *Report, err error) (*Report, error) {
	if err != nil {
		return errorReport(n.Dir, err), err
	}
	if r.State == StateIdle && !exists(n.Dir) {
		err := fmt.Errorf("%s: no such directory", n.Dir)
		return errorReport(n.Dir, err), err
	}
	return r, nil
}

// Recover takes dir's lock without waiting and finishes or undoes what a
// crash left. A held lock means a live transaction: the report says so and
// the error is ErrBusy. A state recovery may not act on gives ErrNeedsPerson
// and changes nothing. Recover is idempotent, and a crash of Recover itself
// leaves a state a later Recover finishes. The report is never nil.
func Recover(dir string, opts Options) (*Report, error) {
	return recoverDir(dir, opts, nil)
}

func recoverDir(dir string, opts Options, gc *GCOptions) (*Report, error) {
	n, err := resolve(dir, opts.NoFollow)
	if err != nil {
		r := errorReport(dir, err)
		if errors.Is(err, ErrNeedsPerson) {
			r.State, r.Found = StateNeedsPerson, err.Error()
		}
		return r, err
	}
	if !exists(n.Path(n.Lock)) {
		// A transaction creates the lock file first: without one, and with
		// none of treetx's names beside the directory, there is nothing to
		// do. Do not create the lock file then (for a mistyped name, or
		// with another owner than the users of the directory).
		if names, _ := readNames(n.Parent); !hasNamesOf(n, names) && !exists(n.Path(n.Lock)) {
			if !exists(n.Dir) {
				err := fmt.Errorf("%s: no such directory", n.Dir)
				return errorReport(n.Dir, err), err
			}
			return &Report{Dir: n.Dir, State: StateIdle, Found: "no transaction"}, nil
		}
	}
	if opts.DryRun {
		return dryRun(n, gc)
	}
	verb := "recover"
	if gc != nil {
		verb = "gc"
	}
	lk, err := lock.Acquire(context.Background(), n.Path(n.Lock), lock.Options{Mode: lock.Exclusive, Timeout: 0, Self: lock.Holder{Command: []string{"treetx", verb, n.Dir}}})
	if err != nil {
		var held *lock.HeldError
		if errors.As(err, &held) {
			r := busyReport(n)
			r.Action = "left alone"
			return r, fmt.Errorf("%s: %w", n.Dir, ErrBusy)
		}
		if errors.Is(err, safeopen.ErrRefused) {
			r := refusedReport(n, err)
			return r, fmt.Errorf("%s: %w: %w", n.Dir, ErrNeedsPerson, err)
		}
		return errorReport(n.Dir, err), err
	}
	r, err := classify(n)
	if err != nil {
		lk.Release()
		return errorReport(n.Dir, err), err
	}
	if r.State == StateNeedsPerson {
		lk.Release()
		return r, fmt.Errorf("%s: %w: %s", n.Dir, ErrNeedsPerson, r.Found)
	}
	fs := opts.FS
	if fs == nil {
		fs = fsys.OS{}
	}
	if gc != nil {
		if err := expireFailed(r, n, fs, gc); err != nil {
			lk.Release()
			r.Error = err.Error()
			return r, err
		}
	}
	if r.State != StateNeedsRecovery && len(r.garbage) == 0 {
		lk.Release()
		if r.State == StateIdle && !exists(n.Dir) && len(r.Removed) == 0 {
			err := fmt.Errorf("%s: no such directory", n.Dir)
			return errorReport(n.Dir, err), err
		}
		r.Done = len(r.Removed) > 0
		return r, nil
	}
	if r.Journal == nil {
		defer lk.Release()
		if err := removeGarbage(r, n, fs, opts.Progress); err != nil {
			err = fmt.Errorf("%s: remove leftovers: %w", n.Dir, err)
			r.Error = err.Error()
			return r, err
		}
		r.Done = true
		return r, nil
	}
	// As root, the transaction of another user is finished with that
	// user's identity: a planted journal can do no more than its planter.
	res, err := txn.Finish(n, r.Journal, lk, opts.FS, opts.Progress) // releases lk
	if res != nil {
		r.Lost, r.Kept = res.Lost, res.Kept
	}
	var lost *txn.LostContentError
	if err != nil && !errors.As(err, &lost) {
		err = fmt.Errorf("%s: %w: %w", n.Dir, ErrNeedsPerson, err)
		r.Error = err.Error()
		return r, err
	}
	r.Done = true
	if err != nil {
		r.Error = err.Error()
	}
	return r, err
}

// dryRun says what Recover (or GC, if gc is set) would do, changing
// nothing: not even creating the lock file.
func dryRun(n txn.Names, gc *GCOptions) (*Report, error) {
	r, err := look(n)
	if err != nil {
		return errorReport(n.Dir, err), err
	}
	switch r.State {
	case StateInProgress:
		r.Action = "left alone"
		return r, fmt.Errorf("%s: %w", n.Dir, ErrBusy)
	case StateNeedsPerson:
		return r, fmt.Errorf("%s: %w: %s", n.Dir, ErrNeedsPerson, r.Found)
	}
	if gc != nil {
		if err := expireFailed(r, n, nil, gc); err != nil {
			return r, err
		}
	}
	for _, name := range r.garbage {
		r.Removed = append(r.Removed, n.Path(name))
	}
	if r.State == StateIdle && !exists(n.Dir) && len(r.Removed) == 0 {
		err := fmt.Errorf("%s: no such directory", n.Dir)
		return errorReport(n.Dir, err), err
	}
	return r, nil
}

// removeGarbage deletes the leftovers of a directory without a journal: a
// tree under its removal name, after a durable rename to one if it has
// another name; files simply.
func removeGarbage(r *Report, n txn.Names, fs fsys.FS, progress txn.Progress) error {
	pfd, err := openDir(n.Parent)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	var errs []error
	for _, name := range r.garbage {
		if err := dropTree(fs, progress, pfd, n, name, ""); err != nil {
			errs = append(errs, err)
			continue
		}
		r.Removed = append(r.Removed, n.Path(name))
	}
	return errors.Join(errs...)
}

// resolve turns dir into treetx's names for it.
func resolve(dir string, noFollow bool) (txn.Names, error) {
	if dir == "" {
		return txn.Names{}, errors.New("no directory given")
	}
	var path string
	if noFollow {
		abs, err := filepath.Abs(dir)
		if err != nil {
			return txn.Names{}, err
		}
		if fi, err := os.Lstat(abs); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
			return txn.Names{}, fmt.Errorf("%s: %w: it is a symlink, and treetx's names beside it were not made for it (treetx keeps them beside the directory a symlink points to)", abs, ErrNeedsPerson)
		}
		path = abs
	} else {
		real, err := evalSymlinks(dir)
		if err != nil {
			return txn.Names{}, fmt.Errorf("%s: no such directory, nor a parent holding treetx's names for it", dir)
		}
		path = real
	}
	if path == "/" {
		return txn.Names{}, errors.New("/: the root directory has no parent, so treetx keeps nothing for it")
	}
	return txn.NamesFor(path)
}

// refusedReport describes a directory beside which something stands
// under one of treetx's names that treetx does not make there: row 17.
func refusedReport(n txn.Names, err error) *Report {
	return &Report{Dir: n.Dir, State: StateNeedsPerson, Found: err.Error()}
}

func errorReport(dir string, err error) *Report {
	return &Report{Dir: dir, State: StateError, Found: err.Error(), Error: err.Error()}
}

// busyReport describes a directory whose lock another process holds.
func busyReport(n txn.Names) *Report {
	r := &Report{Dir: n.Dir, State: StateInProgress, LockHeld: true}
	if h, err := lock.ReadHolder(n.Path(n.Lock)); err == nil && h != nil {
		r.Holder = &Holder{PID: h.PID, Host: h.Host, User: h.User, Command: h.Command, Since: h.Since, Running: !h.Stale}
	}
	j, jerr := txn.ReadJournal(n.Path(n.Journal))
	if jerr == nil {
		r.Journal, r.Phase = j, j.Phase
	}
	var who string
	switch h := r.Holder; {
	case h == nil:
		who = "its lock is held by another process (a reader under treetx lock --shared, or a holder that has not recorded itself)"
	case h.Running:
		who = fmt.Sprintf("its lock is held by pid %d (%s) on %s as %s since %s", h.PID, showCommand(h.Command), showCommand([]string{h.Host}), showCommand([]string{h.User}), h.Since.UTC().Format(time.RFC3339))
	default:
		who = fmt.Sprintf("its lock is held, not by pid %d (%s) recorded in the lock file, which has exited: by a process that inherited the lock from it, or by a reader", h.PID, showCommand(h.Command))
	}
	switch {
	case jerr == nil:
		r.Found = fmt.Sprintf("transaction %s is in phase %s; %s", j.ID, j.Phase, who)
	case errors.Is(jerr, fs.ErrNotExist):
		r.Found = "no transaction journal; " + who
	default:
		r.Found = fmt.Sprintf("%v; %s", jerr, who)
	}
	return r
}

// classify reads the names beside n.Dir and its journal, under a lock the
// caller holds, and decides what recovery does.
func classify(n txn.Names) (*Report, error) {
	r := &Report{Dir: n.Dir}
	names, err := readNames(n.Parent)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", n.Parent, err)
	}
	present := map[txn.Kind][]string{}
	for _, name := range names {
		if k := n.Classify(name); k != txn.KindOther {
			present[k] = append(present[k], name)
		}
	}
	r.failed = present[txn.KindFailed]
	// Row 17: the gate is opened only by a locker that waits, never
	// here; one that is not a regular file with one link would refuse
	// every such locker, so it needs a person now, as the lock file would.
	for _, name := range present[txn.KindGate] {
		var st unix.Stat_t
		if err := unix.Lstat(n.Path(name), &st); err == nil {
			if err := safeopen.Check(n.Path(name), &st, safeopen.Regular, safeopen.Rules{OneLink: true}); err != nil {
				r.State, r.Found = StateNeedsPerson, err.Error()
				return r, nil
			}
		}
	}
	j, jerr := txn.ReadJournal(n.Path(n.Journal))
	switch {
	case jerr == nil:
		r.Journal, r.Phase = j, j.Phase
		who := fmt.Sprintf("transaction %s (pid %d on %s, %s, since %s)", j.ID, j.PID, showCommand([]string{j.Host}), showCommand(j.Command), j.Start.Format(time.RFC3339))
		if problem := checkShadow(n, j, present); problem != "" {
			r.State = StateNeedsPerson
			r.Found = fmt.Sprintf("an interrupted %s in phase %s, but %s; nothing done: inspect it, and the names %s%s.* beside it", who, j.Phase, problem, txn.Prefix, n.Base)
			return r, nil
		}
		r.State = StateNeedsRecovery
		switch j.Phase {
		case txn.PhaseSnapshot: // rows 5, 6, 7
			r.Found = "an interrupted " + who + " that was still building its shadow"
			r.Action = "drop the shadow (the directory was never touched)"
		case txn.PhaseRunning: // row 8
			r.Found = "an interrupted " + who + " whose command had not finished"
			r.Action = "roll back to the tree from before the transaction"
		case txn.PhaseRollback: // rows 10, 11, 12, 13
			r.Found = "an interrupted rollback of " + who
			r.Action = "finish the rollback"
		case txn.PhaseCommit: // rows 14, 15
			r.Found = "an interrupted commit of " + who
			r.Action = "finish the commit (the new tree is durable)"
		}
		return r, nil
	case !errors.Is(jerr, fs.ErrNotExist): // row 16
		r.State = StateNeedsPerson
		r.Found = fmt.Sprintf("%v; nothing done: inspect it, and the names %s%s.* beside it", jerr, txn.Prefix, n.Base)
		return r, nil
	}
	if c := present[txn.KindComplete]; len(c) > 0 { // row 4
		r.State = StateNeedsPerson
		r.Found = fmt.Sprintf("%s exists but no journal claims it, so it was not made by treetx and is never installed; move it away", n.Path(n.Complete))
		return r, nil
	}
	// Rows 2 and 3: garbage of a transaction that never began, or ended.
	for _, k := range []txn.Kind{txn.KindIncomplete, txn.KindJournalTmp, txn.KindMeta} {
		r.garbage = append(r.garbage, present[k]...)
	}
	if len(r.garbage) == 0 { // rows 1 and 3a
		// Trees named for removal alone are no unfinished business: treetx
		// run leaves their deletion to a detached process. Recover and gc
		// still delete them (deleting one twice at once is safe), in case
		// that process died.
		r.State = StateIdle
		r.Found = "no transaction"
		if len(r.failed) > 0 {
			r.Found += fmt.Sprintf("; failed tree(s) kept for inspection: %s", strings.Join(r.failed, ", "))
		}
		if rm := present[txn.KindRemoving]; len(rm) > 0 {
			r.garbage = rm
			r.Found += fmt.Sprintf("; old trees being deleted: %s", strings.Join(rm, ", "))
			r.Action = "delete them (they belong to no transaction)"
		}
		return r, nil
	}
	r.garbage = append(r.garbage, present[txn.KindRemoving]...)
	r.State = StateNeedsRecovery
	r.Found = fmt.Sprintf("leftovers of finished or abandoned transactions: %s", strings.Join(r.garbage, ", "))
	r.Action = "remove them (the directory is not involved)"
	return r, nil
}

// checkShadow says what, if anything, keeps recovery from acting on the
// journal j: the shadow (found by inode) must be where the phase allows, and
// the manifest there when a rollback needs it. It returns "" if all is well.
func checkShadow(n txn.Names, j *txn.Journal, present map[txn.Kind][]string) (problem string) {
	var untrusted error
	at := func(name string) (ok, there bool) {
		var st unix.Stat_t
		if err := unix.Lstat(n.Path(name), &st); err != nil {
			return false, false
		}
		if (txn.FileID{Dev: uint64(st.Dev), Ino: st.Ino}) != j.Shadow {
			return false, true
		}
		if err := j.CheckShadow(unix.AT_FDCWD, n.Path(name), n.Path(name), &st); err != nil {
			untrusted = err
			return false, true
		}
		return true, true
	}
	notShadow := func(name string) string {
		return fmt.Sprintf("%s is not the shadow the journal records (inode %d)", n.Path(name), j.Shadow.Ino)
	}
	inComplete, completeThere := at(n.Complete)
	defer func() {
		if untrusted != nil {
			problem = fmt.Sprintf("its shadow is not one its owner (uid %d) made: %v", j.Owner, untrusted)
		}
	}()
	switch j.Phase {
	case txn.PhaseSnapshot, txn.PhaseCommit:
		// Both names are dropped if they hold the shadow, refused if not.
		if completeThere && !inComplete {
			return notShadow(n.Complete)
		}
		if ok, there := at(n.Incomplete); there && !ok {
			return notShadow(n.Incomplete)
		}
	case txn.PhaseRunning, txn.PhaseRollback:
		inDir, _ := at(n.Base)
		switch {
		case inComplete:
		case j.Phase == txn.PhaseRollback && inDir:
		case completeThere:
			return notShadow(n.Complete)
		default: // row 9
			return fmt.Sprintf("the shadow (inode %d) is neither at %s nor at %s", j.Shadow.Ino, n.Path(n.Complete), n.Dir)
		}
		if len(present[txn.KindMeta]) == 0 {
			return fmt.Sprintf("its manifest %s is missing", n.Path(n.Meta))
		}
		if err := checkManifest(n.Path(n.Meta), j); err != nil {
			return fmt.Sprintf("its manifest is unusable: %v", err)
		}
	}
	return ""
}

// checkManifest reads the manifest at path through, as a rollback will.
func checkManifest(path string, j *txn.Journal) error {
	pfd, err := safeopen.OpenDir(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	fd, _, err := safeopen.OpenAt(pfd, filepath.Base(path), path, unix.O_RDONLY, 0, safeopen.Regular, j.ManifestRules())
	if err != nil {
		return err
	}
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	return snapshot.ReadManifest(f, func(snapshot.Record) error { return nil })
}

// hasNamesOf reports whether names (of n.Parent) hold one of n's names.
func hasNamesOf(n txn.Names, names []string) bool {
	for _, name := range names {
		if n.Classify(name) != txn.KindOther {
			return true
		}
	}
	return false
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

func readNames(dir string) ([]string, error) {
	fd, err := safeopen.OpenDir(dir)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	return safeopen.ReadNames(fd, dir)
}

func openDir(path string) (int, error) { return safeopen.OpenDir(path) }

// showCommand writes argv on one line: arguments holding anything but
// letters, digits and -_./=:,+@% are quoted, with newlines escaped.
func showCommand(argv []string) string {
	var b strings.Builder
	for i, a := range argv {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
			b.WriteString(a)
		} else {
			b.WriteString(strconv.Quote(a))
		}
	}
	return b.String()
}
