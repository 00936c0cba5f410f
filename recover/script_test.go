package recover_test

// Tests of scripts/treetx-recover.sh, the recovery without the binary: for
// every crash point of a transaction, the same crash state is built twice
// (the runs are deterministic), one is recovered by recover.Recover and the
// other by the script, and the results must agree. The script is also
// killed at each of its own steps and the Go recovery finishes, and the
// reverse; and it must refuse what recover refuses, changing nothing.
//
// The script is run with a PATH whose first directory holds wrappers of the
// commands it changes the file system with (mv, rm, sync, chmod, chown,
// touch, setfattr): they record its steps and can SIGKILL its process group
// right after step N, the way fsystest kills the Go side. The mv wrapper can
// also pretend to be a coreutils with `mv --exchange` (done by this test
// binary with renameat2), and the getfattr/setfattr wrappers can pretend
// that the attr tools are missing.
//
// The trees live on a tmpfs (/dev/shm) when there is one, where syncs cost
// nothing; one run of the agreement test is on the disk.
//
// The script takes a second or so on a crash state, so a default run checks
// a sample of each matrix: the script against Go on one crash point of each
// distinct crash state (uniqueStates) and a few more; one kill of the
// script, or of recover.Recover, on four of those states per path; drawn
// with a seed the tests log. With TREETX_EXHAUSTIVE=1 they check every
// point (over ten minutes on 2 cores).

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys/fsystest"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
	"github.com/treetx/treetx/lock"
	txrecover "github.com/treetx/treetx/recover"
	"github.com/treetx/treetx/txn"
)

const (
	envRole  = "TREETX_SCRIPTTEST_ROLE" // "txn", "recover" or "exchange"
	envDir   = "TREETX_SCRIPTTEST_DIR"
	envPath  = "TREETX_SCRIPTTEST_PATH" // see transact
	envAfter = "TREETX_SCRIPTTEST_AFTER"

	// Read by the wrappers the script runs.
	envCounter  = "TREETX_SCRIPTTEST_COUNTER"  // file recording the script's steps
	envKillAt   = "TREETX_SCRIPTTEST_KILLAT"   // SIGKILL the script after this step
	envExchange = "TREETX_SCRIPTTEST_EXCHANGE" // "1": mv has --exchange; "einval": it fails so
	envNoXattr  = "TREETX_SCRIPTTEST_NOXATTR"  // "1": no getfattr/setfattr
	envBin      = "TREETX_SCRIPTTEST_BIN"      // this test binary
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "txn", "recover":
		os.Exit(victim())
	case "exchange":
		os.Exit(exchange(os.Args[1:]))
	}
	if os.Getenv("TREETX_TEST_GC_CHILD") == "" { // not recover_test.go's child
		testenv.Announce(testenv.RecoveryScript, testenv.Btrfs)
	}
	// The script tests spend most of their time waiting for the processes
	// they start (the script forks for every step): unless -parallel says
	// otherwise, run three times as many at once as go test would.
	flag.Parse()
	parallelSet := false
	flag.Visit(func(f *flag.Flag) { parallelSet = parallelSet || f.Name == "test.parallel" })
	if !parallelSet {
		flag.Set("test.parallel", strconv.Itoa(3*runtime.GOMAXPROCS(0)))
	}
	os.Exit(m.Run())
}

// victim runs a transaction or a recovery that SIGKILLs itself after step N.
func victim() int {
	after, _ := strconv.Atoi(os.Getenv(envAfter))
	fs := &fsystest.FS{CrashAfter: after}
	dir := os.Getenv(envDir)
	var err error
	if os.Getenv(envRole) == "recover" {
		_, err = txrecover.Recover(dir, txrecover.Options{FS: fs})
		var lost *txn.LostContentError
		if errors.As(err, &lost) {
			err = nil
		}
	} else {
		err = transact(dir, os.Getenv(envPath), fs)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

// exchange is `mv --exchange -T SRC DST` for a coreutils without it.
func exchange(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "mv: exchange: want two names")
		return 1
	}
	if err := unix.Renameat2(unix.AT_FDCWD, args[0], unix.AT_FDCWD, args[1], unix.RENAME_EXCHANGE); err != nil {
		msg := err.Error()
		fmt.Fprintf(os.Stderr, "mv: cannot exchange '%s' and '%s': %s\n", args[0], args[1], strings.ToUpper(msg[:1])+msg[1:])
		return 1
	}
	return 0
}

// transact runs one whole transaction on dir through fs. The path says
// which: "commit" and "rollback" change the sample tree and commit or roll
// back; "inplace" also writes hard-linked files in place (their old content
// is lost, the failed tree kept); "xattr" changes extended attributes of
// hard-linked files and rolls back.
func transact(dir, path string, fs *fsystest.FS) error {
	tx, err := txn.Begin(dir, txn.Options{FS: fs})
	if err != nil {
		return err
	}
	if err := mutate(dir, path); err != nil {
		_, rbErr := tx.Rollback()
		return errors.Join(err, rbErr)
	}
	if path == "commit" {
		_, err = tx.Commit()
	} else {
		_, err = tx.Rollback()
	}
	var lost *txn.LostContentError
	if path == "inplace" && errors.As(err, &lost) {
		return nil
	}
	return err
}

var testStart = time.Now().Add(-time.Minute)

var fixedTime = time.Date(2020, 5, 6, 7, 8, 9, 123456789, time.UTC)

// mutate changes the sample tree as a CVS-like program does (as
// txn/crash_test.go's mutate), plus what path adds. Every file it writes
// gets a fixed mtime, so that the new tree is the same in every run.
func mutate(dir, path string) error {
	p := func(rel string) string { return filepath.Join(dir, rel) }
	steps := []func() error{
		func() error { return os.WriteFile(p("mod/d1/,f1.c,"), []byte("new revision\n"), 0o444) },
		func() error { return os.Chtimes(p("mod/d1/,f1.c,"), fixedTime, fixedTime) },
		func() error { return os.Rename(p("mod/d1/,f1.c,"), p("mod/d1/f1.c,v")) },
		func() error { return os.Remove(p("a/b/notes.txt")) },
		func() error { return os.Mkdir(p("mod/d3"), 0o775) },
		func() error { return os.WriteFile(p("mod/d3/f3.c,v"), []byte("added\n"), 0o444) },
		func() error { return os.Chtimes(p("mod/d3/f3.c,v"), fixedTime, fixedTime) },
		func() error { return os.Chmod(p("a/run.sh"), 0o700) },
		func() error { return os.Chown(p("private/secret.txt"), 123, 456) },
		func() error { return os.Chtimes(p("a/readonly.txt"), fixedTime.Add(time.Hour), time.Time{}) },
		func() error { return appendFile(p("CVSROOT/history"), "A67a1b2c4|sample|~/mod|mod/d3|1.1|f3.c\n") },
		func() error { return os.Chtimes(p("CVSROOT/history"), fixedTime, fixedTime) },
		func() error { return os.Remove(p("empty")) },
		func() error { return os.Remove(p("links/dangling")) },
		func() error { return os.Symlink("../mod", p("links/to-mod")) },
		func() error {
			ts := []unix.Timespec{unix.NsecToTimespec(fixedTime.UnixNano()), unix.NsecToTimespec(fixedTime.UnixNano())}
			return unix.UtimesNanoAt(unix.AT_FDCWD, p("links/to-mod"), ts, unix.AT_SYMLINK_NOFOLLOW)
		},
	}
	switch path {
	case "inplace":
		for _, f := range inPlaceFiles {
			steps = append(steps,
				func() error { return appendFile(p(f), "written in place\n") },
				func() error { return os.Chtimes(p(f), fixedTime, fixedTime) })
		}
	case "removed": // the command removes the directory itself (snapshot tests)
		steps = append(steps, func() error { return os.RemoveAll(dir) })
	case "xattr":
		steps = append(steps,
			func() error { return unix.Lsetxattr(p("a/readonly.txt"), "user.treetx", []byte("new"), 0) },
			func() error { return unix.Lremovexattr(p("a/readonly.txt"), "user.keep") },
			func() error { return unix.Lsetxattr(p("a/run.sh"), "user.added", []byte("x"), 0) })
	}
	for i, s := range steps {
		if err := s(); err != nil {
			return fmt.Errorf("mutate step %d: %w", i, err)
		}
	}
	return nil
}

// inPlaceFiles are the hard-linked files the "inplace" path writes in place
// (a name with a newline among them, for the journal's lost list).
var inPlaceFiles = []string{"a/b/c/deep.txt", "new\nline.txt"}

func appendFile(name, s string) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	return errors.Join(err, f.Close())
}

// newSample builds the sample tree for path as PARENT/repo in a new
// temporary parent. The xattr path's files carry extended attributes (a
// value with a comma, an equals sign and a newline in it, and a name with
// a space) from before the transaction.
func newSample(t testing.TB, path string) string {
	t.Helper()
	return newSampleIn(t, path, scratch(t, path == "xattr" && !shmXattrs()))
}

// newSampleIn builds the sample tree for path as parent/repo.
func newSampleIn(t testing.TB, path, parent string) string {
	t.Helper()
	dir := filepath.Join(parent, "repo")
	if err := treeimage.BuildSample(dir); err != nil {
		t.Fatal(err)
	}
	// An atime before 1970 (-1.5 s: the timespec {-2, 500000000}), which
	// the command changes through the shared inode.
	ts := []unix.Timespec{{Sec: -2, Nsec: 500000000}, {Sec: 0, Nsec: unix.UTIME_OMIT}}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, "a/readonly.txt"), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
	if path == "xattr" {
		for _, x := range sampleXattrs {
			if err := unix.Lsetxattr(filepath.Join(dir, x[0]), x[1], []byte(x[2]), 0); err != nil {
				t.Fatalf("%s: set %s: %v", x[0], x[1], err)
			}
		}
	}
	return dir
}

// atimesOf lists the atimes of the regular files under dir (treeimage
// leaves them out), one "path sec.nsec" string each, sorted. An atime from
// this run (a file copied into the shadow was read) is shown as "now".
func atimesOf(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		rel, _ := filepath.Rel(dir, p)
		at := fmt.Sprintf("%d.%09d", st.Atim.Sec, st.Atim.Nsec)
		if !time.Unix(st.Atim.Unix()).Before(testStart) {
			at = "now"
		}
		out = append(out, fmt.Sprintf("%q %s", rel, at))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// scratch returns a new empty directory for a sample tree. Unless disk is
// set, it is on a tmpfs (/dev/shm) when there is one: syncs cost nothing
// there, which keeps the crash matrices fast; the disk (the test's temporary
// directory) is used for the rest, and for the extended attributes.
func scratch(t testing.TB, disk bool) string {
	t.Helper()
	if disk || !shmUsable() {
		return t.TempDir()
	}
	d, err := os.MkdirTemp("/dev/shm", "treetx-script-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

var shmUsable = sync.OnceValue(func() bool {
	var st unix.Statfs_t
	return unix.Statfs("/dev/shm", &st) == nil && st.Type == unix.TMPFS_MAGIC && unix.Access("/dev/shm", unix.W_OK) == nil
})

// shmXattrs tells whether the tmpfs takes user extended attributes (Linux
// 6.6 and later).
var shmXattrs = sync.OnceValue(func() bool {
	if !shmUsable() {
		return false
	}
	f, err := os.CreateTemp("/dev/shm", "treetx-script-test-")
	if err != nil {
		return false
	}
	defer os.Remove(f.Name())
	defer f.Close()
	return unix.Fsetxattr(int(f.Fd()), "user.treetx", []byte("x"), 0) == nil
})

var sampleXattrs = [][3]string{
	{"a/readonly.txt", "user.treetx", "old"},
	{"a/readonly.txt", "user.keep", "k,=\nv"},
	{"shared/data.bin", "user.with space,=", "\x00\xff"},
}

// images returns the old tree, and the tree the transaction of path leaves
// (directory mtimes ignored: they are the time of the run).
func images(t *testing.T, path string) (old, new treeimage.Image) {
	t.Helper()
	dir := newSample(t, path)
	old = treeimage.MustCapture(t, dir, treeimage.Options{})
	if err := mutate(dir, path); err != nil {
		t.Fatal(err)
	}
	return old, treeimage.MustCapture(t, dir, treeimage.Options{IgnoreDirMtime: true})
}

// xattrsOf lists the extended attributes of every entry under dir, one
// "path name=value" string each, sorted.
func xattrsOf(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		buf := make([]byte, 4096)
		n, err := unix.Llistxattr(p, buf)
		if err != nil {
			return nil
		}
		for name := range strings.SplitSeq(strings.TrimSuffix(string(buf[:n]), "\x00"), "\x00") {
			if name == "" {
				continue
			}
			v := make([]byte, 4096)
			m, err := unix.Lgetxattr(p, name, v)
			if err != nil {
				return fmt.Errorf("%s: %s: %w", p, name, err)
			}
			rel, _ := filepath.Rel(dir, p)
			out = append(out, fmt.Sprintf("%s %s=%q", rel, name, v[:m]))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// The crash-point plan of one path.
type plan struct {
	ops         []fsystest.Op
	commitPoint int // the step that makes the journal say "commit" (0: none)
	begun       int // the last step of Begin: the command runs after it
	rolling     int // the last step of the rollback journal's write (0: none)
}

// dryRun records the steps of a whole transaction of path.
func dryRun(t *testing.T, path string) plan {
	t.Helper()
	dir := newSample(t, path)
	fs := &fsystest.FS{Record: true}
	if err := transact(dir, path, fs); err != nil {
		t.Fatal(err)
	}
	pl := plan{ops: fs.Ops()}
	journals := 0
	for i, op := range pl.ops {
		if op.Kind == "renameat2" && strings.HasSuffix(op.Path2, ".#treetx.repo.journal") {
			journals++
			if journals == 2 {
				pl.begun = pl.ops[i+1].Step // the fsync of the parent after it
			}
			if journals == 3 && path == "commit" {
				pl.commitPoint = op.Step
			}
			if journals == 3 && path != "commit" {
				pl.rolling = pl.ops[i+1].Step
			}
		}
	}
	if pl.begun == 0 || path == "commit" && pl.commitPoint == 0 {
		t.Fatalf("%s: no begin or commit point among %d steps", path, len(pl.ops))
	}
	return pl
}

// want returns the tree recovery must leave after a crash after step n.
func (pl plan) want(path string, n int, old, new treeimage.Image) (treeimage.Image, treeimage.Options) {
	switch {
	case path == "commit" && n >= pl.commitPoint:
		return new, treeimage.Options{IgnoreDirMtime: true}
	case path == "inplace" && n > pl.begun:
		// Rolled back, but for the files written in place: their old
		// content is lost, and they keep their new times.
		w := slices.Clone(old)
		for i := range w {
			if slices.Contains(inPlaceFiles, w[i].Path) {
				j := slices.IndexFunc(new, func(e treeimage.Entry) bool { return e.Path == w[i].Path })
				w[i] = new[j]
			}
		}
		return w, treeimage.Options{}
	}
	return old, treeimage.Options{}
}

// insideTree tells an op on an entry inside a shadow being built or a tree
// being deleted.
func insideTree(op fsystest.Op) bool {
	return insideRE.MatchString(op.Path) || insideRE.MatchString(op.Path2)
}

var insideRE = regexp.MustCompile(`\.#treetx\.repo\.(incomplete|removing\.[0-9a-f]{16}|failed\.[0-9a-f]{16})/`)

// runVictim runs the transaction (role "txn") or recovery ("recover") of
// path on dir in a child that SIGKILLs itself after step after; it reports
// whether the child was killed (false: it finished).
func runVictim(t testing.TB, role, dir, path string, after int) bool {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"="+role, envDir+"="+dir, envPath+"="+path, envAfter+"="+strconv.Itoa(after))
	out, err := cmd.CombinedOutput()
	if killedBy(err) {
		return true
	}
	if err != nil {
		t.Fatalf("%s child (crash after step %d) failed: %v\n%s", role, after, err, out)
	}
	return false
}

func killedBy(err error) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
			return true
		}
	}
	return false
}

// outcome is what one recovery did, Go's or the script's.
type outcome struct {
	code  int    // exit status: 0, 75 or 125
	state string // the state it reported
	out   string // its output, for messages
	line  string // Go's: the line treetx recover prints
}

// firstLine is the script's line.
func firstLine(stdout string) string {
	line, _, _ := strings.Cut(stdout, "\n")
	return line
}

func goRecover(dir string, dryRun bool) outcome {
	r, err := txrecover.Recover(dir, txrecover.Options{DryRun: dryRun})
	o := outcome{}
	switch {
	case err == nil:
	case errors.Is(err, txrecover.ErrBusy):
		o.code = 75
	default:
		o.code = 125
	}
	if r != nil {
		o.state = string(r.State)
		o.out = fmt.Sprintf("%s: %s: %s; %s (done %v)", r.Dir, r.State, r.Found, r.Action, r.Done)
		o.line = r.Line(dryRun)
	}
	if err != nil {
		o.out += "; error: " + err.Error()
	}
	return o
}

// harness runs the script through the wrappers.
type harness struct {
	script string
	bin    string // the wrappers' directory
}

// newHarness checks the tools the script needs (a missing one fails the
// test under CI=true, else skips it) and writes the wrappers.
func newHarness(t *testing.T) *harness {
	t.Helper()
	testenv.Require(t, testenv.RecoveryScript)
	real := map[string]string{}
	for _, tool := range append(slices.Clone(testenv.RecoveryScript.Tools), "getfattr", "setfattr", "btrfs") {
		p, err := exec.LookPath(tool)
		if err != nil {
			continue // getfattr, setfattr (the script says it cannot restore xattrs) and btrfs (snapshot mode) are optional here
		}
		real[tool] = p
	}
	script, err := filepath.Abs("../scripts/treetx-recover.sh")
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{script: script, bin: t.TempDir()}
	for _, name := range []string{"mv", "rm", "sync", "chmod", "chown", "touch", "setfattr", "getfattr", "btrfs"} {
		r, ok := real[name]
		if !ok {
			r = "/nonexistent/" + name
		}
		w := strings.NewReplacer("@REAL@", r, "@NAME@", name).Replace(wrapper)
		if err := os.WriteFile(filepath.Join(h.bin, name), []byte(w), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return h
}

const wrapper = `#!/bin/sh
# test wrapper of @NAME@: records the steps of the recovery script (one line
# each in $TREETX_SCRIPTTEST_COUNTER), and kills its process group after
# step $TREETX_SCRIPTTEST_KILLAT
real='@REAL@'
name=@NAME@
case $name in getfattr | setfattr)
	if [ "${TREETX_SCRIPTTEST_NOXATTR-}" = 1 ] || ! [ -x "$real" ]; then exit 127; fi ;;
esac
case ${1-} in --help | --version)
	"$real" "$@"
	rc=$?
	if [ $name = mv ] && [ "$1" = --help ] && [ -n "${TREETX_SCRIPTTEST_EXCHANGE-}" ]; then
		echo '      --exchange               exchange source and destination'
	fi
	exit $rc ;;
esac
[ $name = getfattr ] && exec "$real" "$@"
# btrfs: only subvolume deletion is a step (inspect-internal reads)
[ $name = btrfs ] && [ "${1-}" != subvolume ] && exec "$real" "$@"
if [ $name = mv ] && [ "$1" = --exchange ]; then
	case ${TREETX_SCRIPTTEST_EXCHANGE-} in
	1) ;;
	einval)
		[ -z "${TREETX_SCRIPTTEST_COUNTER-}" ] || echo einval >>"$TREETX_SCRIPTTEST_COUNTER"
		echo "mv: cannot exchange '$4' and '$5': Invalid argument" >&2
		exit 1 ;;
	*)
		echo "mv: unrecognized option '--exchange'" >&2
		exit 1 ;;
	esac
	shift
	[ "$1" = -T ] && shift
	[ "$1" = -- ] && shift
	TREETX_SCRIPTTEST_ROLE=exchange "$TREETX_SCRIPTTEST_BIN" "$1" "$2"
else
	"$real" "$@"
fi
rc=$?
if [ -n "${TREETX_SCRIPTTEST_COUNTER-}" ]; then
	echo $name >>"$TREETX_SCRIPTTEST_COUNTER"
	if [ "$(wc -l <"$TREETX_SCRIPTTEST_COUNTER")" -eq "${TREETX_SCRIPTTEST_KILLAT-0}" ]; then
		kill -s KILL 0
	fi
fi
exit $rc
`

// scriptOpts configures one run of the script.
type scriptOpts struct {
	exchange  bool          // mv has --exchange
	einval    bool          // mv has --exchange, the file system not (EINVAL)
	noXattr   bool          // getfattr and setfattr are missing
	counter   string        // record the steps in this file, one command name a line
	killAt    int           // SIGKILL the script after this step (0: never)
	killAfter time.Duration // SIGKILL it after this long (0: never)
}

// scriptRun is one run of the script.
type scriptRun struct {
	outcome
	killed bool
	stdout string
}

func (h *harness) run(t testing.TB, o scriptOpts, args ...string) scriptRun {
	t.Helper()
	cmd := exec.Command("sh", append([]string{h.script}, args...)...)
	env := []string{"PATH=" + h.bin + ":" + os.Getenv("PATH"), envBin + "=" + os.Args[0]}
	if o.exchange {
		env = append(env, envExchange+"=1")
	}
	if o.einval {
		env = append(env, envExchange+"=einval")
	}
	if o.noXattr {
		env = append(env, envNoXattr+"=1")
	}
	if o.counter != "" {
		env = append(env, envCounter+"="+o.counter, envKillAt+"="+strconv.Itoa(o.killAt))
	}
	cmd.Env = append(env, "HOME=/", "LANG=C")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	if o.killAfter > 0 {
		select {
		case err = <-done:
		case <-time.After(o.killAfter):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			err = <-done
		}
	} else {
		err = <-done
	}
	r := scriptRun{stdout: stdout.String()}
	r.out = "stdout: " + stdout.String() + "stderr: " + stderr.String()
	switch {
	case killedBy(err):
		r.killed = true
		// Whatever the group still runs (a command the script waited
		// for, a subshell) dies with it; until the last of them has
		// exited, it holds the lock's descriptor.
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		for _, dir := range args {
			waitUnlocked(t, dir)
		}
	case err == nil:
	default:
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("run %s: %v", h.script, err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

// waitUnlocked waits until nothing holds dir's lock.
func waitUnlocked(t testing.TB, dir string) {
	t.Helper()
	lockPath := filepath.Join(filepath.Dir(dir), ".#treetx."+filepath.Base(dir)+".lock")
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
		fd, err := unix.Open(lockPath, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return // no lock file, or no such directory: nothing holds it
		}
		err = unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			// Unlock before closing: a child another test is forking may
			// hold a copy of fd until it execs, and with it the lock.
			unix.Flock(fd, unix.LOCK_UN)
		}
		unix.Close(fd)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is still locked after the script was killed", dir)
		}
	}
}

// stateOf parses the state the script's line for dir reports.
func stateOf(t testing.TB, dir, stdout string) string {
	t.Helper()
	real, err := filepath.EvalSymlinks(filepath.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(stdout, "\n")
	rest, ok := strings.CutPrefix(line, filepath.Join(real, filepath.Base(dir))+": ")
	if !ok {
		return "(no line for " + dir + ")"
	}
	state, _, _ := strings.Cut(rest, ": ")
	return state
}

// besides lists the names in dir's parent, transaction ids replaced by ID.
func besides(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Dir(dir))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".gate") {
			// The lock's queue, made by a waiting Begin: never
			// deleted, like the lock file, and no part of a state.
			continue
		}
		names = append(names, idRE.ReplaceAllString(e.Name(), ".ID"))
	}
	slices.Sort(names)
	return names
}

var idRE = regexp.MustCompile(`\.[0-9a-f]{16}$`)

// crashState describes a crash state by the names beside dir, the
// journal's phase and which name holds the shadow, to tell states apart.
func crashState(t testing.TB, dir string) string {
	t.Helper()
	parent := filepath.Dir(dir)
	j, err := layout.ReadJournal(filepath.Join(parent, ".#treetx.repo.journal"))
	phase := "no journal"
	if err == nil {
		phase = string(j.Phase)
	}
	var parts []string
	ents, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		s := idRE.ReplaceAllString(e.Name(), ".ID")
		var st unix.Stat_t
		if j != nil && unix.Lstat(filepath.Join(parent, e.Name()), &st) == nil && st.Ino == j.Shadow.Ino {
			s += "(shadow)"
		}
		parts = append(parts, s)
	}
	slices.Sort(parts)
	return phase + ": " + strings.Join(parts, " ")
}

// checkInvariant checks that dir holds want and that nothing but the lock
// (and a kept failed tree, when content was lost) is left beside it.
func checkInvariant(t testing.TB, dir string, want treeimage.Image, opts treeimage.Options) string {
	t.Helper()
	got, err := treeimage.Capture(dir, opts)
	if err != nil {
		return fmt.Sprintf("capture: %v", err)
	}
	if d := want.Diff(got); d != nil {
		return fmt.Sprintf("tree differs: %s", strings.Join(d[:min(len(d), 5)], "; "))
	}
	for _, name := range besides(t, dir) {
		if name != "repo" && name != ".#treetx.repo.lock" && name != ".#treetx.repo.failed.ID" {
			return fmt.Sprintf("left behind: %v", besides(t, dir))
		}
	}
	return ""
}

// compare checks that the Go recovery of dirGo and the script's of dirSh
// agree, and that the trees are the one the invariant requires.
func compare(t testing.TB, dirGo, dirSh string, g outcome, s scriptRun, want treeimage.Image, opts treeimage.Options, xattrs bool) []string {
	t.Helper()
	var bad []string
	if s.killed {
		return []string{"the script was killed: " + s.out}
	}
	// Atimes first: capturing a tree reads its files. Those read in this
	// run (copied into the shadow) are left out.
	a, b := atimesOf(t, dirGo), atimesOf(t, dirSh)
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] && !strings.HasSuffix(a[i], " now") && !strings.HasSuffix(b[i], " now") {
			bad = append(bad, fmt.Sprintf("atime: Go %s, script %s", a[i], b[i]))
		}
	}
	if g.code != s.code {
		bad = append(bad, fmt.Sprintf("exit status: Go %d, script %d\nGo: %s\nscript: %s", g.code, s.code, g.out, s.out))
	}
	if st := stateOf(t, dirSh, s.stdout); g.state != st {
		bad = append(bad, fmt.Sprintf("state: Go %q, script %q\nGo: %s\nscript: %s", g.state, st, g.out, s.out))
	}
	if a, b := besides(t, dirGo), besides(t, dirSh); !slices.Equal(a, b) {
		bad = append(bad, fmt.Sprintf("names beside: Go %v, script %v", a, b))
	}
	ig, err1 := treeimage.Capture(dirGo, opts)
	is, err2 := treeimage.Capture(dirSh, opts)
	if err := errors.Join(err1, err2); err != nil {
		return append(bad, err.Error())
	}
	if d := ig.Diff(is); d != nil {
		bad = append(bad, "trees differ (Go, script): "+strings.Join(d[:min(len(d), 5)], "; "))
	}
	if xattrs {
		if a, b := xattrsOf(t, dirGo), xattrsOf(t, dirSh); !slices.Equal(a, b) {
			bad = append(bad, fmt.Sprintf("extended attributes: Go %q, script %q", a, b))
		}
	}
	if g.code == 0 || g.code == 125 && strings.Contains(g.out, "is lost") {
		if v := checkInvariant(t, dirGo, want, opts); v != "" {
			bad = append(bad, "Go: "+v)
		}
		if v := checkInvariant(t, dirSh, want, opts); v != "" {
			bad = append(bad, "script: "+v)
		}
	}
	return bad
}

func haveXattrTools() bool {
	_, err1 := exec.LookPath("getfattr")
	_, err2 := exec.LookPath("setfattr")
	return err1 == nil && err2 == nil
}

// TestScriptAgreesWithGo builds every crash state of each path twice and
// recovers one copy with recover.Recover and the other with the script.
// Steps inside the shadow being built, or a tree being deleted, are sampled
// (every 5th: their crash states are alike); the "inplace" and "xattr"
// paths and the run with `mv --exchange` take the protocol's steps only.
// A default run takes one step of each distinct crash state (with `mv
// --exchange`, of each state a rollback exchanges the trees from) and one
// more (three on the disk, where it takes no state for sure);
// TREETX_EXHAUSTIVE=1 every step.
func TestScriptAgreesWithGo(t *testing.T) {
	h := newHarness(t)
	xattrTools := haveXattrTools()
	seed := testenv.Seed(t)
	var total, all, violations atomic.Int64
	t.Cleanup(func() {
		t.Logf("script agreement: crash points: %s, %d violations", testenv.Counted(int(total.Load()), int(all.Load())), violations.Load())
	})
	for vi, variant := range []struct {
		path     string
		exchange bool
		every    bool // every step, not the protocol's only
		disk     bool // on the disk, not a tmpfs
	}{
		{"commit", false, true, false},
		{"rollback", false, true, false},
		{"rollback", false, false, true},
		{"rollback", true, false, false},
		{"inplace", false, false, false},
		{"xattr", false, false, !shmXattrs()},
	} {
		name := variant.path
		if variant.exchange {
			name += "/exchange"
		}
		if variant.disk {
			name += "/disk"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := variant.path
			old, new := images(t, path)
			wantX := xattrsOf(t, newSample(t, path))
			pl := dryRun(t, path)
			var points []fsystest.Op
			for _, op := range pl.ops {
				n := op.Step
				if insideTree(op) && (!variant.every || n%5 != 0) {
					continue
				}
				if !variant.every && n <= pl.begun {
					continue // Begin is the rollback path's: checked there
				}
				points = append(points, op)
			}
			first := map[int]bool{} // the first step of each distinct state
			for _, cp := range uniqueStates(t, path, pl) {
				switch {
				case variant.disk:
					// A sample: the states are the tmpfs runs'.
				case variant.exchange && !exchangeAhead(cp.state):
					// The same as without the exchange.
				default:
					first[cp.op.Step] = true
				}
			}
			extra := 1
			if variant.disk {
				extra = 3
			}
			rng := rand.New(rand.NewPCG(seed, uint64(vi)))
			all.Add(int64(len(points)))
			for _, i := range testenv.Sample(len(points), func(i int) bool { return first[points[i].Step] }, extra, rng) {
				op := points[i]
				n := op.Step
				dirGo := newSampleIn(t, path, scratch(t, variant.disk))
				dirSh := newSampleIn(t, path, scratch(t, variant.disk))
				if !runVictim(t, "txn", dirGo, path, n) || !runVictim(t, "txn", dirSh, path, n) {
					t.Fatalf("the victim finished before step %d", n)
				}
				if a, b := crashState(t, dirGo), crashState(t, dirSh); a != b {
					t.Fatalf("crash after step %s: two runs left different states:\n%s\n%s", op, a, b)
				}
				state := crashState(t, dirGo)
				g := goRecover(dirGo, false)
				s := h.run(t, scriptOpts{exchange: variant.exchange}, dirSh)
				want, opts := pl.want(path, n, old, new)
				total.Add(1)
				bad := compare(t, dirGo, dirSh, g, s, want, opts, path != "xattr" || xattrTools)
				if got := xattrsOf(t, dirGo); path == "xattr" && g.code == 0 && !slices.Equal(got, wantX) {
					bad = append(bad, fmt.Sprintf("Go left extended attributes %q, want %q", got, wantX))
				}
				if path == "xattr" && !xattrTools && s.code == 0 && strings.Contains(state, "meta") &&
					!strings.Contains(s.stdout, "extended attributes recorded in the manifest were not restored") &&
					(strings.HasPrefix(state, "running") || strings.HasPrefix(state, "rollback")) {
					bad = append(bad, "without getfattr, the script did not say that it left extended attributes: "+s.out)
				}
				if bad != nil {
					violations.Add(1)
					t.Errorf("crash after step %s (%s):\n%s", op, state, strings.Join(bad, "\n"))
				}
			}
		})
	}
}

// crashPoint is a step of a transaction and the state a crash after it
// leaves.
type crashPoint struct {
	op    fsystest.Op
	state string
}

// uniqueStates crashes a transaction of path after each step of the
// protocol and returns one step for each distinct crash state. Begin's
// steps are taken on the rollback path only: they are the same on every
// path.
func uniqueStates(t *testing.T, path string, pl plan) []crashPoint {
	t.Helper()
	statesMu.Lock()
	mu, ok := pathMu[path]
	if !ok {
		mu = new(sync.Mutex)
		pathMu[path] = mu
	}
	statesMu.Unlock()
	mu.Lock() // one path's states are found once; other paths' meanwhile
	defer mu.Unlock()
	statesMu.Lock()
	cps, ok := statesOf[path]
	statesMu.Unlock()
	if ok {
		return cps
	}
	seen := map[string]bool{}
	var out []crashPoint
	for _, op := range pl.ops {
		if insideTree(op) || path != "rollback" && op.Step <= pl.begun {
			continue
		}
		dir := newSample(t, path)
		if !runVictim(t, "txn", dir, path, op.Step) {
			t.Fatalf("the victim finished before step %d", op.Step)
		}
		if s := crashState(t, dir); !seen[s] {
			seen[s] = true
			out = append(out, crashPoint{op, s})
		}
	}
	statesMu.Lock()
	statesOf[path] = out
	statesMu.Unlock()
	return out
}

// exchangeAhead tells a crash state (crashState's description) from which
// a rollback exchanges the complete shadow with the tree.
func exchangeAhead(state string) bool {
	return strings.HasPrefix(state, "rollback") && strings.Contains(state, ".#treetx.repo.complete(shadow)")
}

// The distinct crash states of each path, shared by the tests (the runs are
// deterministic).
var (
	statesMu sync.Mutex
	statesOf = map[string][]crashPoint{}
	pathMu   = map[string]*sync.Mutex{}
)

// ok tells a recovery that left a consistent directory: exit 0, or 125 for
// a rollback that lost content (written in place) and kept the failed tree.
func (o outcome) ok() bool {
	return o.code == 0 || o.code == 125 && strings.Contains(o.out, "is lost")
}

// TestScriptCrashThenGo kills the script right after each of its own steps
// (but a sync, which leaves the state of the step before), on each distinct
// crash state, and lets recover.Recover finish. On the
// rollback path, the script also runs with an `mv --exchange`. A default
// run takes four of those states on each path (one with the exchange on the
// rollback path), drawn with the seed, and kills the script after one of its steps on each;
// TREETX_EXHAUSTIVE=1 takes every state and step.
func TestScriptCrashThenGo(t *testing.T) {
	h := newHarness(t)
	seed := testenv.Seed(t)
	var total, states, allStates, violations atomic.Int64
	t.Cleanup(func() {
		t.Logf("script killed, Go finishing: %d points on crash states: %s, %d violations", total.Load(), testenv.Counted(int(states.Load()), int(allStates.Load())), violations.Load())
	})
	for pi, path := range []string{"commit", "rollback", "inplace"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, uint64(pi)))
			old, new := images(t, path)
			pl := dryRun(t, path)
			type combo struct {
				cp   crashPoint
				exch bool
			}
			var combos []combo
			firstExch := -1
			for _, cp := range uniqueStates(t, path, pl) {
				for _, exch := range []bool{false, true} {
					if exch && (path != "rollback" || !exchangeAhead(cp.state)) {
						continue // no exchange ahead, or one the rollback's states lead to
					}
					if exch && firstExch < 0 {
						firstExch = len(combos)
					}
					combos = append(combos, combo{cp, exch})
				}
			}
			allStates.Add(int64(len(combos)))
			extra := 4
			if firstExch >= 0 {
				extra = 3
			}
			picked := testenv.Sample(len(combos), func(i int) bool { return i == firstExch }, extra, rng)
			states.Add(int64(len(picked)))
			for _, ci := range picked {
				cp, exch := combos[ci].cp, combos[ci].exch
				want, opts := pl.want(path, cp.op.Step, old, new)
				// Record the script's steps on this state.
				dir := newSample(t, path)
				runVictim(t, "txn", dir, path, cp.op.Step)
				counter := filepath.Join(scratch(t, false), "steps")
				if s := h.run(t, scriptOpts{exchange: exch, counter: counter}, dir); s.killed || !s.ok() {
					t.Fatalf("crash after step %s: script: %s", cp.op, s.out)
				}
				data, _ := os.ReadFile(counter)
				steps := strings.Fields(string(data))
				var kills []int
				for k := 1; k <= len(steps); k++ {
					if steps[k-1] != "sync" { // killed after a sync: as after the step before
						kills = append(kills, k)
					}
				}
				for _, i := range testenv.Sample(len(kills), nil, 1, rng) {
					k := kills[i]
					dir := newSample(t, path)
					runVictim(t, "txn", dir, path, cp.op.Step)
					counter := filepath.Join(scratch(t, false), "steps")
					s := h.run(t, scriptOpts{exchange: exch, counter: counter, killAt: k}, dir)
					if !s.killed {
						t.Fatalf("crash after step %s: the script was not killed at its step %d of %d: %s", cp.op, k, len(steps), s.out)
					}
					total.Add(1)
					v := ""
					if g := goRecover(dir, false); !g.ok() {
						v = "Go recover after it: " + g.out
					} else {
						v = checkInvariant(t, dir, want, opts)
					}
					if v != "" {
						violations.Add(1)
						t.Errorf("crash after step %s (%s), script (exchange %v) killed after its step %d (%s): %s", cp.op, cp.state, exch, k, steps[k-1], v)
					}
				}
			}
		})
	}
}

// TestGoCrashThenScript kills recover.Recover after each of its steps (in
// the trees it deletes, every 20th; not after a sync, which leaves the state
// of the step before), on each distinct crash state, and lets the script
// finish. A default run takes four of those states on each path, drawn
// with the seed, and kills it after one of its steps on each;
// TREETX_EXHAUSTIVE=1 takes every state and step.
func TestGoCrashThenScript(t *testing.T) {
	h := newHarness(t)
	seed := testenv.Seed(t)
	var total, states, allStates, violations atomic.Int64
	t.Cleanup(func() {
		t.Logf("Go killed, script finishing: %d points on crash states: %s, %d violations", total.Load(), testenv.Counted(int(states.Load()), int(allStates.Load())), violations.Load())
	})
	for pi, path := range []string{"commit", "rollback", "inplace"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, uint64(pi)))
			old, new := images(t, path)
			pl := dryRun(t, path)
			cps := uniqueStates(t, path, pl)
			picked := testenv.Sample(len(cps), nil, 4, rng)
			allStates.Add(int64(len(cps)))
			states.Add(int64(len(picked)))
			for _, ci := range picked {
				cp := cps[ci]
				want, opts := pl.want(path, cp.op.Step, old, new)
				dir := newSample(t, path)
				runVictim(t, "txn", dir, path, cp.op.Step)
				rfs := &fsystest.FS{Record: true}
				if _, err := txrecover.Recover(dir, txrecover.Options{FS: rfs}); err != nil {
					var lost *txn.LostContentError
					if !errors.As(err, &lost) {
						t.Fatalf("crash after step %s: recover: %v", cp.op, err)
					}
				}
				var rops []fsystest.Op
				for _, rop := range rfs.Ops() {
					if insideTree(rop) && rop.Step%20 != 0 || rop.Kind == "fsync" || rop.Kind == "syncfs" {
						continue // a kill after a sync leaves the state of the step before
					}
					rops = append(rops, rop)
				}
				for _, i := range testenv.Sample(len(rops), nil, 1, rng) {
					rop := rops[i]
					dir := newSample(t, path)
					runVictim(t, "txn", dir, path, cp.op.Step)
					if !runVictim(t, "recover", dir, path, rop.Step) {
						t.Fatalf("the recovery finished before its step %d", rop.Step)
					}
					total.Add(1)
					v := ""
					if s := h.run(t, scriptOpts{}, dir); s.killed || !s.ok() {
						v = "the script after it: " + s.out
					} else {
						v = checkInvariant(t, dir, want, opts)
					}
					if v != "" {
						violations.Add(1)
						t.Errorf("crash after step %s (%s), recovery killed after its step %s: %s", cp.op, cp.state, rop, v)
					}
				}
			}
		})
	}
}

// TestScriptKilledAtRandomTimes kills the script's process group with
// SIGKILL at a random instant of its run (inside a command it waits for,
// too), then lets recover.Recover or the script itself finish: twice on
// each path (eight times with TREETX_EXHAUSTIVE=1). TREETX_SCRIPTTEST_SEED
// (or TREETX_TEST_SEED) sets the seed.
func TestScriptKilledAtRandomTimes(t *testing.T) {
	h := newHarness(t)
	seed := testenv.Seed(t, "TREETX_SCRIPTTEST_SEED")
	tries := 2
	if testenv.Exhaustive() {
		tries = 8
	}
	for i, path := range []string{"commit", "rollback", "inplace"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			old, new := images(t, path)
			pl := dryRun(t, path)
			states := uniqueStates(t, path, pl)
			for try := range tries {
				cp := states[rng.IntN(len(states))]
				want, opts := pl.want(path, cp.op.Step, old, new)
				// How long the script takes on this state.
				probe := newSample(t, path)
				runVictim(t, "txn", probe, path, cp.op.Step)
				start := time.Now()
				h.run(t, scriptOpts{}, probe)
				d := time.Duration(rng.Int64N(int64(time.Since(start)) + 1))

				dir := newSample(t, path)
				runVictim(t, "txn", dir, path, cp.op.Step)
				s := h.run(t, scriptOpts{killAfter: d}, dir)
				finisher, v := "Go", ""
				if try%2 == 0 {
					if g := goRecover(dir, false); !g.ok() {
						v = "Go recover after it: " + g.out
					}
				} else {
					finisher = "the script"
					if s := h.run(t, scriptOpts{}, dir); s.killed || !s.ok() {
						v = "the script after it: " + s.out
					}
				}
				if v == "" {
					v = checkInvariant(t, dir, want, opts)
				}
				if v != "" {
					t.Errorf("crash after step %s (%s), script killed after %v (killed: %v), %s finishing: %s", cp.op, cp.state, d, s.killed, finisher, v)
				}
			}
		})
	}
}

// snapshotOf describes everything beside dir and in it, but the lock file's
// content (recovery writes its holder record there and clears it).
func snapshotOf(t testing.TB, dir string) string {
	t.Helper()
	parent := filepath.Dir(dir)
	ents, err := os.ReadDir(parent)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range ents {
		if e.Name() == ".#treetx.repo.lock" || e.Name() == ".#treetx.repo.gate" {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(parent, e.Name()), &st); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%q ino %d mode %o size %d mtime %d.%09d\n", e.Name(), st.Ino, st.Mode, st.Size, st.Mtim.Sec, st.Mtim.Nsec)
		if e.Type().IsRegular() {
			data, err := os.ReadFile(filepath.Join(parent, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&b, "%q\n", data)
		}
	}
	for _, tree := range []string{dir, filepath.Join(parent, ".#treetx.repo.complete")} {
		if img, err := treeimage.Capture(tree, treeimage.Options{}); err == nil {
			b.WriteString(img.String())
		}
	}
	return b.String()
}

// runningState leaves dir as a crash while the command ran: journal
// "running", the shadow at .complete.
func runningState(t *testing.T, path string, pl plan) string {
	t.Helper()
	dir := newSample(t, path)
	if !runVictim(t, "txn", dir, path, pl.begun) {
		t.Fatal("the victim finished")
	}
	return dir
}

func editFile(t *testing.T, name string, edit func([]byte) []byte) {
	t.Helper()
	data, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(name, edit(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestScriptRefuses checks that the script refuses, changing nothing, what
// recover.Recover refuses: exit 125, the same state, the same files.
func TestScriptRefuses(t *testing.T) {
	h := newHarness(t)
	pl := dryRun(t, "rollback")
	journal := func(dir string) string { return filepath.Join(filepath.Dir(dir), ".#treetx.repo.journal") }
	for _, tc := range []struct {
		name  string
		state func(t *testing.T) string
	}{
		{"corrupt journal", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			editFile(t, journal(dir), func(b []byte) []byte { return bytes.Replace(b, []byte(`"phase"`), []byte(`"phase`), 1) })
			return dir
		}},
		{"garbage journal", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			editFile(t, journal(dir), func([]byte) []byte { return []byte("\x00\x01 not a journal\n") })
			return dir
		}},
		{"truncated journal", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			editFile(t, journal(dir), func(b []byte) []byte { return b[:len(b)-3] })
			return dir
		}},
		{"empty journal", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			editFile(t, journal(dir), func([]byte) []byte { return nil })
			return dir
		}},
		{"journal version 3", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			editFile(t, journal(dir), func(b []byte) []byte {
				return bytes.Replace(b, []byte(`"version": 1,`), []byte(`"version": 3,`), 1)
			})
			return dir
		}},
		{"unknown phase", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			editFile(t, journal(dir), func(b []byte) []byte {
				return bytes.Replace(b, []byte(`"phase": "running"`), []byte(`"phase": "finishing"`), 1)
			})
			return dir
		}},
		{"unknown field", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			editFile(t, journal(dir), func(b []byte) []byte {
				return bytes.Replace(b, []byte(`  "phase"`), []byte("  \"extra\": 1,\n  \"phase\""), 1)
			})
			return dir
		}},
		{"bad start time", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			editFile(t, journal(dir), func(b []byte) []byte {
				return regexp.MustCompile(`"start": "[^"]*"`).ReplaceAll(b, []byte(`"start": "2026-02-30T01:02:03Z"`))
			})
			return dir
		}},
		{"complete without journal", func(t *testing.T) string {
			dir := newSample(t, "rollback")
			if err := os.Mkdir(filepath.Join(filepath.Dir(dir), ".#treetx.repo.complete"), 0o755); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
		{"shadow inode mismatch", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			editFile(t, journal(dir), func(b []byte) []byte {
				return regexp.MustCompile(`("shadow": \{\n    "dev": [0-9]+,\n    "ino": )([0-9]+)`).ReplaceAll(b, []byte("${1}999999"))
			})
			return dir
		}},
		{"shadow replaced", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			c := filepath.Join(filepath.Dir(dir), ".#treetx.repo.complete")
			if err := os.Rename(c, filepath.Join(filepath.Dir(dir), "moved")); err != nil {
				t.Fatal(err)
			}
			if err := os.Mkdir(c, 0o755); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
		{"shadow missing", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			c := filepath.Join(filepath.Dir(dir), ".#treetx.repo.complete")
			if err := os.Rename(c, filepath.Join(filepath.Dir(dir), "moved")); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
		{"shadow changed by name", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			if err := os.Remove(filepath.Join(filepath.Dir(dir), ".#treetx.repo.complete/with space.txt")); err != nil {
				t.Fatal(err)
			}
			return dir
		}},
		{"manifest truncated", func(t *testing.T) string {
			dir := runningState(t, "rollback", pl)
			editFile(t, filepath.Join(filepath.Dir(dir), ".#treetx.repo.meta"), func(b []byte) []byte {
				return b[:bytes.LastIndex(b, []byte("# end"))]
			})
			return dir
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := tc.state(t)
			// The script's line must be Go's, up to where the reasons
			// a journal is refused are worded differently.
			same := map[string]string{
				"corrupt journal": "corrupt", "garbage journal": "corrupt", "truncated journal": "corrupt",
				"empty journal": "corrupt", "journal version 3": "(version 3", "unknown phase": "corrupt",
				"unknown field": "corrupt", "bad start time": "corrupt",
			}[tc.name]
			before := snapshotOf(t, dir)
			s := h.run(t, scriptOpts{}, dir)
			if s.killed || s.code != 125 {
				t.Errorf("script: exit %d, want 125: %s", s.code, s.out)
			}
			if after := snapshotOf(t, dir); after != before {
				t.Errorf("the script changed something:\nbefore:\n%s\nafter:\n%s", before, after)
			}
			g := goRecover(dir, false)
			if g.code != 125 {
				t.Errorf("Go recover: exit %d, want 125: %s", g.code, g.out)
			}
			if st := stateOf(t, dir, s.stdout); st != g.state {
				t.Errorf("state: Go %q, script %q\nGo: %s\nscript: %s", g.state, st, g.out, s.out)
			}
			gl, sl := g.line, firstLine(s.stdout)
			if same != "" {
				gl, _, _ = strings.Cut(gl, same)
				sl, _, _ = strings.Cut(sl, same)
			}
			if gl != sl {
				t.Errorf("lines differ:\nGo:     %s\nscript: %s", gl, sl)
			}
			if after := snapshotOf(t, dir); after != before {
				t.Errorf("Go recover changed something:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// holdLock holds dir's lock in a background flock(1) until the test ends.
func holdLock(t *testing.T, dir string) {
	t.Helper()
	lockPath := filepath.Join(filepath.Dir(dir), ".#treetx.repo.lock")
	cmd := exec.Command("flock", lockPath, "sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if err := exec.Command("flock", "-n", lockPath, "true").Run(); err != nil {
			return // held
		}
		if time.Now().After(deadline) {
			t.Fatal("the background flock never took the lock")
		}
	}
}

// TestScriptBusy: a held lock is a live transaction: left alone, exit 75;
// the other directories are still processed.
func TestScriptBusy(t *testing.T) {
	h := newHarness(t)
	pl := dryRun(t, "rollback")
	busy := runningState(t, "rollback", pl)
	holdLock(t, busy)
	before := snapshotOf(t, busy)

	s := h.run(t, scriptOpts{}, busy)
	if s.code != 75 || stateOf(t, busy, s.stdout) != "in progress" {
		t.Errorf("script on a busy directory: exit %d, want 75, state in progress: %s", s.code, s.out)
	}
	g := goRecover(busy, false)
	if g.code != 75 {
		t.Errorf("Go recover on a busy directory: exit %d, want 75: %s", g.code, g.out)
	}
	if sl := firstLine(s.stdout); sl != g.line {
		t.Errorf("lines differ:\nGo:     %s\nscript: %s", g.line, sl)
	}
	if s := h.run(t, scriptOpts{}, "-n", busy); s.code != 75 {
		t.Errorf("dry run on a busy directory: exit %d, want 75: %s", s.code, s.out)
	}
	if after := snapshotOf(t, busy); after != before {
		t.Errorf("a busy directory was changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}

	// One busy, one to roll back: 75, and the other is rolled back.
	other := runningState(t, "rollback", pl)
	s = h.run(t, scriptOpts{}, busy, other)
	if s.code != 75 {
		t.Errorf("busy and recoverable: exit %d, want 75: %s", s.code, s.out)
	}
	old, _ := images(t, "rollback")
	if v := checkInvariant(t, other, old, treeimage.Options{}); v != "" {
		t.Errorf("the directory after the busy one: %s: %s", v, s.out)
	}

	// One busy, one that needs a person: 125.
	planted := newSample(t, "rollback")
	if err := os.Mkdir(filepath.Join(filepath.Dir(planted), ".#treetx.repo.complete"), 0o755); err != nil {
		t.Fatal(err)
	}
	if s := h.run(t, scriptOpts{}, busy, planted); s.code != 125 || strings.Count(s.stdout, "\n") != 2 {
		t.Errorf("busy and needs a person: exit %d, want 125, two lines: %s", s.code, s.out)
	}
}

// TestScriptDryRun: -n says what it would do and changes nothing.
func TestScriptDryRun(t *testing.T) {
	h := newHarness(t)
	pl := dryRun(t, "rollback")
	dir := runningState(t, "rollback", pl)
	before := snapshotOf(t, dir)
	s := h.run(t, scriptOpts{}, "-n", dir)
	if s.code != 0 || !strings.Contains(s.stdout, "; would: roll back") {
		t.Errorf("dry run: exit %d, want 0 and would: %s", s.code, s.out)
	}
	if g := goRecover(dir, true); g.line != firstLine(s.stdout) {
		t.Errorf("dry run: lines differ:\nGo:     %s\nscript: %s", g.line, firstLine(s.stdout))
	}
	if after := snapshotOf(t, dir); after != before {
		t.Errorf("the dry run changed something:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	// Idle, with no lock file: one line, exit 0, and no lock file made.
	idle := newSample(t, "rollback")
	if s := h.run(t, scriptOpts{}, idle); s.code != 0 || stateOf(t, idle, s.stdout) != "idle" {
		t.Errorf("idle: exit %d, want 0 and idle: %s", s.code, s.out)
	}
	if names := besides(t, idle); !slices.Equal(names, []string{"repo"}) {
		t.Errorf("idle: the script left %v", names)
	}
	// A missing directory with nothing beside it: 125, no line, no lock.
	missing := filepath.Join(scratch(t, false), "missing")
	if s := h.run(t, scriptOpts{}, missing); s.code != 125 || s.stdout != "" {
		t.Errorf("missing directory: exit %d, want 125 and no line: %s", s.code, s.out)
	}
	if g := goRecover(missing, false); g.code != 125 {
		t.Errorf("missing directory: Go exit %d, want 125", g.code)
	}
	if ents, _ := os.ReadDir(filepath.Dir(missing)); len(ents) != 0 {
		t.Errorf("missing directory: something was made beside it")
	}
}

// TestScriptWithoutXattrTools: without getfattr and setfattr the script
// still rolls back, and says that it did not restore the extended
// attributes the manifest records.
func TestScriptWithoutXattrTools(t *testing.T) {
	h := newHarness(t)
	pl := dryRun(t, "xattr")
	dir := newSample(t, "xattr")
	// A crash after the command ran: the rollback journal is written next.
	if !runVictim(t, "txn", dir, "xattr", pl.begun+1) {
		t.Fatal("the victim finished")
	}
	s := h.run(t, scriptOpts{noXattr: true}, dir)
	if s.code != 0 || !strings.Contains(s.stdout, "extended attributes recorded in the manifest were not restored (getfattr/setfattr not found)") {
		t.Errorf("without getfattr: exit %d, want 0 and a word on extended attributes: %s", s.code, s.out)
	}
	old, _ := images(t, "xattr")
	if v := checkInvariant(t, dir, old, treeimage.Options{}); v != "" {
		t.Error(v)
	}
}

// TestScriptRollbackJournal: the journal the script writes when it starts a
// rollback is the one Go writes (phase rollback, the lost list in manifest
// order, a name with a newline escaped as encoding/json does), byte for byte
// what json.MarshalIndent makes of it; and the holder record the killed
// script left in the lock file is one lock.ReadHolder reads.
func TestScriptRollbackJournal(t *testing.T) {
	h := newHarness(t)
	pl := dryRun(t, "inplace")
	state := func() string {
		dir := newSample(t, "inplace")
		// A crash right after the command ran: journal "running".
		if !runVictim(t, "txn", dir, "inplace", pl.begun+1) {
			t.Fatal("the victim finished")
		}
		return dir
	}
	journal := func(dir string) string { return filepath.Join(filepath.Dir(dir), ".#treetx.repo.journal") }

	// Go's: recovery killed right after it renamed the new journal.
	dirGo := state()
	rfs := &fsystest.FS{Record: true}
	probe := state()
	if _, err := txrecover.Recover(probe, txrecover.Options{FS: rfs}); err == nil {
		t.Fatal("want the rollback to report lost content")
	}
	at := slices.IndexFunc(rfs.Ops(), func(op fsystest.Op) bool {
		return op.Kind == "renameat2" && strings.HasSuffix(op.Path2, ".#treetx.repo.journal")
	})
	if at < 0 || !runVictim(t, "recover", dirGo, "inplace", rfs.Ops()[at].Step) {
		t.Fatal("no journal write in Go's recovery")
	}
	jGo, err := layout.ReadJournal(journal(dirGo))
	if err != nil {
		t.Fatal(err)
	}

	// The script's: killed right after its mv of the journal.
	dirSh := state()
	counter := filepath.Join(scratch(t, false), "steps")
	h.run(t, scriptOpts{counter: counter}, state())
	data, _ := os.ReadFile(counter)
	k := slices.Index(strings.Fields(string(data)), "mv") + 1
	if s := h.run(t, scriptOpts{counter: filepath.Join(scratch(t, false), "steps"), killAt: k}, dirSh); !s.killed {
		t.Fatalf("the script was not killed at its step %d: %s", k, s.out)
	}
	raw, err := os.ReadFile(journal(dirSh))
	if err != nil {
		t.Fatal(err)
	}
	jSh, err := layout.ReadJournal(journal(dirSh))
	if err != nil {
		t.Fatalf("Go cannot read the script's journal: %v\n%s", err, raw)
	}
	if jSh.Phase != txrecover.PhaseRollback || !slices.Equal(jSh.Lost, jGo.Lost) || len(jGo.Lost) != len(inPlaceFiles) {
		t.Errorf("the script's journal says phase %s, lost %q; Go's: phase %s, lost %q", jSh.Phase, jSh.Lost, jGo.Phase, jGo.Lost)
	}
	want, err := json.MarshalIndent(jSh, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if want = append(want, '\n'); !bytes.Equal(raw, want) {
		t.Errorf("the script's journal is not what Go writes:\n%s\nwant:\n%s", raw, want)
	}

	// The holder record of the killed script.
	holder, err := lock.ReadHolder(filepath.Join(filepath.Dir(dirSh), ".#treetx.repo.lock"))
	if err != nil || holder == nil || len(holder.Command) == 0 || holder.Command[0] != "treetx-recover.sh" || !holder.Stale || holder.Since.IsZero() {
		t.Errorf("holder record of the killed script: %+v, %v", holder, err)
	}
	// Go finishes: the failed tree is kept, as the journal's lost list says.
	if g := goRecover(dirSh, false); !g.ok() || !strings.Contains(g.out, "is lost") {
		t.Errorf("Go after the script: %s", g.out)
	}
	if names := besides(t, dirSh); !slices.Equal(names, []string{".#treetx.repo.failed.ID", ".#treetx.repo.lock", "repo"}) {
		t.Errorf("left beside: %v", names)
	}
	// A script that finishes clears its record.
	dir := state()
	if s := h.run(t, scriptOpts{}, dir); !s.ok() {
		t.Fatal(s.out)
	}
	if data, _ := os.ReadFile(filepath.Join(filepath.Dir(dir), ".#treetx.repo.lock")); len(data) != 0 {
		t.Errorf("the lock file still holds %q", data)
	}
}

// TestScriptSkipsMissingRecords: a rollback whose shadow lacks recorded
// files (removed by hand) skips them, as snapshot.Restore does; the script
// restores the others one by one then (extended attributes included).
func TestScriptSkipsMissingRecords(t *testing.T) {
	h := newHarness(t)
	path := "xattr"
	pl := dryRun(t, path)
	state := func() string {
		dir := newSample(t, path)
		// The rollback journal is durable; nothing restored yet.
		if !runVictim(t, "txn", dir, path, pl.rolling) {
			t.Fatal("the victim finished")
		}
		if err := os.Remove(filepath.Join(filepath.Dir(dir), ".#treetx.repo.complete/with space.txt")); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	dirGo, dirSh := state(), state()
	g := goRecover(dirGo, false)
	s := h.run(t, scriptOpts{}, dirSh)
	old := treeimage.MustCapture(t, newSample(t, path), treeimage.Options{IgnoreDirMtime: true})
	want := slices.DeleteFunc(old, func(e treeimage.Entry) bool { return e.Path == "with space.txt" })
	// (Removing the file changed the mtime of its directory.)
	if bad := compare(t, dirGo, dirSh, g, s, want, treeimage.Options{IgnoreDirMtime: true}, haveXattrTools()); bad != nil {
		t.Errorf("%s", strings.Join(bad, "\n"))
	}
}

// TestScriptExchangeUnsupported: with an mv that has --exchange on a file
// system that has not (NFS, 9p: EINVAL), the script falls back to the two
// renames, as txn's swap does.
func TestScriptExchangeUnsupported(t *testing.T) {
	h := newHarness(t)
	pl := dryRun(t, "rollback")
	old, _ := images(t, "rollback")
	for _, n := range []int{pl.begun + 1, pl.rolling} {
		dir := newSample(t, "rollback")
		if !runVictim(t, "txn", dir, "rollback", n) {
			t.Fatal("the victim finished")
		}
		counter := filepath.Join(scratch(t, false), "steps")
		if s := h.run(t, scriptOpts{einval: true, counter: counter}, dir); s.code != 0 {
			t.Errorf("crash after step %s: script: %s", pl.ops[n-1], s.out)
		}
		// The exchange tried, then two renames (and the journal's, from
		// "running").
		data, _ := os.ReadFile(counter)
		want := "einval mv mv"
		if n < pl.rolling {
			want = "mv einval mv mv"
		}
		var got []string
		for _, step := range strings.Fields(string(data)) {
			if step == "mv" || step == "einval" {
				got = append(got, step)
			}
		}
		if strings.Join(got, " ") != want {
			t.Errorf("crash after step %s: the script ran %q, want %q", pl.ops[n-1], got, want)
		}
		if v := checkInvariant(t, dir, old, treeimage.Options{}); v != "" {
			t.Errorf("crash after step %s: %s", pl.ops[n-1], v)
		}
	}
}
