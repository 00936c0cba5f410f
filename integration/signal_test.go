package integration

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/treetx/treetx/internal/treeimage"
)

// trapScript changes the tree, records in $O/got the signal it is sent, and
// exits 9 on it; $O/started says it is running.
const trapScript = `trap 'echo TERM > "$O/got"; exit 9' TERM
trap 'echo INT > "$O/got"; exit 9' INT
trap 'echo HUP > "$O/got"; exit 9' HUP
trap 'echo QUIT > "$O/got"; exit 9' QUIT
mkdir "$T/new"
printf x > "$T/new/f"
rm "$T/a/run.sh"
chmod 600 "$T/shared/data.bin"
touch "$O/started"
while :; do sleep 0.02; done
`

// TestSignalToTreetxReachesCommand sends a signal to treetx itself (not to
// the command) while the command runs: the command receives it, the tree is
// rolled back, and treetx exits 128+N (not the command's 9), as timeout(1)
// exits 124.
func TestSignalToTreetxReachesCommand(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		sig  syscall.Signal
		name string
	}{
		{syscall.SIGTERM, "TERM"},
		{syscall.SIGINT, "INT"},
		{syscall.SIGHUP, "HUP"},
		{syscall.SIGQUIT, "QUIT"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parent, tree := newSample(t)
			out := t.TempDir()
			before := capture(t, tree)
			p := start(t, invocation{args: runArgs(tree, script(trapScript)), env: env(tree, out)})
			waitForFile(t, p, filepath.Join(out, "started"))
			p.signal(t, tt.sig)
			r := p.wait(t)
			wantCode(t, r, 128+int(tt.sig))
			oneLine(t, r.stderr, "interrupted by SIG"+tt.name, "status 9", "rolled back")
			got, err := os.ReadFile(filepath.Join(out, "got"))
			if err != nil || strings.TrimSpace(string(got)) != tt.name {
				t.Errorf("the command got %q (%v), want %s", got, err, tt.name)
			}
			treeimage.AssertEqual(t, "before", before, "after rollback", capture(t, tree))
			noLeftovers(t, parent, "tree")
		})
	}
}

// TestSignalToTreetxRollsBackWhenCommandExitsZero: a user who interrupts
// treetx means to abandon the transaction. A command that traps the signal,
// changes the tree in its handler and exits 0 is rolled back all the same,
// and treetx exits 128+N; with --quiet it says nothing of it.
func TestSignalToTreetxRollsBackWhenCommandExitsZero(t *testing.T) {
	t.Parallel()
	const s = `trap 'printf done > "$T/added"; exit 0' INT TERM HUP QUIT
printf x > "$T/before-signal"
touch "$O/started"
while :; do sleep 0.02; done
`
	for _, tt := range []struct {
		sig   syscall.Signal
		name  string
		flags []string
	}{
		{syscall.SIGINT, "INT", nil},
		{syscall.SIGTERM, "TERM", nil},
		{syscall.SIGHUP, "HUP", nil},
		{syscall.SIGQUIT, "QUIT", nil},
		{syscall.SIGINT, "INT", []string{"--quiet"}},
	} {
		t.Run(strings.Join(append([]string{tt.name}, tt.flags...), " "), func(t *testing.T) {
			t.Parallel()
			parent, tree := newTree(t, map[string]string{"f": "f\n", "d/g": "g\n"})
			out := t.TempDir()
			before := capture(t, tree)
			p := start(t, invocation{args: runArgs(tree, script(s), tt.flags...), env: env(tree, out)})
			waitForFile(t, p, filepath.Join(out, "started"))
			p.signal(t, tt.sig)
			r := p.wait(t)
			wantCode(t, r, 128+int(tt.sig))
			if tt.flags == nil {
				oneLine(t, r.stderr, "interrupted by SIG"+tt.name, "exited with status 0", "rolled back")
			} else if r.stderr != "" {
				t.Errorf("stderr with --quiet = %q, want nothing", r.stderr)
			}
			treeimage.AssertEqual(t, "before", before, "after the interrupted run", capture(t, tree))
			noLeftovers(t, parent, "tree")
		})
	}
}

// TestCtrlCRollsBack sends SIGINT to treetx's process group, as a terminal
// does on Ctrl-C: the command gets it twice (from the "terminal" and from
// treetx), traps it and exits 0, possibly before treetx could forward it.
// The transaction is rolled back all the same and treetx exits 130.
func TestCtrlCRollsBack(t *testing.T) {
	t.Parallel()
	const s = `trap 'printf done > "$T/added"; exit 0' INT
printf x > "$T/before-signal"
touch "$O/started"
while :; do sleep 0.02; done
`
	parent, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	before := capture(t, tree)
	p := start(t, invocation{args: runArgs(tree, script(s)), env: env(tree, out), group: true})
	waitForFile(t, p, filepath.Join(out, "started"))
	p.signalGroup(t, syscall.SIGINT)
	r := p.wait(t)
	wantCode(t, r, 130)
	oneLine(t, r.stderr, "interrupted by SIGINT", "rolled back")
	treeimage.AssertEqual(t, "before", before, "after Ctrl-C", capture(t, tree))
	noLeftovers(t, parent, "tree")
}

// TestSignalDuringSnapshotCancels: a signal that reaches treetx while it
// builds the shadow, before the command starts, cancels the transaction:
// the command never runs, DIR is untouched and the partial shadow is gone.
// The tree is on a tmpfs, where 20,000 files are made quickly.
func TestSignalDuringSnapshotCancels(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("slow (-short)")
	}
	mnt := t.TempDir()
	mountTmpfs(t, mnt)
	parent := filepath.Join(mnt, "parent")
	tree := filepath.Join(parent, "tree")
	sh(t, []string{"T=" + tree}, `set -e
mkdir -p "$T"
cd "$T"
for d in $(seq 40); do mkdir d$d; (cd d$d && touch $(seq 500)); done`)
	before := capture(t, tree)
	marker := filepath.Join(t.TempDir(), "ran")
	p := start(t, invocation{args: runArgs(tree, []string{"touch", marker})})
	incomplete := filepath.Join(parent, ".#treetx.tree.incomplete")
	deadline := time.Now().Add(10 * time.Second)
	for !exists(incomplete) && !exists(marker) && time.Now().Before(deadline) {
	}
	p.signal(t, syscall.SIGTERM)
	r := p.wait(t)
	if exists(marker) {
		t.Skipf("the shadow was built before the signal arrived (exit %d)", r.code)
	}
	wantCode(t, r, 128+int(syscall.SIGTERM))
	oneLine(t, r.stderr, "interrupted")
	treeimage.AssertEqual(t, "before", before, "after", capture(t, tree))
	noLeftovers(t, parent, "tree")
}

// TestSignalWhileWaitingForLockCancels: a signal that reaches treetx while
// it waits for DIR's lock cancels it; its command never runs and the
// holder's transaction is not disturbed.
func TestSignalWhileWaitingForLockCancels(t *testing.T) {
	t.Parallel()
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP} {
		t.Run(sig.String(), func(t *testing.T) {
			t.Parallel()
			parent, tree := newTree(t, map[string]string{"f": "f\n"})
			out := t.TempDir()
			holder := start(t, invocation{
				args: runArgs(tree, script(`touch "$O/started"; while [ ! -e "$O/release" ]; do sleep 0.01; done; printf h > "$T/holder"`)),
				env:  env(tree, out),
			})
			waitForFile(t, holder, filepath.Join(out, "started"))
			marker := filepath.Join(out, "ran")
			waiter := start(t, invocation{args: runArgs(tree, []string{"touch", marker})})
			awaitQueued(t, parent, waiter)
			waiter.signal(t, sig)
			r := waiter.wait(t)
			wantCode(t, r, 128+int(sig))
			oneLine(t, r.stderr, "interrupted")
			if exists(marker) {
				t.Errorf("the waiting run's command ran")
			}
			if err := os.WriteFile(filepath.Join(out, "release"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
			wantCode(t, holder.wait(t), 0)
			if !exists(filepath.Join(tree, "holder")) {
				t.Errorf("the holder's change was not committed")
			}
			noLeftovers(t, parent, "tree")
		})
	}
}
