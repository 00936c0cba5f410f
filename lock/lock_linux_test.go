package lock

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// waitFree probes the lock from another process until it is free.
func waitFree(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for {
		got := probe(t, path, Exclusive)
		if got == "free" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("lock still held after %v: %q", waitLimit, got)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestInheritable(t *testing.T) {
	tests := []struct {
		name string
		mode Mode
	}{
		{"exclusive", Exclusive},
		{"shared", Shared},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := lockPath(t)
			l, err := Acquire(context.Background(), path, Options{Mode: tt.mode, Timeout: 0})
			if err != nil {
				t.Fatal(err)
			}
			f, err := l.Inheritable()
			if err != nil {
				l.Release()
				t.Fatal(err)
			}
			child := startHelper(t, "sleep", path, tt.mode, f)
			child.expect(t, "ready")
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			got := probe(t, path, Exclusive)
			if !strings.HasPrefix(got, "held: ") {
				t.Fatalf("probe with parent and child holding: %q, want held", got)
			}
			if tt.mode == Exclusive {
				if want := "held by pid " + strconv.Itoa(os.Getpid()) + " "; !strings.Contains(got, want) {
					t.Errorf("probe: %q, want it to contain %q", got, want)
				}
			}
			// Release ends the lock for the child too: a process left behind
			// by a finished holder does not keep it.
			mustRelease(t, l)
			if got := probe(t, path, Exclusive); got != "free" {
				t.Errorf("probe after the parent released, child alive: %q, want free", got)
			}
			child.finish(t)
		})
	}
}

// TestInheritableSurvivesSIGKILL is the use Inheritable is for: the process
// that took the lock is killed, and the child it passed the lock to keeps it.
func TestInheritableSurvivesSIGKILL(t *testing.T) {
	path := lockPath(t)
	// The child's stdin, shared with its parent: a pipe of our own, since
	// exec.Cmd would close a StdinPipe once the parent is killed and waited
	// for, ending the child too.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	cmd := helperCommand("inherit", path, Exclusive)
	cmd.Stdin = r
	parent := startCmd(t, cmd)
	r.Close()
	fields := strings.Fields(parent.line(t))
	if len(fields) != 2 || fields[0] != "locked" {
		t.Fatalf("inherit helper printed %q", fields)
	}
	childPID, err := strconv.Atoi(fields[1])
	if err != nil {
		t.Fatal(err)
	}
	// The grandchild is not ours to wait for; make sure it goes away.
	t.Cleanup(func() { _ = syscall.Kill(childPID, syscall.SIGKILL) })

	parent.kill(t)
	if got := probe(t, path, Exclusive); !strings.HasPrefix(got, "held: ") {
		t.Fatalf("probe after the parent was killed, child alive: %q, want held", got)
	}
	// Closing the stdin the child shared with its dead parent ends it.
	w.Close()
	waitFree(t, path)
}

func TestInheritableErrors(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, path string) *Lock
	}{
		{
			name: "released",
			setup: func(t *testing.T, path string) *Lock {
				l, err := Acquire(context.Background(), path, Options{Mode: Exclusive})
				if err != nil {
					t.Fatal(err)
				}
				mustRelease(t, l)
				return l
			},
		},
		{
			name: "two shared locks on one file in this process",
			setup: func(t *testing.T, path string) *Lock {
				var locks []*Lock
				for range 2 {
					l, err := Acquire(context.Background(), path, Options{Mode: Shared})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { mustRelease(t, l) })
					locks = append(locks, l)
				}
				return locks[0]
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := lockPath(t)
			l := tt.setup(t, path)
			f, err := l.Inheritable()
			if err == nil {
				f.Close()
				t.Fatal("Inheritable succeeded")
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("error %q does not name the path", err)
			}
		})
	}
}

// TestInheritableTwice checks that a second call finds the same descriptor
// although the first copy, still open, also holds the lock.
func TestInheritableTwice(t *testing.T) {
	path := lockPath(t)
	l, err := Acquire(context.Background(), path, Options{Mode: Exclusive})
	if err != nil {
		t.Fatal(err)
	}
	var files []*os.File
	for range 2 {
		f, err := l.Inheritable()
		if err != nil {
			l.Release()
			t.Fatal(err)
		}
		files = append(files, f)
	}
	for i, f := range files {
		if got := probe(t, path, Exclusive); !strings.HasPrefix(got, "held: ") {
			t.Fatalf("probe with %d copies open: %q, want held", len(files)-i, got)
		}
		f.Close()
	}
	// Closing the copies did not unlock: the Lock's own descriptor holds it.
	if got := probe(t, path, Exclusive); !strings.HasPrefix(got, "held: ") {
		t.Fatalf("probe after closing the copies: %q, want held", got)
	}
	mustRelease(t, l)
	if got := probe(t, path, Exclusive); got != "free" {
		t.Errorf("probe after Release: %q, want free", got)
	}
}

// deadPID returns the pid of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := helperCommand("none", "", Exclusive)
	_ = cmd.Run() // the helper fails on the unknown role
	return cmd.Process.Pid
}

// zombiePID returns the pid of a child that has exited but is not waited for
// until the test ends.
func zombiePID(t *testing.T) int {
	t.Helper()
	cmd := helperCommand("none", "", Exclusive)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Wait() })
	pid := cmd.Process.Pid
	deadline := time.Now().Add(waitLimit)
	for {
		state, _, err := processStat(pid)
		if err != nil {
			t.Fatal(err)
		}
		if state == "Z" {
			return pid
		}
		if time.Now().After(deadline) {
			t.Fatalf("child %d still in state %s after %v", pid, state, waitLimit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestReadHolderStale(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tests := []struct {
		name  string
		h     Holder
		stale bool
	}{
		{"this process", Holder{PID: os.Getpid(), Host: host, Since: now}, false},
		{"this process, no time", Holder{PID: os.Getpid(), Host: host}, false},
		{"exited process", Holder{PID: deadPID(t), Host: host, Since: now}, true},
		{"exited process not waited for", Holder{PID: zombiePID(t), Host: host, Since: now}, true},
		{"pid reused since the record", Holder{PID: os.Getpid(), Host: host, Since: time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)}, true},
		{"invalid pid", Holder{PID: 0, Host: host, Since: now}, true},
		{"exited process on another host", Holder{PID: deadPID(t), Host: "elsewhere.invalid", Since: now}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := lockPath(t)
			// Written as a dead holder would leave it (Acquire would fill
			// in a zero pid).
			data, err := json.Marshal(tt.h)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, data, 0o644); err != nil {
				t.Fatal(err)
			}
			got, err := ReadHolder(path)
			if err != nil || got == nil {
				t.Fatalf("ReadHolder = %v, %v", got, err)
			}
			if got.Stale != tt.stale {
				t.Errorf("Stale = %v, want %v (record %+v)", got.Stale, tt.stale, got)
			}
		})
	}
}

// TestKilledHolderRecord checks what a SIGKILLed exclusive holder leaves: its
// record, read as stale, and named by no HeldError.
func TestKilledHolderRecord(t *testing.T) {
	path := lockPath(t)
	h := startHelper(t, "hold", path, Exclusive)
	h.expect(t, "locked")
	h.kill(t)

	rec, err := ReadHolder(path)
	if err != nil || rec == nil {
		t.Fatalf("ReadHolder after SIGKILL = %v, %v; want the dead holder's record", rec, err)
	}
	if rec.PID != h.cmd.Process.Pid || !rec.Stale {
		t.Errorf("record %+v, want pid %d, stale", rec, h.cmd.Process.Pid)
	}

	reader := startHelper(t, "hold", path, Shared)
	reader.expect(t, "locked")
	_, err = Acquire(context.Background(), path, Options{Mode: Exclusive, Timeout: 0})
	var he *HeldError
	if !errors.As(err, &he) {
		t.Fatalf("Acquire under a shared lock: %v, want *HeldError", err)
	}
	if he.Holder != nil {
		t.Errorf("HeldError names %v, the killed holder", he.Holder)
	}
	reader.finish(t)
}
