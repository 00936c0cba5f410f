package recover_test

// Tests of scripts/treetx-recover.sh on transactions over several trees
// (docs/protocol.md, "One transaction over several trees": rows 29, 30,
// 31). A transaction over two sample trees runs in a child process killed
// right after step N; the crash state is built twice (the runs are
// deterministic), and one tree, chosen in turn, is recovered by
// recover.Recover on one copy and by the script on the other. The report
// lines (ids, pids and times aside), the exit statuses, both trees and the
// names beside them must agree. Then every tree is recovered on both
// copies, and every tree must be the old one, or every tree the new one
// once the record said commit, with nothing but the lock files beside them.
// The trees are in two parents ("apart") or in one ("together"). The
// refusals (row 31), forged and planted markers, a busy tree and dry runs
// are checked the same way.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys/fsystest"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
	txrecover "github.com/treetx/treetx/recover"
	"github.com/treetx/treetx/txn"
)

// envGroup names the trees of a group victim, separated by ":" (with
// envPath, the path, and envAfter, the step to crash after).
const envGroup = "TREETX_SCRIPTTEST_GROUP"

func init() {
	// A child of runGroupVictim: run the transaction, before TestMain.
	if dirs := os.Getenv(envGroup); dirs != "" {
		after, _ := strconv.Atoi(os.Getenv(envAfter))
		if err := transactGroup(strings.Split(dirs, ":"), os.Getenv(envPath), &fsystest.FS{CrashAfter: after}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		os.Exit(0)
	}
}

// transactGroup runs one transaction over dirs through fs, changing each
// tree as mutate does (as mutateAsOwner does, run by another user than
// root), and commits ("commit") or rolls back.
func transactGroup(dirs []string, path string, fs *fsystest.FS) error {
	g, err := txn.BeginGroup(context.Background(), dirs, txn.Options{FS: fs})
	if err != nil {
		return err
	}
	for _, d := range dirs {
		change := func(d string) error { return mutate(d, "commit") }
		if os.Getuid() != 0 {
			change = mutateAsOwner
		}
		if err := change(d); err != nil {
			_, rbErr := g.Rollback()
			return errors.Join(err, rbErr)
		}
	}
	if path == "commit" {
		_, err = g.Commit()
	} else {
		_, err = g.Rollback()
	}
	return err
}

// newGroup builds the two sample trees of a group in a new scratch
// directory: PARENT0/repo and PARENT1/repo ("apart") or PARENT/repo and
// PARENT/repo2 ("together"); the record's first.
func newGroup(t testing.TB, where string) []string {
	t.Helper()
	root := scratch(t, false)
	var dirs []string
	if where == "together" {
		p := filepath.Join(root, "p")
		dirs = []string{filepath.Join(p, "repo"), filepath.Join(p, "repo2")}
	} else {
		dirs = []string{filepath.Join(root, "p0", "repo"), filepath.Join(root, "p1", "repo")}
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Dir(d), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := treeimage.BuildSample(d); err != nil {
			t.Fatal(err)
		}
		// As newSampleIn: an atime before 1970, changed through the
		// shared inode.
		ts := []unix.Timespec{{Sec: -2, Nsec: 500000000}, {Sec: 0, Nsec: unix.UTIME_OMIT}}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(d, "a/readonly.txt"), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
	return dirs
}

// groupRoot is the scratch directory of a group newGroup built.
func groupRoot(dirs []string) string { return filepath.Dir(filepath.Dir(dirs[0])) }

// runGroupVictim runs the group transaction of path over dirs in a child
// that SIGKILLs itself after step after; it reports whether it was killed.
func runGroupVictim(t testing.TB, dirs []string, path string, after int) bool {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envGroup+"="+strings.Join(dirs, ":"), envPath+"="+path, envAfter+"="+strconv.Itoa(after))
	out, err := cmd.CombinedOutput()
	if killedBy(err) {
		return true
	}
	if err != nil {
		t.Fatalf("group victim (crash after step %d) failed: %v\n%s", after, err, out)
	}
	return false
}

// groupPlan records the steps of a whole group transaction of path over
// new trees (dirs) and finds its commit point: the rename that makes the
// record's journal say commit (its third; 0 on the rollback path).
func groupPlan(t testing.TB, where, path string) (ops []fsystest.Op, commitPoint int, dirs []string) {
	t.Helper()
	dirs = newGroup(t, where)
	fs := &fsystest.FS{Record: true}
	if err := transactGroup(dirs, path, fs); err != nil {
		t.Fatal(err)
	}
	ops = fs.Ops()
	record := journalOf(dirs[0])
	journals := 0
	for _, op := range ops {
		if op.Kind == "renameat2" && op.Path2 == record {
			if journals++; journals == 3 && path == "commit" {
				commitPoint = op.Step
			}
		}
	}
	if path == "commit" && commitPoint == 0 {
		t.Fatalf("no commit point among %d steps", len(ops))
	}
	return ops, commitPoint, dirs
}

func journalOf(dir string) string {
	return filepath.Join(filepath.Dir(dir), ".#treetx."+filepath.Base(dir)+".journal")
}

func markerOf(dir string) string {
	return filepath.Join(filepath.Dir(dir), ".#treetx."+filepath.Base(dir)+".group")
}

// insideGroupTree tells an op on an entry inside a shadow being built or a
// tree being deleted, beside any tree.
func insideGroupTree(op fsystest.Op) bool {
	return insideGroupRE.MatchString(op.Path) || insideGroupRE.MatchString(op.Path2)
}

var insideGroupRE = regexp.MustCompile(`/\.#treetx\.[^/]+\.(incomplete|removing\.[0-9a-f]{16}|failed\.[0-9a-f]{16})/`)

// groupState describes a group's crash state: for each tree, its
// journal's phase and its names (ids replaced), the shadow marked.
func groupState(t testing.TB, dirs []string) string {
	t.Helper()
	var parts []string
	for i, d := range dirs {
		pre := ".#treetx." + filepath.Base(d) + "."
		phase := "no journal"
		j, err := layout.ReadJournal(journalOf(d))
		if err == nil {
			phase = string(j.Phase)
		}
		ents, err := os.ReadDir(filepath.Dir(d))
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, e := range ents {
			if !strings.HasPrefix(e.Name(), pre) || strings.HasSuffix(e.Name(), ".lock") || strings.HasSuffix(e.Name(), ".gate") {
				continue
			}
			s := idRE.ReplaceAllString(strings.TrimPrefix(e.Name(), pre), ".ID")
			var st unix.Stat_t
			if j != nil && unix.Lstat(filepath.Join(filepath.Dir(d), e.Name()), &st) == nil && st.Ino == j.Shadow.Ino {
				s += "(shadow)"
			}
			names = append(names, s)
		}
		parts = append(parts, fmt.Sprintf("tree %d %s: %s", i, phase, strings.Join(names, " ")))
	}
	return strings.Join(parts, "; ")
}

// stateKeys returns for each op of a group transaction over dirs a key
// that two ops share when a kill right after either leaves the same names
// beside the trees (ids and the scratch directory aside), the same number
// of writes of each journal and the same number of exchanges: what
// recovery acts on, but what is inside the trees.
func stateKeys(ops []fsystest.Op, dirs []string) []string {
	parents := map[string]bool{}
	for _, d := range dirs {
		parents[filepath.Dir(d)] = true
	}
	top := func(p string) bool {
		return p != "" && parents[filepath.Dir(p)] && strings.HasPrefix(filepath.Base(p), ".#treetx.")
	}
	root := groupRoot(dirs)
	names := map[string]bool{}
	counts := map[string]int{} // journal writes, exchanges
	keys := make([]string, len(ops))
	for k, op := range ops {
		switch op.Kind {
		case "create", "mkdirat":
			if top(op.Path) {
				names[op.Path] = true
			}
		case "unlinkat":
			delete(names, op.Path)
		case "renameat2":
			if op.Flags&unix.RENAME_EXCHANGE != 0 {
				counts["exchange "+op.Path2]++
				break
			}
			delete(names, op.Path)
			if top(op.Path2) {
				names[op.Path2] = true
			}
			if strings.HasSuffix(op.Path2, ".journal") {
				counts[op.Path2]++
			}
		}
		var key []string
		for n := range names {
			key = append(key, idRE.ReplaceAllString(n, ".ID"))
		}
		for c, v := range counts {
			key = append(key, fmt.Sprintf("%s %d", c, v))
		}
		slices.Sort(key)
		keys[k] = strings.ReplaceAll(strings.Join(key, "; "), root, "ROOT")
	}
	return keys
}

var (
	lineIDRE    = regexp.MustCompile(`[0-9a-f]{16}`)
	linePIDRE   = regexp.MustCompile(`\bpid -?[0-9]+`)
	lineSinceRE = regexp.MustCompile(`, since [0-9][0-9TZ:+-]*\)`)
)

// normLine makes the lines of two copies of a state comparable: the
// scratch directory, transaction ids, pids and start times replaced.
func normLine(line, root string) string {
	line = strings.ReplaceAll(line, root, "ROOT")
	line = lineIDRE.ReplaceAllString(line, "ID")
	line = linePIDRE.ReplaceAllString(line, "pid N")
	return lineSinceRE.ReplaceAllString(line, ", since T)")
}

// groupCompare checks that the Go recovery of the copy dirsGo and the
// script's of dirsSh agree: their lines, exit statuses, trees, and the
// names beside each tree.
func groupCompare(t testing.TB, dirsGo, dirsSh []string, g outcome, s scriptRun, opts treeimage.Options) []string {
	t.Helper()
	var bad []string
	if s.killed {
		return []string{"the script was killed: " + s.out}
	}
	for i := range dirsGo {
		a, b := atimesOf(t, dirsGo[i]), atimesOf(t, dirsSh[i])
		for k := range min(len(a), len(b)) {
			if a[k] != b[k] && !strings.HasSuffix(a[k], " now") && !strings.HasSuffix(b[k], " now") {
				bad = append(bad, fmt.Sprintf("tree %d: atime: Go %s, script %s", i, a[k], b[k]))
			}
		}
	}
	if g.code != s.code {
		bad = append(bad, fmt.Sprintf("exit status: Go %d, script %d", g.code, s.code))
	}
	gl, sl := normLine(g.line, groupRoot(dirsGo)), normLine(firstLine(s.stdout), groupRoot(dirsSh))
	if gl != sl {
		bad = append(bad, fmt.Sprintf("lines differ:\nGo:     %s\nscript: %s", gl, sl))
	}
	if len(bad) > 0 {
		bad = append(bad, "Go: "+g.out, "script: "+s.out)
	}
	for i := range dirsGo {
		if a, b := besides(t, dirsGo[i]), besides(t, dirsSh[i]); !slices.Equal(a, b) {
			bad = append(bad, fmt.Sprintf("tree %d: names beside: Go %v, script %v", i, a, b))
		}
		ig, err1 := treeimage.Capture(dirsGo[i], opts)
		is, err2 := treeimage.Capture(dirsSh[i], opts)
		if err := errors.Join(err1, err2); err != nil {
			bad = append(bad, err.Error())
			continue
		}
		if d := ig.Diff(is); d != nil {
			bad = append(bad, fmt.Sprintf("tree %d differs (Go, script): %s", i, strings.Join(d[:min(len(d), 5)], "; ")))
		}
	}
	return bad
}

// groupFinal checks that every tree of dirs holds want, with nothing but
// the lock files beside them.
func groupFinal(t testing.TB, dirs []string, want treeimage.Image, opts treeimage.Options) string {
	t.Helper()
	for i, d := range dirs {
		got, err := treeimage.Capture(d, opts)
		if err != nil {
			return fmt.Sprintf("tree %d: capture: %v", i, err)
		}
		if diff := want.Diff(got); diff != nil {
			return fmt.Sprintf("tree %d differs: %s", i, strings.Join(diff[:min(len(diff), 5)], "; "))
		}
		for _, name := range besides(t, d) {
			if !slices.Contains([]string{"repo", "repo2", ".#treetx.repo.lock", ".#treetx.repo2.lock"}, name) {
				return fmt.Sprintf("tree %d: left behind: %v", i, besides(t, d))
			}
		}
	}
	return ""
}

// TestScriptGroupAgreesWithGo crashes a transaction over two trees after
// a step, recovers one tree (each in turn) with Go on one copy and with the
// script on the other, and compares; then recovers every tree on both and
// checks that all are old, or all new once the record said commit. The
// steps: every step of the protocol proper but its syncs (a kill after a
// sync leaves the state of the step before), and every 5th step inside the
// trees built or deleted, all of them with TREETX_EXHAUSTIVE=1. A default
// run takes, with the trees in two parents, the first step of each
// distinct state (stateKeys; those of Begin, the same on both paths, once)
// and two more, and with the trees in one parent two steps, drawn with the
// seed. Each step is a parallel subtest.
func TestScriptGroupAgreesWithGo(t *testing.T) {
	h := newHarness(t)
	seed := testenv.Seed(t)
	var total, all, differences atomic.Int64
	t.Cleanup(func() {
		fmt.Printf("script group states: %s, %d differences\n", testenv.Counted(int(total.Load()), int(all.Load())), differences.Load())
	})
	old, new := images(t, "commit")
	type variant struct {
		where, path string
		distinct    bool // a default run takes each distinct state
		commitPoint int
		points      []fsystest.Op
		first       map[int]bool // the points that are the first step of a distinct state
	}
	variants := []*variant{
		{where: "apart", path: "commit", distinct: true},
		{where: "apart", path: "rollback", distinct: true},
		{where: "together", path: "commit"},
		{where: "together", path: "rollback"},
	}
	seen := map[string]bool{} // across the paths: Begin's states are the same
	for _, v := range variants {
		ops, commitPoint, planDirs := groupPlan(t, v.where, v.path)
		keys := stateKeys(ops, planDirs)
		v.commitPoint, v.first = commitPoint, map[int]bool{}
		for j, op := range ops {
			if op.Kind == "fsync" || op.Kind == "syncfs" || insideGroupTree(op) && op.Step%5 != 0 {
				continue
			}
			if v.distinct && !insideGroupTree(op) && !seen[keys[j]] {
				seen[keys[j]] = true
				v.first[len(v.points)] = true
			}
			v.points = append(v.points, op)
		}
	}
	for vi, v := range variants {
		t.Run(v.where+"/"+v.path, func(t *testing.T) {
			t.Parallel()
			points, commitPoint := v.points, v.commitPoint
			rng := rand.New(rand.NewPCG(seed, uint64(300+vi)))
			all.Add(int64(len(points)))
			for k, i := range testenv.Sample(len(points), func(i int) bool { return v.first[i] }, 2, rng) {
				op := points[i]
				n := op.Step
				which := k % 2
				t.Run(fmt.Sprintf("step %d", n), func(t *testing.T) {
					t.Parallel()
					want, opts, label := old, treeimage.Options{}, "old"
					if commitPoint > 0 && n >= commitPoint {
						want, opts, label = new, treeimage.Options{IgnoreDirMtime: true}, "new"
					}
					dirsGo, dirsSh := newGroup(t, v.where), newGroup(t, v.where)
					if !runGroupVictim(t, dirsGo, v.path, n) || !runGroupVictim(t, dirsSh, v.path, n) {
						t.Fatalf("the transaction ended before step %d", n)
					}
					state := groupState(t, dirsGo)
					if b := groupState(t, dirsSh); b != state {
						t.Fatalf("crash after step %s: two runs left different states:\n%s\n%s", op, state, b)
					}
					total.Add(1)
					g := goRecover(dirsGo[which], false)
					s := h.run(t, scriptOpts{}, dirsSh[which])
					t.Logf("crash after step %s (%s), tree %d: Go: exit %d: %s", op, state, which, g.code, g.line)
					bad := groupCompare(t, dirsGo, dirsSh, g, s, opts)
					// Every tree now, on both copies.
					for _, d := range dirsGo {
						if g := goRecover(d, false); g.code != 0 {
							bad = append(bad, "Go, recovering every tree: "+g.out)
						}
					}
					if s := h.run(t, scriptOpts{}, dirsSh...); s.killed || s.code != 0 {
						bad = append(bad, "the script, recovering every tree: "+s.out)
					}
					for _, c := range []struct {
						who  string
						dirs []string
					}{{"Go", dirsGo}, {"script", dirsSh}} {
						if msg := groupFinal(t, c.dirs, want, opts); msg != "" {
							bad = append(bad, fmt.Sprintf("%s: want every tree %s: %s", c.who, label, msg))
						}
					}
					if bad != nil {
						differences.Add(1)
						t.Errorf("crash after step %s (%s), recovering tree %d:\n%s", op, state, which, strings.Join(bad, "\n"))
					}
				})
			}
		})
	}
}

// groupCase is a state the script must treat as Go does, recovering tree
// which: a crash state (after the step of ops that at picks) changed by
// edit, or a state of its own.
type groupCase struct {
	name  string
	path  string                                     // the transaction's path
	at    func(ops []fsystest.Op, dirs []string) int // the step to crash after
	edit  func(t *testing.T, dirs []string)          // what is done to the crash state
	which int                                        // the tree to recover
	args  []string                                   // before the tree: -n
	code  int                                        // the exit status both must give
	same  string                                     // lines compared up to this, if set
	keep  bool                                       // nothing may change
	held  []int                                      // the trees whose locks another process holds
	other string                                     // recover this directory beside tree 1 instead
	plain func(t *testing.T, dirs []string) []string // a state without a transaction
}

// journalRename returns the step of the k-th rename onto dir's journal.
func journalRename(ops []fsystest.Op, dir string, k int) int {
	for _, op := range ops {
		if op.Kind == "renameat2" && op.Path2 == journalOf(dir) {
			if k--; k == 0 {
				return op.Step
			}
		}
	}
	return 0
}

// journalUnlink returns the step that removes dir's journal (C5).
func journalUnlink(ops []fsystest.Op, dir string) int {
	for _, op := range ops {
		if op.Kind == "unlinkat" && op.Path == journalOf(dir) {
			return op.Step
		}
	}
	return 0
}

// Crash points of the cases.
var (
	bothRunning      = func(ops []fsystest.Op, dirs []string) int { return journalRename(ops, dirs[1], 2) }
	recordSaysCommit = func(ops []fsystest.Op, dirs []string) int { return journalRename(ops, dirs[0], 3) }
	otherCommitted   = func(ops []fsystest.Op, dirs []string) int { return journalRename(ops, dirs[1], 3) }
	otherFinal       = func(ops []fsystest.Op, dirs []string) int { return journalUnlink(ops, dirs[1]) }
)

func editJournal(t *testing.T, dir string, edit func([]byte) []byte) {
	t.Helper()
	editFile(t, journalOf(dir), edit)
}

// TestScriptGroupRefuses: what Go refuses (row 31, a group journal that
// is not one treetx writes), the script refuses, changing nothing; what
// Go treats as garbage (a marker of another owner, of another group, not
// what treetx makes there, planted), the script removes; a busy tree
// leaves the group alone; a dry run says what it would do. Lines, exit
// statuses, trees and names must agree.
func TestScriptGroupRefuses(t *testing.T) {
	h := newHarness(t)
	planted := func(kind string) func(t *testing.T, dirs []string) []string {
		return func(t *testing.T, dirs []string) []string {
			m := markerOf(dirs[0])
			var err error
			switch kind {
			case "FIFO":
				err = unix.Mkfifo(m, 0o644)
			case "symlink":
				err = os.Symlink("/etc/passwd", m)
			case "directory":
				if err = os.MkdirAll(filepath.Join(m, "sub"), 0o755); err == nil {
					err = os.WriteFile(filepath.Join(m, "sub", "f"), []byte("x"), 0o644)
				}
			case "corrupt":
				err = os.WriteFile(m, []byte("{\"id\":\"0123456789abcdef\",\"trees\":[\"/a\"]}\n"), 0o644)
			}
			if err != nil {
				t.Fatal(err)
			}
			return dirs[:1]
		}
	}
	cases := []groupCase{
		{name: "row 31: the record's journal missing", path: "commit", at: bothRunning, which: 1, code: 125, keep: true,
			edit: func(t *testing.T, dirs []string) { groupMust(t, os.Remove(journalOf(dirs[0]))) }},
		{name: "row 31: the record's journal another user's", path: "commit", at: bothRunning, which: 1, code: 125, keep: true,
			edit: func(t *testing.T, dirs []string) { groupMust(t, os.Lchown(journalOf(dirs[0]), 65534, 65534)) }},
		{name: "row 31: the record's journal another transaction's", path: "commit", at: bothRunning, which: 1, code: 125, keep: true,
			edit: func(t *testing.T, dirs []string) {
				editJournal(t, dirs[0], func(b []byte) []byte {
					return regexp.MustCompile(`("group": \{\n    "id": ")[0-9a-f]{16}`).ReplaceAll(b, []byte("${1}0123456789abcdef"))
				})
			}},
		{name: "row 31: not one of its group's trees", path: "commit", at: bothRunning, which: 1, code: 125, keep: true,
			edit: func(t *testing.T, dirs []string) {
				editJournal(t, dirs[1], func(b []byte) []byte {
					return bytes.Replace(b, []byte(`"`+dirs[1]+`"`), []byte(`"/nonexistent/repo"`), 1)
				})
			}},
		{name: "row 31 in the record's recovery: another tree's record missing", path: "commit", at: recordSaysCommit, which: 0, code: 125,
			edit: func(t *testing.T, dirs []string) {
				// The other tree's journal names a record that is not.
				editJournal(t, dirs[1], func(b []byte) []byte {
					return bytes.Replace(b, []byte(`"`+dirs[0]+`"`), []byte(`"/nonexistent/repo"`), 1)
				})
			}},
		{name: "a journal that has decided, without its record", path: "commit", at: otherCommitted, which: 1, code: 125,
			edit: func(t *testing.T, dirs []string) { groupMust(t, os.Remove(journalOf(dirs[0]))) }},
		{name: "version 2 without a group", path: "commit", at: bothRunning, which: 1, code: 125, same: "corrupt", keep: true,
			edit: func(t *testing.T, dirs []string) {
				editJournal(t, dirs[1], func(b []byte) []byte {
					return regexp.MustCompile(`(?s),\n  "group": \{.*\n  \}\n`).ReplaceAll(b, []byte("\n"))
				})
			}},
		{name: "version 1 with a group", path: "commit", at: bothRunning, which: 1, code: 125, same: "corrupt", keep: true,
			edit: func(t *testing.T, dirs []string) {
				editJournal(t, dirs[1], func(b []byte) []byte { return bytes.Replace(b, []byte(`"version": 2,`), []byte(`"version": 1,`), 1) })
			}},
		{name: "a group of one tree", path: "commit", at: bothRunning, which: 1, code: 125, same: "corrupt", keep: true,
			edit: func(t *testing.T, dirs []string) {
				editJournal(t, dirs[1], func(b []byte) []byte {
					return bytes.Replace(b, []byte("\""+dirs[0]+"\",\n      "), nil, 1)
				})
			}},
		{name: "a group naming a tree twice", path: "commit", at: bothRunning, which: 1, code: 125, same: "corrupt", keep: true,
			edit: func(t *testing.T, dirs []string) {
				editJournal(t, dirs[1], func(b []byte) []byte {
					return bytes.Replace(b, []byte("\""+dirs[0]+"\","), []byte("\""+dirs[1]+"\","), 1)
				})
			}},
		{name: "a marker of another owner", path: "commit", at: otherFinal, which: 1, code: 0,
			edit: func(t *testing.T, dirs []string) { groupMust(t, os.Lchown(markerOf(dirs[1]), 65534, 65534)) }},
		{name: "a marker of another group", path: "commit", at: otherFinal, which: 1, code: 0,
			edit: func(t *testing.T, dirs []string) {
				editFile(t, markerOf(dirs[1]), func(b []byte) []byte {
					return regexp.MustCompile(`"id":"[0-9a-f]{16}"`).ReplaceAll(b, []byte(`"id":"0123456789abcdef"`))
				})
			}},
		{name: "a marker others may write", path: "commit", at: otherFinal, which: 1, code: 0,
			edit: func(t *testing.T, dirs []string) { groupMust(t, os.Chmod(markerOf(dirs[1]), 0o666)) }},
		{name: "a marker not as treetx writes it", path: "commit", at: otherFinal, which: 1, code: 0,
			edit: func(t *testing.T, dirs []string) {
				editFile(t, markerOf(dirs[1]), func(b []byte) []byte { return b[:len(b)/2] })
			}},
		{name: "a marker copied beside a tree of no group", path: "commit", at: otherFinal, other: "other", code: 0,
			edit: func(t *testing.T, dirs []string) {
				// Beside tree 1, a tree the group does not name, with a
				// copy of its marker: it leads to the record, which
				// recovers the group (but not that tree).
				other := filepath.Join(filepath.Dir(dirs[1]), "other")
				groupMust(t, os.Mkdir(other, 0o755))
				data, err := os.ReadFile(markerOf(dirs[1]))
				groupMust(t, err)
				groupMust(t, os.WriteFile(markerOf(other), data, 0o644))
			}},
		{name: "a planted FIFO marker", plain: planted("FIFO"), code: 0},
		{name: "a planted symlink marker", plain: planted("symlink"), code: 0},
		{name: "a planted directory marker", plain: planted("directory"), code: 0},
		{name: "a planted corrupt marker", plain: planted("corrupt"), code: 0},
		{name: "busy: another tree's lock held", path: "commit", at: bothRunning, which: 0, code: 75, keep: true, held: []int{1}},
		{name: "busy: the record's lock held, from a final tree", path: "commit", at: otherFinal, which: 1, code: 75, keep: true, held: []int{0}},
		{name: "dry run", path: "rollback", at: bothRunning, which: 1, args: []string{"-n"}, code: 0, keep: true},
		{name: "dry run of row 29", path: "commit", at: recordSaysCommit, which: 1, args: []string{"-n"}, code: 0, keep: true},
		{name: "dry run from a final tree", path: "commit", at: otherFinal, which: 1, args: []string{"-n"}, code: 0, keep: true},
	}
	plans := map[string][]fsystest.Op{}
	planDirs := map[string][]string{}
	for _, path := range []string{"commit", "rollback"} {
		plans[path], _, planDirs[path] = groupPlan(t, "apart", path)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			build := func() []string {
				dirs := newGroup(t, "apart")
				if tc.plain != nil {
					return tc.plain(t, dirs)
				}
				n := tc.at(plans[tc.path], planDirs[tc.path])
				if n == 0 || !runGroupVictim(t, dirs, tc.path, n) {
					t.Fatalf("no crash point, or the transaction ended before step %d", n)
				}
				if tc.edit != nil {
					tc.edit(t, dirs)
				}
				return dirs
			}
			dirsGo, dirsSh := build(), build()
			which := min(tc.which, len(dirsGo)-1)
			targetGo, targetSh := dirsGo[which], dirsSh[which]
			if tc.other != "" {
				targetGo, targetSh = filepath.Join(filepath.Dir(dirsGo[1]), tc.other), filepath.Join(filepath.Dir(dirsSh[1]), tc.other)
			}
			for _, i := range tc.held {
				holdLock(t, dirsGo[i])
				holdLock(t, dirsSh[i])
			}
			before := groupSnapshot(t, dirsSh)
			s := h.run(t, scriptOpts{}, append(slices.Clone(tc.args), targetSh)...)
			if tc.keep {
				if after := groupSnapshot(t, dirsSh); after != before {
					t.Errorf("the script changed something:\nbefore:\n%s\nafter:\n%s", before, after)
				}
			}
			before = groupSnapshot(t, dirsGo)
			g := goRecover(targetGo, len(tc.args) > 0)
			if tc.keep {
				if after := groupSnapshot(t, dirsGo); after != before {
					t.Errorf("Go changed something:\nbefore:\n%s\nafter:\n%s", before, after)
				}
			}
			t.Logf("Go: exit %d: %s", g.code, g.line)
			if s.code != tc.code || g.code != tc.code {
				t.Errorf("exit status: Go %d, script %d, want %d\nGo: %s\nscript: %s", g.code, s.code, tc.code, g.out, s.out)
			}
			gl, sl := normLine(g.line, groupRoot(dirsGo)), normLine(firstLine(s.stdout), groupRoot(dirsSh))
			if tc.same != "" {
				gl, _, _ = strings.Cut(gl, tc.same)
				sl, _, _ = strings.Cut(sl, tc.same)
			}
			if gl != sl {
				t.Errorf("lines differ:\nGo:     %s\nscript: %s", gl, sl)
			}
			for i := range dirsGo {
				if a, b := besides(t, dirsGo[i]), besides(t, dirsSh[i]); !slices.Equal(a, b) {
					t.Errorf("tree %d: names beside: Go %v, script %v", i, a, b)
				}
				ig, err1 := treeimage.Capture(dirsGo[i], treeimage.Options{IgnoreDirMtime: true})
				is, err2 := treeimage.Capture(dirsSh[i], treeimage.Options{IgnoreDirMtime: true})
				if err := errors.Join(err1, err2); err != nil {
					t.Error(err)
				} else if d := ig.Diff(is); d != nil {
					t.Errorf("tree %d differs (Go, script): %s", i, strings.Join(d[:min(len(d), 5)], "; "))
				}
			}
			if fi, err := os.Stat("/etc/passwd"); err != nil || !fi.Mode().IsRegular() {
				t.Errorf("/etc/passwd: %v", err)
			}
		})
	}
}

// groupSnapshot describes everything beside each tree of dirs and in it,
// but the lock files' content.
func groupSnapshot(t *testing.T, dirs []string) string {
	t.Helper()
	var b strings.Builder
	for _, d := range dirs {
		b.WriteString(snapshotOf(t, d))
	}
	return b.String()
}

func groupMust(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestScriptGroupJournal: the journals the script writes for a tree of a
// group, with phase commit (row 29's C3) and with phase rollback (R2),
// keep the group and are, byte for byte, what json.MarshalIndent makes of
// them, as Go writes them; and Go finishes the script's work.
func TestScriptGroupJournal(t *testing.T) {
	h := newHarness(t)
	old, new := images(t, "commit")
	plans := map[string][]fsystest.Op{}
	planDirs := map[string][]string{}
	for _, path := range []string{"commit", "rollback"} {
		plans[path], _, planDirs[path] = groupPlan(t, "apart", path)
	}
	for _, tc := range []struct {
		name, path string
		at         func(ops []fsystest.Op, dirs []string) int
		phase      layout.Phase
		want       treeimage.Image
		opts       treeimage.Options
	}{
		{"row 29: C3", "commit", recordSaysCommit, layout.PhaseCommit, new, treeimage.Options{IgnoreDirMtime: true}},
		{"R2", "rollback", bothRunning, layout.PhaseRollback, old, treeimage.Options{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			state := func() []string {
				dirs := newGroup(t, "apart")
				if n := tc.at(plans[tc.path], planDirs[tc.path]); !runGroupVictim(t, dirs, tc.path, n) {
					t.Fatalf("the transaction ended before step %d", n)
				}
				return dirs
			}
			// The script's steps on the state; then killed right after
			// its first mv, the journal's of tree 1, which it recovers
			// first.
			counter := filepath.Join(scratch(t, false), "steps")
			if s := h.run(t, scriptOpts{counter: counter}, state()[1]); s.code != 0 {
				t.Fatalf("script: %s", s.out)
			}
			data, _ := os.ReadFile(counter)
			k := slices.Index(strings.Fields(string(data)), "mv") + 1
			dirs := state()
			before, err := layout.ReadJournal(journalOf(dirs[1]))
			groupMust(t, err)
			if s := h.run(t, scriptOpts{counter: filepath.Join(scratch(t, false), "steps"), killAt: k}, dirs[1]); !s.killed {
				t.Fatalf("the script was not killed at its step %d: %s", k, s.out)
			}
			waitUnlocked(t, dirs[0]) // the subshell that held it is dying
			raw, err := os.ReadFile(journalOf(dirs[1]))
			groupMust(t, err)
			j, err := layout.ReadJournal(journalOf(dirs[1]))
			if err != nil {
				t.Fatalf("Go cannot read the script's journal: %v\n%s", err, raw)
			}
			if j.Phase != tc.phase || j.Group == nil || j.Group.ID != before.Group.ID || !slices.Equal(j.Group.Trees, before.Group.Trees) || j.ID != before.ID {
				t.Errorf("the script's journal: phase %s, id %s, group %+v; want phase %s, id %s, group %+v", j.Phase, j.ID, j.Group, tc.phase, before.ID, before.Group)
			}
			want, err := json.MarshalIndent(j, "", "  ")
			groupMust(t, err)
			if want = append(want, '\n'); !bytes.Equal(raw, want) {
				t.Errorf("the script's journal is not what Go writes:\n%s\nwant:\n%s", raw, want)
			}
			// Go finishes, from the other tree.
			if g := goRecover(dirs[0], false); g.code != 0 {
				t.Errorf("Go after the script: %s", g.out)
			}
			if msg := groupFinal(t, dirs, tc.want, tc.opts); msg != "" {
				t.Errorf("after Go finished: %s", msg)
			}
		})
	}
}

// mutateAsOwner changes a sample tree as mutate does, but what only root
// may (a chown to another user).
func mutateAsOwner(dir string) error {
	p := func(rel string) string { return filepath.Join(dir, rel) }
	for i, step := range []func() error{
		func() error { return os.WriteFile(p("mod/d1/,f1.c,"), []byte("new revision\n"), 0o444) },
		func() error { return os.Chtimes(p("mod/d1/,f1.c,"), fixedTime, fixedTime) },
		func() error { return os.Rename(p("mod/d1/,f1.c,"), p("mod/d1/f1.c,v")) },
		func() error { return os.Remove(p("a/b/notes.txt")) },
		func() error { return os.Chmod(p("a/run.sh"), 0o700) },
		func() error { return appendFile(p("CVSROOT/history"), "A67a1b2c4|sample|~/mod|mod/d1|1.2|f1.c\n") },
		func() error { return os.Chtimes(p("CVSROOT/history"), fixedTime, fixedTime) },
	} {
		if err := step(); err != nil {
			return fmt.Errorf("mutate step %d: %w", i, err)
		}
	}
	return nil
}

// TestScriptGroupAsOwner: a transaction over two trees of uid 65534,
// crashed, is recovered by root as that user (rule T3): by Go with that
// user's identity, by the script under setpriv (--group-tree). Both must
// agree, every tree must end old, or every tree new once the record said
// commit; and the journal the script writes in row 29 (C3) belongs to
// that user.
func TestScriptGroupAsOwner(t *testing.T) {
	h := newHarness(t)
	if os.Getuid() != 0 {
		t.Skip("needs root: the transaction runs as uid 65534, recovered by root")
	}
	// The test binary, where uid 65534 may run it.
	binDir := scratch(t, false)
	groupMust(t, os.Chmod(binDir, 0o755))
	bin := filepath.Join(binDir, "recover.test")
	b, err := os.ReadFile(os.Args[0])
	groupMust(t, err)
	groupMust(t, os.WriteFile(bin, b, 0o755))
	// A group of two trees of uid 65534, each in a parent of its own
	// that the user may write.
	ownGroup := func() []string {
		dirs := newGroup(t, "apart")
		groupMust(t, os.Chmod(groupRoot(dirs), 0o755))
		for _, d := range dirs {
			groupMust(t, filepath.Walk(filepath.Dir(d), func(p string, _ os.FileInfo, err error) error {
				if err == nil {
					err = os.Lchown(p, hostileUID, hostileUID)
				}
				return err
			}))
		}
		return dirs
	}
	run := func(dirs []string, path string, after int) {
		cmd := exec.Command(bin, "-test.run=^$")
		cmd.Env = append(os.Environ(), envGroup+"="+strings.Join(dirs, ":"), envPath+"="+path, envAfter+"="+strconv.Itoa(after))
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: hostileUID, Gid: hostileUID}}
		if out, err := cmd.CombinedOutput(); !killedBy(err) {
			t.Fatalf("group victim as uid %d (crash after step %d): not killed: %v\n%s", hostileUID, after, err, out)
		}
	}
	old := treeimage.MustCapture(t, ownGroup()[0], treeimage.Options{})
	plans := map[string][]fsystest.Op{}
	planDirs := map[string][]string{}
	for _, path := range []string{"commit", "rollback"} {
		plans[path], _, planDirs[path] = groupPlan(t, "apart", path)
	}
	// The steps of root's runs: the user's take the same (checked by the
	// state each leaves).
	for _, tc := range []struct {
		name, path string
		at         func(ops []fsystest.Op, dirs []string) int
		which      int
		committed  bool
		state      string // the state the crash must leave
	}{
		{"both running, rolled back", "rollback", bothRunning, 1, false, "tree 0 running: complete(shadow) group journal meta; tree 1 running: complete(shadow) group journal meta"},
		{"row 29", "commit", recordSaysCommit, 1, true, "tree 0 commit: complete(shadow) group journal meta; tree 1 running: complete(shadow) group journal meta"},
		{"both in commit, from the record", "commit", otherCommitted, 0, true, "tree 0 commit: complete(shadow) group journal meta; tree 1 commit: complete(shadow) group journal meta"},
		{"a final tree", "commit", otherFinal, 1, true, "tree 0 commit: complete(shadow) group journal meta; tree 1 no journal: group meta removing.ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			n := tc.at(plans[tc.path], planDirs[tc.path])
			dirsGo, dirsSh := ownGroup(), ownGroup()
			run(dirsGo, tc.path, n)
			run(dirsSh, tc.path, n)
			state := groupState(t, dirsGo)
			if b := groupState(t, dirsSh); b != state || state != tc.state {
				t.Fatalf("the runs left the states:\n%s\n%s\nwant:\n%s", state, b, tc.state)
			}
			opts := treeimage.Options{}
			if tc.committed {
				opts.IgnoreDirMtime = true
			}
			g := goRecover(dirsGo[tc.which], false)
			s := h.run(t, scriptOpts{}, dirsSh[tc.which])
			t.Logf("%s: Go: exit %d: %s", state, g.code, g.line)
			bad := groupCompare(t, dirsGo, dirsSh, g, s, opts)
			for _, d := range dirsGo {
				if g := goRecover(d, false); g.code != 0 {
					bad = append(bad, "Go, recovering every tree: "+g.out)
				}
			}
			if s := h.run(t, scriptOpts{}, dirsSh...); s.code != 0 {
				bad = append(bad, "the script, recovering every tree: "+s.out)
			}
			// Every tree of both copies as the Go copy's first: the old
			// one, or a new one (without a/b/notes.txt).
			want := old
			if tc.committed {
				want = treeimage.MustCapture(t, dirsGo[0], opts)
				if _, err := os.Lstat(filepath.Join(dirsGo[0], "a/b/notes.txt")); err == nil {
					bad = append(bad, "committed, but a/b/notes.txt is still there")
				}
			}
			for _, dirs := range [][]string{dirsGo, dirsSh} {
				if msg := groupFinal(t, dirs, want, opts); msg != "" {
					bad = append(bad, msg)
				}
			}
			if tc.name == "row 29" {
				// The script killed right after its first mv: C3 on
				// tree 1, as its owner (whose steps the wrappers count
				// too, where that user may run them).
				groupMust(t, os.Chmod(h.bin, 0o755))
				groupMust(t, os.Chmod(filepath.Dir(h.bin), 0o755))
				counter := func() string {
					d := scratch(t, false)
					groupMust(t, os.Chmod(d, 0o777))
					f := filepath.Join(d, "steps")
					groupMust(t, os.WriteFile(f, nil, 0o666))
					groupMust(t, os.Chmod(f, 0o666))
					return f
				}
				probe, c := ownGroup(), counter()
				run(probe, tc.path, n)
				h.run(t, scriptOpts{counter: c}, probe[1])
				data, _ := os.ReadFile(c)
				k := slices.Index(strings.Fields(string(data)), "mv") + 1
				dirs := ownGroup()
				run(dirs, tc.path, n)
				// (The user's wrapper kills what it may: the child; the
				// script, root's, says so.)
				if s := h.run(t, scriptOpts{counter: counter(), killAt: k}, dirs[1]); k == 0 || !s.killed && !strings.Contains(s.out, "exited 137") {
					bad = append(bad, fmt.Sprintf("the script was not killed at its step %d: %s", k, s.out))
				}
				waitUnlocked(t, dirs[0])
				var st unix.Stat_t
				if j, err := layout.ReadJournal(journalOf(dirs[1])); err != nil || j.Phase != layout.PhaseCommit || unix.Lstat(journalOf(dirs[1]), &st) != nil || st.Uid != hostileUID {
					bad = append(bad, fmt.Sprintf("the journal the script wrote (C3): %v, owner %d; want phase commit, owner %d", err, st.Uid, hostileUID))
				}
				if g := goRecover(dirs[0], false); g.code != 0 {
					bad = append(bad, "Go after the killed script: "+g.out)
				} else if msg := groupFinal(t, dirs, treeimage.MustCapture(t, dirs[0], opts), opts); msg != "" {
					bad = append(bad, "after the killed script and Go: "+msg)
				}
			}
			if bad != nil {
				t.Errorf("crash after step %d (%s), recovering tree %d:\n%s", n, state, tc.which, strings.Join(bad, "\n"))
			}
		})
	}
}

// TestScriptGroupKilled kills the script after one of its own steps (not
// a sync) while it recovers a group, and lets Go finish from the other
// tree; and kills recover.Recover after one of its steps, and lets the
// script finish. Every tree must end old, or every tree new once the
// record said commit. A default run takes two steps of each, drawn with
// the seed, on each of four states; TREETX_EXHAUSTIVE=1 every step.
func TestScriptGroupKilled(t *testing.T) {
	h := newHarness(t)
	seed := testenv.Seed(t)
	old, new := images(t, "commit")
	plans := map[string][]fsystest.Op{}
	planDirs := map[string][]string{}
	for _, path := range []string{"commit", "rollback"} {
		plans[path], _, planDirs[path] = groupPlan(t, "apart", path)
	}
	var total, violations atomic.Int64
	t.Cleanup(func() {
		fmt.Printf("script group kills: %d checked, %d violations\n", total.Load(), violations.Load())
	})
	for ci, tc := range []struct {
		name, path string
		at         func(ops []fsystest.Op, dirs []string) int
		which      int
		committed  bool
	}{
		{"both running", "rollback", bothRunning, 0, false},
		{"row 29", "commit", recordSaysCommit, 1, true},
		{"both in commit", "commit", otherCommitted, 0, true},
		{"a final tree", "commit", otherFinal, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, uint64(400+ci)))
			want, opts := old, treeimage.Options{}
			if tc.committed {
				want, opts = new, treeimage.Options{IgnoreDirMtime: true}
			}
			n := tc.at(plans[tc.path], planDirs[tc.path])
			state := func() []string {
				dirs := newGroup(t, "apart")
				if !runGroupVictim(t, dirs, tc.path, n) {
					t.Fatalf("the transaction ended before step %d", n)
				}
				return dirs
			}
			check := func(dirs []string, what string) {
				total.Add(1)
				for _, d := range dirs {
					if g := goRecover(d, false); g.code != 0 {
						violations.Add(1)
						t.Errorf("%s: Go, recovering every tree: %s", what, g.out)
						return
					}
				}
				if msg := groupFinal(t, dirs, want, opts); msg != "" {
					violations.Add(1)
					t.Errorf("%s: %s", what, msg)
				}
			}
			// The script's steps, killed after one: Go finishes.
			counter := filepath.Join(scratch(t, false), "steps")
			if s := h.run(t, scriptOpts{counter: counter}, state()[tc.which]); s.code != 0 {
				t.Fatalf("script: %s", s.out)
			}
			data, _ := os.ReadFile(counter)
			steps := strings.Fields(string(data))
			var kills []int
			for k, step := range steps {
				if step != "sync" {
					kills = append(kills, k+1)
				}
			}
			for _, i := range testenv.Sample(len(kills), nil, 2, rng) {
				k := kills[i]
				dirs := state()
				s := h.run(t, scriptOpts{counter: filepath.Join(scratch(t, false), "steps"), killAt: k}, dirs[tc.which])
				if !s.killed {
					t.Fatalf("the script was not killed at its step %d of %d: %s", k, len(steps), s.out)
				}
				for _, d := range dirs {
					waitUnlocked(t, d) // the subshells holding the other trees' locks
				}
				if g := goRecover(dirs[1-tc.which], false); g.code != 0 {
					violations.Add(1)
					t.Errorf("script killed after its step %d (%s): Go, from the other tree: %s", k, steps[k-1], g.out)
					continue
				}
				check(dirs, fmt.Sprintf("script killed after its step %d (%s), Go finishing", k, steps[k-1]))
			}
			// Go's steps, killed after one: the script finishes.
			rfs := &fsystest.FS{Record: true}
			if _, err := txrecover.Recover(state()[tc.which], txrecover.Options{FS: rfs}); err != nil {
				t.Fatalf("Go: %v", err)
			}
			var rops []fsystest.Op
			for _, op := range rfs.Ops() {
				if op.Kind != "fsync" && op.Kind != "syncfs" {
					rops = append(rops, op)
				}
			}
			for _, i := range testenv.Sample(len(rops), nil, 2, rng) {
				m := rops[i].Step
				dirs := state()
				if !runVictim(t, "recover", dirs[tc.which], "", m) {
					t.Fatalf("Go's recovery ended before its step %d", m)
				}
				if s := h.run(t, scriptOpts{}, dirs[1-tc.which]); s.killed || s.code != 0 {
					violations.Add(1)
					t.Errorf("Go killed after its step %s: the script, from the other tree: %s", rops[i], s.out)
					continue
				}
				check(dirs, fmt.Sprintf("Go killed after its step %s, the script finishing", rops[i]))
			}
		})
	}
}
