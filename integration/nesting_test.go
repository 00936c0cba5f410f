package integration

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readFile returns path's content, or "" if it cannot be read.
func readFile(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return string(b)
}

// TestOverlappingTreesCommitSurvives is the lost commit of a transaction on
// a tree inside another: the outer run fails and rolls back after the inner
// one reported a commit. With hierarchical locks the inner run waits for the
// outer one, and its commit stays; its lock file, made after the outer
// rollback, stays too.
func TestOverlappingTreesCommitSurvives(t *testing.T) {
	t.Parallel()
	_, repo := newTree(t, map[string]string{"mod/f": "old\n", "g": "g\n"})
	mod := filepath.Join(repo, "mod")
	out := t.TempDir()
	outer := start(t, invocation{args: runArgs(repo, script(`touch "$O/outer-started"; sleep 1; exit 1`)), env: env(repo, out)})
	waitForFile(t, outer, filepath.Join(out, "outer-started"))
	inner := start(t, invocation{args: runArgs(mod, script(`echo new > "$T/f.tmp" && mv "$T/f.tmp" "$T/f" && touch "$O/inner-ran"`)), env: env(mod, out)})
	time.Sleep(300 * time.Millisecond)
	if exists(filepath.Join(out, "inner-ran")) {
		t.Errorf("the inner run's command ran while the outer transaction was live")
	}
	wantCode(t, outer.wait(t), 1)
	wantCode(t, inner.wait(t), 0)
	if got := readFile(filepath.Join(mod, "f")); got != "new\n" {
		t.Errorf("mod/f = %q after the inner run committed, want %q: a commit was undone", got, "new\n")
	}
	if !exists(filepath.Join(repo, lockName("mod"))) {
		t.Errorf("the inner run's lock file is gone")
	}
}

// TestOverlappingTreesPairs runs each pair of a writer or reader on a tree
// and on a tree inside it, in both orders: the second waits until the first
// is done, unless both only read.
func TestOverlappingTreesPairs(t *testing.T) {
	t.Parallel()
	type user struct {
		kind string // "run", "lock -x" or "lock -s"
		sub  bool   // on repo/mod rather than repo
	}
	users := []user{{"run", false}, {"lock -s", false}, {"run", true}, {"lock -s", true}, {"lock -x", false}, {"lock -x", true}}
	for _, first := range users {
		for _, second := range users {
			if first.sub == second.sub {
				continue
			}
			conflict := first.kind != "lock -s" || second.kind != "lock -s"
			name := first.kind + map[bool]string{false: " repo", true: " repo/mod"}[first.sub] + ", then " + second.kind + map[bool]string{false: " repo", true: " repo/mod"}[second.sub]
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				_, repo := newTree(t, map[string]string{"mod/f": "f\n"})
				out := t.TempDir()
				args := func(u user, s string) []string {
					dir := repo
					if u.sub {
						dir = filepath.Join(repo, "mod")
					}
					if u.kind == "run" {
						return runArgs(dir, script(s))
					}
					return append(append([]string{"lock"}, strings.Fields(u.kind)[1:]...), dir, "--", "sh", "-c", s)
				}
				p1 := start(t, invocation{args: args(first, `touch "$O/1-in"; sleep 0.6; touch "$O/1-out"`), env: env(repo, out)})
				waitForFile(t, p1, filepath.Join(out, "1-in"))
				p2 := start(t, invocation{args: args(second, `if [ -e "$O/1-out" ]; then echo after; else echo during; fi > "$O/2"`), env: env(repo, out)})
				wantCode(t, p1.wait(t), 0)
				wantCode(t, p2.wait(t), 0)
				got := strings.TrimSpace(readFile(filepath.Join(out, "2")))
				want := "during"
				if conflict {
					want = "after"
				}
				if got != want {
					t.Errorf("the second ran %s the first, want %s", got, want)
				}
			})
		}
	}
}

// TestNestedRunJoins checks that a treetx run started by the command of a
// transaction, on the same tree or a tree inside it, joins that transaction
// instead of waiting for it forever; that the outer one decides; and that a
// lock that would wait for its own ancestor is refused at once.
func TestNestedRunJoins(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		script string // run as the outer command, with $TX the treetx binary
		code   int
		f      string // the tree's f afterwards
		stderr string // in the outer treetx's stderr
	}{
		{"same tree", `"$TX" run "$T" -- sh -c 'echo new > "$T/f"'`, 0, "new\n", ""},
		{"tree inside", `"$TX" run "$T/sub" -- sh -c 'echo new > "$T/f"'`, 0, "new\n", ""},
		{"twice nested", `"$TX" run "$T" -- "$TX" lock "$T/sub" -- sh -c 'echo new > "$T/f"'`, 0, "new\n", ""},
		{"inner status returned", `"$TX" run "$T" -- sh -c 'echo new > "$T/f.tmp"; mv "$T/f.tmp" "$T/f"; exit 3'`, 3, "old\n", "rolled back"},
		{"outer decides", `"$TX" run "$T" -- sh -c 'echo new > "$T/f.tmp"; mv "$T/f.tmp" "$T/f"; exit 3'; exit 0`, 0, "new\n", ""},
		{"shared lock joins", `"$TX" lock -s "$T" -- true && echo new > "$T/f"`, 0, "new\n", ""},
		{"containing tree refused", `"$TX" run -n "$(dirname "$T")" -- true`, 75, "old\n", "wait for itself"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, tree := newTree(t, map[string]string{"f": "old\n", "sub/g": "g\n"})
			done := make(chan result, 1)
			go func() {
				done <- invoke(t, invocation{args: runArgs(tree, script(tc.script)), env: append(env(tree, t.TempDir()), "TX="+treetxPath)})
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(30 * time.Second):
				t.Fatalf("the nested run hangs")
			}
			wantCode(t, r, tc.code)
			if got := readFile(filepath.Join(tree, "f")); got != tc.f {
				t.Errorf("f = %q, want %q", got, tc.f)
			}
			if tc.stderr != "" && !strings.Contains(r.stderr, tc.stderr) {
				t.Errorf("stderr does not mention %q:\n%s", tc.stderr, r.stderr)
			}
		})
	}
}

// TestNestedSharedRefusesWriter checks that a transaction inside a shared
// lock on its tree is refused at once: it would wait for its own ancestor.
func TestNestedSharedRefusesWriter(t *testing.T) {
	t.Parallel()
	_, tree := newTree(t, map[string]string{"f": "old\n"})
	r := treetx(t, append(env(tree, t.TempDir()), "TX="+treetxPath), "lock", "-s", tree, "--", "sh", "-c", `"$TX" run "$T" -- sh -c 'echo new > "$T/f"'`)
	wantCode(t, r, 75)
	contains(t, "stderr", r.stderr, "shared", "wait for itself")
	if got := readFile(filepath.Join(tree, "f")); got != "old\n" {
		t.Errorf("f = %q, want it unchanged", got)
	}
}

// TestForgedHeldJoinsNothing checks that naming a tree in TREETX_HELD
// without holding its lock gives nothing, even with the lock file open under
// the descriptor named: the run takes the lock as usual, and so waits for
// its holder.
func TestForgedHeldJoinsNothing(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, map[string]string{"f": "old\n"})
	var st syscall.Stat_t
	if err := syscall.Stat(tree, &st); err != nil {
		t.Fatal(err)
	}
	forged := fmt.Sprintf(`[{"fd":5,"mode":"exclusive","dir":%q,"dev":%d,"ino":%d}]`, tree, st.Dev, st.Ino)
	holder := start(t, invocation{args: []string{"lock", tree, "--", "sleep", "1"}})
	lockFile := filepath.Join(parent, lockName("tree"))
	waitFor(t, "the holder's record", 10*time.Second, func() bool { return readFile(lockFile) != "" })
	cmd := exec.Command("sh", "-c", `exec 5<"$L"; exec "$TX" run -n "$T" -- sh -c 'echo new > "$T/f"'`)
	cmd.Env = append(os.Environ(), "L="+lockFile, "TX="+treetxPath, "T="+tree, "TREETX_HELD="+forged)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 75 {
		t.Errorf("a run with a forged TREETX_HELD: %v, want exit 75 (the lock is held)\n%s", err, out)
	}
	wantCode(t, holder.wait(t), 0)
	if got := readFile(filepath.Join(tree, "f")); got != "old\n" {
		t.Errorf("f = %q, want it unchanged", got)
	}
}

// TestOuterTreeKeepsInnerNames checks what a transaction on a tree does with
// treetx's names of a tree inside it: the inner lock and gate get copies in
// the shadow (a link would give them two links, and such a lock is
// refused), so the inner tree can be used at once after the outer
// transaction, committed or rolled back; an inner transaction's journal
// keeps the outer one from beginning, until the inner tree is recovered.
func TestOuterTreeKeepsInnerNames(t *testing.T) {
	t.Parallel()
	_, repo := newTree(t, map[string]string{"mod/f": "f\n"})
	mod := filepath.Join(repo, "mod")
	wantCode(t, treetx(t, nil, "run", mod, "--", "true"), 0)
	for _, code := range []int{0, 1} {
		r := treetx(t, nil, "run", repo, "--", "sh", "-c", fmt.Sprintf(`echo x > "%s/new%d"; exit %d`, repo, code, code))
		wantCode(t, r, code)
		wantCode(t, treetx(t, nil, "run", "-n", mod, "--", "true"), 0)
		var st syscall.Stat_t
		if err := syscall.Stat(filepath.Join(repo, lockName("mod")), &st); err != nil || st.Nlink != 1 {
			t.Errorf("after an outer exit %d: the inner lock file: %v, %d links, want one", code, err, st.Nlink)
		}
	}
	// An inner transaction's leftover journal: the outer one refuses.
	if err := os.WriteFile(filepath.Join(repo, ".#treetx.mod.journal"), []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := treetx(t, nil, "run", repo, "--", "true")
	wantCode(t, r, 125)
	contains(t, "stderr", r.stderr, "recover it first")
}
