package integration

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// The kill torture: `treetx run DIR -- CHILD` is killed with SIGKILL at a
// random instant, over and over, and after `treetx recover DIR` the tree
// must be exactly the tree from before or (once the commit could have
// begun) exactly the tree CHILD leaves. CHILD is this test binary: with
// TREETX_TORTURE_DIR set, TestMain runs tortureChildMain instead of the
// tests.
const (
	tortureEnvDir  = "TREETX_TORTURE_DIR"  // the tree CHILD changes
	tortureEnvOut  = "TREETX_TORTURE_OUT"  // where CHILD writes its pid and its markers
	tortureEnvFail = "TREETX_TORTURE_FAIL" // "1": CHILD exits 1 after its changes
	tortureEnvSeed = "TREETX_TORTURE_SEED"
	tortureEnvN    = "TREETX_TORTURE_ROUNDS"

	tortureBase     = "tree"
	tortureLock     = ".#treetx." + tortureBase + ".lock"
	tortureGate     = ".#treetx." + tortureBase + ".gate"
	tortureRemoving = ".#treetx." + tortureBase + ".removing."
)

// tortureChildMain is CHILD: it writes its pid (atomically, outside the
// tree, in OUT), changes the tree (tortureChange), and then either creates
// OUT/failed and exits 1 (TREETX_TORTURE_FAIL=1), or creates the marker
// OUT/done as its very last action and exits 0: once OUT/done exists, the
// commit may have begun. It reports whether it ran.
func tortureChildMain() (bool, int) {
	dir, ok := os.LookupEnv(tortureEnvDir)
	if !ok {
		return false, 0
	}
	out := os.Getenv(tortureEnvOut)
	pidTmp := filepath.Join(out, "pid.tmp")
	if err := os.WriteFile(pidTmp, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "torture child: %v\n", err)
		return true, 2
	}
	if err := os.Rename(pidTmp, filepath.Join(out, "pid")); err != nil {
		fmt.Fprintf(os.Stderr, "torture child: %v\n", err)
		return true, 2
	}
	if _, err := tortureChange(dir); err != nil {
		fmt.Fprintf(os.Stderr, "torture child: %v\n", err)
		return true, 2
	}
	if os.Getenv(tortureEnvFail) == "1" {
		os.WriteFile(filepath.Join(out, "failed"), nil, 0o644)
		return true, 1
	}
	f, err := os.OpenFile(filepath.Join(out, "done"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintf(os.Stderr, "torture child: %v\n", err)
		return true, 2
	}
	f.Close()
	return true, 0
}

// pathHash is a fixed pseudo-random number for a path: the tree and what
// CHILD does to it are functions of it.
func pathHash(p string) uint32 {
	h := fnv.New32a()
	h.Write([]byte(p))
	return h.Sum32()
}

// Fixed times: the template's entries get times from tortureT0, what CHILD
// writes gets times from tortureT1, so both trees capture the same every
// time, mtimes included.
var (
	tortureT0 = time.Date(2011, 3, 4, 5, 6, 7, 0, time.UTC).UnixNano()
	tortureT1 = time.Date(2022, 8, 9, 10, 11, 12, 0, time.UTC).UnixNano()
)

// setTimes gives root/rel its fixed times, a function of rel.
func setTimes(root, rel string, base int64) error {
	return setTimesAs(filepath.Join(root, filepath.FromSlash(rel)), rel, base)
}

// setTimesAs gives p the fixed times of rel.
func setTimesAs(p, rel string, base int64) error {
	h := pathHash(rel)
	m := base + int64(h%100000)*int64(time.Second) + int64(h%1000)
	ts := []unix.Timespec{unix.NsecToTimespec(m + int64(time.Hour)), unix.NsecToTimespec(m)}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &fs.PathError{Op: "utimensat", Path: p, Err: err}
	}
	return nil
}

// tortureContent is the content of the file at rel, version v.
func tortureContent(rel string, v int) []byte {
	h := pathHash(rel + strconv.Itoa(v))
	n := 30 + int(h%970)
	if h%25 == 0 {
		n = 16 << 10
	}
	line := fmt.Sprintf("%s v%d %08x\n", rel, v, h)
	return bytes.Repeat([]byte(line), n/len(line)+1)[:n]
}

// The template's shape. Creating an inode (mkdir, symlink, a new file) is
// what costs, in the shadow, in CHILD and in a rebuild: 0.1 to 1 ms each on
// the ext4 of a 2-core VM, against 15 µs for a hard link. So the tree has
// few directories and symlinks, and a few hundred files.
const (
	tortureTops    = 3  // top-level directories
	tortureSubs    = 3  // subdirectories of each
	tortureFilesIn = 18 // files in every directory
	tortureNewDirs = 2  // directories CHILD creates
	tortureNewIn   = 3  // files in each
)

// buildTortureTree creates the template tree at root (which must not
// exist): 13 directories two levels deep, plus an empty one, one directory
// setgid, some 0750 or 0700; 234 files of 30 bytes to 16 KiB with modes
// 0644, 0600, 0640, 0755 and 0444; 3 symlinks (one dangling); every entry
// with a fixed mtime.
//
// If store is not "", the files are hard links to files kept there (made
// the first time): a link is much cheaper than a new inode. Nothing writes
// them in place (CHILD replaces files by rename-over), and their modes and
// times, which CHILD may change through the shared inode, are set again.
func buildTortureTree(root, store string) error {
	dirs := []string{"."}
	for i := range tortureTops {
		d := fmt.Sprintf("d%d", i)
		dirs = append(dirs, d)
		for j := range tortureSubs {
			dirs = append(dirs, fmt.Sprintf("%s/s%d", d, j))
		}
	}
	type node struct {
		rel  string
		mode fs.FileMode
	}
	var nodes []node // directories and files, for chmod and times
	fileModes := []fs.FileMode{0o644, 0o644, 0o644, 0o600, 0o640, 0o755, 0o444}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(root, d), 0o700); err != nil {
			return err
		}
		mode := fs.FileMode(0o755)
		switch h := pathHash(d) % 10; {
		case d == "d1":
			mode = fs.ModeSetgid | 0o775
		case h == 0:
			mode = 0o750
		case h == 1:
			mode = 0o700
		}
		nodes = append(nodes, node{d, mode})
		for f := range tortureFilesIn {
			rel := path.Join(d, fmt.Sprintf("f%02d.txt", f))
			if err := makeFile(filepath.Join(root, rel), store, rel); err != nil {
				return err
			}
			nodes = append(nodes, node{rel, fileModes[pathHash(rel)%uint32(len(fileModes))]})
		}
	}
	if err := os.Mkdir(filepath.Join(root, "d0", "empty"), 0o700); err != nil {
		return err
	}
	nodes = append(nodes, node{"d0/empty", 0o755})
	links := map[string]string{"d0/link": "s0/f00.txt", "d2/link": "../d1/s1", "dangling": "no/such/file"}
	for l, target := range links {
		if err := os.Symlink(target, filepath.Join(root, l)); err != nil {
			return err
		}
		if err := setTimes(root, l, tortureT0); err != nil {
			return err
		}
	}
	for _, n := range nodes {
		if err := os.Chmod(filepath.Join(root, n.rel), n.mode); err != nil {
			return err
		}
	}
	// Children before parents: deepest paths first.
	slices.SortStableFunc(nodes, func(a, b node) int { return strings.Count(b.rel, "/") - strings.Count(a.rel, "/") })
	for _, n := range nodes {
		if n.rel == "." {
			continue
		}
		if err := setTimes(root, n.rel, tortureT0); err != nil {
			return err
		}
	}
	return setTimes(root, ".", tortureT0)
}

// makeFile creates the template's file rel at p, as a link to its copy in
// store if store is not "".
func makeFile(p, store, rel string) error {
	if store == "" {
		return os.WriteFile(p, tortureContent(rel, 0), 0o600)
	}
	kept := filepath.Join(store, strings.ReplaceAll(rel, "/", "%"))
	err := os.Link(kept, p)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.WriteFile(kept, tortureContent(rel, 0), 0o600); err != nil {
			return err
		}
		err = os.Link(kept, p)
	}
	return err
}

// childStats counts what tortureChange did.
type childStats struct {
	rewritten, deleted, chmodded, moved, relinked  int
	dirsRemoved, dirsChmodded, dirsMade, filesMade int
}

func (s childStats) String() string {
	return fmt.Sprintf("rewrites %d files by rename-over, deletes %d, chmods %d, moves %d, replaces %d symlinks, removes %d directories, chmods %d, creates %d with %d files",
		s.rewritten, s.deleted, s.chmodded, s.moved, s.relinked, s.dirsRemoved, s.dirsChmodded, s.dirsMade, s.filesMade)
}

// tortureChange is what CHILD does to the tree at root, a function of the
// tree: it rewrites about half the files by rename-over (write a temporary
// file, rename it over the old one), deletes some, chmods some, moves some,
// replaces symlinks, removes whole directories, chmods some directories,
// creates new directories with files, and finally gives every directory a
// fixed time (new files get theirs before they are renamed into place). It
// never writes an existing file in place.
func tortureChange(root string) (childStats, error) {
	var st childStats
	type ent struct {
		rel string
		typ fs.FileMode
	}
	var ents []ent
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		ents = append(ents, ent{filepath.ToSlash(rel), d.Type()})
		return nil
	})
	if err != nil {
		return st, err
	}
	var removed []string
	for _, e := range ents {
		if e.rel == "." || slices.ContainsFunc(removed, func(r string) bool { return strings.HasPrefix(e.rel, r+"/") }) {
			continue
		}
		full := filepath.Join(root, e.rel)
		h := pathHash("op " + e.rel)
		switch e.typ {
		case fs.ModeDir:
			switch {
			case strings.Count(e.rel, "/") >= 1 && h%100 < 15:
				if err := os.RemoveAll(full); err != nil {
					return st, err
				}
				removed = append(removed, e.rel)
				st.dirsRemoved++
			case h%100 < 40:
				if err := os.Chmod(full, 0o700|fs.FileMode(h%2)*0o050); err != nil {
					return st, err
				}
				st.dirsChmodded++
			}
		case fs.ModeSymlink:
			if h%3 != 0 {
				tmp := full + ".tmp"
				if err := os.Symlink("../elsewhere/"+e.rel, tmp); err != nil {
					return st, err
				}
				if err := setTimesAs(tmp, e.rel, tortureT1); err != nil {
					return st, err
				}
				if err := os.Rename(tmp, full); err != nil {
					return st, err
				}
				st.relinked++
			}
		case 0:
			switch p := h % 100; {
			case p < 55:
				mode := fs.FileMode(0o644)
				if h%7 == 0 {
					mode = 0o600
				}
				if err := rewrite(root, e.rel, tortureContent(e.rel, 1), mode); err != nil {
					return st, err
				}
				st.rewritten++
			case p < 65:
				if err := os.Remove(full); err != nil {
					return st, err
				}
				st.deleted++
			case p < 75:
				if err := os.Chmod(full, 0o600|fs.FileMode(h%2)*0o044); err != nil {
					return st, err
				}
				st.chmodded++
			case p < 80:
				if err := os.Rename(full, full+".moved"); err != nil {
					return st, err
				}
				st.moved++
			}
		}
	}
	for i := range tortureNewDirs {
		d := fmt.Sprintf("d%d/new", i)
		if err := os.Mkdir(filepath.Join(root, d), 0o755); err != nil {
			return st, err
		}
		st.dirsMade++
		for f := range tortureNewIn {
			rel := fmt.Sprintf("%s/n%d.txt", d, f)
			if err := rewrite(root, rel, tortureContent(rel, 1), 0o644); err != nil {
				return st, err
			}
			st.filesMade++
		}
	}
	var dirs []string
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return err
	})
	if err != nil {
		return st, err
	}
	slices.Reverse(dirs) // children before parents
	for _, d := range dirs {
		rel, err := filepath.Rel(root, d)
		if err != nil {
			return st, err
		}
		if err := setTimes(root, filepath.ToSlash(rel), tortureT1); err != nil {
			return st, err
		}
	}
	return st, nil
}

// rewrite replaces the file root/rel by a new one with data, mode and the
// fixed times of rel, by rename-over.
func rewrite(root, rel string, data []byte, mode fs.FileMode) error {
	p := filepath.Join(root, filepath.FromSlash(rel))
	tmp := filepath.Join(filepath.Dir(p), ".tmp."+filepath.Base(p))
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	err = errors.Join(err, f.Chmod(mode), f.Close())
	if err != nil {
		return err
	}
	if err := setTimesAs(tmp, rel, tortureT1); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// torture is the state of one TestKillTorture.
type torture struct {
	seed          uint64
	parent, tree  string
	out           string // CHILD's pid and markers; treetx's output
	store         string // the template's files, linked into the tree
	self          string
	before, after treeimage.Image
	clean         bool // the tree is the template: no need to rebuild it
	// The last rounds that ran to the end: how long treetx ran, and how
	// long it ran on after CHILD exited (its commit or rollback).
	runs, tails []time.Duration
}

// A round's plan, drawn from the seed and the round's number.
type tortPlan struct {
	target string // "none", "treetx", "child" or "group"
	// afterChild: the kill instant is drawn from the time treetx runs on
	// after CHILD exits (its commit or rollback), counted from CHILD's
	// exit; otherwise from the whole run, counted from treetx's start.
	afterChild bool
	frac       float64 // where in that span: [0, 1.2) of a typical one
	fail       bool    // CHILD exits 1 after its changes
}

func (tt *torture) plan(round int) tortPlan {
	r := rand.New(rand.NewPCG(tt.seed, uint64(round)))
	var p tortPlan
	switch x := r.IntN(100); {
	case x < 10:
		p.target = "none"
	case x < 45:
		p.target = "treetx"
	case x < 75:
		p.target = "group"
	default:
		p.target = "child"
	}
	// Killing CHILD after it exited does nothing.
	p.afterChild = p.target != "child" && r.IntN(2) == 0
	p.frac = 1.2 * r.Float64()
	if p.afterChild {
		// Denser early: the commit point and the rollback's exchange
		// come first, clearing up after them takes the rest.
		p.frac *= p.frac / 1.2
	}
	p.fail = r.IntN(5) == 0
	return p
}

// delay is when p kills, after treetx's start or CHILD's exit.
func (tt *torture) delay(p tortPlan) time.Duration {
	span := median(tt.runs)
	if p.afterChild {
		span = median(tt.tails)
	}
	return time.Duration(p.frac * float64(span))
}

// learn records how long a round that ran to the end took.
func (tt *torture) learn(r *tortRound) {
	if r.status.Signaled() || r.killedSomething() || r.childEnd == 0 {
		return
	}
	const keep = 21
	tt.runs = append(tt.runs, r.runTime)
	tt.tails = append(tt.tails, r.runTime-r.childEnd)
	if len(tt.runs) > keep {
		tt.runs, tt.tails = tt.runs[1:], tt.tails[1:]
	}
}

func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// What one round saw.
type tortRound struct {
	plan      tortPlan
	delay     time.Duration
	childEnd  time.Duration // when CHILD was seen to have exited, since treetx started; 0: not seen
	killed    bool          // the signal was sent
	killAt    time.Duration // since treetx started
	phase     string        // the journal's phase just before the kill
	childWas  string        // CHILD's state just before the kill
	status    syscall.WaitStatus
	marker    bool             // CHILD exited 0 (its marker exists)
	runTime   time.Duration    // treetx run, from start to exit
	times     [3]time.Duration // rebuilding the tree, recovering, checking
	beside    []string         // the names in the tree's parent when treetx exited
	recovered string           // recover's last output
	recCode   int
	recTries  int
	stderr    string // treetx run's
}

// outcome names what happened to treetx.
func (r *tortRound) outcome() string {
	if r.status.Signaled() {
		return "treetx died of " + r.status.Signal().String()
	}
	return fmt.Sprintf("treetx exited %d", r.status.ExitStatus())
}

// killedSomething: treetx died of SIGKILL, or CHILD did (treetx reports 137).
func (r *tortRound) killedSomething() bool {
	return r.status.Signaled() && r.status.Signal() == syscall.SIGKILL ||
		r.status.Exited() && r.status.ExitStatus() == 128+int(syscall.SIGKILL)
}

// TestKillTorture runs `treetx run` rounds on a tree of a few hundred
// files and SIGKILLs treetx, its command, or both (the process group) at a
// random instant of the snapshot, the command, or the commit or rollback;
// some rounds run to the end. After `treetx recover`, the tree must be the
// tree from before; or the tree the command leaves, which it must be if
// treetx exited 0, and may be if treetx was killed after the command had
// exited 0. Nothing may be left beside it but the lock file. The seed is
// printed; TREETX_TORTURE_SEED replays its plans (the instants of the kills
// depend on timing), TREETX_TORTURE_ROUNDS sets the number of rounds (40;
// 200 with TREETX_EXHAUSTIVE=1; 20 with -short). scripts/torture.sh runs
// many.
func TestKillTorture(t *testing.T) {
	rounds := 40
	switch {
	case testenv.Exhaustive():
		rounds = 200
	case testing.Short():
		rounds = 20
	}
	if s := os.Getenv(tortureEnvN); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", tortureEnvN, s)
		}
		rounds = n
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(tortureEnvSeed); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", tortureEnvSeed, s, err)
		}
		seed = v
	}
	t.Logf("seed %d (%s=%d replays it), %d rounds", seed, tortureEnvSeed, seed, rounds)

	// CHILD dies with treetx (Pdeathsig) and is then nobody's: as a
	// subreaper, this process gets it and reaps it (the machine's init may
	// not), and a killed round cannot leave a process behind.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		t.Fatalf("prctl(PR_SET_CHILD_SUBREAPER): %v", err)
	}
	t.Cleanup(func() { unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0) })

	tt := &torture{seed: seed, parent: t.TempDir(), out: t.TempDir(), store: t.TempDir(), self: self(t)}
	tt.tree = filepath.Join(tt.parent, tortureBase)
	tt.images(t)

	// How long rounds take, to place the kills; it is measured again as
	// the rounds that run to the end go.
	for i := range 6 {
		r := tt.round(t, tortPlan{target: "none", fail: i%2 == 1})
		if v, ended := tt.check(r); v != "" {
			t.Fatalf("a round without a kill failed: %s; recover exited %d: %s\n%s\ntreetx stderr:\n%s", r.outcome(), r.recCode, strings.TrimSpace(r.recovered), v, r.stderr)
		} else {
			tt.clean = ended == "before"
		}
		tt.learn(r)
	}
	t.Logf("treetx run takes %v, %v of it after CHILD exits (medians of 6 rounds without a kill)", median(tt.runs), median(tt.tails))

	start := time.Now()
	var kills, violations, afters int
	var runTotal time.Duration
	var times [3]time.Duration
	byPhase := map[string]int{}
	for i := range rounds {
		p := tt.plan(i)
		r := tt.round(t, p)
		tt.learn(r)
		runTotal += r.runTime
		if r.killedSomething() {
			kills++
			byPhase[fmt.Sprintf("%-6s %-8s child %s", p.target, r.phase, r.childWas)]++
		}
		v, ended := tt.check(r)
		for j := range times {
			times[j] += r.times[j]
		}
		if ended == "after" {
			afters++
		}
		tt.clean = v == "" && ended == "before"
		if v == "" {
			continue
		}
		violations++
		when := "no kill"
		if r.killed {
			from := "treetx's start"
			if p.afterChild {
				from = fmt.Sprintf("CHILD's exit (seen at %v)", r.childEnd.Round(time.Microsecond))
			}
			when = fmt.Sprintf("SIGKILL to %s at %v (planned: %v after %s; just before it, the journal's phase: %s, CHILD: %s)",
				p.target, r.killAt.Round(time.Microsecond), r.delay.Round(time.Microsecond), from, r.phase, r.childWas)
		}
		t.Errorf("violation: seed %d round %d: %s; CHILD fails: %v; %s; CHILD's exit-0 marker: %v; recover exited %d after %d tries: %s\n%s\ntreetx stderr:\n%s",
			seed, i, when, p.fail, r.outcome(), r.marker, r.recCode, r.recTries, strings.TrimSpace(r.recovered), v, r.stderr)
		tt.wipe(t)
	}
	elapsed := time.Since(start)
	keys := make([]string, 0, len(byPhase))
	for k := range byPhase {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	var sb strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&sb, "\n\t%6d  %s", byPhase[k], k)
	}
	per := func(d time.Duration) time.Duration { return (d / time.Duration(rounds)).Round(100 * time.Microsecond) }
	t.Logf("%d rounds in %v: %v per round (rebuilding the tree %v, treetx run %v, recover %v, check %v); %d ended as the new tree; kills by target, journal phase and CHILD's state just before:%s",
		rounds, elapsed.Round(time.Millisecond), per(elapsed), per(times[0]), per(runTotal), per(times[1]), per(times[2]), afters, sb.String())
	fmt.Printf("kills: %d, violations: %d\n", kills, violations)
}

// images builds the template once, and records it and what CHILD makes of
// it (CHILD's function run here, on a copy, without treetx).
func (tt *torture) images(t *testing.T) {
	t.Helper()
	scratch := filepath.Join(t.TempDir(), tortureBase)
	if err := buildTortureTree(scratch, ""); err != nil {
		t.Fatal(err)
	}
	tt.before = capture(t, scratch)
	st, err := tortureChange(scratch)
	if err != nil {
		t.Fatal(err)
	}
	tt.after = capture(t, scratch)
	t.Logf("the tree: %d entries; CHILD %v: %d differences", len(tt.before), st, len(tt.before.Diff(tt.after)))
	if err := buildTortureTree(tt.tree, tt.store); err != nil {
		t.Fatal(err)
	}
	treeimage.AssertEqual(t, "template", tt.before, "rebuilt", capture(t, tt.tree))
	tt.clean = true
}

// round runs treetx on the tree with CHILD, kills as p says, and recovers.
// The tree is rebuilt first unless the last round left it equal to the
// template (rolled back, and checked).
func (tt *torture) round(t *testing.T, p tortPlan) *tortRound {
	t.Helper()
	r := &tortRound{plan: p, delay: tt.delay(p)}
	tb := time.Now()
	for _, name := range []string{"pid", "pid.tmp", "done", "failed"} {
		if err := os.Remove(filepath.Join(tt.out, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Fatal(err)
		}
	}
	if !tt.clean {
		if err := os.RemoveAll(tt.tree); err != nil {
			t.Fatal(err)
		}
		if err := buildTortureTree(tt.tree, tt.store); err != nil {
			t.Fatal(err)
		}
	}
	tt.clean = false
	r.times[0] = time.Since(tb)
	errFile, err := os.Create(filepath.Join(tt.out, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer errFile.Close()

	cmd := exec.Command(treetxPath, "run", tt.tree, "--", tt.self)
	cmd.Env = append(os.Environ(), tortureEnvDir+"="+tt.tree, tortureEnvOut+"="+tt.out)
	if p.fail {
		cmd.Env = append(cmd.Env, tortureEnvFail+"=1")
	}
	cmd.Stdout, cmd.Stderr = errFile, errFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	childExit, stopWatch := watchExit(t, tt.out)
	defer stopWatch()
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start treetx: %v", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	// Kill at the planned instant, counted from now or from CHILD's exit.
	var killNow <-chan time.Time
	if p.target != "none" && !p.afterChild {
		killNow = time.After(r.delay)
	}
	hang := time.NewTimer(runTimeout)
	defer hang.Stop()
wait:
	for {
		select {
		case <-done:
			break wait
		case <-hang.C:
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
			t.Errorf("treetx ran %v and was killed: it hangs", runTimeout)
			break wait
		case at := <-childExit:
			r.childEnd = at.Sub(t0)
			if p.target != "none" && p.afterChild {
				killNow = time.After(r.delay - time.Since(at))
			}
		case <-killNow:
			killNow = nil
			if !tt.kill(r, cmd, done) {
				killNow = time.After(200 * time.Microsecond) // CHILD has not started: soon
				continue
			}
			r.killAt = time.Since(t0)
		}
	}
	r.runTime = time.Since(t0)
	r.status = cmd.ProcessState.Sys().(syscall.WaitStatus)
	reapOrphans(t, cmd.Process.Pid)
	r.marker = exists(filepath.Join(tt.out, "done"))
	if r.beside, err = readDirNames(tt.parent); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(errFile.Name())
	if err != nil {
		t.Fatal(err)
	}
	r.stderr = string(b)

	// CHILD may hold the lock a moment longer than treetx lives.
	tr := time.Now()
	defer func() { r.times[1] = time.Since(tr) }()
	deadline := time.Now().Add(time.Minute)
	for {
		r.recTries++
		c := exec.Command(treetxPath, "recover", tt.tree)
		out, err := c.CombinedOutput()
		r.recovered, r.recCode = string(out), c.ProcessState.ExitCode()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("treetx recover: %v", err)
		}
		if r.recCode != 75 || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	return r
}

// watchExit reports on the channel when CHILD's marker "done" or "failed"
// appears in out, the instant it exits: inotify, not polling, which would
// take CPU from treetx and CHILD. stop ends the watch.
func watchExit(t *testing.T, out string) (exited <-chan time.Time, stop func()) {
	t.Helper()
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		t.Fatalf("inotify_init1: %v", err)
	}
	if _, err := unix.InotifyAddWatch(fd, out, unix.IN_CREATE); err != nil {
		unix.Close(fd)
		t.Fatalf("inotify_add_watch %s: %v", out, err)
	}
	f := os.NewFile(uintptr(fd), "inotify") // non-blocking: Close ends a Read
	ch := make(chan time.Time, 1)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := f.Read(buf)
			if err != nil {
				return
			}
			now := time.Now()
			for b := buf[:n]; len(b) >= unix.SizeofInotifyEvent; {
				nameLen := int(binary.NativeEndian.Uint32(b[12:16]))
				name := string(bytes.TrimRight(b[unix.SizeofInotifyEvent:unix.SizeofInotifyEvent+nameLen], "\x00"))
				b = b[unix.SizeofInotifyEvent+nameLen:]
				if name == "done" || name == "failed" {
					ch <- now
					return
				}
			}
		}
	}()
	return ch, func() { f.Close() }
}

// kill sends SIGKILL to p's target, recording what it saw just before. It
// returns false to be called again: CHILD has not started yet.
func (tt *torture) kill(r *tortRound, cmd *exec.Cmd, done <-chan struct{}) bool {
	r.phase, r.childWas = tt.phase(), tt.childState()
	switch r.plan.target {
	case "treetx":
		r.killed = cmd.Process.Signal(syscall.SIGKILL) == nil
	case "group":
		select {
		case <-done:
			return true // its pid, the group's id, may be free for reuse now
		default:
		}
		r.killed = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) == nil
	case "child":
		b, err := os.ReadFile(filepath.Join(tt.out, "pid"))
		if errors.Is(err, fs.ErrNotExist) {
			return false
		}
		pid, err := strconv.Atoi(string(b))
		if err != nil {
			return true
		}
		// The pidfd pins the process; if it is treetx's child, it is CHILD.
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			return true
		}
		defer unix.Close(fd)
		if ppid, _ := procIDs(pid); ppid != cmd.Process.Pid {
			return true
		}
		r.killed = unix.PidfdSendSignal(fd, unix.SIGKILL, nil, 0) == nil
	}
	return true
}

// phase is the phase the journal records now, or "-" without a journal.
func (tt *torture) phase() string {
	b, err := os.ReadFile(filepath.Join(tt.parent, ".#treetx."+tortureBase+".journal"))
	if err != nil {
		return "-"
	}
	var j struct{ Phase string }
	if json.Unmarshal(b, &j) != nil {
		return "?"
	}
	return j.Phase
}

func (tt *torture) childState() string {
	switch {
	case exists(filepath.Join(tt.out, "done")):
		return "exited 0"
	case exists(filepath.Join(tt.out, "failed")):
		return "exiting 1"
	case exists(filepath.Join(tt.out, "pid")):
		return "running"
	}
	return "not started"
}

// procIDs returns pid's parent and process group, or -1s.
func procIDs(pid int) (ppid, pgrp int) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return -1, -1
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return -1, -1
	}
	f := strings.Fields(string(data[i+1:])) // state ppid pgrp ...
	if len(f) < 3 {
		return -1, -1
	}
	ppid, err1 := strconv.Atoi(f[1])
	pgrp, err2 := strconv.Atoi(f[2])
	if err1 != nil || err2 != nil {
		return -1, -1
	}
	return ppid, pgrp
}

// reapOrphans waits for the processes of the group pgid (treetx's, which
// CHILD is in) that became this process's children: it is a subreaper, and
// after treetx was waited for, they can only be a CHILD that outlived
// treetx, which dies of Pdeathsig. Other children that exited are reaped
// too, without waiting.
func reapOrphans(t *testing.T, pgid int) {
	t.Helper()
	files, _ := filepath.Glob("/proc/self/task/*/children")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, s := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(s)
			if err != nil {
				continue
			}
			opts := unix.WNOHANG
			if _, pgrp := procIDs(pid); pgrp == pgid {
				opts = 0
			}
			var ws syscall.WaitStatus
			if _, err := syscall.Wait4(pid, &ws, opts, nil); err != nil && !errors.Is(err, syscall.ECHILD) {
				t.Errorf("wait for orphan %d: %v", pid, err)
			}
		}
	}
}

// check returns what is wrong after a round, or "", and which tree the
// tree is: "before", "after" or "".
func (tt *torture) check(r *tortRound) (problems string, ended string) {
	defer func(t0 time.Time) { r.times[2] = time.Since(t0) }(time.Now())
	var probs []string
	got, err := treeimage.Capture(tt.tree, treeimage.Options{})
	if err != nil {
		probs = append(probs, err.Error())
	}
	isBefore := err == nil && len(tt.before.Diff(got)) == 0
	isAfter := err == nil && len(tt.after.Diff(got)) == 0
	// What the tree may be.
	var want string
	ws := r.status
	switch {
	case ws.Exited() && ws.ExitStatus() == 0:
		want = "after"
		if r.plan.fail || !r.marker {
			probs = append(probs, "treetx exited 0, but CHILD did not")
		}
	case ws.Exited() && (ws.ExitStatus() == 1 && r.plan.fail || ws.ExitStatus() == 128+int(syscall.SIGKILL) && r.killed):
		want = "before"
	case ws.Signaled() && ws.Signal() == syscall.SIGKILL && r.killed:
		want = "before"
		if r.marker {
			want = "before or after"
		}
	default:
		probs = append(probs, fmt.Sprintf("unexpected: %s", r.outcome()))
		want = "before or after"
	}
	switch {
	case err != nil:
	case want == "after" && !isAfter:
		probs = append(probs, diffText("the new tree", tt.after, got))
	case want == "before" && !isBefore:
		probs = append(probs, diffText("the old tree", tt.before, got))
	case want == "before or after" && !isBefore && !isAfter:
		probs = append(probs, "neither tree:\n"+diffText("the old tree", tt.before, got)+"\n"+diffText("the new tree", tt.after, got))
	}
	if r.recCode != 0 {
		probs = append(probs, fmt.Sprintf("treetx recover exited %d", r.recCode))
	}
	if !ws.Signaled() {
		// A finished transaction may leave its thrown-away tree to a
		// detached process to delete, under a removal name: nothing else.
		for _, name := range r.beside {
			if name != tortureLock && name != tortureGate && name != tortureBase && !strings.HasPrefix(name, tortureRemoving) {
				probs = append(probs, fmt.Sprintf("treetx run ended on its own but left %q beside the tree", name))
			}
		}
	}
	if names, err := readDirNames(tt.parent); err != nil {
		probs = append(probs, err.Error())
	} else if names = slices.DeleteFunc(names, func(n string) bool { return n == tortureLock || n == tortureGate }); !slices.Equal(names, []string{tortureBase}) {
		probs = append(probs, fmt.Sprintf("beside the tree: %q, want only %q (and the lock files)", names, tortureBase))
	}
	switch {
	case isBefore:
		ended = "before"
	case isAfter:
		ended = "after"
	}
	return strings.Join(probs, "\n"), ended
}

func diffText(label string, want, got treeimage.Image) string {
	d := want.Diff(got)
	if len(d) > 20 {
		d = append(d[:20], fmt.Sprintf("... and %d more", len(d)-20))
	}
	return fmt.Sprintf("differences from %s (\"first\" is it, \"second\" the tree now):\n\t%s", label, strings.Join(d, "\n\t"))
}

func readDirNames(dir string) ([]string, error) {
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(des))
	for i, de := range des {
		names[i] = de.Name()
	}
	return names, nil
}

// wipe empties the parent and the store after a violation, so that the
// next round starts clean.
func (tt *torture) wipe(t *testing.T) {
	t.Helper()
	names, err := readDirNames(tt.parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		if name == tortureLock || name == tortureGate {
			continue
		}
		if err := os.RemoveAll(filepath.Join(tt.parent, name)); err != nil {
			t.Fatal(err)
		}
	}
	// A bug could have written the store's files through a link.
	if err := os.RemoveAll(tt.store); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(tt.store, 0o700); err != nil {
		t.Fatal(err)
	}
}
