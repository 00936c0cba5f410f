package integration

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/treetx/treetx/internal/testenv"
)

// counterDirs are the directories of module ctr; each holds a file
// "counter" that every commit of TestCVSReadersSeeWholeCommits rewrites.
var counterDirs = []string{".", "a", "a/b", "c", "c/d", "c/d/e", "f"}

// TestCVSReadersSeeWholeCommits: readers under "treetx lock --shared" (a
// cvs checkout, and RCS's co -p of every counter) run in a loop while a
// writer runs commits under "treetx run", each rewriting the counter file
// of every directory with the commit's number and attempt. Some commits
// succeed; some are made to fail (a verifymsg script refuses the message;
// the command fails after cvs committed everything; cvs is killed after
// renaming some of the counters into place). Every read must succeed and
// show the same content in every counter, that of a commit that
// succeeded, and no older than the last one that had succeeded when the
// read began: never a failed commit, a half commit, or a tree mid-swap.
func TestCVSReadersSeeWholeCommits(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.CVS)
	duration := 10 * time.Second
	if testing.Short() {
		duration = 4 * time.Second
	}

	// The repository: module ctr, the counters at "0".
	base := t.TempDir()
	r := &cvsRepo{base: base, parent: filepath.Join(base, "parent"), work: filepath.Join(base, "work")}
	r.root = filepath.Join(r.parent, "tree")
	r.shape.modules = []string{"ctr"}
	src := map[string]string{}
	for _, d := range counterDirs {
		src[d+"/counter"] = "0\n"
		src[d+"/data.c"] = "int data = 1; /* " + d + " */\n"
	}
	writeFiles(t, filepath.Join(base, "src"), src)
	for _, d := range []string{r.parent, r.work} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	r.cvsIn(t, base, nil, "-d", r.root, "init")
	// verifymsg: a message with REJECT in it is refused.
	r.editAdmin(t, "verifymsg", `DEFAULT sh -c "! grep -q REJECT %l"`+"\n")
	if out, code := r.cvsIn(t, filepath.Join(base, "src"), nil, "-Q", "-d", r.root, "import", "-m", "counters", "ctr", "vendor", "start"); code != 0 {
		t.Fatalf("cvs import exited %d:\n%s", code, out)
	}
	r.cvs(t, "-Q", "-d", r.root, "checkout", "ctr")

	var (
		mu        sync.Mutex
		committed = []string{"0\n"} // the counters' content after each successful commit
		nOK       atomic.Int64      // len(committed)-1, once treetx has returned
		// attemptSince is when the writer's current attempt began (Unix
		// ns; 0 between attempts). Should readers that keep overlapping
		// keep the writer out (TestWriterNotStarvedByReaders), they start
		// no new checkout once an attempt is 3s old: this test is about
		// what readers see.
		attemptSince atomic.Int64
		done         = make(chan struct{})
	)

	// The readers.
	type seen struct {
		content string
		min     int64 // commits that had succeeded when the checkout began
	}
	var (
		rwg      sync.WaitGroup
		seenMu   sync.Mutex
		seenAll  []seen
		failures atomic.Int64
	)
	// Reader 0 checks out with cvs; reader 1 reads the counters' ,v files
	// with RCS's co -p, which takes no CVS lock. (Two cvs checkouts at
	// once may meet at a CVS lock, and the one that waits sleeps 30s.)
	testenv.Require(t, testenv.RCS)
	checkout := r.doc(t, "treetx lock --shared /srv/cvsroot -- cvs -d /srv/cvsroot checkout -d snapshot ctr", base)
	coArgs := []string{"sh", "-c", `i=0; for f; do i=$((i+1)); co -q -p "$f" > "snapshot/$i" || exit 1; done`, "sh"}
	for _, d := range counterDirs {
		coArgs = append(coArgs, filepath.Join(r.root, "ctr", d, "counter,v"))
	}
	rcsRead := docCmd{argv: append([]string{"treetx", "lock", "--shared", r.root, "--"}, coArgs...)}
	for reader := range 2 {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			rng := rand.New(rand.NewPCG(uint64(reader), 1))
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				for since := attemptSince.Load(); since != 0 && time.Since(time.Unix(0, since)) > 3*time.Second; since = attemptSince.Load() {
					time.Sleep(10 * time.Millisecond)
				}
				dir := filepath.Join(base, fmt.Sprintf("reader%d-%d", reader, i))
				if err := os.Mkdir(dir, 0o755); err != nil {
					t.Error(err)
					return
				}
				min := nOK.Load()
				command := checkout
				if reader == 1 {
					command = rcsRead
					if err := os.Mkdir(filepath.Join(dir, "snapshot"), 0o755); err != nil {
						t.Error(err)
						return
					}
				}
				res := r.runDoc(t, command, dir, nil)
				if res.code != 0 {
					failures.Add(1)
					t.Errorf("a reader under treetx lock --shared failed: %v", res)
					continue
				}
				var contents []string
				for n, d := range counterDirs {
					name := filepath.Join(dir, "snapshot", d, "counter")
					if reader == 1 {
						name = filepath.Join(dir, "snapshot", strconv.Itoa(n+1))
					}
					b, err := os.ReadFile(name)
					if err != nil {
						t.Errorf("reader %d: %v", reader, err)
					}
					contents = append(contents, string(b))
				}
				slices.Sort(contents)
				if contents = slices.Compact(contents); len(contents) != 1 {
					t.Errorf("reader %d saw a half commit in %s: counters %q", reader, dir, contents)
				}
				seenMu.Lock()
				seenAll = append(seenAll, seen{contents[0], min})
				seenMu.Unlock()
				os.RemoveAll(dir)
				time.Sleep(time.Duration(rng.IntN(300)) * time.Millisecond)
			}
		}()
	}

	// The writer.
	modes := []string{"ok", "cvs killed mid-commit", "ok", "fails after the commit", "ok", "cvs killed mid-commit", "verifymsg refuses"}
	attempts := map[string]int{}
	killedLate := 0
	rng := rand.New(rand.NewPCG(7, 7))
	// It goes on for duration, and then until enough happened to check
	// (load slows everything down), or for two minutes at most.
	enough := func() bool {
		mu.Lock()
		commits := len(committed) - 1
		mu.Unlock()
		seenMu.Lock()
		defer seenMu.Unlock()
		states := map[string]bool{}
		for _, s := range seenAll {
			states[s.content] = true
		}
		return commits >= 2 && len(seenAll) >= 4 && len(states) >= 2
	}
	deadline, limit := time.Now().Add(duration), time.Now().Add(2*time.Minute)
	for attempt := 1; time.Now().Before(deadline) || !enough() && time.Now().Before(limit); attempt++ {
		mode := modes[(attempt-1)%len(modes)]
		attempts[mode]++
		content := fmt.Sprintf("commit %d attempt %d\n", len(committed), attempt)
		for _, d := range counterDirs {
			writeFiles(t, filepath.Join(r.work, "ctr"), map[string]string{d + "/counter": content})
		}
		backup := r.work + ".bak"
		cpA(t, r.work, backup)
		msg := "counter " + content
		command := []string{"cvs", "-Q", "-d", r.root, "commit", "-m", msg, "ctr"}
		want := 0
		switch mode {
		case "verifymsg refuses":
			command[len(command)-2], want = "REJECT "+msg, 1
		case "fails after the commit":
			// sh -c '"$@" && exit 3' sh cvs ...
			command, want = append(script(`"$@" && exit 3`), append([]string{"sh"}, command...)...), 3
		case "cvs killed mid-commit":
			want = 128 + 9
		}
		var w *rewriteWatch
		if mode == "cvs killed mid-commit" {
			w = watchRewrites(t, r.root)
		}
		attemptSince.Store(time.Now().UnixNano())
		p := start(t, invocation{args: runArgs(r.root, command), env: cvsEnviron(base), dir: r.work})
		if w != nil {
			// Kill cvs after it renamed k of the counters into place.
			k := int64(1 + rng.IntN(len(counterDirs)-1))
			for w.n.Load() < k && !processGone(p.pid()) {
				select {
				case <-w.notify:
				case <-time.After(5 * time.Millisecond):
				}
			}
			for _, pid := range children(t, p.pid()) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			w.stop()
		}
		res := p.wait(t)
		attemptSince.Store(0)
		if mode == "cvs killed mid-commit" && res.code == 0 {
			// cvs had renamed the last counter and exited before the kill.
			killedLate++
		} else {
			wantCode(t, res, want)
		}
		if res.code == 0 {
			mu.Lock()
			committed = append(committed, content)
			mu.Unlock()
			nOK.Add(1)
			os.RemoveAll(backup)
		} else {
			// The working copy believes what cvs did before it failed.
			if err := os.RemoveAll(r.work); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(backup, r.work); err != nil {
				t.Fatal(err)
			}
		}
		if t.Failed() {
			break
		}
	}
	close(done)
	rwg.Wait()

	index := map[string]int64{}
	for i, c := range committed {
		index[c] = int64(i)
	}
	distinct := map[string]bool{}
	for _, s := range seenAll {
		i, ok := index[s.content]
		switch {
		case !ok:
			t.Errorf("a reader saw %q, which was never committed", s.content)
		case i < s.min:
			t.Errorf("a read begun after commit %d saw the older %q", s.min, s.content)
		}
		distinct[s.content] = true
	}
	t.Logf("writer: %d attempts by mode %v (%d kills came after cvs exited), %d committed; readers: %d reads, %d failed, %d states seen", sumValues(attempts), attempts, killedLate, len(committed)-1, len(seenAll), failures.Load(), len(distinct))
	if len(committed) < 2 || len(seenAll) < 4 || len(distinct) < 2 {
		t.Errorf("too little happened: %d commits, %d reads seeing %d states", len(committed)-1, len(seenAll), len(distinct))
	}
	// The repository holds the last commit, and CVS finds it whole.
	want := map[string]string{}
	for _, d := range counterDirs {
		want[filepath.ToSlash(filepath.Join("ctr", d, "counter"))] = committed[len(committed)-1]
		want[filepath.ToSlash(filepath.Join("ctr", d, "data.c"))] = src[d+"/data.c"]
	}
	r.check(t, want)
	noLeftovers(t, r.parent, "tree")
}

func sumValues(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// TestWriterNotStarvedByReaders: readers under "treetx lock --shared" that
// come one after another, each taking the lock before the one before it
// lets go (a busy server's checkouts), must not keep a "treetx run" out for
// ever. A writer that asks for the lock gets it once the readers that held
// it when it asked are done: every reader that arrives after the writer
// queued (holds the lock's gate) runs after it, one started then among
// them, and the writer gets the lock while the readers keep coming.
func TestWriterNotStarvedByReaders(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	gate := filepath.Join(parent, ".#treetx.tree.gate")
	stop := make(chan struct{})
	var queued atomic.Bool // the writer was seen holding the gate
	type reader struct {
		p     *proc
		n     int
		after bool // started after the writer was seen queued
	}
	relay := make(chan []reader)
	go func() {
		var readers []reader
		defer func() { relay <- readers }()
		for n := 0; ; n++ {
			select {
			case <-stop:
				return
			default:
			}
			after := queued.Load()
			marker := filepath.Join(out, fmt.Sprintf("r%d", n))
			p := start(t, invocation{args: lockArgs(tree, script(`echo "reader $N" >> "$O/log"; touch "$M"; sleep 0.4`), "--shared"), env: append(env(tree, out), "M="+marker, "N="+strconv.Itoa(n))})
			readers = append(readers, reader{p, n, after})
			// The next one starts once this one holds the lock, 0.2s
			// before it lets go.
			for !exists(marker) && !processGone(p.pid()) {
				time.Sleep(5 * time.Millisecond)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()
	// The writer asks while readers overlap.
	for _, m := range []string{"r0", "r1"} {
		waitFor(t, "a reader to hold the lock", time.Minute, func() bool { return exists(filepath.Join(out, m)) })
	}
	writer := start(t, invocation{args: runArgs(tree, script(`echo writer >> "$O/log"; touch "$T/written"`), "--lock-timeout", "90s"), env: env(tree, out)})
	waitFor(t, "the writer to queue at the gate", time.Minute, func() bool {
		return processGone(writer.pid()) || slices.Contains(flockHolders(t, gate), writer.pid())
	})
	queued.Store(true)
	lateMarker := filepath.Join(out, "late")
	late := start(t, invocation{args: lockArgs(tree, script(`echo "reader late" >> "$O/log"; touch "$M"`), "--shared"), env: append(env(tree, out), "M="+lateMarker)})
	res := writer.wait(t)
	close(stop)
	readers := <-relay
	for _, r := range readers {
		wantCode(t, r.p.wait(t), 0)
	}
	wantCode(t, late.wait(t), 0)
	wantCode(t, res, 0)
	log, err := os.ReadFile(filepath.Join(out, "log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(log)), "\n")
	w := slices.Index(lines, "writer")
	if i := slices.Index(lines, "reader late"); i < w {
		t.Errorf("a reader that came after the writer queued ran before it:\n%s", log)
	}
	for _, r := range readers {
		if i := slices.Index(lines, "reader "+strconv.Itoa(r.n)); r.after && i >= 0 && i < w {
			t.Errorf("reader %d, which came after the writer queued, ran before it:\n%s", r.n, log)
		}
	}
	t.Logf("%d readers ran before the writer got the lock", w)
}
