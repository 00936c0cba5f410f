package protocol

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fswatch"
	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/nest"
	"github.com/treetx/treetx/lock"
	"github.com/treetx/treetx/snapshot"
)

// Options configures a transaction. They are txn.Options, which documents
// them, field for field in the same order: txn converts one into the other.
type Options struct {
	Exclude          []string
	Copy             []string
	NoCVSCopies      bool
	LockTimeout      time.Duration
	NoWait           bool
	Command          []string
	FS               fsys.FS
	Progress         Progress
	Locked           func()
	Logger           *slog.Logger
	AllowOwnerChange bool
	DeferRemoval     bool
	FullCheck        bool
	Mode             Mode
}

// Tx is a transaction on one directory. It holds the directory's exclusive
// lock from Begin until Commit or Rollback returns.
type Tx struct {
	n       layout.Names
	fs      fsys.FS
	lk      *lock.Lock
	pfd     int // the parent directory, open
	j       layout.Journal
	log     *slog.Logger
	leftOut []string
	deferRm bool
	garbage []string // trees named for removal, when deferRm
	done    bool
	// enter, if set, gives each goroutine that deletes a tree the identity
	// the transaction is finished with (see Finish).
	enter func() error
	// progress reports long phases (Options.Progress); linked is how many
	// files the shadow links, when this process built it.
	progress Progress
	linked   int64

	// watch sees which files are touched from the build on; index finds
	// their manifest records. Both nil without a watch.
	watch *fswatch.Watch
	index *snapshot.Index
	// touched lists the inodes to check at the end (sorted), once the watch
	// is stopped; all is set where every file must be checked.
	touched []uint64
	all     bool
	// started is the journal's modification time once it says "running"
	// (B8), as the file system keeps time: every change the command makes
	// is later (see unchanged).
	started unix.Timespec
	// noUnchanged keeps Rollback from ending an unchanged directory as a
	// commit does: the record of a group whose other trees could not all
	// be rolled back must say rollback (see Group.Rollback).
	noUnchanged bool
}

// Begin locks dir (waiting as opts.LockTimeout says, or until ctx is
// done), builds its shadow, makes the shadow durable and records the
// transaction as running: steps B1 to B8. dir may be a symlink: it is
// resolved once, and the transaction is on the directory it names. On error
// nothing is left behind and the lock is released.
func Begin(ctx context.Context, dir string, opts Options) (tx *Tx, err error) {
	n, err := resolve(dir)
	if err != nil {
		return nil, err
	}
	// B1: lock, and record the holder; and keep out the transactions and
	// readers of every tree inside dir or containing it.
	lk, err := lock.Acquire(ctx, n.Path(n.Lock), lockRequest(n, opts).Options)
	if opts.Locked != nil {
		opts.Locked()
	}
	if err != nil {
		return nil, err
	}
	return beginLocked(ctx, n, lk, opts, nil)
}

// resolve resolves dir for a transaction, and refuses it inside a
// transaction that holds it or a tree inside it: the lock would wait for
// this process's own ancestor (txn.Run joins instead).
func resolve(dir string) (layout.Names, error) {
	n, err := layout.Resolve(dir, layout.ResolveOptions{Use: layout.ForTransaction})
	if err != nil {
		return n, err
	}
	if t, err := nest.Join(nest.FromEnv(layout.LockOf), n.Dir, lock.Exclusive); err != nil || t != nil {
		if err == nil {
			err = &nest.Error{Dir: n.Dir, Held: *t, Why: "held by an enclosing transaction, which a new one cannot wait for (treetx run joins it)"}
		}
		return n, err
	}
	return n, nil
}

// lockRequest is the lock a transaction on n takes (B1).
func lockRequest(n layout.Names, opts Options) lock.Request {
	return lock.Request{Path: n.Path(n.Lock), Options: lock.Options{
		Mode: lock.Exclusive, Timeout: opts.lockTimeout(), Gate: n.Path(n.Gate), Self: lock.Holder{Command: opts.command()}, Tree: n.Dir,
	}}
}

// command is what the journal and the lock file record as the command.
func (o *Options) command() []string {
	if o.Command == nil {
		return os.Args
	}
	return o.Command
}

// beginLocked performs B2 to B8 on n under lk, the lock B1 took; group, if
// set, is the transaction's group, which its journal records. On error
// nothing is left behind and lk is released.
func beginLocked(ctx context.Context, n layout.Names, lk *lock.Lock, opts Options, group *layout.Group) (tx *Tx, err error) {
	cmd := opts.command()
	tx = newTx(n, lk, opts.FS, opts.Logger)
	tx.j.Group = group
	tx.deferRm, tx.progress = opts.DeferRemoval, opts.Progress
	defer func() {
		if err != nil {
			err = errors.Join(err, tx.abandon())
			tx = nil
		}
	}()
	if tx.pfd, err = n.OpenParent(); err != nil {
		return tx, err
	}
	if err := tx.checkClean(); err != nil { // B2
		return tx, err
	}
	if err := CheckAncestors(n); err != nil {
		return tx, err
	}
	holder := lock.Holder{Command: cmd}
	if h, herr := lock.ReadHolder(n.Path(n.Lock)); herr == nil && h != nil {
		holder = *h
	}
	if tx.j.ID, err = layout.NewID(); err != nil {
		return tx, err
	}
	tx.j.Version, tx.j.PID, tx.j.Host, tx.j.User = 1, os.Getpid(), holder.Host, holder.User
	if group != nil {
		tx.j.Version = 2
	}
	tx.j.Owner = uint32(os.Geteuid())
	tx.j.Command, tx.j.Start = cmd, time.Now().UTC().Truncate(time.Millisecond)

	var st unix.Stat_t
	if err := unix.Stat(n.Dir, &st); err != nil {
		return tx, fmt.Errorf("stat %s: %w", n.Dir, err)
	}
	tx.j.Dir = layout.IDOf(&st)
	if dirfd, err := tx.chooseMode(opts); err != nil {
		return tx, err
	} else if dirfd >= 0 {
		defer unix.Close(dirfd)
		return tx, tx.beginSnapshot(dirfd) // B3..B8 in snapshot mode
	}
	// Step: create the shadow root and record its inode in the journal.
	tx.step("B3", "mkdir shadow", n.Incomplete)
	if err := tx.fs.Mkdirat(tx.pfd, n.Incomplete, 0o700); err != nil {
		return tx, fmt.Errorf("create shadow %s: %w", n.Path(n.Incomplete), err)
	}
	if err := unix.Fstatat(tx.pfd, n.Incomplete, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return tx, fmt.Errorf("stat %s: %w", n.Path(n.Incomplete), err)
	}
	tx.j.Shadow = layout.IDOf(&st)
	if err := tx.recordSubvols(); err != nil {
		return tx, err
	}
	if err := tx.cover(); err != nil {
		return tx, err
	}
	if err := tx.setPhase("B4", layout.PhaseSnapshot); err != nil {
		return tx, err
	}
	if err := tx.build(ctx, opts); err != nil {
		return tx, err
	}
	// Step: the shadow and its manifest are durable before it is complete.
	tx.step("B6", "syncfs", n.Parent)
	if err := tx.fs.Syncfs(tx.pfd); err != nil {
		return tx, fmt.Errorf("make shadow durable: syncfs %s: %w", n.Parent, err)
	}
	tx.step("B7", "rename", n.Complete)
	if err := tx.fs.Renameat2(tx.pfd, n.Incomplete, tx.pfd, n.Complete, unix.RENAME_NOREPLACE); err != nil {
		return tx, fmt.Errorf("rename %s to %s: %w", n.Path(n.Incomplete), n.Complete, err)
	}
	if err := tx.fsyncParent("B7"); err != nil {
		return tx, err
	}
	if err := tx.setPhase("B8", layout.PhaseRunning); err != nil {
		return tx, err
	}
	if err := unix.Fstatat(tx.pfd, n.Journal, &st, unix.AT_SYMLINK_NOFOLLOW); err == nil {
		tx.started = st.Mtim
	}
	return tx, nil
}

// cover extends the lock to the shadow, which a rollback puts in the tree's
// place: a transaction on a tree inside that finds it there waits too.
func (tx *Tx) cover() error {
	fd, err := unix.Openat(tx.pfd, tx.n.Incomplete, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open shadow %s: %w", tx.n.Path(tx.n.Incomplete), err)
	}
	defer unix.Close(fd)
	return tx.lk.Cover(fd)
}

// CheckAncestors refuses a transaction (or a lock) inside a tree that an
// interrupted transaction left half done: that tree's recovery may put back
// its shadow, and with it undo what this one commits. Under a lock taken
// with lock.Options.Tree no transaction on such a tree is live, so a journal
// beside one is a crash's.
func CheckAncestors(n layout.Names) error {
	var st unix.Stat_t
	if err := unix.Stat(n.Dir, &st); err != nil {
		return fmt.Errorf("stat %s: %w", n.Dir, err)
	}
	for dir := n.Parent; dir != "/"; dir = filepath.Dir(dir) {
		var ast unix.Stat_t
		if unix.Stat(dir, &ast) != nil || ast.Dev != st.Dev {
			return nil
		}
		an, err := layout.NamesFor(dir)
		if err != nil {
			continue
		}
		if _, err := os.Lstat(an.Path(an.Journal)); err == nil {
			return fmt.Errorf("%s: %w: it lies inside %s, which %s records as half changed by an interrupted transaction; run: treetx recover %s", n.Dir, ErrNeedsRecovery, dir, an.Path(an.Journal), dir)
		}
	}
	return nil
}

// lockTimeout is the wait for the lock in lock.Options's terms (negative:
// until had; zero: once).
func (o *Options) lockTimeout() time.Duration {
	switch {
	case o.NoWait:
		return 0
	case o.LockTimeout <= 0:
		return -1
	}
	return o.LockTimeout
}

func newTx(n layout.Names, lk *lock.Lock, fs fsys.FS, log *slog.Logger) *Tx {
	if fs == nil {
		fs = fsys.OS{}
	}
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Tx{n: n, fs: fs, lk: lk, pfd: -1, log: log, all: true}
}

// build fills the shadow and writes the manifest.
func (tx *Tx) build(ctx context.Context, opts Options) error {
	n := tx.n
	// The trees a transaction inside named for removal are garbage that
	// its detached cleaner deletes, without a lock: left out, not reported.
	exclude, err := snapshot.NewMatcher(append(append(snapshot.DefaultExcludes(), layout.NestedGarbage()...), opts.Exclude...)...)
	if err != nil {
		return fmt.Errorf("--exclude: %w", err)
	}
	copies := opts.Copy
	if !opts.NoCVSCopies {
		if fi, err := os.Stat(n.Dir + "/CVSROOT"); err == nil && fi.IsDir() {
			copies = append(copies, snapshot.CVSCopies()...)
		}
	}
	// The lock and gate of a tree inside get copies, not links: a link
	// would give them two, and such a lock is refused (and a rollback
	// puts the copies back, while no transaction inside is live).
	copyM, err := snapshot.NewMatcher(append(copies, layout.NestedCopies()...)...)
	if err != nil {
		return fmt.Errorf("--copy: %w", err)
	}
	// What an unfinished transaction on a tree inside leaves there: the
	// shadow must not take it in (a rollback would put back what that
	// tree's recovery must find as it is).
	unfinished, err := snapshot.NewMatcher(layout.NestedUnfinished()...)
	if err != nil {
		return fmt.Errorf("--copy: %w", err)
	}
	tx.step("B5", "create manifest", n.Meta)
	if err := tx.fs.Unlinkat(tx.pfd, n.Meta, 0); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove stale %s: %w", n.Path(n.Meta), err)
	}
	mfd, err := tx.fs.Create(tx.pfd, n.Meta, 0o600)
	if err != nil {
		return fmt.Errorf("create manifest %s: %w", n.Path(n.Meta), err)
	}
	defer unix.Close(mfd)
	mw := snapshot.NewManifestWriter(fdWriter{tx.fs, mfd})
	if !opts.FullCheck {
		// The watch starts before the first link, so that no write to a
		// linked file can fall between its record and the watch; the
		// attribute changes the build's own links make are left out.
		w, err := fswatch.Start(tx.pfd, fswatch.Content)
		if err != nil {
			tx.log.Debug("no file-system watch: every linked file is checked at the end", "err", err)
		} else {
			tx.watch = w
			mw.KeepIndex()
		}
	}
	tx.step("B5", "build shadow", n.Incomplete)
	stats, err := snapshot.Build(n.Dir, tx.pfd, n.Incomplete, snapshot.Options{
		Context: ctx, FS: tx.fs, Exclude: exclude, Copy: copyM, Manifest: mw, Refuse: unfinished,
		Progress: tx.progress.Of(ProgressBuild, 0), Logger: tx.log, AllowOwnerChange: opts.AllowOwnerChange,
	})
	if errors.Is(err, snapshot.ErrRefusedEntry) {
		return fmt.Errorf("%s: %w: %v: a transaction on a tree inside it is unfinished; recover it first (treetx recover --scan %s)", n.Dir, ErrNeedsRecovery, err, n.Dir)
	}
	if err != nil {
		return err
	}
	tx.linked = stats.Links
	for _, rel := range stats.Excluded {
		if _, k, _ := layout.ParseName(filepath.Base(rel)); k != layout.KindRemoving {
			tx.leftOut = append(tx.leftOut, rel)
		}
	}
	if err := mw.Close(); err != nil {
		return fmt.Errorf("write manifest %s: %w", n.Path(n.Meta), err)
	}
	if tx.watch != nil {
		err := tx.watch.Add(fswatch.Attributes)
		if tx.index = mw.Index(); err == nil && tx.index == nil {
			err = errors.New("manifest too big to index")
		}
		if err != nil {
			tx.log.Debug("no file-system watch: every linked file is checked at the end", "err", err)
			tx.watch.Close()
			tx.watch, tx.index = nil, nil
		}
	}
	tx.log.Debug("shadow built", "dirs", stats.Dirs, "links", stats.Links, "copies", stats.Copies, "symlinks", stats.Symlinks, "left out", len(stats.Excluded))
	return nil
}

// checkClean refuses a directory whose parent holds leftovers of an
// unfinished transaction, or shadow names treetx did not make, and clears
// stale files no journal refers to.
func (tx *Tx) checkClean() error {
	n := tx.n
	if err := checkMarker(tx.fs, tx.pfd, n, tx.j.Group); err != nil {
		return err
	}
	if _, err := os.Lstat(n.Path(n.Journal)); err == nil {
		return fmt.Errorf("%s: %w: %s records an unfinished transaction; run: treetx recover %s", n.Dir, ErrNeedsRecovery, n.Path(n.Journal), n.Dir)
	}
	for _, name := range []string{n.Incomplete, n.Complete} {
		if _, err := os.Lstat(n.Path(name)); err == nil {
			return fmt.Errorf("%s: %w: %s exists but no journal claims it (not made by a treetx transaction); move it away, or run: treetx recover %s", n.Dir, ErrNeedsRecovery, n.Path(name), n.Dir)
		}
	}
	for _, name := range []string{n.JournalTmp, n.Meta} {
		err := tx.fs.Unlinkat(tx.pfd, name, 0)
		if errors.Is(err, unix.EISDIR) {
			// Not treetx's (it makes files there), but under its name:
			// garbage, named for removal and deleted with the rest.
			_, err = n.NameForRemoval(tx.fs, tx.pfd, name, "", tx.stepper("B2"))
		}
		if err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove stale %s: %w", n.Path(name), err)
		}
	}
	return nil
}

// Dir is the directory of the transaction (resolved, absolute).
func (tx *Tx) Dir() string { return tx.n.Dir }

// ID is the transaction's id, as its journal records it.
func (tx *Tx) ID() string { return tx.j.ID }

// LockFile returns a new descriptor of the transaction's lock, for a child
// process to inherit (exec.Cmd.ExtraFiles): the lock then stays held until
// the child and every descendant that inherited it have exited, even if this
// process is killed. The caller closes it after starting the child.
func (tx *Tx) LockFile() (*os.File, error) { return tx.lk.Inheritable() }

// Inheritable returns what a command run inside the transaction inherits:
// the lock file, then the descriptors of the directory locks that keep the
// trees inside and around the directory out (lock.Lock.InheritableDirs);
// and the entry of nest.Env that names the directory, the lock file being
// descriptor first.
func (tx *Tx) Inheritable(first int) ([]*os.File, nest.Tree, error) {
	files, err := tx.lk.InheritableAll()
	if err != nil {
		return nil, nest.Tree{}, err
	}
	own := nest.Tree{FD: first, Mode: lock.Exclusive.String(), Dir: tx.n.Dir, Dev: tx.j.Dir.Dev, Ino: tx.j.Dir.Ino}
	return files, own, nil
}

// step logs a step of the protocol: id is its name in docs/protocol.md
// (B1..B8, C1..C8, R1..R7).
func (tx *Tx) step(id, what, name string) {
	tx.log.Debug("step", "step", id, "do", what, "name", name)
}

// stepper logs what a function of package layout does as step id.
func (tx *Tx) stepper(id string) layout.Step {
	return func(what, name string) { tx.step(id, what, name) }
}

// setPhase writes the journal with phase p: step id.
func (tx *Tx) setPhase(id string, p layout.Phase) error {
	tx.step(id, "journal "+string(p), tx.n.Journal)
	tx.j.Phase = p
	return layout.WriteJournal(tx.fs, tx.pfd, tx.n, &tx.j)
}

func (tx *Tx) fsyncParent(id string) error {
	tx.step(id, "fsync", tx.n.Parent)
	if err := tx.fs.Fsync(tx.pfd); err != nil {
		return fmt.Errorf("fsync %s: %w", tx.n.Parent, err)
	}
	return nil
}

// close releases the lock (C8) and the parent's descriptor.
func (tx *Tx) close() error {
	tx.done = true
	if tx.watch != nil {
		tx.watch.Close()
		tx.watch = nil
	}
	if tx.pfd >= 0 {
		unix.Close(tx.pfd)
		tx.pfd = -1
	}
	if tx.lk == nil {
		return nil // Finish's: the caller holds the lock, and releases it
	}
	return tx.lk.Release()
}

// abandon undoes a Begin that failed: the directory was never touched, so
// the shadow (only if it is the one this transaction made), its manifest
// and the journal are removed.
func (tx *Tx) abandon() error {
	defer tx.close()
	if tx.pfd < 0 || tx.j.Shadow.Ino == 0 {
		return nil
	}
	tx.deferRm = false // the caller gets no Result to find the garbage in
	return tx.discard()
}

// fdWriter writes to a descriptor through the seam.
type fdWriter struct {
	fs fsys.FS
	fd int
}

// Write writes p whole through the seam.
func (w fdWriter) Write(p []byte) (int, error) {
	if err := w.fs.Write(w.fd, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// checkMarker refuses a transaction beside a marker (layout.Names.Group) of
// a transaction over several trees that is not over: its recovery still has
// to reach the other trees through it. A marker of a group that is over, or
// one treetx did not write, is garbage and goes (B2). own is the group of
// the transaction beginning, whose own marker stays.
func checkMarker(fs fsys.FS, pfd int, n layout.Names, own *layout.Group) error {
	g, owner, err := layout.ReadMarker(n)
	switch {
	case errors.Is(err, iofs.ErrNotExist):
		return nil
	case err == nil && own != nil && g.ID == own.ID:
		return nil
	case err == nil:
		unfinished, uerr := g.Unfinished(owner)
		if uerr != nil || unfinished {
			return fmt.Errorf("%s: %w: %s records that it is one of the trees of transaction %s over %v, which is not over; run: treetx recover %s", n.Dir, ErrNeedsRecovery, n.Path(n.Group), g.ID, g.Trees, g.Record())
		}
	}
	err = fs.Unlinkat(pfd, n.Group, 0)
	if errors.Is(err, unix.EISDIR) {
		_, err = n.NameForRemoval(fs, pfd, n.Group, "", nil)
	}
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove stale %s: %w", n.Path(n.Group), err)
	}
	return nil
}
