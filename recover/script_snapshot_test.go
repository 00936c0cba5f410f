package recover_test

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys/fsystest"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
	txrecover "github.com/treetx/treetx/recover"
)

// Snapshot mode (rows 18 to 28 of docs/protocol.md): the crash states of a
// transaction whose tree is a btrfs subvolume, on a loop-mounted image, are
// recovered by recover.Recover and by scripts/treetx-recover.sh, which must
// agree; status and the dry run must name each state's row and plan. The
// transactions are transact's (script_test.go), in the default mode: the
// sample tree is a subvolume's root, so they take a snapshot.

// snapPlanOf is planOf for snapshot mode: the steps recovery's plan takes
// in each of its rows; nil for row 18, whose steps are G2 and G3.
var snapPlanOf = map[string][]string{
	"1": {}, "3": nil, "3a": nil, "18": nil,
	"19": {"C4", "C5", "C6", "C7", "C8"}, "20": {"C4", "C5", "C6", "C7", "C8"}, "21": {"C5", "C6", "C7", "C8"},
	"22": {"R2", "R4", "R5", "R6", "R7"},
	"23": {"R4", "R5", "R6", "R7"}, "24": {"R5", "R6", "R7"}, "25": {"R5", "R7"}, "26": {"R4", "R5", "R7"},
	"27": {"C4", "C5", "C6", "C7", "C8"}, "28": {"C5", "C6", "C7", "C8"},
}

// snapEnv is a btrfs image shared by the subtests of one test.
type snapEnv struct {
	img *testenv.Image
	mu  sync.Mutex
	n   int
}

func newSnapEnv(t *testing.T) *snapEnv {
	t.Helper()
	testenv.Require(t, testenv.Btrfs)
	return &snapEnv{img: testenv.FSImage(t, "btrfs", testenv.ImageOptions{MiB: 256})}
}

// sample builds the sample tree as the subvolume PARENT/repo in a new
// directory of the image, with newSampleIn's old atime.
func (e *snapEnv) sample(t testing.TB) string {
	t.Helper()
	e.mu.Lock()
	e.n++
	parent := filepath.Join(e.img.Dir, fmt.Sprint(e.n))
	e.mu.Unlock()
	if err := os.Mkdir(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(parent, "repo")
	if err := treeimage.BuildSampleSubvolume(dir); err != nil {
		t.Fatal(err)
	}
	ts := []unix.Timespec{{Sec: -2, Nsec: 500000000}, {Sec: 0, Nsec: unix.UTIME_OMIT}}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, "a/readonly.txt"), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
	return dir
}

// crashed is a sample tree whose transaction of path was killed after step
// n.
func (e *snapEnv) crashed(t testing.TB, path string, n int) string {
	t.Helper()
	dir := e.sample(t)
	if !runVictim(t, "txn", dir, path, n) {
		t.Fatalf("%s: the victim finished before step %d", path, n)
	}
	return dir
}

// images are the old tree and the tree a transaction of path leaves.
func (e *snapEnv) images(t *testing.T, path string) (old, new treeimage.Image) {
	t.Helper()
	dir := e.sample(t)
	old = treeimage.MustCapture(t, dir, treeimage.Options{})
	if err := mutate(dir, path); err != nil {
		t.Fatal(err)
	}
	if path == "commit" {
		new = treeimage.MustCapture(t, dir, treeimage.Options{IgnoreDirMtime: true})
	}
	return old, new
}

// dryRun records a transaction of path in snapshot mode (see dryRun).
func (e *snapEnv) dryRun(t *testing.T, path string) plan {
	t.Helper()
	fs := &fsystest.FS{Record: true}
	if err := transact(e.sample(t), path, fs); err != nil {
		t.Fatal(err)
	}
	pl := plan{ops: fs.Ops()}
	journals := 0
	for i, op := range pl.ops {
		if op.Kind == "renameat2" && strings.HasSuffix(op.Path2, ".#treetx.repo.journal") {
			if journals++; journals == 2 {
				pl.begun = pl.ops[i+1].Step
			}
			if journals == 3 && path == "commit" {
				pl.commitPoint = op.Step
			}
		}
	}
	if pl.begun == 0 || path == "commit" && pl.commitPoint == 0 || !slices.ContainsFunc(pl.ops, func(o fsystest.Op) bool { return o.Kind == "snapshot" }) {
		t.Fatalf("%s: not a snapshot-mode transaction: %v", path, pl.ops)
	}
	return pl
}

// snapCrashState is crashState for snapshot mode: the shadow is told by
// its subvolume, not by its inode number (every subvolume's root is 256).
func snapCrashState(t testing.TB, dir string) string {
	t.Helper()
	parent := filepath.Dir(dir)
	j, err := layout.ReadJournal(filepath.Join(parent, ".#treetx.repo.journal"))
	phase := "no journal"
	if err == nil {
		phase = string(j.Phase)
	}
	pfd, err := unix.Open(parent, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pfd)
	var parts []string
	for _, name := range besides(t, dir) {
		var st unix.Stat_t
		if strings.HasSuffix(name, ".ID") {
			// A removal tree (its id replaced): garbage, shadow or not.
		} else if j != nil && unix.Fstatat(pfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && j.HoldsShadow(pfd, name, &st) {
			name += "(shadow)"
		}
		parts = append(parts, name)
	}
	return phase + ": " + strings.Join(parts, " ")
}

// TestScriptAgreesWithGoSnapshot builds each distinct crash state of a
// commit, a rollback and a rollback of a command that removed the
// directory, in snapshot mode, twice: status and the dry run must name its
// row and that row's plan; recover.Recover recovers one copy and the
// script the other, and they must agree (exit status, state, line, names
// beside, trees) and leave the tree the invariant requires. Every row of
// snapshot mode a crash of a transaction leaves must be met (row 21 is
// only left by a crash of a recovery: TestScriptCrashSnapshot).
func TestScriptAgreesWithGoSnapshot(t *testing.T) {
	h := newHarness(t)
	e := newSnapEnv(t)
	var mu sync.Mutex
	seen := map[string]bool{}
	checked := 0
	t.Cleanup(func() { t.Logf("snapshot mode: %d crash states, rows %v", checked, slices.Sorted(mapKeys(seen))) })
	t.Run("paths", func(t *testing.T) {
		for _, path := range []string{"commit", "rollback", "removed"} {
			t.Run(path, func(t *testing.T) {
				t.Parallel()
				pl := e.dryRun(t, path)
				old, new := e.images(t, path)
				// The distinct states, by a crash after each step: the
				// first crash of each is recovered by Go, a second one by
				// the script.
				states := map[string]bool{}
				for _, op := range pl.ops {
					n := op.Step
					dirGo := e.crashed(t, path, n)
					state := snapCrashState(t, dirGo)
					if states[state] {
						continue
					}
					states[state] = true
					dirSh := e.crashed(t, path, n)
					if b := snapCrashState(t, dirSh); b != state {
						t.Fatalf("crash after %s: two runs left different states: %s, %s", op, state, b)
					}
					ins, err := txrecover.Inspect(dirGo)
					if err != nil {
						t.Fatalf("crash after %s: inspect: %v", op, err)
					}
					dry, err := txrecover.Recover(dirGo, txrecover.Options{DryRun: true})
					if err != nil {
						t.Fatalf("crash after %s: dry run: %v", op, err)
					}
					want, ok := snapPlanOf[ins.Row]
					got := ids(ins.Plan)
					switch {
					case !ok:
						t.Errorf("crash after %s (%s): row %q, not one of snapshot mode", op, snapCrashState(t, dirGo), ins.Row)
					case want == nil && (len(got) == 0 || strings.Trim(strings.Join(got, ""), "G123") != ""):
						t.Errorf("crash after %s: row %s, plan %v; want G1..G3 steps", op, ins.Row, got)
					case want != nil && !slices.Equal(got, want):
						t.Errorf("crash after %s: row %s, plan %v; want %v", op, ins.Row, got, want)
					}
					if dry.Row != ins.Row || !slices.Equal(ids(dry.Plan), got) {
						t.Errorf("crash after %s: the dry run says row %s, plan %v; status row %s, plan %v", op, dry.Row, ids(dry.Plan), ins.Row, got)
					}
					if ins.Journal != nil && ins.Mode != layout.ModeSnapshot {
						t.Errorf("crash after %s: status says mode %q", op, ins.Mode)
					}
					g := goRecover(dirGo, false)
					s := h.run(t, scriptOpts{}, dirSh)
					w, opts := pl.want(path, n, old, new)
					bad := compare(t, dirGo, dirSh, g, s, w, opts, false)
					if gl, sl := sameRun(dirGo, g.line), sameRun(dirSh, firstLine(s.stdout)); gl != sl {
						bad = append(bad, fmt.Sprintf("lines differ (the run's own paths, ids and numbers aside):\nGo:     %s\nscript: %s", gl, sl))
					}
					for _, b := range bad {
						t.Errorf("%s, crash after %s (row %s): %s", path, op, ins.Row, b)
					}
					mu.Lock()
					seen[ins.Row] = true
					checked++
					mu.Unlock()
				}
			})
		}
	})
	for _, row := range []string{"18", "19", "20", "22", "23", "24", "25", "26", "27", "28"} {
		if !seen[row] {
			t.Errorf("no crash left row %s (rows seen: %v)", row, slices.Sorted(mapKeys(seen)))
		}
	}
}

// sameRun blanks out of a report's line what differs between two runs that
// leave the same state: the directory, transaction and removal ids, the
// process and its start, the snapshot's subvolume id.
func sameRun(dir, line string) string {
	line = strings.ReplaceAll(line, filepath.Dir(dir), "PARENT")
	for _, re := range runRE {
		line = re.r.ReplaceAllString(line, re.with)
	}
	return line
}

var runRE = []struct {
	r    *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`[0-9a-f]{16}`), "ID"},
	{regexp.MustCompile(`\(pid [0-9]+ on [^,]*, .*?, since [^)]*\)`), "(PROCESS)"},
	{regexp.MustCompile(`subvolume [0-9]+`), "subvolume N"},
}

func mapKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestScriptCrashSnapshot kills the script after each of its steps, and
// recover.Recover after each of its own, on a state of phase snapshot,
// running (whose recovery goes through phase rollback) and commit (rows
// 19, 22, 27);
// the other then finishes, and the tree must be what the invariant says.
// The states in between are rows of the table too (row 21 among them).
func TestScriptCrashSnapshot(t *testing.T) {
	h := newHarness(t)
	e := newSnapEnv(t)
	type point struct {
		path string
		row  string
	}
	var mu sync.Mutex
	rows := map[string]bool{}
	t.Run("states", func(t *testing.T) {
		for _, pt := range []point{{"rollback", "19"}, {"rollback", "22"}, {"commit", "27"}} {
			t.Run(pt.path+"/row"+pt.row, func(t *testing.T) {
				t.Parallel()
				pl := e.dryRun(t, pt.path)
				old, new := e.images(t, pt.path)
				// The journal's writes (renames over it): B4, B8, C3.
				var journals []int
				for _, op := range pl.ops {
					if op.Kind == "renameat2" && strings.HasSuffix(op.Path2, ".#treetx.repo.journal") {
						journals = append(journals, op.Step)
					}
				}
				step := map[string]int{"19": journals[0], "22": pl.begun, "27": journals[2]}[pt.row]
				if r, err := txrecover.Inspect(e.crashed(t, pt.path, step)); err != nil || r.Row != pt.row {
					t.Fatalf("a crash of %s after step %d leaves %+v, %v; want row %s", pt.path, step, r, err, pt.row)
				}
				w, opts := pl.want(pt.path, step, old, new)
				// The script killed after its step k, then Go.
				for k := 1; ; k++ {
					dir := e.crashed(t, pt.path, step)
					counter := filepath.Join(t.TempDir(), "steps")
					s := h.run(t, scriptOpts{counter: counter, killAt: k}, dir)
					if !s.killed {
						break
					}
					if r, err := txrecover.Inspect(dir); err == nil {
						mu.Lock()
						rows[r.Row] = true
						mu.Unlock()
					}
					if g := goRecover(dir, false); g.code != 0 {
						t.Errorf("row %s, script killed after its step %d: Go recover: %s", pt.row, k, g.out)
					}
					if v := checkInvariant(t, dir, w, opts); v != "" {
						t.Errorf("row %s, script killed after its step %d, then Go: %s", pt.row, k, v)
					}
				}
				// Go killed after its step k, then the script.
				for k := 1; ; k++ {
					dir := e.crashed(t, pt.path, step)
					if !runVictim(t, "recover", dir, pt.path, k) {
						break
					}
					if r, err := txrecover.Inspect(dir); err == nil {
						mu.Lock()
						rows[r.Row] = true
						mu.Unlock()
					}
					if s := h.run(t, scriptOpts{}, dir); s.code != 0 {
						t.Errorf("row %s, Go killed after its step %d: the script: exit %d: %s", pt.row, k, s.code, s.out)
					}
					if v := checkInvariant(t, dir, w, opts); v != "" {
						t.Errorf("row %s, Go killed after its step %d, then the script: %s", pt.row, k, v)
					}
				}
			})
		}
	})
	if !rows["21"] {
		t.Errorf("no killed recovery left row 21 (rows seen: %v)", slices.Sorted(mapKeys(rows)))
	}
}
