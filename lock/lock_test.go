package lock

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Tests that need a lock held by another process re-execute the test binary,
// which then runs only TestHelperProcess, with these environment variables
// saying what to do.
const (
	// helperEnv selects the helper's role:
	//   - "hold": take the lock (path, mode), print "locked", hold it until
	//     stdin reaches EOF, release it and exit.
	//   - "probe": try the lock once; print "free" (and release) or
	//     "held: <error>".
	//   - "sleep": print "ready" and wait for EOF on stdin. Used as the child
	//     an inheritable lock descriptor is passed to.
	//   - "inherit": take the lock exclusively, start a "sleep" helper with
	//     its Inheritable descriptor and this process's stdin, print
	//     "locked <child pid>" and sleep until killed.
	helperEnv = "TREETX_LOCK_TEST_HELPER"
	pathEnv   = "TREETX_LOCK_TEST_PATH"
	modeEnv   = "TREETX_LOCK_TEST_MODE"
	// treeEnv is the Options.Tree of the helper's lock, if set.
	treeEnv = "TREETX_LOCK_TEST_TREE"
)

// waitLimit bounds every wait for a helper, so a broken test fails instead of
// hanging.
const waitLimit = 20 * time.Second

// TestHelperProcess is not a test: it is the body of the helper processes
// other tests start. Without helperEnv set it does nothing.
func TestHelperProcess(t *testing.T) {
	role := os.Getenv(helperEnv)
	if role == "" {
		t.Skip("helper process only")
	}
	if err := runHelper(role, os.Getenv(pathEnv), os.Getenv(modeEnv)); err != nil {
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", role, err)
		os.Exit(2)
	}
	os.Exit(0)
}

func runHelper(role, path, modeName string) error {
	mode := Exclusive
	if modeName == Shared.String() {
		mode = Shared
	}
	ctx := context.Background()
	switch role {
	case "hold":
		l, err := Acquire(ctx, path, Options{Mode: mode, Timeout: -1, Tree: os.Getenv(treeEnv)})
		if err != nil {
			return err
		}
		fmt.Println("locked")
		if _, err := io.Copy(io.Discard, os.Stdin); err != nil {
			return err
		}
		return l.Release()
	case "probe":
		l, err := Acquire(ctx, path, Options{Mode: mode, Timeout: 0})
		if errors.Is(err, ErrLocked) {
			fmt.Printf("held: %v\n", err)
			return nil
		}
		if err != nil {
			return err
		}
		fmt.Println("free")
		return l.Release()
	case "sleep":
		fmt.Println("ready")
		_, err := io.Copy(io.Discard, os.Stdin)
		return err
	case "inherit":
		l, err := Acquire(ctx, path, Options{Mode: Exclusive, Timeout: 0})
		if err != nil {
			return err
		}
		f, err := l.Inheritable()
		if err != nil {
			return err
		}
		child := helperCommand("sleep", path, mode)
		// Only stdin is shared: after killing this process, the test
		// waits for its stdout and stderr to close.
		child.Stdin = os.Stdin
		child.ExtraFiles = []*os.File{f}
		if err := child.Start(); err != nil {
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		fmt.Printf("locked %d\n", child.Process.Pid)
		time.Sleep(time.Hour)
		return nil
	default:
		return fmt.Errorf("unknown role %q", role)
	}
}

// helperCommand returns the command that runs this test binary as a helper.
func helperCommand(role, path string, mode Mode) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	cmd.Env = append(os.Environ(), helperEnv+"="+role, pathEnv+"="+path, modeEnv+"="+mode.String())
	return cmd
}

// helper is a running helper process.
type helper struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *bytes.Buffer
	done   bool
}

// startHelper starts a helper process; it is killed when the test ends.
func startHelper(t *testing.T, role, path string, mode Mode, extra ...*os.File) *helper {
	t.Helper()
	cmd := helperCommand(role, path, mode)
	cmd.ExtraFiles = extra
	return startCmd(t, cmd)
}

// startCmd starts a helper command made by helperCommand; it is killed when
// the test ends. Unless cmd.Stdin is set, the helper's stdin is a pipe that
// finish closes.
func startCmd(t *testing.T, cmd *exec.Cmd) *helper {
	t.Helper()
	h := &helper{cmd: cmd, lines: make(chan string, 16), stderr: new(bytes.Buffer)}
	cmd.Stderr = h.stderr
	var err error
	if cmd.Stdin == nil {
		if h.stdin, err = cmd.StdinPipe(); err != nil {
			t.Fatal(err)
		}
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	t.Cleanup(func() {
		if !h.done {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return h
}

// line returns the helper's next line of output.
func (h *helper) line(t *testing.T) string {
	t.Helper()
	select {
	case line, ok := <-h.lines:
		if !ok {
			t.Fatalf("helper %v exited early; stderr: %s", h.cmd.Args, h.stderr)
		}
		return line
	case <-time.After(waitLimit):
		t.Fatalf("helper %v printed nothing in %v", h.cmd.Args, waitLimit)
		return ""
	}
}

// expect fails the test unless the helper's next line is want.
func (h *helper) expect(t *testing.T, want string) {
	t.Helper()
	if got := h.line(t); got != want {
		t.Fatalf("helper printed %q, want %q", got, want)
	}
}

// finish closes the helper's stdin and waits for it to exit successfully.
func (h *helper) finish(t *testing.T) {
	t.Helper()
	if h.stdin != nil {
		h.stdin.Close()
	}
	h.done = true
	if err := h.cmd.Wait(); err != nil {
		t.Fatalf("helper %v: %v; stderr: %s", h.cmd.Args, err, h.stderr)
	}
}

// kill kills the helper with SIGKILL and waits for it.
func (h *helper) kill(t *testing.T) {
	t.Helper()
	if err := h.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	h.done = true
	_ = h.cmd.Wait()
}

// probe tries the lock once from another process and returns "free", or
// "held: " and the error.
func probe(t *testing.T, path string, mode Mode) string {
	t.Helper()
	cmd := helperCommand("probe", path, mode)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("probe: %v; stderr: %s", err, &stderr)
	}
	return strings.TrimSpace(string(out))
}

func lockPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), ".#treetx.tree.lock")
}

func mustRelease(t *testing.T, l *Lock) {
	t.Helper()
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
}

func TestModesAgainstAnotherProcess(t *testing.T) {
	tests := []struct {
		name     string
		held     Mode
		want     Mode
		conflict bool
	}{
		{"exclusive excludes exclusive", Exclusive, Exclusive, true},
		{"exclusive excludes shared", Exclusive, Shared, true},
		{"shared excludes exclusive", Shared, Exclusive, true},
		{"shared and shared coexist", Shared, Shared, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := lockPath(t)
			h := startHelper(t, "hold", path, tt.held)
			h.expect(t, "locked")

			l, err := Acquire(context.Background(), path, Options{Mode: tt.want, Timeout: 0})
			if !tt.conflict {
				if err != nil {
					t.Fatalf("Acquire: %v", err)
				}
				mustRelease(t, l)
				h.finish(t)
				return
			}
			if err == nil {
				l.Release()
				t.Fatal("Acquire succeeded while another process holds the lock")
			}
			if !errors.Is(err, ErrLocked) {
				t.Errorf("errors.Is(%v, ErrLocked) = false", err)
			}
			var he *HeldError
			if !errors.As(err, &he) {
				t.Fatalf("Acquire error %T %v, want *HeldError", err, err)
			}
			if he.Path != path || he.Mode != tt.want {
				t.Errorf("HeldError{Path: %q, Mode: %v}, want {%q, %v}", he.Path, he.Mode, path, tt.want)
			}
			switch tt.held {
			case Exclusive:
				if he.Holder == nil {
					t.Fatalf("HeldError names no holder: %v", err)
				}
				if he.Holder.PID != h.cmd.Process.Pid {
					t.Errorf("holder pid %d, want the helper's, %d", he.Holder.PID, h.cmd.Process.Pid)
				}
				if !slices.Equal(he.Holder.Command, h.cmd.Args) {
					t.Errorf("holder command %q, want %q", he.Holder.Command, h.cmd.Args)
				}
				if want := "is held by pid " + strconv.Itoa(h.cmd.Process.Pid) + " ("; !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not contain %q", err, want)
				}
			case Shared:
				if he.Holder != nil {
					t.Errorf("HeldError names holder %v for a shared lock", he.Holder)
				}
			}
			h.finish(t)
		})
	}
}

func TestTimeout(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration
	}{
		{"try once", 0},
		{"wait 300ms", 300 * time.Millisecond},
		{"wait 1s", time.Second},
	}
	path := lockPath(t)
	h := startHelper(t, "hold", path, Exclusive)
	h.expect(t, "locked")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			l, err := Acquire(context.Background(), path, Options{Mode: Exclusive, Timeout: tt.timeout})
			elapsed := time.Since(start)
			if err == nil {
				l.Release()
				t.Fatal("Acquire succeeded while another process holds the lock")
			}
			var he *HeldError
			if !errors.As(err, &he) {
				t.Fatalf("Acquire error %T %v, want *HeldError", err, err)
			}
			if elapsed < tt.timeout {
				t.Errorf("Acquire gave up after %v, before the %v timeout", elapsed, tt.timeout)
			}
		})
	}
	h.finish(t)
}

func TestWaitSucceedsOnceReleased(t *testing.T) {
	tests := []struct {
		name       string
		held, want Mode
		timeout    time.Duration
	}{
		{"exclusive after exclusive, no timeout", Exclusive, Exclusive, -1},
		{"shared after exclusive, no timeout", Exclusive, Shared, -1},
		{"exclusive after shared, no timeout", Shared, Exclusive, -1},
		{"exclusive after exclusive, long timeout", Exclusive, Exclusive, time.Hour},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := lockPath(t)
			h := startHelper(t, "hold", path, tt.held)
			h.expect(t, "locked")

			type result struct {
				l   *Lock
				err error
			}
			done := make(chan result, 1)
			go func() {
				l, err := Acquire(context.Background(), path, Options{Mode: tt.want, Timeout: tt.timeout})
				done <- result{l, err}
			}()
			select {
			case r := <-done:
				if r.l != nil {
					r.l.Release()
				}
				t.Fatalf("Acquire returned (err %v) while the helper holds the lock", r.err)
			case <-time.After(300 * time.Millisecond):
			}
			h.finish(t)
			select {
			case r := <-done:
				if r.err != nil {
					t.Fatalf("Acquire: %v", r.err)
				}
				mustRelease(t, r.l)
			case <-time.After(waitLimit):
				t.Fatalf("Acquire still waiting %v after the holder released", waitLimit)
			}
		})
	}
}

func TestContextEndsWait(t *testing.T) {
	tests := []struct {
		name    string
		timeout time.Duration
		ctx     func() (context.Context, context.CancelFunc)
		want    error
	}{
		{
			name:    "cancel, no timeout",
			timeout: -1,
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(200*time.Millisecond, cancel)
				return ctx, cancel
			},
			want: context.Canceled,
		},
		{
			name:    "cancel, long timeout",
			timeout: time.Hour,
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				time.AfterFunc(200*time.Millisecond, cancel)
				return ctx, cancel
			},
			want: context.Canceled,
		},
		{
			name:    "caller's deadline before timeout",
			timeout: time.Hour,
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 200*time.Millisecond)
			},
			want: context.DeadlineExceeded,
		},
		{
			name:    "already canceled, try once",
			timeout: 0,
			ctx: func() (context.Context, context.CancelFunc) {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx, cancel
			},
			want: context.Canceled,
		},
	}
	path := lockPath(t)
	h := startHelper(t, "hold", path, Exclusive)
	h.expect(t, "locked")
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := tt.ctx()
			defer cancel()
			done := make(chan error, 1)
			go func() {
				l, err := Acquire(ctx, path, Options{Mode: Exclusive, Timeout: tt.timeout})
				if l != nil {
					l.Release()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, tt.want) {
					t.Errorf("Acquire error %v, want %v", err, tt.want)
				}
				if errors.Is(err, ErrLocked) {
					t.Errorf("Acquire error %v is ErrLocked; the caller gave up, not the timeout", err)
				}
			case <-time.After(waitLimit):
				t.Fatalf("Acquire still waiting %v after the context ended", waitLimit)
			}
		})
	}
	h.finish(t)
}

func TestSIGKILLReleases(t *testing.T) {
	for _, mode := range []Mode{Exclusive, Shared} {
		t.Run(mode.String(), func(t *testing.T) {
			path := lockPath(t)
			h := startHelper(t, "hold", path, mode)
			h.expect(t, "locked")
			if got := probe(t, path, Exclusive); !strings.HasPrefix(got, "held: ") {
				t.Fatalf("probe while helper holds the lock: %q", got)
			}
			h.kill(t)
			l, err := Acquire(context.Background(), path, Options{Mode: Exclusive, Timeout: 0})
			if err != nil {
				t.Fatalf("Acquire after the holder was killed: %v", err)
			}
			mustRelease(t, l)
		})
	}
}

func TestReleaseKeepsFile(t *testing.T) {
	for _, mode := range []Mode{Exclusive, Shared} {
		t.Run(mode.String(), func(t *testing.T) {
			path := lockPath(t)
			l, err := Acquire(context.Background(), path, Options{Mode: mode, Timeout: 0})
			if err != nil {
				t.Fatal(err)
			}
			mustRelease(t, l)
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatalf("lock file after Release: %v", err)
			}
			if fi.Size() != 0 {
				t.Errorf("lock file holds %d bytes after Release, want none", fi.Size())
			}
			if err := l.Release(); err != nil {
				t.Errorf("second Release: %v", err)
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("lock file after second Release: %v", err)
			}
			if got := probe(t, path, Exclusive); got != "free" {
				t.Errorf("probe after Release: %q", got)
			}
		})
	}
}

func TestExclusiveRecordsHolder(t *testing.T) {
	host, err := os.Hostname()
	if err != nil {
		t.Fatal(err)
	}
	since := time.Now().Add(-time.Second).UTC().Truncate(time.Second)
	tests := []struct {
		name  string
		self  Holder
		check func(t *testing.T, h Holder)
	}{
		{
			name: "zero fields filled in",
			self: Holder{},
			check: func(t *testing.T, h Holder) {
				if h.PID != os.Getpid() || h.Host != host || h.User == "" || !slices.Equal(h.Command, os.Args) || h.Since.IsZero() {
					t.Errorf("record %+v, want this process's pid, host, a user, os.Args and a time", h)
				}
			},
		},
		{
			name: "given fields kept",
			self: Holder{User: "alice", Command: []string{"cvs", "commit", "-m", "x"}, Since: since},
			check: func(t *testing.T, h Holder) {
				want := Holder{PID: os.Getpid(), Host: host, User: "alice", Command: []string{"cvs", "commit", "-m", "x"}, Since: since}
				if h.PID != want.PID || h.Host != want.Host || h.User != want.User || !slices.Equal(h.Command, want.Command) || !h.Since.Equal(want.Since) || h.Stale {
					t.Errorf("record %+v, want %+v", h, want)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := lockPath(t)
			// A longer, older record must be replaced, not overwritten in place.
			if err := os.WriteFile(path, []byte(strings.Repeat(" ", 4096)+`{"pid":1}`), 0o644); err != nil {
				t.Fatal(err)
			}
			l, err := Acquire(context.Background(), path, Options{Mode: Exclusive, Timeout: 0, Self: tt.self})
			if err != nil {
				t.Fatal(err)
			}
			h, err := ReadHolder(path)
			if err != nil || h == nil {
				t.Fatalf("ReadHolder = %v, %v; want a record", h, err)
			}
			tt.check(t, *h)
			mustRelease(t, l)
			if h, err := ReadHolder(path); h != nil || err != nil {
				t.Errorf("ReadHolder after Release = %v, %v; want nil, nil", h, err)
			}
		})
	}
}

func TestSharedRecordsNothing(t *testing.T) {
	path := lockPath(t)
	l, err := Acquire(context.Background(), path, Options{Mode: Shared, Timeout: 0, Self: Holder{PID: 42}})
	if err != nil {
		t.Fatal(err)
	}
	defer mustRelease(t, l)
	if h, err := ReadHolder(path); h != nil || err != nil {
		t.Errorf("ReadHolder under a shared lock = %v, %v; want nil, nil", h, err)
	}
}

func TestReadHolder(t *testing.T) {
	tests := []struct {
		name    string
		content *string // nil: no file
		want    *Holder
		wantErr bool
	}{
		{name: "absent file", content: nil},
		{name: "empty file", content: ptr("")},
		{name: "blank file", content: ptr(" \n")},
		{
			name:    "record from another host",
			content: ptr(`{"pid":1234,"host":"elsewhere.invalid","user":"u","command":["cvs","commit"],"since":"2026-11-22T01:02:03Z"}` + "\n"),
			want:    &Holder{PID: 1234, Host: "elsewhere.invalid", User: "u", Command: []string{"cvs", "commit"}, Since: time.Date(2026, 11, 22, 1, 2, 3, 0, time.UTC)},
		},
		{name: "torn record", content: ptr(`{"pid":12`), wantErr: true},
		{name: "not a record", content: ptr(`[1,2]`), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := lockPath(t)
			if tt.content != nil {
				if err := os.WriteFile(path, []byte(*tt.content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := ReadHolder(path)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ReadHolder error %v, want error: %v", err, tt.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), path) {
					t.Errorf("error %q does not name the path", err)
				}
				return
			}
			if (got == nil) != (tt.want == nil) {
				t.Fatalf("ReadHolder = %+v, want %+v", got, tt.want)
			}
			if got != nil && (got.PID != tt.want.PID || got.Host != tt.want.Host || got.User != tt.want.User ||
				!slices.Equal(got.Command, tt.want.Command) || !got.Since.Equal(tt.want.Since) || got.Stale != tt.want.Stale) {
				t.Errorf("ReadHolder = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func TestHolderString(t *testing.T) {
	since := time.Date(2026, 11, 22, 1, 2, 3, 0, time.UTC)
	tests := []struct {
		h    Holder
		want string
	}{
		{
			Holder{PID: 1234, Host: "h", User: "u", Command: []string{"cvs", "commit", "-m", "x"}, Since: since},
			"pid 1234 (cvs commit -m x) on host h as user u since 2026-11-22T01:02:03Z",
		},
		{
			Holder{PID: 1234, Host: "h", User: "u", Command: []string{"cvs"}, Since: since.In(time.FixedZone("X", 3600))},
			"pid 1234 (cvs) on host h as user u since 2026-11-22T01:02:03Z",
		},
		{Holder{PID: 7}, "pid 7"},
	}
	for _, tt := range tests {
		if got := tt.h.String(); got != tt.want {
			t.Errorf("%+v.String() = %q, want %q", tt.h, got, tt.want)
		}
	}
}

func TestHeldErrorMessage(t *testing.T) {
	since := time.Date(2026, 11, 22, 1, 2, 3, 0, time.UTC)
	const path = "/srv/.#treetx.cvsroot.lock"
	tests := []struct {
		err  *HeldError
		want string
	}{
		{
			&HeldError{Path: path, Mode: Exclusive, Holder: &Holder{PID: 1234, Host: "h", User: "u", Command: []string{"cvs", "commit"}, Since: since}},
			"lock /srv/.#treetx.cvsroot.lock is held by pid 1234 (cvs commit) on host h as user u since 2026-11-22T01:02:03Z",
		},
		{
			&HeldError{Path: path, Mode: Exclusive},
			"lock /srv/.#treetx.cvsroot.lock is held by another process (a shared reader, or a holder that has not recorded itself)",
		},
		{
			&HeldError{Path: path, Mode: Shared},
			"lock /srv/.#treetx.cvsroot.lock is held by another process (an exclusive holder that has not recorded itself)",
		},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
		if !errors.Is(tt.err, ErrLocked) {
			t.Errorf("errors.Is(%v, ErrLocked) = false", tt.err)
		}
		if wrapped := fmt.Errorf("commit: %w", tt.err); !errors.Is(wrapped, ErrLocked) {
			t.Errorf("errors.Is(wrapped %v, ErrLocked) = false", wrapped)
		}
	}
}

func TestAcquireErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		path string
		opts Options
	}{
		{"invalid mode", filepath.Join(dir, "a.lock"), Options{Mode: Mode(7)}},
		{"missing parent directory", filepath.Join(dir, "missing", "a.lock"), Options{Mode: Exclusive}},
		{"missing parent directory, waiting", filepath.Join(dir, "missing", "a.lock"), Options{Mode: Shared, Timeout: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := Acquire(context.Background(), tt.path, tt.opts)
			if err == nil {
				l.Release()
				t.Fatal("Acquire succeeded")
			}
			if errors.Is(err, ErrLocked) {
				t.Errorf("error %v is ErrLocked", err)
			}
			if !strings.Contains(err.Error(), tt.path) {
				t.Errorf("error %q does not name the path", err)
			}
		})
	}
}
