package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/treetx/treetx/internal/treeimage"
)

// TestConcurrentRunsSerialize starts several treetx runs on one DIR at once:
// each command logs "start N", sleeps 0.3s, changes the tree and logs
// "end N"; no two may overlap, and every change is kept.
func TestConcurrentRunsSerialize(t *testing.T) {
	t.Parallel()
	const n = 3
	parent, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	s := `echo "start $N" >> "$O/log"
sleep 0.3
printf "$N" > "$T/f$N"
echo "end $N" >> "$O/log"
`
	procs := make([]*proc, n)
	for i := range procs {
		procs[i] = start(t, invocation{args: runArgs(tree, script(s)), env: append(env(tree, out), fmt.Sprintf("N=%d", i))})
	}
	for i, p := range procs {
		r := p.wait(t)
		if r.code != 0 {
			t.Errorf("run %d: exit %d, want 0\n%v", i, r.code, r)
		}
	}
	data, err := os.ReadFile(filepath.Join(out, "log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 2*n {
		t.Fatalf("log has %d lines, want %d:\n%s", len(lines), 2*n, data)
	}
	seen := map[string]bool{}
	for i := 0; i < len(lines); i += 2 {
		id, ok := strings.CutPrefix(lines[i], "start ")
		if !ok || lines[i+1] != "end "+id || seen[id] {
			t.Fatalf("runs overlap: the log is not start N / end N pairs:\n%s", data)
		}
		seen[id] = true
	}
	for i := range n {
		if b, err := os.ReadFile(filepath.Join(tree, fmt.Sprintf("f%d", i))); err != nil || string(b) != strconv.Itoa(i) {
			t.Errorf("f%d = %q, %v: a committed change is missing", i, b, err)
		}
	}
	noLeftovers(t, parent, "tree")
}

// TestLockTimeout: while a run holds DIR, --lock-timeout 0 fails at once and
// --lock-timeout 300ms after waiting, both with exit 75 and a line naming
// the holder's pid; neither runs its command.
func TestLockTimeout(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	holder := start(t, invocation{
		args: runArgs(tree, script(`touch "$O/started"; while [ ! -e "$O/release" ]; do sleep 0.01; done; printf h > "$T/holder"`)),
		env:  env(tree, out),
	})
	waitForFile(t, holder, filepath.Join(out, "started"))
	before := capture(t, tree)
	// status and recover see a live transaction and leave it alone.
	r := treetx(t, nil, "status", tree)
	wantCode(t, r, 0)
	contains(t, "status", r.stdout, "in progress")
	wantCode(t, treetx(t, nil, "recover", tree), 75)
	for _, tt := range []struct {
		timeout  string
		min, max time.Duration
	}{
		{"0", 0, time.Second},
		{"300ms", 300 * time.Millisecond, 3 * time.Second},
	} {
		t.Run(tt.timeout, func(t *testing.T) {
			marker := filepath.Join(out, "ran-"+tt.timeout)
			r := treetx(t, nil, runArgs(tree, []string{"touch", marker}, "--lock-timeout", tt.timeout)...)
			wantCode(t, r, 75)
			oneLine(t, r.stderr, "pid "+strconv.Itoa(holder.pid()))
			if r.elapsed < tt.min || r.elapsed > tt.max {
				t.Errorf("gave up after %v, want between %v and %v", r.elapsed, tt.min, tt.max)
			}
			if exists(marker) {
				t.Errorf("the command ran without the lock")
			}
			treeimage.AssertEqual(t, "while held", before, "after the failed run", capture(t, tree))
		})
	}
	if err := os.WriteFile(filepath.Join(out, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, holder.wait(t), 0)
	if !exists(filepath.Join(tree, "holder")) {
		t.Errorf("the holder's change was not committed")
	}
	noLeftovers(t, parent, "tree")
}

// TestLockDefaultWaits: without --lock-timeout a second run waits for the
// first to finish, then runs.
func TestLockDefaultWaits(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	holder := start(t, invocation{
		args: runArgs(tree, script(`touch "$O/started"; while [ ! -e "$O/release" ]; do sleep 0.01; done`)),
		env:  env(tree, out),
	})
	waitForFile(t, holder, filepath.Join(out, "started"))
	waiter := start(t, invocation{args: runArgs(tree, script(`printf w > "$T/waiter"`)), env: env(tree, out)})
	awaitQueued(t, parent, waiter)
	if processGone(waiter.pid()) || exists(filepath.Join(tree, "waiter")) {
		t.Fatalf("the second run did not wait for the lock")
	}
	if err := os.WriteFile(filepath.Join(out, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, holder.wait(t), 0)
	wantCode(t, waiter.wait(t), 0)
	if !exists(filepath.Join(tree, "waiter")) {
		t.Errorf("the second run's change is missing")
	}
}

// TestBackgroundProcessDoesNotKeepTheLock: a command that leaves a process
// in the background (which inherits the lock's descriptor) does not keep
// DIR locked once treetx has finished: the next run gets the lock at once.
func TestBackgroundProcessDoesNotKeepTheLock(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	r := treetx(t, env(tree, out), runArgs(tree, script(`sleep 3 </dev/null >/dev/null 2>&1 & echo $! > "$O/bg"`))...)
	wantCode(t, r, 0)
	bg := readPID(t, filepath.Join(out, "bg"))
	defer syscall.Kill(bg, syscall.SIGKILL)
	if processGone(bg) {
		t.Fatal("the background process is already gone; the test proves nothing")
	}
	r = treetx(t, nil, runArgs(tree, []string{"true"}, "--lock-timeout", "0")...)
	wantCode(t, r, 0)
	noLeftovers(t, parent, "tree")
}

// TestWriterQueuesAheadOfReaders: readers that keep overlapping (each
// holding the shared lock a while, the next one starting while it holds it)
// would keep a writer out forever if it just retried; the writer waits at
// the lock's gate instead, and readers that arrive meanwhile wait behind it.
// Each step waits for the one before to be seen (a reader holding the
// lock, the writer holding the gate), not for a time: whenever the later
// readers come, they must come after the writer.
func TestWriterQueuesAheadOfReaders(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	gate := filepath.Join(parent, ".#treetx.tree.gate")
	reader := func(n int, hold string) *proc {
		return start(t, invocation{args: []string{"lock", "--shared", tree, "--", "sh", "-c", `echo "start $N" >> "$O/log"; ` + hold + `; echo "end $N" >> "$O/log"`}, env: append(env(tree, out), "N="+strconv.Itoa(n))})
	}
	// Reader 0 holds the lock until the others have arrived.
	readers := []*proc{reader(0, `touch "$O/started-0"; while [ ! -e "$O/release" ]; do sleep 0.01; done`)}
	waitForFile(t, readers[0], filepath.Join(out, "started-0"))
	writer := start(t, invocation{args: runArgs(tree, script(`echo "writer" >> "$O/log"`), "--lock-timeout", "60s"), env: env(tree, out)})
	waitFor(t, "the writer to hold the gate while it waits", time.Minute, func() bool {
		return slices.Contains(flockHolders(t, gate), writer.pid())
	})
	for n := 1; n <= 3; n++ {
		readers = append(readers, reader(n, "sleep 0.4"))
	}
	// Give them time to reach the gate while reader 0 still holds the
	// lock (without the gate, they would join it). Load may delay them:
	// then they prove less, but still must come after the writer.
	time.Sleep(300 * time.Millisecond)
	if err := os.WriteFile(filepath.Join(out, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, writer.wait(t), 0)
	for _, r := range readers {
		wantCode(t, r.wait(t), 0)
	}
	log, err := os.ReadFile(filepath.Join(out, "log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(log)), "\n")
	// The writer came after reader 0 and before the readers that arrived
	// while it waited.
	if w := slices.Index(lines, "writer"); w != 2 || lines[0] != "start 0" || lines[1] != "end 0" {
		t.Errorf("order:\n%s\nwant reader 0, then the writer, then the others", log)
	}
}

// awaitQueued waits until p waits for the lock of parent/tree: it then
// holds the lock's gate (a writer's queue, where a reader waits too). It
// returns early if p exits.
func awaitQueued(t *testing.T, parent string, p *proc) {
	t.Helper()
	gate := filepath.Join(parent, ".#treetx.tree.gate")
	waitFor(t, "treetx to wait for the lock", time.Minute, func() bool {
		return processGone(p.pid()) || slices.Contains(flockHolders(t, gate), p.pid())
	})
}

// flockHolders lists the pids holding a flock on path (/proc/locks).
func flockHolders(t *testing.T, path string) []int {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return nil
	}
	data, err := os.ReadFile("/proc/locks")
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for line := range strings.Lines(string(data)) {
		// "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF"; a waiter's
		// line has "->" after the number.
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" {
			continue
		}
		dev := strings.Split(f[5], ":")
		if len(dev) != 3 || dev[2] != strconv.FormatUint(st.Ino, 10) {
			continue
		}
		if pid, err := strconv.Atoi(f[4]); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}
