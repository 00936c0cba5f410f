package integration

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/treetx/treetx/internal/treeimage"
)

// TestSIGKILLOfTreetx kills treetx with SIGKILL after its command changed
// the tree. The command (a direct child) dies with it; a grandchild that
// inherited the lock descriptor keeps DIR locked, so that recover leaves it
// alone while it lives. Then status says 3, recover rolls back, and status
// says 0.
func TestSIGKILLOfTreetx(t *testing.T) {
	t.Parallel()
	const change = `mkdir "$T/new"
printf x > "$T/new/f"
rm "$T/a/run.sh"
mv -f "$T/mod/d1/f1.c,v" "$T/mod/d2/f2.c,v"
chmod 700 "$T/shared/data.bin"
echo $$ > "$O/pid"
`
	tests := []struct {
		name       string
		script     string
		grandchild bool
	}{
		{"direct child dies with treetx", change + `touch "$O/started"
exec sleep 30
`, false},
		{"shell loop dies with treetx", change + `touch "$O/started"
while :; do sleep 0.02; done
`, false},
		{"grandchild keeps the lock", change + `( while [ ! -e "$O/release" ]; do sleep 0.01; done ) &
echo $! > "$O/gpid"
touch "$O/started"
wait
`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parent, tree := newSample(t)
			out := t.TempDir()
			before := capture(t, tree)
			p := start(t, invocation{args: runArgs(tree, script(tt.script)), env: env(tree, out)})
			waitForFile(t, p, filepath.Join(out, "started"))
			p.signal(t, syscall.SIGKILL)
			if r := p.wait(t); r.code != -1 {
				t.Fatalf("treetx was not killed: %v", r)
			}
			child := readPID(t, filepath.Join(out, "pid"))
			waitFor(t, "the command to die with treetx (Pdeathsig)", time.Minute, func() bool { return processGone(child) })

			if tt.grandchild {
				gpid := readPID(t, filepath.Join(out, "gpid"))
				if processGone(gpid) {
					t.Fatalf("the grandchild died too")
				}
				r := treetx(t, nil, "recover", tree)
				wantCode(t, r, 75)
				if !exists(filepath.Join(tree, "new")) {
					t.Errorf("recover touched DIR while a live descendant held the lock")
				}
				r = treetx(t, nil, "status", tree)
				wantCode(t, r, 0)
				contains(t, "status", r.stdout, "in progress")
				sh(t, nil, "touch "+filepath.Join(out, "release"))
				waitFor(t, "the grandchild to exit", time.Minute, func() bool { return processGone(gpid) })
			}

			// A sleep the dead shell started may hold the lock a moment more.
			var r result
			waitFor(t, "status to say needs recovery (exit 3)", time.Minute, func() bool {
				r = treetx(t, nil, "status", tree)
				return r.code != 0
			})
			wantCode(t, r, 3)
			contains(t, "status", r.stdout, "needs recovery")
			r = treetx(t, nil, "recover", tree)
			wantCode(t, r, 0)
			treeimage.AssertEqual(t, "before", before, "after recover", capture(t, tree))
			noLeftovers(t, parent, "tree")
			r = treetx(t, nil, "status", tree)
			wantCode(t, r, 0)
			contains(t, "status", r.stdout, "idle")
			// The directory is usable again.
			r = treetx(t, env(tree, out), runArgs(tree, script(`printf again > "$T/again"`), "--lock-timeout", "0")...)
			wantCode(t, r, 0)
			if !exists(filepath.Join(tree, "again")) {
				t.Errorf("a run after recovery did not commit")
			}
			noLeftovers(t, parent, "tree")
			if strings.Contains(r.stderr, "recover") {
				t.Errorf("a run after recovery still asks for recovery:\n%s", r.stderr)
			}
		})
	}
}
