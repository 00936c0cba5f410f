// Package recover reads what a crash left beside a directory and finishes
// or undoes it, as the crash-state table of docs/protocol.md says; it also
// finds such directories under a root (Scan) and collects the garbage of
// finished transactions (GC).
//
// Recovery of one directory goes in three stages, under the directory's
// lock (taken without waiting, released in one place):
//
//   - classify reads the names beside the directory and its journal and
//     says which row of the crash-state table they are (Report.Row), and
//     whether recovery may act on it (Report.State);
//   - plan lists the steps recovery will take, in order, each named by its
//     ID in docs/protocol.md (Report.Plan: R1..R7 and C4..C8 for a
//     transaction's journal, G1..G3 for what no journal claims);
//   - apply carries the plan out. A dry run stops before it.
//
// The package is named recover after its folder, which shadows Go's builtin
// recover() in a file that imports it under that name. Import it as
// txrecover, as the treetx command does:
//
//	import txrecover "github.com/treetx/treetx/recover"
//
//	r, err := txrecover.Recover("/srv/cvsroot", txrecover.Options{})
package recover

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/treetx/treetx/internal/command"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/safeopen"
	"github.com/treetx/treetx/lock"
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
	ErrNeedsPerson = layout.ErrNeedsPerson
)

// Journal is a transaction's journal, as docs/protocol.md ("The journal")
// describes it: its id, process, host, user, command, start, phase, the
// inodes of the directory and of the shadow, and the files a rollback found
// lost.
type Journal = layout.Journal

// Phase is the step a transaction had reached, as its journal records it.
type Phase = layout.Phase

// The phases, in the order a transaction goes through them: a crash before
// PhaseCommit rolls back, one in it finishes the commit.
const (
	PhaseSnapshot = layout.PhaseSnapshot
	PhaseRunning  = layout.PhaseRunning
	PhaseCommit   = layout.PhaseCommit
	PhaseRollback = layout.PhaseRollback
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
	// Row is the row of docs/protocol.md's crash-state table that the
	// names beside Dir are ("1" to "28", "3a"); "" when they were not
	// looked at (the lock was held, an error) or are none of them.
	Row string `json:"row"`
	// Phase is the journal's phase, "" without a readable journal.
	Phase Phase `json:"phase"`
	// LockHeld is true when another process held the directory's lock.
	LockHeld bool `json:"lock_held"`
	// Holder is the lock's recorded holder when LockHeld, if it recorded
	// itself (shared holders do not).
	Holder *Holder `json:"holder"`
	// Journal is the transaction's journal, if there is a readable one.
	Journal *Journal `json:"journal"`
	// Found describes what is there; Action what Recover does (or did, or
	// would do). Both are for people.
	Found  string `json:"found"`
	Action string `json:"action"`
	// Plan lists the steps of Action, in order: done when Done is true.
	Plan []Step `json:"plan"`
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
	// Mode is how the journal's shadow was made: "hardlink", or "snapshot"
	// (a btrfs snapshot); "" without a readable journal.
	Mode layout.Mode `json:"mode"`
	// Group describes the transaction over several trees that the journal
	// belongs to, or is null.
	Group *GroupReport `json:"group"`

	garbage  []string // names no journal claims, to drop (rows 2, 3, 3a)
	failed   []string // names of failed trees kept for inspection
	shadowAt string   // the name holding the journal's shadow, if one does
}

// MarshalJSON writes every field, lists as [] rather than null.
func (r Report) MarshalJSON() ([]byte, error) {
	type plain Report
	c := plain(r)
	c.Removed, c.Lost = nonNil(c.Removed), nonNil(c.Lost)
	if c.Plan == nil {
		c.Plan = []Step{}
	}
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

// Line is the report on one line, as treetx recover and
// scripts/treetx-recover.sh print it: the directory, its state, what was
// found, and the action, done ("did: "), to be done in a dry run
// ("would: "), or not done; then the content a rollback found lost.
func (r *Report) Line(dryRun bool) string {
	line := fmt.Sprintf("%s: %s: %s", r.Dir, r.State, r.Found)
	switch {
	case r.Action == "":
	case r.Done:
		line += "; did: " + r.Action
	case dryRun:
		line += "; would: " + r.Action
	default:
		line += "; " + r.Action
	}
	if len(r.Lost) > 0 {
		line += fmt.Sprintf("; the old content of %d file(s) is lost, failed tree kept at %s", len(r.Lost), r.Kept)
	}
	return line
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
	// FS performs every mutation; nil means the kernel's own calls.
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
// does not create the lock file when there is none. Its plan is what
// Recover would do.
func Inspect(dir string) (*Report, error) {
	n, err := layout.Resolve(dir, layout.ResolveOptions{Use: layout.ForRecovery})
	if err != nil {
		return errorReport(dir, err), err
	}
	r, err := look(n)
	if err != nil {
		return errorReport(n.Dir, err), err
	}
	plan(r, n, nil)
	if r.State == StateIdle && !exists(n.Dir) {
		err := fmt.Errorf("%s: no such directory", n.Dir)
		return errorReport(n.Dir, err), err
	}
	return r, nil
}

// look classifies n's state under a shared lock taken without waiting (a
// report in progress if another process holds it exclusively), and without
// creating the lock file: a transaction creates it before anything else, so
// without one nothing is live, unless one began meanwhile, which a second
// look under the lock then sees.
func look(n layout.Names) (*Report, error) {
	if !exists(n.Path(n.Lock)) {
		r, err := classify(n)
		if !exists(n.Path(n.Lock)) {
			return r, err
		}
	}
	lk, r, err := lockDir(n, lock.Options{Mode: lock.Shared, Timeout: 0})
	if lk == nil {
		if r.State == StateError {
			return nil, err
		}
		return r, nil // in progress, or row 17
	}
	defer lk.Release()
	return classify(n)
}

// Recover takes dir's lock without waiting and finishes or undoes what a
// crash left. A held lock means a live transaction: the report says so and
// the error is ErrBusy. A state recovery may not act on gives ErrNeedsPerson
// and changes nothing. Recover is idempotent, and a crash of Recover itself
// leaves a state a later Recover finishes. The report is never nil.
func Recover(dir string, opts Options) (*Report, error) {
	return recoverDir(dir, opts, nil)
}

// recoverDir is Recover, or with gc set GC: classify, plan, apply, under
// the directory's lock.
func recoverDir(dir string, opts Options, gc *GCOptions) (*Report, error) {
	n, err := layout.Resolve(dir, layout.ResolveOptions{Use: layout.ForRecovery, NoFollow: opts.NoFollow})
	if err != nil {
		r := errorReport(dir, err)
		if errors.Is(err, ErrNeedsPerson) {
			r.State, r.Found = StateNeedsPerson, err.Error()
		}
		return r, err
	}
	if !exists(n.Path(n.Lock)) && !hasNamesOf(n) && !exists(n.Path(n.Lock)) {
		// A transaction creates the lock file first: without one (before
		// and after the names are listed), and with none of treetx's names
		// beside the directory, there is nothing to do (row 1). Do not
		// create the lock file then (for a mistyped name, or with another
		// owner than the users of the directory).
		if !exists(n.Dir) {
			err := fmt.Errorf("%s: no such directory", n.Dir)
			return errorReport(n.Dir, err), err
		}
		return &Report{Dir: n.Dir, State: StateIdle, Row: "1", Found: "no transaction"}, nil
	}
	if !exists(n.Path(n.Journal)) {
		// One of the trees of a transaction over several, final, whose
		// marker leads to the record: recovering the record recovers the
		// group, this tree included (row 30).
		if g, owner, err := layout.ReadMarker(n); err == nil && g.Record() != n.Dir {
			if unfinished, err := g.Unfinished(owner); err == nil && unfinished {
				return recoverDir(g.Record(), opts, gc)
			}
		}
	}
	if opts.DryRun {
		return dryRun(n, gc)
	}
	verb := "recover"
	if gc != nil {
		verb = "gc"
	}
	lk, r, err := lockDir(n, lock.Options{Mode: lock.Exclusive, Timeout: 0, Self: lock.Holder{Command: []string{"treetx", verb, n.Dir}}, Tree: n.Dir})
	if lk == nil {
		if r.State == StateInProgress {
			r.Action = "left alone"
		}
		return r, err
	}
	defer lk.Release()
	if r, err = classify(n); err != nil {
		return errorReport(n.Dir, err), err
	}
	if r.State == StateNeedsPerson {
		return r, fmt.Errorf("%s: %w: %s", n.Dir, ErrNeedsPerson, r.Found)
	}
	if r.Group != nil && r.Journal == nil {
		// Row 30 under the lock: the marker's group became unfinished
		// after the look above (a race with a new group): leave it to
		// a recovery of the record, as a live transaction's.
		r.Action = "left alone"
		return r, fmt.Errorf("%s: %w: %s", n.Dir, ErrBusy, r.Found)
	}
	if r.Group != nil {
		return recoverGroup(n, r, opts, verb)
	}
	plan(r, n, gc)
	if len(r.Plan) == 0 {
		if r.State == StateIdle && !exists(n.Dir) {
			err := fmt.Errorf("%s: no such directory", n.Dir)
			return errorReport(n.Dir, err), err
		}
		return r, nil
	}
	return r, apply(r, n, opts)
}

// dryRun says what Recover (or GC, if gc is set) would do, changing
// nothing: not even creating the lock file.
func dryRun(n layout.Names, gc *GCOptions) (*Report, error) {
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
	plan(r, n, gc)
	for _, s := range r.Plan {
		if s.drop {
			r.Removed = append(r.Removed, s.Path)
		}
	}
	if r.State == StateIdle && !exists(n.Dir) && len(r.Removed) == 0 {
		err := fmt.Errorf("%s: no such directory", n.Dir)
		return errorReport(n.Dir, err), err
	}
	return r, nil
}

// lockDir takes n's lock without waiting, as o says. Without it, it returns
// the report and error of why: another process holds it (in progress,
// ErrBusy), the lock file is not what treetx makes (row 17), or it could not
// be taken.
func lockDir(n layout.Names, o lock.Options) (*lock.Lock, *Report, error) {
	lk, err := lock.Acquire(context.Background(), n.Path(n.Lock), o)
	if err == nil {
		return lk, nil, nil
	}
	var held *lock.HeldError
	switch {
	case errors.As(err, &held):
		return nil, busyReport(n), fmt.Errorf("%s: %w", n.Dir, ErrBusy)
	case errors.Is(err, safeopen.ErrRefused):
		return nil, refusedReport(n, err), fmt.Errorf("%s: %w: %w", n.Dir, ErrNeedsPerson, err)
	}
	return nil, errorReport(n.Dir, err), err
}

// refusedReport describes a directory beside which something stands
// under one of treetx's names that treetx does not make there: row 17.
func refusedReport(n layout.Names, err error) *Report {
	return &Report{Dir: n.Dir, State: StateNeedsPerson, Row: "17", Found: err.Error()}
}

func errorReport(dir string, err error) *Report {
	return &Report{Dir: dir, State: StateError, Found: err.Error(), Error: err.Error()}
}

// busyReport describes a directory whose lock another process holds.
func busyReport(n layout.Names) *Report {
	r := &Report{Dir: n.Dir, State: StateInProgress, LockHeld: true}
	if h, err := lock.ReadHolder(n.Path(n.Lock)); err == nil && h != nil {
		r.Holder = &Holder{PID: h.PID, Host: h.Host, User: h.User, Command: h.Command, Since: h.Since, Running: !h.Stale}
	}
	j, jerr := layout.ReadJournal(n.Path(n.Journal))
	if jerr == nil {
		r.Journal, r.Phase, r.Mode = j, j.Phase, j.ShownMode()
	}
	var who string
	switch h := r.Holder; {
	case h == nil:
		who = "its lock is held by another process (a reader under treetx lock --shared, or a holder that has not recorded itself)"
	case h.Running:
		who = fmt.Sprintf("its lock is held by pid %d (%s) on %s as %s since %s", h.PID, command.Show(h.Command), command.Show([]string{h.Host}), command.Show([]string{h.User}), h.Since.UTC().Format(time.RFC3339))
	default:
		who = fmt.Sprintf("its lock is held, not by pid %d (%s) recorded in the lock file, which has exited: by a process that inherited the lock from it, or by a reader", h.PID, command.Show(h.Command))
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

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
