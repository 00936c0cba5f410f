package integration

import (
	"encoding/json"
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

// ---- crash states, made by a real treetx or by hand ----

// handFiles is the tree the hand-made states start from.
var handFiles = map[string]string{"f": "old\n", "d/g": "g\n", "d/h": "h\n", "e/": ""}

// handState is a crash state built by hand beside parent/base: what a
// transaction in a given phase leaves when treetx dies, with the journal's
// inodes taken from stat.
type handState struct {
	dir      string
	old, new treeimage.Image // the tree before the transaction, and as its command left it
}

// handMade builds parent/base in the state a crash in phase leaves:
//
//	snapshot: base untouched, its shadow being built at .incomplete
//	running:  base changed by the command, the shadow (the old tree) at .complete
//	commit:   the same names, but the commit point was passed
//	rollback: the exchange done: base is the shadow, .complete the changed tree
//
// The shadow is the old tree itself (renamed), so it holds no hard links
// and the manifest lists none.
func handMade(t *testing.T, parent, base, phase string) handState {
	t.Helper()
	dir := filepath.Join(parent, base)
	writeFiles(t, dir, handFiles)
	s := handState{dir: dir, old: capture(t, dir)}
	name := func(kind string) string { return filepath.Join(parent, ".#treetx."+base+"."+kind) }
	shadow := dir
	switch phase {
	case "snapshot":
		shadow = name("incomplete")
		if err := os.Mkdir(shadow, 0o700); err != nil {
			t.Fatal(err)
		}
		writeFiles(t, shadow, map[string]string{"f": "old\n"})
		s.new = s.old
	case "running", "commit", "rollback":
		changed := name("complete")
		if phase != "rollback" {
			if err := os.Rename(dir, changed); err != nil {
				t.Fatal(err)
			}
			shadow, changed = changed, dir
		}
		sh(t, nil, fmt.Sprintf("cp -a '%s' '%s'", shadow, changed))
		writeFiles(t, changed, map[string]string{"f": "new\n", "n/x": "x\n"})
		if err := os.Remove(filepath.Join(changed, "d", "g")); err != nil {
			t.Fatal(err)
		}
		s.new = capture(t, changed)
	default:
		t.Fatalf("handMade: unknown phase %q", phase)
	}
	if err := os.WriteFile(name("meta"), []byte("# treetx manifest 1\n# end 0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	writeJournal(t, name("journal"), phase, dir, shadow)
	return s
}

// writeJournal writes a journal of phase whose shadow is the inode at
// shadow.
func writeJournal(t *testing.T, path, phase, dir, shadow string) {
	t.Helper()
	id := func(p string) map[string]uint64 {
		var st syscall.Stat_t
		if err := syscall.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		return map[string]uint64{"dev": st.Dev, "ino": st.Ino}
	}
	j := map[string]any{
		"version": 1, "id": "0123456789abcdef", "pid": 4000000, "host": "crashed", "user": "nobody",
		"command": []string{"cvs", "commit", "-m", "x"}, "start": "2026-11-22T01:02:03.456Z",
		"phase": phase, "dir": id(dir), "shadow": id(shadow),
	}
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// killScript changes the tree, records its pid and execs a long sleep (so
// the sleep is treetx's direct child, which Pdeathsig kills with it).
const killScript = `printf new > "$T/f.new" && mv "$T/f.new" "$T/f"
mkdir "$T/n" && printf x > "$T/n/x"
rm "$T/d/g"
echo $$ > "$O/pid"
touch "$O/started"
exec sleep 30
`

// killedRun leaves tree as a treetx run SIGKILLed while its command ran,
// once the command has died with treetx. It returns the tree from before.
func killedRun(t *testing.T, tree string) treeimage.Image {
	t.Helper()
	return killedRuns(t, tree)[0]
}

// killedRuns is killedRun on several trees at once.
func killedRuns(t *testing.T, trees ...string) []treeimage.Image {
	t.Helper()
	befores := make([]treeimage.Image, len(trees))
	procs := make([]*proc, len(trees))
	outs := make([]string, len(trees))
	for i, tree := range trees {
		befores[i] = capture(t, tree)
		outs[i] = t.TempDir()
		procs[i] = start(t, invocation{args: runArgs(tree, script(killScript)), env: env(tree, outs[i])})
	}
	for i, p := range procs {
		waitForFile(t, p, filepath.Join(outs[i], "started"))
		p.signal(t, syscall.SIGKILL)
	}
	for i, p := range procs {
		if r := p.wait(t); r.code != -1 {
			t.Fatalf("treetx was not killed: %v", r)
		}
		child := readPID(t, filepath.Join(outs[i], "pid"))
		waitFor(t, "the command to die with treetx", time.Minute, func() bool { return processGone(child) })
	}
	return befores
}

// liveRun starts a treetx run on tree whose command waits for release();
// then it writes "live" to $T/live and exits 0.
func liveRun(t *testing.T, tree string) (p *proc, release func()) {
	t.Helper()
	out := t.TempDir()
	p = start(t, invocation{
		args: runArgs(tree, script(`touch "$O/started"; while [ ! -e "$O/release" ]; do sleep 0.01; done; printf live > "$T/live"`)),
		env:  env(tree, out),
	})
	waitForFile(t, p, filepath.Join(out, "started"))
	released := false
	release = func() {
		if !released {
			released = true
			if err := os.WriteFile(filepath.Join(out, "release"), nil, 0o644); err != nil {
				t.Error(err)
			}
		}
	}
	t.Cleanup(release)
	return p, release
}

// reportLines maps each line's DIR (the text before ": ") to the line.
func reportLines(t *testing.T, stdout string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for line := range strings.Lines(stdout) {
		dir, _, ok := strings.Cut(line, ": ")
		if !ok {
			t.Errorf("not a report line: %q", line)
			continue
		}
		if _, dup := m[dir]; dup {
			t.Errorf("two lines for %s", dir)
		}
		m[dir] = strings.TrimSpace(line)
	}
	return m
}

// wantDirs checks that the report lines name exactly dirs.
func wantDirs(t *testing.T, lines map[string]string, dirs ...string) {
	t.Helper()
	var got []string
	for d := range lines {
		got = append(got, d)
	}
	slices.Sort(got)
	dirs = slices.Sorted(slices.Values(dirs))
	if !slices.Equal(got, dirs) {
		t.Errorf("report lines for\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(dirs, "\n  "))
	}
}

// namesUnchanged checks that dir holds exactly the names before held, plus
// at most those in allowed. Unlike sameListing it does not wait for trees
// named for removal to go: here they are the leftovers being looked at.
func namesUnchanged(t *testing.T, dir string, before []string, allowed ...string) {
	t.Helper()
	after := listing(t, dir)
	for _, name := range after {
		if !slices.Contains(before, name) && !slices.Contains(allowed, name) {
			t.Errorf("%s: new entry %q", dir, name)
		}
	}
	for _, name := range before {
		if !slices.Contains(after, name) {
			t.Errorf("%s: %q is gone", dir, name)
		}
	}
}

// ---- tests ----

// TestRecoverScan: recover --scan over a root of 50 repositories in mixed
// states. Each ends as it must, the live one is left alone, nothing outside
// the root (behind a symlink) or inside treetx's own trees is touched; the
// exit status is 125 while a journal is corrupt, then 75 while one is busy,
// then 0.
func TestRecoverScan(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	repo := func(i int) string {
		if i >= 43 && i <= 45 {
			return filepath.Join(root, "group", fmt.Sprintf("r%02d", i)) // deeper
		}
		return filepath.Join(root, fmt.Sprintf("r%02d", i))
	}
	if err := os.Mkdir(filepath.Join(root, "group"), 0o755); err != nil {
		t.Fatal(err)
	}
	type want struct {
		image    treeimage.Image // what the tree must be after recovery
		listed   bool            // has a line in the first scan
		leftover []string        // names beside it that must survive
	}
	wants := map[string]*want{}
	side := func(dir, kind string) string {
		return filepath.Join(filepath.Dir(dir), ".#treetx."+filepath.Base(dir)+"."+kind)
	}

	// Idle repositories; some used before (a lock file).
	for i := 0; i < 20; i++ {
		dir := repo(i)
		writeFiles(t, dir, map[string]string{"CVSROOT/config": "x\n", fmt.Sprintf("m/f%d,v", i): "rcs\n"})
		if i%4 == 0 {
			if err := os.WriteFile(side(dir, "lock"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		wants[dir] = &want{image: capture(t, dir)}
	}
	// Interrupted runs: a real treetx killed with SIGKILL, three at once.
	var killed []string
	for i := 20; i < 23; i++ {
		writeFiles(t, repo(i), handFiles)
		killed = append(killed, repo(i))
	}
	for i, img := range killedRuns(t, killed...) {
		wants[killed[i]] = &want{image: img, listed: true}
	}
	// Hand-made states.
	for i, phase := range map[int]string{23: "running", 24: "running", 25: "running", 26: "running", 27: "running",
		28: "commit", 29: "commit", 30: "commit", 31: "commit", 32: "commit",
		43: "running", 44: "commit", 45: "rollback", 48: "rollback", 49: "snapshot"} {
		s := handMade(t, filepath.Dir(repo(i)), filepath.Base(repo(i)), phase)
		img := s.old
		if phase == "commit" {
			img = s.new
		}
		wants[s.dir] = &want{image: img, listed: true}
	}
	// Leftovers of finished transactions: trees being removed, stale files.
	for i := 33; i < 38; i++ {
		dir := repo(i)
		writeFiles(t, dir, handFiles)
		writeFiles(t, side(dir, "removing.00000000000000"+strconv.Itoa(10+i)), map[string]string{"a/b": "b\n", "c": "c\n"})
		if i == 37 {
			writeFiles(t, filepath.Dir(dir), map[string]string{filepath.Base(side(dir, "meta")): "m", filepath.Base(side(dir, "journal.tmp")): "{"})
		}
		wants[dir] = &want{image: capture(t, dir), listed: true}
	}
	// Abandoned shadows without a journal.
	for i := 38; i < 41; i++ {
		dir := repo(i)
		writeFiles(t, dir, handFiles)
		writeFiles(t, side(dir, "incomplete"), map[string]string{"f": "old\n", "d/": ""})
		wants[dir] = &want{image: capture(t, dir), listed: true}
	}
	// Busy: a live transaction.
	busy := repo(41)
	writeFiles(t, busy, handFiles)
	live, release := liveRun(t, busy)
	wants[busy] = &want{image: capture(t, busy), listed: true, leftover: []string{"journal", "complete", "meta"}}
	// A corrupt journal.
	corrupt := repo(42)
	writeFiles(t, corrupt, handFiles)
	if err := os.WriteFile(side(corrupt, "journal"), []byte(`{"version": 1, "id": "0123`), 0o644); err != nil {
		t.Fatal(err)
	}
	wants[corrupt] = &want{image: capture(t, corrupt), listed: true, leftover: []string{"journal"}}
	// Failed trees kept for inspection, holding what looks like a corrupt
	// journal and a leftover: scan must not descend into treetx's trees.
	for i := 46; i < 48; i++ {
		dir := repo(i)
		writeFiles(t, dir, handFiles)
		failed := side(dir, "failed.fedcba9876543210")
		writeFiles(t, failed, map[string]string{"f": "bad\n", ".#treetx.inner.journal": "{corrupt", ".#treetx.inner.removing.0123456789abcdef/x": "x"})
		wants[dir] = &want{image: capture(t, dir), listed: true, leftover: []string{"failed.fedcba9876543210"}}
	}
	// Outside the root, behind a symlink: a leftover that must stay.
	outside := t.TempDir()
	writeFiles(t, filepath.Join(outside, "o"), handFiles)
	outsideLeft := filepath.Join(outside, ".#treetx.o.removing.0123456789abcdef")
	writeFiles(t, outsideLeft, map[string]string{"z": "z"})
	if err := os.Symlink(outside, filepath.Join(root, "link")); err != nil {
		t.Fatal(err)
	}
	if len(wants) != 50 {
		t.Fatalf("%d repositories, want 50", len(wants))
	}
	var listed []string
	for dir, w := range wants {
		if w.listed {
			listed = append(listed, dir)
		}
	}

	// 1. A corrupt journal: 125; everything else recovered, the busy one
	// left alone.
	r := treetx(t, nil, "recover", "--scan", root)
	wantCode(t, r, 125)
	lines := reportLines(t, r.stdout)
	wantDirs(t, lines, listed...)
	contains(t, "the busy line", lines[busy], "in progress", "left alone")
	contains(t, "the corrupt line", lines[corrupt], "needs a person")
	contains(t, "stderr", r.stderr, corrupt)
	for dir, w := range wants {
		treeimage.AssertEqual(t, "expected "+dir, w.image, "after recover --scan", capture(t, dir))
		for _, name := range listing(t, filepath.Dir(dir)) {
			rest, ok := strings.CutPrefix(name, ".#treetx."+filepath.Base(dir)+".")
			if ok && rest != "lock" && rest != "gate" && !slices.Contains(w.leftover, rest) {
				t.Errorf("%s: leftover %s", dir, name)
			}
		}
		for _, rest := range w.leftover {
			if !exists(side(dir, rest)) {
				t.Errorf("%s: %s is gone", dir, side(dir, rest))
			}
		}
	}
	if !exists(outsideLeft) {
		t.Errorf("recover --scan followed a symlink out of the root: %s is gone", outsideLeft)
	}

	// 2. The corrupt journal removed by a person: 75 for the busy one.
	if err := os.Remove(side(corrupt, "journal")); err != nil {
		t.Fatal(err)
	}
	r = treetx(t, nil, "recover", "--scan", root)
	wantCode(t, r, 75)
	wantDirs(t, reportLines(t, r.stdout), busy, repo(46), repo(47))

	// 3. The live transaction commits fine: 0.
	release()
	wantCode(t, live.wait(t), 0)
	if b, err := os.ReadFile(filepath.Join(busy, "live")); err != nil || string(b) != "live" {
		t.Errorf("the live transaction's change: %q, %v", b, err)
	}
	noLeftovers(t, root, filepath.Base(busy))
	r = treetx(t, nil, "recover", "--scan", root)
	wantCode(t, r, 0)
	wantDirs(t, reportLines(t, r.stdout), repo(46), repo(47))
}

// TestRecoverScanStaysOnItsFileSystem: a file system mounted under the
// root, or a bind mount of another directory, is not entered.
func TestRecoverScanStaysOnItsFileSystem(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	tmpfs := filepath.Join(root, "tmpfs")
	bind := filepath.Join(root, "bind")
	for _, d := range []string{tmpfs, bind} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	mountTmpfs(t, tmpfs)
	other := t.TempDir()
	mount(t, bind, "--bind", other, bind)
	var lefts []string
	for _, d := range []string{tmpfs, other} {
		writeFiles(t, filepath.Join(d, "r"), handFiles)
		left := filepath.Join(d, ".#treetx.r.removing.0123456789abcdef")
		writeFiles(t, left, map[string]string{"z": "z"})
		lefts = append(lefts, left)
	}
	r := treetx(t, nil, "recover", "--scan", root)
	wantCode(t, r, 0)
	if r.stdout != "" {
		t.Errorf("recover --scan crossed a mount point:\n%s", r.stdout)
	}
	for _, left := range lefts {
		if !exists(left) {
			t.Errorf("%s was removed", left)
		}
	}
	// The root's own leftovers, in its parent, are found.
	writeFiles(t, filepath.Join(tmpfs, "r", "sub"), map[string]string{"f": "f"})
	r = treetx(t, nil, "recover", "--scan", filepath.Join(tmpfs, "r"))
	wantCode(t, r, 0)
	wantDirs(t, reportLines(t, r.stdout), filepath.Join(tmpfs, "r"))
	if exists(lefts[0]) {
		t.Errorf("%s, a leftover of the root itself, is still there", lefts[0])
	}
}

// TestRecoverTwoAtOnce: two recovers on one directory do not interfere. The
// second, run while the first holds the lock (caught there and stopped with
// SIGSTOP), says busy (75) at once and touches nothing; the first, let go,
// rolls back. Then both at once, several times: exactly one rolls back, the
// other is busy or finds the directory idle.
func TestRecoverTwoAtOnce(t *testing.T) {
	t.Parallel()
	// Enough files that a recovery takes a while to catch.
	parent, tree := newTree(t, handFiles)
	sh(t, []string{"T=" + tree}, `cd "$T" && for d in 1 2 3 4; do mkdir m$d && (cd m$d && seq 1 500 | sed 's/$/,v/' | xargs touch); done`)
	lockFile := filepath.Join(parent, lockName("tree"))
	caught := false
	for attempt := 0; attempt < 5 && !caught; attempt++ {
		before := killedRun(t, tree)
		first := start(t, invocation{args: []string{"recover", tree}})
		holds := fmt.Sprintf(`"pid":%d,`, first.pid())
		for !processGone(first.pid()) {
			if b, _ := os.ReadFile(lockFile); strings.Contains(string(b), holds) {
				first.signal(t, syscall.SIGSTOP)
				b, _ = os.ReadFile(lockFile)
				caught = strings.Contains(string(b), holds) && !processGone(first.pid())
				break
			}
			time.Sleep(time.Millisecond)
		}
		var second result
		if caught {
			second = treetx(t, nil, "recover", tree)
			first.signal(t, syscall.SIGCONT)
		}
		r := first.wait(t)
		wantCode(t, r, 0)
		contains(t, "the first recover", r.stdout, "did: roll back")
		treeimage.AssertEqual(t, "before", before, "after recover", capture(t, tree))
		noLeftovers(t, parent, "tree")
		if caught {
			wantCode(t, second, 75)
			contains(t, "the second recover", second.stdout, "in progress", "treetx recover", strconv.Itoa(first.pid()), "left alone")
		}
	}
	if !caught {
		t.Errorf("never caught a recover holding the lock in 5 attempts")
	}

	for round := range 3 {
		small, smallTree := newTree(t, handFiles)
		want := killedRun(t, smallTree)
		a := start(t, invocation{args: []string{"recover", smallTree}})
		b := start(t, invocation{args: []string{"recover", smallTree}})
		ra, rb := a.wait(t), b.wait(t)
		did := 0
		for _, r := range []result{ra, rb} {
			switch {
			case r.code == 0 && strings.Contains(r.stdout, "did: roll back"):
				did++
			case r.code == 0 && strings.Contains(r.stdout, ": idle: "):
			case r.code == 75 && strings.Contains(r.stdout, "in progress"):
			default:
				t.Errorf("round %d: unexpected outcome:\n%v", round, r)
			}
		}
		if did != 1 {
			t.Errorf("round %d: %d recovers rolled back, want 1:\n%v\n%v", round, did, ra, rb)
		}
		treeimage.AssertEqual(t, "before", want, "after two recovers", capture(t, smallTree))
		noLeftovers(t, small, "tree")
	}
}

// statusFields are the fields of the JSON of status and recover, as
// docs/protocol.md lists them: every one always present.
var statusFields = []string{"dir", "state", "row", "phase", "lock_held", "holder", "journal", "found", "action", "plan", "done", "removed", "lost", "kept", "error", "mode", "group"}

var holderFields = []string{"pid", "host", "user", "command", "since", "running"}

// decodeReport checks that out is one JSON object with exactly the
// documented fields and returns it.
func decodeReport(t *testing.T, out string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		t.Fatalf("not one JSON object: %v\n%s", err, out)
	}
	if !strings.HasSuffix(out, "}\n") || strings.Count(out, "\n") != 1 {
		t.Errorf("want one object on one line:\n%s", out)
	}
	var keys []string
	for k := range m {
		keys = append(keys, k)
	}
	if !slices.Equal(slices.Sorted(slices.Values(keys)), slices.Sorted(slices.Values(statusFields))) {
		t.Errorf("fields %v, want %v", slices.Sorted(slices.Values(keys)), slices.Sorted(slices.Values(statusFields)))
	}
	for _, k := range []string{"removed", "lost", "plan"} {
		if _, ok := m[k].([]any); !ok {
			t.Errorf("%s is %v, want a list", k, m[k])
		}
	}
	return m
}

// TestStatus: the exit status and JSON of treetx status in each state;
// status changes nothing.
func TestStatus(t *testing.T) {
	t.Parallel()
	t.Run("idle", func(t *testing.T) {
		t.Parallel()
		parent, tree := newTree(t, handFiles)
		names := listing(t, parent)
		r := treetx(t, nil, "status", tree)
		wantCode(t, r, 0)
		contains(t, "status", r.stdout, tree+": idle: no transaction")
		r = treetx(t, nil, "status", "--json", tree)
		wantCode(t, r, 0)
		m := decodeReport(t, r.stdout)
		if m["dir"] != tree || m["state"] != "idle" || m["phase"] != "" || m["lock_held"] != false || m["holder"] != nil || m["journal"] != nil || m["done"] != false || m["error"] != "" {
			t.Errorf("idle: %s", r.stdout)
		}
		sameListing(t, parent, names) // not even a lock file
	})
	t.Run("in progress", func(t *testing.T) {
		t.Parallel()
		_, tree := newTree(t, handFiles)
		p, release := liveRun(t, tree)
		r := treetx(t, nil, "status", tree)
		wantCode(t, r, 0)
		contains(t, "status", r.stdout, "in progress", "phase running", "pid "+strconv.Itoa(p.pid()))
		r = treetx(t, nil, "status", "--json", tree)
		wantCode(t, r, 0)
		m := decodeReport(t, r.stdout)
		if m["state"] != "in progress" || m["phase"] != "running" || m["lock_held"] != true {
			t.Errorf("in progress: %s", r.stdout)
		}
		h, ok := m["holder"].(map[string]any)
		if !ok {
			t.Fatalf("no holder: %s", r.stdout)
		}
		var keys []string
		for k := range h {
			keys = append(keys, k)
		}
		if !slices.Equal(slices.Sorted(slices.Values(keys)), slices.Sorted(slices.Values(holderFields))) {
			t.Errorf("holder fields %v, want %v", keys, holderFields)
		}
		host, _ := os.Hostname()
		if h["pid"] != float64(p.pid()) || h["host"] != host || h["user"] != "root" && os.Geteuid() == 0 || h["running"] != true {
			t.Errorf("holder: %v", h)
		}
		if cmd, _ := h["command"].([]any); len(cmd) != 3 || cmd[0] != "sh" {
			t.Errorf("holder command: %v", h["command"])
		}
		if since, err := time.Parse(time.RFC3339Nano, fmt.Sprint(h["since"])); err != nil || time.Since(since) > time.Minute {
			t.Errorf("holder since: %v, %v", h["since"], err)
		}
		if j, _ := m["journal"].(map[string]any); j == nil || j["phase"] != "running" || j["pid"] != float64(p.pid()) {
			t.Errorf("journal: %v", m["journal"])
		}
		release()
		wantCode(t, p.wait(t), 0)
	})
	states := []struct {
		name  string
		make  func(t *testing.T, parent string) string
		code  int
		state string
	}{
		{"interrupted run", func(t *testing.T, parent string) string {
			return handMade(t, parent, "tree", "running").dir
		}, 3, "needs recovery"},
		{"interrupted commit", func(t *testing.T, parent string) string {
			return handMade(t, parent, "tree", "commit").dir
		}, 3, "needs recovery"},
		{"leftovers", func(t *testing.T, parent string) string {
			writeFiles(t, filepath.Join(parent, "tree"), handFiles)
			writeFiles(t, filepath.Join(parent, ".#treetx.tree.incomplete"), map[string]string{"x": "x"})
			return filepath.Join(parent, "tree")
		}, 3, "needs recovery"},
		// A tree named for removal is no unfinished business: treetx run
		// leaves its deletion to a detached process.
		{"old tree being deleted", func(t *testing.T, parent string) string {
			writeFiles(t, filepath.Join(parent, "tree"), handFiles)
			writeFiles(t, filepath.Join(parent, ".#treetx.tree.removing.0123456789abcdef"), map[string]string{"x": "x"})
			return filepath.Join(parent, "tree")
		}, 0, "idle"},
		{"corrupt journal", func(t *testing.T, parent string) string {
			writeFiles(t, filepath.Join(parent, "tree"), handFiles)
			writeFiles(t, parent, map[string]string{".#treetx.tree.journal": "{"})
			return filepath.Join(parent, "tree")
		}, 125, "needs a person"},
		{"running journal without its shadow", func(t *testing.T, parent string) string {
			s := handMade(t, parent, "tree", "running")
			if err := os.Rename(filepath.Join(parent, ".#treetx.tree.complete"), filepath.Join(parent, "elsewhere")); err != nil {
				t.Fatal(err)
			}
			return s.dir
		}, 125, "needs a person"},
		{"a shadow no journal claims", func(t *testing.T, parent string) string {
			writeFiles(t, filepath.Join(parent, "tree"), handFiles)
			writeFiles(t, filepath.Join(parent, ".#treetx.tree.complete"), handFiles)
			return filepath.Join(parent, "tree")
		}, 125, "needs a person"},
		{"no such directory", func(t *testing.T, parent string) string {
			return filepath.Join(parent, "nope")
		}, 125, "error"},
	}
	for _, tt := range states {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parent := t.TempDir()
			dir := tt.make(t, parent)
			names := listing(t, parent)
			r := treetx(t, nil, "status", dir)
			wantCode(t, r, tt.code)
			if tt.state != "error" {
				contains(t, "status", r.stdout, dir+": "+tt.state+": ")
			}
			r = treetx(t, nil, "status", "--json", dir)
			wantCode(t, r, tt.code)
			m := decodeReport(t, r.stdout)
			if m["state"] != tt.state || m["done"] != false || m["lock_held"] != false {
				t.Errorf("state %v, want %s: %s", m["state"], tt.state, r.stdout)
			}
			if tt.state == "needs recovery" && m["action"] == "" {
				t.Errorf("no action: %s", r.stdout)
			}
			if tt.state == "error" && m["error"] == "" {
				t.Errorf("no error: %s", r.stdout)
			}
			if strings.HasPrefix(tt.name, "interrupted") && m["phase"] == "" {
				t.Errorf("no phase: %s", r.stdout)
			}
			namesUnchanged(t, parent, names, lockName("tree"))
			// recover --json prints the same fields, and acts as status said.
			r = treetx(t, nil, "recover", "--json", dir)
			if want := map[int]int{3: 0, 125: 125}[tt.code]; r.code != want {
				t.Errorf("recover exited %d, want %d\n%v", r.code, want, r)
			}
			m = decodeReport(t, r.stdout)
			if tt.code == 3 && m["done"] != true {
				t.Errorf("recover did not do it: %s", r.stdout)
			}
			if tt.code == 3 {
				wantCode(t, treetx(t, nil, "status", dir), 0)
			}
		})
	}
}
