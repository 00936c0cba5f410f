package integration

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/treetx/treetx/internal/testenv"
)

// twoTrees makes two trees, each with f = "old\n": one under a temporary
// directory, one on a loop-mounted ext4 image (another file system).
func twoTrees(t *testing.T) (a, b string) {
	t.Helper()
	_, a = newTree(t, map[string]string{"f": "old\n", "d/g": "g\n"})
	img := testenv.FSImage(t, "ext4", testenv.ImageOptions{})
	b = filepath.Join(img.Dir, "tree")
	writeFiles(t, b, map[string]string{"f": "old\n", "d/g": "g\n"})
	return a, b
}

// replaceF is a script that replaces f in each of $A and $B with its
// argument, by rename.
const replaceF = `for d in "$A" "$B"; do echo "$1" > "$d/f.tmp" && mv "$d/f.tmp" "$d/f"; done`

// TestGroupRun runs one transaction over two trees on two file systems:
// a command that succeeds changes both, one that fails neither, and status
// --json shows the other tree while it runs.
func TestGroupRun(t *testing.T) {
	t.Parallel()
	a, b := twoTrees(t)
	ab := []string{"A=" + a, "B=" + b}
	r := treetx(t, ab, "run", a, b, "--", "sh", "-c", replaceF+`; exit 3`, "sh", "new")
	wantCode(t, r, 3)
	for _, d := range []string{a, b} {
		if got := readFile(filepath.Join(d, "f")); got != "old\n" {
			t.Errorf("%s/f = %q after a failed command, want it rolled back", d, got)
		}
	}
	out := t.TempDir()
	p := start(t, invocation{args: []string{"run", b, a, "--", "sh", "-c", replaceF + `; touch "$O/in"; while [ ! -e "$O/go" ]; do sleep 0.05; done`, "sh", "new"}, env: append(ab, "O="+out)})
	waitForFile(t, p, filepath.Join(out, "in"))
	st := treetx(t, nil, "status", "--json", b)
	var rep struct {
		State string `json:"state"`
		Group *struct {
			Trees []string `json:"trees"`
		} `json:"group"`
	}
	if err := json.Unmarshal([]byte(st.stdout), &rep); err != nil {
		t.Fatalf("status --json: %v\n%v", err, st)
	}
	if rep.State != "in progress" {
		t.Errorf("status of %s during the run: %q, want in progress", b, rep.State)
	}
	if err := os.WriteFile(filepath.Join(out, "go"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, p.wait(t), 0)
	for _, d := range []string{a, b} {
		if got := readFile(filepath.Join(d, "f")); got != "new\n" {
			t.Errorf("%s/f = %q after the command succeeded, want %q", d, got, "new\n")
		}
	}
	// Trees inside one another are refused.
	r = treetx(t, nil, "run", a, filepath.Join(a, "d"), "--", "true")
	wantCode(t, r, 125)
	contains(t, "stderr", r.stderr, "lies inside")
}

// TestGroupKillTorture kills (SIGKILL) treetx and its command at a random
// instant of a transaction over two trees on two file systems, recovers one
// of the trees (chosen at random), and checks that both trees are the old
// ones or both the new ones, and that a recovery of the other finds
// nothing left to do.
func TestGroupKillTorture(t *testing.T) {
	t.Parallel()
	rounds := 16
	if testenv.Exhaustive() {
		rounds = 100
	}
	rng := rand.New(rand.NewPCG(testenv.Seed(t), 13))
	a, b := twoTrees(t)
	ab := []string{"A=" + a, "B=" + b}
	committed, rolledBack := 0, 0
	for i := range rounds {
		want := fmt.Sprintf("v%d\n", i)
		before := readFile(filepath.Join(a, "f"))
		p := start(t, invocation{args: []string{"run", "--wait-cleanup", a, b, "--", "sh", "-c", replaceF, "sh", strings.TrimSpace(want)}, env: ab, group: true})
		time.Sleep(time.Duration(rng.IntN(120)) * time.Millisecond)
		p.signalGroup(t, syscall.SIGKILL)
		p.wait(t)
		first, second := a, b
		if rng.IntN(2) == 1 {
			first, second = b, a
		}
		waitFor(t, "the killed command's lock to go", 10*time.Second, func() bool {
			return treetx(t, nil, "recover", first).code != 75
		})
		if r := treetx(t, nil, "recover", second); r.code != 0 {
			t.Fatalf("round %d: recover %s after %s: %v", i, second, first, r)
		}
		fa, fb := readFile(filepath.Join(a, "f")), readFile(filepath.Join(b, "f"))
		switch {
		case fa != fb:
			t.Fatalf("round %d: the trees disagree after recovering %s: %q and %q", i, first, fa, fb)
		case fa == want:
			committed++
		case fa == before:
			rolledBack++
		default:
			t.Fatalf("round %d: f = %q, want %q or %q", i, fa, before, want)
		}
		for _, d := range []string{a, b} {
			names, _ := os.ReadDir(filepath.Dir(d))
			for _, e := range names {
				if n := e.Name(); n != "tree" && n != ".#treetx.tree.lock" && n != ".#treetx.tree.gate" && n != "lost+found" {
					t.Fatalf("round %d: left beside %s: %s", i, d, n)
				}
			}
		}
	}
	t.Logf("%d kills of a transaction over two trees on two file systems: %d committed, %d rolled back, 0 disagreements", rounds, committed, rolledBack)
	fmt.Printf("group kill torture: %d rounds, %d committed, %d rolled back\n", rounds, committed, rolledBack)
}

// TestGroupOppositeOrders runs two transactions over overlapping trees in
// opposite orders, many times at once: none may deadlock, and every change
// is kept.
func TestGroupOppositeOrders(t *testing.T) {
	t.Parallel()
	_, root := newTree(t, map[string]string{"a/x/f": "0\n", "b/y/f": "0\n"})
	a, b := filepath.Join(root, "a"), filepath.Join(root, "b")
	const rounds = 20
	done := make(chan result, 2)
	for _, args := range [][]string{{a, filepath.Join(b, "y")}, {b, filepath.Join(a, "x")}} {
		go func() {
			var last result
			for range rounds {
				last = treetx(t, nil, append(append([]string{"run", "-w", "60"}, args...), "--", "sh", "-c", `for d; do n=$(cat "$d"/*/f "$d"/f 2>/dev/null | head -1); done; true`, "sh")...)
				if last.code != 0 {
					break
				}
			}
			done <- last
		}()
	}
	for range 2 {
		select {
		case r := <-done:
			wantCode(t, r, 0)
		case <-time.After(90 * time.Second):
			t.Fatal("two transactions over overlapping trees in opposite orders deadlock")
		}
	}
}
