// Package recover reads what a crash left beside a directory and finishes
// or undoes it, as the crash-state table of docs/protocol.md says.
//
// The package is named recover after its folder; a file that imports it
// cannot call the builtin recover() unless it imports it under another name
// (the treetx command imports it as txrecover).
package recover

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/lock"
	"github.com/treetx/treetx/snapshot"
	"github.com/treetx/treetx/txn"
)

// State is what Inspect found.
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
)

// Errors Recover returns, for exit codes.
var (
	// ErrBusy: a live transaction holds the directory; it was left alone.
	ErrBusy = errors.New("busy: a live process holds the lock")
	// ErrNeedsPerson: the state is not one recovery may act on.
	ErrNeedsPerson = errors.New("needs a person")
)

// Report describes a directory's state and, after Recover, what was done.
type Report struct {
	Dir     string       `json:"dir"`
	State   State        `json:"state"`
	Journal *txn.Journal `json:"journal,omitempty"`
	// Holder is the lock holder's record when the state is in progress.
	Holder *lock.Holder `json:"holder,omitempty"`
	// Found describes what is there; Action what Recover does (or did).
	Found  string `json:"found"`
	Action string `json:"action,omitempty"`
	// Done is true once Recover has carried Action out.
	Done bool `json:"done"`
	// Lost lists files whose old content a rollback could not restore.
	Lost []string `json:"lost,omitempty"`
	// Kept is a failed tree kept for inspection.
	Kept string `json:"kept,omitempty"`

	names   txn.Names
	garbage []string // names to delete when there is no journal
}

// Options configures Recover.
type Options struct {
	// DryRun inspects and says what would be done, without doing it.
	DryRun bool
	// FS performs every mutation; nil means fsys.OS.
	FS fsys.FS
}

// Inspect reports the state of dir without changing anything. It takes no
// lock beyond a shared try, to tell a live transaction from a dead one.
func Inspect(dir string) (*Report, error) {
	n, err := namesOf(dir)
	if err != nil {
		return nil, err
	}
	lk, err := lock.Acquire(context.Background(), n.Path(n.Lock), lock.Options{Mode: lock.Shared, Timeout: 0})
	if err != nil {
		var held *lock.HeldError
		if errors.As(err, &held) {
			r := &Report{Dir: n.Dir, State: StateInProgress, Holder: held.Holder, names: n, Found: "a transaction is in progress"}
			if j, jerr := txn.ReadJournal(n.Path(n.Journal)); jerr == nil {
				r.Journal = j
			}
			return r, nil
		}
		return nil, err
	}
	defer lk.Release()
	return classify(n)
}

// Recover takes dir's lock without waiting and finishes or undoes what a
// crash left. A held lock means a live transaction: the report says so and
// the error is ErrBusy. A state recovery may not act on gives ErrNeedsPerson
// and changes nothing. Recover is idempotent, and a crash of Recover itself
// leaves a state a later Recover finishes.
func Recover(dir string, opts Options) (*Report, error) {
	n, err := namesOf(dir)
	if err != nil {
		return nil, err
	}
	mode := lock.Exclusive
	if opts.DryRun {
		mode = lock.Shared
	}
	lk, err := lock.Acquire(context.Background(), n.Path(n.Lock), lock.Options{Mode: mode, Timeout: 0, Self: lock.Holder{Command: []string{"treetx", "recover", n.Dir}}})
	if err != nil {
		var held *lock.HeldError
		if errors.As(err, &held) {
			r := &Report{Dir: n.Dir, State: StateInProgress, Holder: held.Holder, names: n, Found: "a transaction is in progress", Action: "left alone"}
			return r, fmt.Errorf("%s: %w", n.Dir, ErrBusy)
		}
		return nil, err
	}
	r, err := classify(n)
	if err != nil || opts.DryRun || r.State != StateNeedsRecovery {
		lk.Release()
		if err == nil && r.State == StateNeedsPerson {
			err = fmt.Errorf("%s: %w: %s", n.Dir, ErrNeedsPerson, r.Found)
		}
		return r, err
	}
	if r.Journal == nil {
		defer lk.Release()
		var errs []error
		for _, name := range r.garbage {
			errs = append(errs, snapshot.Remove(n.Parent, name, opts.FS))
		}
		if err := errors.Join(errs...); err != nil {
			return r, fmt.Errorf("%s: remove leftovers: %w", n.Dir, err)
		}
		r.Done = true
		return r, nil
	}
	tx, err := txn.Resume(n, r.Journal, lk, opts.FS) // releases lk when done
	if err != nil {
		return r, err
	}
	var res *txn.Result
	if r.Journal.Phase == txn.PhaseCommit {
		res, err = tx.Commit()
	} else {
		res, err = tx.Rollback()
	}
	if res != nil {
		r.Lost, r.Kept = res.Lost, res.Kept
	}
	var lost *txn.LostContentError
	if err != nil && !errors.As(err, &lost) {
		return r, fmt.Errorf("%s: %w: %w", n.Dir, ErrNeedsPerson, err)
	}
	r.Done = true
	return r, err
}

func namesOf(dir string) (txn.Names, error) {
	abs, err := absClean(dir)
	if err != nil {
		return txn.Names{}, err
	}
	return txn.NamesFor(abs)
}

// absClean resolves dir like treetx run does: symlinks once. A directory
// that is missing is fine when its parent exists (a crash may leave the
// name missing for an instant during a rollback without exchange).
func absClean(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("no directory given")
	}
	if real, err := evalSymlinks(dir); err == nil {
		return real, nil
	}
	return "", fmt.Errorf("%s: no such directory, nor a parent holding treetx's names for it", dir)
}

// classify reads the names beside n.Dir and its journal, under a lock the
// caller holds, and decides what recovery does.
func classify(n txn.Names) (*Report, error) {
	r := &Report{Dir: n.Dir, names: n}
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
	j, jerr := txn.ReadJournal(n.Path(n.Journal))
	switch {
	case jerr == nil:
		r.Journal = j
		r.State = StateNeedsRecovery
		who := fmt.Sprintf("transaction %s (pid %d on %s, %s, since %s)", j.ID, j.PID, j.Host, strings.Join(j.Command, " "), j.Start.Format("2006-01-02T15:04:05Z07:00"))
		switch j.Phase {
		case txn.PhaseSnapshot:
			r.Found = "an interrupted " + who + " that was still building its shadow"
			r.Action = "drop the shadow (the directory was never touched)"
		case txn.PhaseRunning:
			r.Found = "an interrupted " + who + " whose command had not finished"
			r.Action = "roll back to the tree from before the transaction"
		case txn.PhaseRollback:
			r.Found = "an interrupted rollback of " + who
			r.Action = "finish the rollback"
		case txn.PhaseCommit:
			r.Found = "an interrupted commit of " + who
			r.Action = "finish the commit (the new tree is durable)"
		}
		return r, nil
	case !errors.Is(jerr, fs.ErrNotExist):
		r.State = StateNeedsPerson
		r.Found = fmt.Sprintf("%v; nothing done: inspect it, and the names %s%s.* beside it", jerr, txn.Prefix, n.Base)
		return r, nil
	}
	if c := present[txn.KindComplete]; len(c) > 0 {
		r.State = StateNeedsPerson
		r.Found = fmt.Sprintf("%s exists but no journal claims it, so it was not made by treetx and is never installed; move it away", n.Path(n.Complete))
		return r, nil
	}
	for _, k := range []txn.Kind{txn.KindIncomplete, txn.KindJournalTmp, txn.KindMeta, txn.KindRemoving} {
		r.garbage = append(r.garbage, present[k]...)
	}
	if len(r.garbage) == 0 {
		r.State = StateIdle
		r.Found = "no transaction"
		return r, nil
	}
	r.State = StateNeedsRecovery
	r.Found = fmt.Sprintf("leftovers of finished or abandoned transactions: %s", strings.Join(r.garbage, ", "))
	r.Action = "remove them (the directory is not involved)"
	return r, nil
}

func readNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.Readdirnames(-1)
}
