package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// lockArgs returns "lock [flags...] dir -- command...".
func lockArgs(dir string, command []string, flags ...string) []string {
	args := append([]string{"lock"}, flags...)
	args = append(args, dir, "--")
	return append(args, command...)
}

// holdScript says it started and holds until $O/release exists, then runs
// $THEN.
const holdScript = `touch "$O/started-$N"; while [ ! -e "$O/release" ]; do sleep 0.01; done; eval "$THEN"`

// TestLockExclusiveSerializesWithRun: treetx lock (exclusive) and treetx
// run on one DIR never overlap.
func TestLockExclusiveSerializesWithRun(t *testing.T) {
	t.Parallel()
	_, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	s := `echo "start $N" >> "$O/log"; sleep 0.2; echo "end $N" >> "$O/log"`
	var procs []*proc
	for i, sub := range []string{"lock", "run", "lock", "run"} {
		args := lockArgs(tree, script(s))
		if sub == "run" {
			args = runArgs(tree, script(s))
		}
		procs = append(procs, start(t, invocation{args: args, env: append(env(tree, out), fmt.Sprintf("N=%s%d", sub, i))}))
	}
	for _, p := range procs {
		wantCode(t, p.wait(t), 0)
	}
	data, err := os.ReadFile(filepath.Join(out, "log"))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 8 {
		t.Fatalf("log has %d lines, want 8:\n%s", len(lines), data)
	}
	for i := 0; i < len(lines); i += 2 {
		id, ok := strings.CutPrefix(lines[i], "start ")
		if !ok || lines[i+1] != "end "+id {
			t.Fatalf("lock and run overlap:\n%s", data)
		}
	}
}

// TestLockSharedReadersRunTogether: two --shared readers hold the lock at
// the same time (each waits until the other has started).
func TestLockSharedReadersRunTogether(t *testing.T) {
	t.Parallel()
	_, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	s := `touch "$O/r$N"; i=0; while [ ! -e "$O/r$OTHER" ]; do i=$((i+1)); [ $i -lt 6000 ] || exit 1; sleep 0.01; done`
	a := start(t, invocation{args: lockArgs(tree, script(s), "--shared"), env: append(env(tree, out), "N=1", "OTHER=2")})
	b := start(t, invocation{args: lockArgs(tree, script(s), "--shared"), env: append(env(tree, out), "N=2", "OTHER=1")})
	wantCode(t, a.wait(t), 0)
	wantCode(t, b.wait(t), 0)
}

// TestLockReaderBlocksWriter: while a --shared reader runs, a transaction
// cannot begin: with --lock-timeout 0 it fails (75) without running; without
// one it waits, and runs once the reader is done.
func TestLockReaderBlocksWriter(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	reader := start(t, invocation{args: lockArgs(tree, script(holdScript), "--shared"), env: append(env(tree, out), "N=r", `THEN=echo reader-done >> "$O/log"`)})
	waitForFile(t, reader, filepath.Join(out, "started-r"))

	r := treetx(t, env(tree, out), runArgs(tree, script(`touch "$T/w0"`), "--lock-timeout", "0")...)
	wantCode(t, r, 75)
	if exists(filepath.Join(tree, "w0")) {
		t.Errorf("a transaction ran while a reader held the lock")
	}
	writer := start(t, invocation{args: runArgs(tree, script(`echo writer >> "$O/log"; touch "$T/w1"`)), env: env(tree, out)})
	awaitQueued(t, parent, writer)
	if processGone(writer.pid()) || exists(filepath.Join(tree, "w1")) {
		t.Fatalf("the transaction did not wait for the reader")
	}
	if err := os.WriteFile(filepath.Join(out, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, reader.wait(t), 0)
	wantCode(t, writer.wait(t), 0)
	if b, _ := os.ReadFile(filepath.Join(out, "log")); string(b) != "reader-done\nwriter\n" {
		t.Errorf("log:\n%s", b)
	}
	noLeftovers(t, parent, "tree")
}

// TestLockWriterBlocksReader: while a transaction runs, a --shared reader
// cannot start: with --lock-timeout 0 it fails (75); without one it waits,
// and then sees the committed tree, never the transaction half done.
func TestLockWriterBlocksReader(t *testing.T) {
	t.Parallel()
	parent, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	writer := start(t, invocation{
		args: runArgs(tree, script(`printf half > "$T/a"; touch "$O/started-w"; while [ ! -e "$O/release" ]; do sleep 0.01; done; printf done > "$T/b"`)),
		env:  env(tree, out),
	})
	waitForFile(t, writer, filepath.Join(out, "started-w"))
	read := `cat "$T/a" "$T/b" > "$O/seen-$N" 2>&1`
	r := treetx(t, append(env(tree, out), "N=0"), lockArgs(tree, script(read), "--shared", "--lock-timeout", "0")...)
	wantCode(t, r, 75)
	oneLine(t, r.stderr, "pid "+fmt.Sprint(writer.pid()))
	if exists(filepath.Join(out, "seen-0")) {
		t.Errorf("a reader ran during a transaction")
	}
	reader := start(t, invocation{args: lockArgs(tree, script(read), "--shared"), env: append(env(tree, out), "N=1")})
	awaitQueued(t, parent, reader)
	if processGone(reader.pid()) || exists(filepath.Join(out, "seen-1")) {
		t.Fatalf("the reader did not wait for the transaction")
	}
	if err := os.WriteFile(filepath.Join(out, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, writer.wait(t), 0)
	wantCode(t, reader.wait(t), 0)
	if b, _ := os.ReadFile(filepath.Join(out, "seen-1")); string(b) != "halfdone" {
		t.Errorf("the reader saw %q, want the committed tree (halfdone)", b)
	}
}

// TestLockExitStatus: COMMAND's status passes through; a signal is 128+N;
// 127 and 126 as treetx run; 64 for a bad command line; 75 when the lock
// is not had in time; 125 when DIR needs recovery (COMMAND not run).
func TestLockExitStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		args    func(tree, out string) []string
		want    int
		stderr  string
		prepare func(t *testing.T, parent, tree string)
	}{
		{"exit 0", func(tree, out string) []string { return lockArgs(tree, script("exit 0")) }, 0, "", nil},
		{"exit 3", func(tree, out string) []string { return lockArgs(tree, script("exit 3")) }, 3, "", nil},
		{"exit 42 shared", func(tree, out string) []string { return lockArgs(tree, script("exit 42"), "--shared") }, 42, "", nil},
		{"killed by SIGUSR1", func(tree, out string) []string { return lockArgs(tree, script("kill -USR1 $$")) }, 138, "", nil},
		{"not found", func(tree, out string) []string { return lockArgs(tree, []string{"treetx-no-such-command-3f9a"}) }, 127, "not found", nil},
		{"not executable", func(tree, out string) []string { return lockArgs(tree, []string{out}) }, 126, "", nil},
		{"no --", func(tree, out string) []string { return []string{"lock", tree, "true"} }, 64, "--", nil},
		{"no command", func(tree, out string) []string { return []string{"lock", tree, "--"} }, 64, "no command", nil},
		{"two dirs", func(tree, out string) []string { return []string{"lock", tree, tree, "--", "true"} }, 64, "one DIR", nil},
		{"bad timeout", func(tree, out string) []string { return lockArgs(tree, []string{"true"}, "--lock-timeout", "soon") }, 64, "", nil},
		{"no such directory", func(tree, out string) []string { return lockArgs(tree+"-nope", []string{"touch", out + "/ran"}) }, 125, "no such directory", nil},
		{"needs recovery", func(tree, out string) []string { return lockArgs(tree, []string{"touch", out + "/ran"}, "--shared") }, 125, "treetx recover",
			func(t *testing.T, parent, tree string) {
				if err := os.RemoveAll(tree); err != nil {
					t.Fatal(err)
				}
				handMade(t, parent, "tree", "running")
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parent, tree := newTree(t, map[string]string{"f": "f\n"})
			out := t.TempDir()
			if tt.prepare != nil {
				tt.prepare(t, parent, tree)
			}
			r := treetx(t, nil, tt.args(tree, out)...)
			wantCode(t, r, tt.want)
			if tt.stderr != "" {
				contains(t, "stderr", r.stderr, tt.stderr)
			}
			if tt.want >= 64 && tt.want < 128 && r.stderr == "" {
				t.Errorf("stderr is empty: it must say why")
			}
			if exists(filepath.Join(out, "ran")) {
				t.Errorf("the command ran")
			}
		})
	}
}

// TestLockTimeoutWhileHeld: --lock-timeout 0 gives up at once (75), a short
// timeout after waiting, both naming the holder; neither runs COMMAND.
func TestLockTimeoutWhileHeld(t *testing.T) {
	t.Parallel()
	_, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	holder := start(t, invocation{args: lockArgs(tree, script(holdScript)), env: append(env(tree, out), "N=h", "THEN=true")})
	waitForFile(t, holder, filepath.Join(out, "started-h"))
	for _, timeout := range []string{"0", "200ms"} {
		for _, shared := range []bool{false, true} {
			flags := []string{"--lock-timeout", timeout}
			if shared {
				flags = append(flags, "--shared")
			}
			r := treetx(t, nil, lockArgs(tree, []string{"touch", filepath.Join(out, "ran")}, flags...)...)
			wantCode(t, r, 75)
			oneLine(t, r.stderr, "pid "+fmt.Sprint(holder.pid()))
			if timeout == "200ms" && r.elapsed < 200*time.Millisecond {
				t.Errorf("--lock-timeout 200ms gave up after %v", r.elapsed)
			}
		}
	}
	if exists(filepath.Join(out, "ran")) {
		t.Errorf("a command ran without the lock")
	}
	// A transaction cannot begin either, and status says in progress.
	wantCode(t, treetx(t, nil, runArgs(tree, []string{"true"}, "--lock-timeout", "0")...), 75)
	r := treetx(t, nil, "status", tree)
	wantCode(t, r, 0)
	contains(t, "status", r.stdout, "in progress", "no transaction journal")
	if err := os.WriteFile(filepath.Join(out, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, holder.wait(t), 0)
}

// TestLockForwardsSignals: SIGTERM, SIGINT, SIGHUP and SIGQUIT sent to
// treetx lock reach COMMAND.
func TestLockForwardsSignals(t *testing.T) {
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
			_, tree := newSample(t)
			out := t.TempDir()
			p := start(t, invocation{args: lockArgs(tree, script(trapScript)), env: env(tree, out)})
			waitForFile(t, p, filepath.Join(out, "started"))
			p.signal(t, tt.sig)
			wantCode(t, p.wait(t), 9)
			if got, err := os.ReadFile(filepath.Join(out, "got")); err != nil || strings.TrimSpace(string(got)) != tt.name {
				t.Errorf("the command got %q (%v), want %s", got, err, tt.name)
			}
		})
	}
}
