package integration

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// terminal is a pseudo-terminal whose far end (tty) a treetx process gets
// as stderr; what it writes there collects in out.
type terminal struct {
	tty  *os.File
	mu   sync.Mutex
	out  bytes.Buffer
	done chan struct{}
}

// newTerminal opens a pseudo-terminal 200 columns wide and reads what is
// written to it until the test ends.
func newTerminal(t *testing.T) *terminal {
	t.Helper()
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminal: %v", err)
	}
	fd := int(ptmx.Fd())
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	tty, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetWinsize(int(tty.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: 200}); err != nil {
		t.Fatal(err)
	}
	// Output as written: no \n to \r\n.
	tio, err := unix.IoctlGetTermios(int(tty.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	tio.Oflag &^= unix.OPOST
	if err := unix.IoctlSetTermios(int(tty.Fd()), unix.TCSETS, tio); err != nil {
		t.Fatal(err)
	}
	term := &terminal{tty: tty, done: make(chan struct{})}
	go func() {
		defer close(term.done)
		buf := make([]byte, 4096)
		for {
			n, err := ptmx.Read(buf)
			term.mu.Lock()
			term.out.Write(buf[:n])
			term.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	t.Cleanup(func() {
		tty.Close()
		ptmx.Close()
		<-term.done
	})
	return term
}

// output returns what was written to the terminal so far.
func (term *terminal) output() string {
	term.mu.Lock()
	defer term.mu.Unlock()
	return term.out.String()
}

// finish waits until every process that had the terminal has closed it
// (reading gives EIO then) and returns what was written to it.
func (term *terminal) finish(t *testing.T) string {
	t.Helper()
	term.tty.Close()
	select {
	case <-term.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("the terminal is still open 10 s after treetx exited")
	}
	return term.output()
}

// startOnTerminal starts treetx with stderr on term.
func startOnTerminal(t *testing.T, term *terminal, inv invocation) *proc {
	t.Helper()
	inv.stderr = term.tty
	return start(t, inv)
}

// TestProgressOnTerminal: on a terminal, the shadow's progress is shown on
// one line (entries done, redrawn with \r) and erased before the command
// writes anything; with --quiet, or where stderr is not a terminal, nothing
// is shown.
func TestProgressOnTerminal(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("a tree of 25,000 files (-short)")
	}
	parent := t.TempDir()
	tree := filepath.Join(parent, "tree")
	sh(t, []string{"T=" + tree}, `set -e
mkdir -p "$T"
cd "$T"
for d in $(seq 25); do mkdir d$d; (cd d$d && touch $(seq 1000)); done`)
	const command = `echo COMMAND-OUTPUT >&2`
	t.Run("terminal", func(t *testing.T) {
		term := newTerminal(t)
		p := startOnTerminal(t, term, invocation{args: runArgs(tree, script(command))})
		wantCode(t, p.wait(t), 0)
		out := term.finish(t)
		if !strings.Contains(out, "\rtreetx: building the shadow: 10,000 entries") || !strings.Contains(out, "\rtreetx: building the shadow: 20,000 entries") {
			t.Errorf("no progress shown:\n%q", out)
		}
		i := strings.Index(out, "COMMAND-OUTPUT")
		if i < 0 || !strings.HasSuffix(out[:i], "\r\x1b[K") {
			t.Errorf("the progress line is not erased before the command's output:\n%q", out)
		}
		if i >= 0 && strings.Contains(out[i:], "treetx") {
			t.Errorf("treetx wrote after the command, on an ordinary commit:\n%q", out)
		}
	})
	t.Run("every long phase", func(t *testing.T) {
		// A rollback with every file checked, whose old tree is deleted
		// before treetx exits: the check, the restore and the deletion
		// each grow with the tree, and each is shown, with its total
		// where it is known, and erased before treetx's last word.
		term := newTerminal(t)
		p := startOnTerminal(t, term, invocation{args: runArgs(tree, script("exit 1"), "--full-check", "--wait-cleanup")})
		wantCode(t, p.wait(t), 1)
		out := term.finish(t)
		for _, want := range []string{
			"\rtreetx: checking the linked files: 10,000 of 25,000 entries (40%)",
			"\rtreetx: restoring the linked files' metadata: 20,000 of 25,000 entries (80%)",
			"\rtreetx: deleting the thrown-away tree: 10,000 entries",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("no %q shown:\n%q", want, out)
			}
		}
		last := strings.LastIndex(out, "\rtreetx: deleting")
		if last < 0 || !strings.Contains(out[last:], "\r\x1b[K") {
			t.Errorf("the last progress line is not erased:\n%q", out)
		}
	})
	t.Run("quiet", func(t *testing.T) {
		term := newTerminal(t)
		p := startOnTerminal(t, term, invocation{args: runArgs(tree, script(command), "-q")})
		wantCode(t, p.wait(t), 0)
		if out := term.finish(t); out != "COMMAND-OUTPUT\n" {
			t.Errorf("with -q the terminal got %q, want the command's output only", out)
		}
	})
	t.Run("not a terminal", func(t *testing.T) {
		r := treetx(t, nil, runArgs(tree, script(command))...)
		wantCode(t, r, 0)
		if r.stderr != "COMMAND-OUTPUT\n" {
			t.Errorf("stderr = %q, want the command's output only", r.stderr)
		}
	})
}

// TestLockWaitShownOnTerminal: on a terminal, treetx lock shows a wait for
// the lock that lasts over a second, naming the holder, and erases it once
// the lock is had.
func TestLockWaitShownOnTerminal(t *testing.T) {
	t.Parallel()
	_, tree := newTree(t, map[string]string{"f": "f\n"})
	out := t.TempDir()
	holder := start(t, invocation{args: runArgs(tree, script(holdScript)), env: append(env(tree, out), "N=h", "THEN=true")})
	waitForFile(t, holder, filepath.Join(out, "started-h"))
	term := newTerminal(t)
	waiter := startOnTerminal(t, term, invocation{args: lockArgs(tree, script(`echo COMMAND-OUTPUT >&2`), "-s", "-w", "15")})
	waitFor(t, "the wait to be shown", 10*time.Second, func() bool { return strings.Contains(term.output(), "waiting for the lock") })
	if err := os.WriteFile(filepath.Join(out, "release"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	wantCode(t, holder.wait(t), 0)
	wantCode(t, waiter.wait(t), 0)
	got := term.finish(t)
	want := fmt.Sprintf("\rtreetx: waiting for the lock on %s, held by pid %d (", tree, holder.pid())
	if !strings.Contains(got, want) || !strings.HasSuffix(got, "\r\x1b[KCOMMAND-OUTPUT\n") {
		t.Errorf("the terminal got\n%q\nwant %q, erased before the command's output", got, want)
	}
}
