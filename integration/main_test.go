package integration

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// treetxPath is the binary TestMain built.
var treetxPath string

func TestMain(m *testing.M) {
	if ok, code := helperMain(); ok {
		os.Exit(code)
	}
	if ok, code := tortureChildMain(); ok {
		os.Exit(code)
	}
	code, err := testMain(m)
	if err != nil {
		fmt.Fprintf(os.Stderr, "integration: %v\n", err)
		os.Exit(2)
	}
	os.Exit(code)
}

func testMain(m *testing.M) (int, error) {
	flag.Parse()
	// These tests spend most of their time waiting for the processes they
	// start and for the disk, not on the CPU: unless -parallel says
	// otherwise, run three times as many at once as go test would.
	parallelSet := false
	flag.Visit(func(f *flag.Flag) { parallelSet = parallelSet || f.Name == "test.parallel" })
	if !parallelSet {
		flag.Set("test.parallel", strconv.Itoa(3*runtime.GOMAXPROCS(0)))
	}
	testenv.Announce(testenv.Root, testenv.CVS, testenv.RCS, testenv.Ext4, testenv.XFS, testenv.Btrfs, testenv.Shellcheck, testenv.Systemd)
	dir, err := os.MkdirTemp("", "treetx-integration-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	// User nobody runs the binary in one test.
	if err := os.Chmod(dir, 0o755); err != nil {
		return 0, err
	}
	root, err := moduleRoot()
	if err != nil {
		return 0, err
	}
	treetxPath = filepath.Join(dir, "treetx")
	build := exec.Command("go", "build", "-o", treetxPath, ".")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("go build in %s: %v\n%s", root, err, out)
	}
	return m.Run(), nil
}

// moduleRoot finds the module's root directory: go env GOMOD, or "..".
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		if gomod := strings.TrimSpace(string(out)); gomod != "" && gomod != os.DevNull {
			return filepath.Dir(gomod), nil
		}
	}
	return filepath.Abs("..")
}

// invocation is one run of the treetx binary.
type invocation struct {
	args  []string
	env   []string // added to the test's environment
	dir   string   // working directory; "" is the test's
	cred  *syscall.Credential
	stdin string
	// stderr, if set, is treetx's stderr (a terminal), instead of a file.
	stderr *os.File
	// group starts treetx in a process group of its own, which its
	// command joins, as a shell starts a job (see proc.signalGroup).
	group bool
}

// result is what a finished treetx process left.
type result struct {
	code           int // -1 if it died of a signal
	stdout, stderr string
	elapsed        time.Duration
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// proc is a started treetx process.
type proc struct {
	cmd            *exec.Cmd
	stdout, stderr *os.File
	start          time.Time
	cancel         context.CancelFunc
}

// runTimeout kills a treetx process that hangs: far longer than any run
// takes, even on a loaded machine.
const runTimeout = 2 * time.Minute

// start starts treetx. Its stdout and stderr are files, not pipes, so that
// waiting for it never waits for a descendant that inherited them.
func start(t *testing.T, inv invocation) *proc {
	t.Helper()
	out := t.TempDir()
	stdout, err := os.Create(filepath.Join(out, "stdout"))
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := os.Create(filepath.Join(out, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	cmd := exec.CommandContext(ctx, treetxPath, inv.args...)
	cmd.Env = append(os.Environ(), inv.env...)
	cmd.Dir = inv.dir
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if inv.stderr != nil {
		cmd.Stderr = inv.stderr
	}
	if inv.stdin != "" {
		cmd.Stdin = strings.NewReader(inv.stdin)
	}
	if inv.cred != nil || inv.group {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: inv.cred, Setpgid: inv.group}
	}
	p := &proc{cmd: cmd, stdout: stdout, stderr: stderr, start: time.Now(), cancel: cancel}
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("start treetx %q: %v", inv.args, err)
	}
	t.Cleanup(func() {
		cancel()
		stdout.Close()
		stderr.Close()
	})
	return p
}

// pid is the treetx process's pid.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// signal sends sig to the treetx process (not its children).
func (p *proc) signal(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("send %v to treetx (pid %d): %v", sig, p.pid(), err)
	}
}

// signalGroup sends sig to treetx's process group (started with group), as
// a terminal sends SIGINT to its foreground job on Ctrl-C: treetx and its
// command both get it.
func (p *proc) signalGroup(t *testing.T, sig syscall.Signal) {
	t.Helper()
	if err := syscall.Kill(-p.pid(), sig); err != nil {
		t.Fatalf("send %v to treetx's process group (%d): %v", sig, p.pid(), err)
	}
}

// wait waits for treetx to exit and returns what it left.
func (p *proc) wait(t *testing.T) result {
	t.Helper()
	err := p.cmd.Wait()
	elapsed := time.Since(p.start)
	p.cancel()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("wait for treetx: %v", err)
	}
	if p.cmd.ProcessState == nil {
		t.Fatalf("wait for treetx: no process state")
	}
	if elapsed >= runTimeout {
		t.Errorf("treetx %q ran %v and was killed: it hangs", p.cmd.Args[1:], elapsed)
	}
	read := func(f *os.File) string {
		b, err := os.ReadFile(f.Name())
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	return result{code: p.cmd.ProcessState.ExitCode(), stdout: read(p.stdout), stderr: read(p.stderr), elapsed: elapsed}
}

// invoke runs treetx to completion.
func invoke(t *testing.T, inv invocation) result {
	t.Helper()
	return start(t, inv).wait(t)
}

// treetx runs the binary with args and env (added to the environment).
func treetx(t *testing.T, env []string, args ...string) result {
	t.Helper()
	return invoke(t, invocation{args: args, env: env})
}

// script is a COMMAND running a shell script; the tests pass the tree's path
// in $T and a directory outside the tree in $O.
func script(s string) []string { return []string{"sh", "-c", s} }

// runArgs returns "run [flags...] dir -- command...".
func runArgs(dir string, command []string, flags ...string) []string {
	args := append([]string{"run"}, flags...)
	args = append(args, dir, "--")
	return append(args, command...)
}

// env returns the $T and $O settings of a script.
func env(tree, out string) []string { return []string{"T=" + tree, "O=" + out} }

func wantCode(t *testing.T, r result, want int) {
	t.Helper()
	if r.code != want {
		t.Errorf("treetx exited %d, want %d\n%v", r.code, want, r)
	}
}

// oneLine checks that stderr is a single line, holding every string of
// wants.
func oneLine(t *testing.T, stderr string, wants ...string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(stderr, "\n"), "\n")
	if len(lines) != 1 || lines[0] == "" {
		t.Errorf("stderr has %d line(s), want exactly one:\n%s", len(lines), stderr)
	}
	for _, w := range wants {
		if !strings.Contains(stderr, w) {
			t.Errorf("stderr does not mention %q:\n%s", w, stderr)
		}
	}
}

func contains(t *testing.T, what, text string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(text, w) {
			t.Errorf("%s does not contain %q:\n%s", what, w, text)
		}
	}
}

// ---- trees and parents ----

// newSample builds treeimage's sample tree at PARENT/tree in a new
// temporary directory and returns both paths.
func newSample(t *testing.T) (parent, tree string) {
	t.Helper()
	parent = t.TempDir()
	tree = filepath.Join(parent, "tree")
	if err := treeimage.BuildSample(tree); err != nil {
		t.Fatal(err)
	}
	return parent, tree
}

// newTree makes PARENT/tree in a new temporary directory with the files
// given as path to content ("x/" makes a directory).
func newTree(t *testing.T, files map[string]string) (parent, tree string) {
	t.Helper()
	parent = t.TempDir()
	tree = filepath.Join(parent, "tree")
	writeFiles(t, tree, files)
	return parent, tree
}

func writeFiles(t *testing.T, root string, files map[string]string) {
	t.Helper()
	if err := os.MkdirAll(root, 0o755); err != nil {
		t.Fatal(err)
	}
	paths := make([]string, 0, len(files))
	for p := range files {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	for _, p := range paths {
		full := filepath.Join(root, filepath.FromSlash(p))
		if strings.HasSuffix(p, "/") {
			if err := os.MkdirAll(full, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(full, []byte(files[p]), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// capture records a tree with everything compared, directory mtimes
// included.
func capture(t *testing.T, root string) treeimage.Image {
	t.Helper()
	return treeimage.MustCapture(t, root, treeimage.Options{})
}

// listing returns the sorted names in dir.
func listing(t *testing.T, dir string) []string {
	t.Helper()
	des, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(des))
	for i, de := range des {
		names[i] = de.Name()
	}
	return names
}

// sameListing checks that dir holds the names before held, plus at most the
// names in allowed.
func sameListing(t *testing.T, dir string, before []string, allowed ...string) {
	t.Helper()
	awaitCleanup(t, dir)
	after := listing(t, dir)
	for _, name := range before {
		if !slices.Contains(after, name) {
			t.Errorf("%s: %q is gone", dir, name)
		}
	}
	for _, name := range after {
		if gateName.MatchString(name) && slices.ContainsFunc(allowed, func(a string) bool { return strings.HasSuffix(a, ".lock") }) {
			continue // the lock's queue, kept beside it like the lock file
		}
		if !slices.Contains(before, name) && !slices.Contains(allowed, name) {
			t.Errorf("%s: new entry %q left behind", dir, name)
		}
	}
}

// lockName is the lock file treetx keeps beside a directory named base.
func lockName(base string) string { return ".#treetx." + base + ".lock" }

// noLeftovers checks that nothing named .#treetx.BASE.* but the lock file is
// in parent.
func noLeftovers(t *testing.T, parent, base string) {
	t.Helper()
	awaitCleanup(t, parent)
	for _, name := range listing(t, parent) {
		if strings.HasPrefix(name, ".#treetx."+base+".") && name != lockName(base) && name != ".#treetx."+base+".gate" {
			t.Errorf("%s: leftover %q", parent, name)
		}
	}
}

// gateName matches the lock's queue file, which stays like the lock file.
var gateName = regexp.MustCompile(`^\.#treetx\..+\.gate$`)

// removalName matches the name of a tree treetx named for removal.
var removalName = regexp.MustCompile(`^\.#treetx\..+\.removing\.[0-9a-f]{16}$`)

// awaitCleanup waits for the trees named for removal in dir to be gone:
// treetx run leaves their deletion to a detached process. It gives up
// after a minute, which only a cleaner that failed or never ran reaches
// (the caller's check then reports the leftover).
func awaitCleanup(t *testing.T, dir string) {
	t.Helper()
	pending := func() bool {
		for _, name := range listing(t, dir) {
			if removalName.MatchString(name) {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(time.Minute); pending() && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
}

// ---- processes ----

// processGone reports whether pid has exited (a zombie counts as exited:
// it holds no descriptor any more).
func processGone(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return false
	}
	f := strings.Fields(string(data[i+1:]))
	return len(f) > 0 && (f[0] == "Z" || f[0] == "X")
}

// waitFor polls cond every 10ms until it holds, or fails the test after
// timeout.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// waitForFile waits for a marker file, failing early if p exits first (or
// after a minute, which only a hang reaches).
func waitForFile(t *testing.T, p *proc, path string) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !exists(path) {
		if processGone(p.pid()) {
			t.Fatalf("treetx exited before %s appeared", path)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", path)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return pid
}

// ---- environment ----

// mountTmpfs mounts a tmpfs on dir and unmounts it in t.Cleanup.
func mountTmpfs(t *testing.T, dir string) {
	t.Helper()
	mount(t, dir, "-t", "tmpfs", "none", dir)
}

// mount runs mount with args, and unmounts dir in t.Cleanup.
func mount(t *testing.T, dir string, args ...string) {
	t.Helper()
	testenv.Require(t, testenv.Mount)
	if out, err := exec.Command("mount", args...).CombinedOutput(); err != nil {
		testenv.Unavailable(t, "mount %q: %v: %s", args, err, out)
	}
	t.Cleanup(func() {
		// A detached cleaner of treetx's may still hold a directory of
		// the file system open for a moment after the tree it deleted is
		// gone: a busy file system is retried until it is free.
		var out []byte
		var err error
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
			out, err = exec.Command("umount", dir).CombinedOutput()
			if err == nil || !strings.Contains(string(out), "busy") || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Errorf("umount %s: %v: %s", dir, err, out)
			exec.Command("umount", "-l", dir).Run()
		}
	})
}

func sh(t *testing.T, env []string, s string) {
	t.Helper()
	cmd := exec.Command("sh", "-c", s)
	cmd.Env = append(os.Environ(), env...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sh -c %q: %v\n%s", s, err, out)
	}
}
