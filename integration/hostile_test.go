package integration

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/testenv"
)

// The hostile-neighbour matrix: treetx runs as root over a directory whose
// parent other users can write (a sticky, world-writable parent, as /tmp).
// User nobody plants something under each of treetx's names; then each
// command runs as root. Whatever was planted, no command may change
// anything outside treetx's names (the tree, the other names of the
// parent, and files elsewhere that the plant points at or links to, are
// hashed before and after), hang, or answer otherwise than the table says,
// and a refusal is one clear line naming the path.

// plant is something another user can put under a name.
type plant struct {
	name string
	make func(t *testing.T, path string, o outsideFiles)
	// bad is set when treetx never makes such an entry under any of its
	// names: what reads it or writes it must refuse it.
	bad bool
}

// outsideFiles are files outside the tree and its parent that a plant
// points at: a root-only file and a directory.
type outsideFiles struct{ file, dir string }

var plants = []plant{
	{"symlink to a file", func(t *testing.T, p string, o outsideFiles) { symlinkAs(t, o.file, p) }, true},
	{"symlink to a directory", func(t *testing.T, p string, o outsideFiles) { symlinkAs(t, o.dir, p) }, true},
	{"dangling symlink", func(t *testing.T, p string, o outsideFiles) { symlinkAs(t, o.file+".new", p) }, true},
	{"FIFO", func(t *testing.T, p string, o outsideFiles) { must(t, unix.Mkfifo(p, 0o666)); chownNobody(t, p) }, true},
	{"socket", func(t *testing.T, p string, o outsideFiles) { makeSocket(t, p); chownNobody(t, p) }, true},
	{"directory", func(t *testing.T, p string, o outsideFiles) {
		must(t, os.Mkdir(p, 0o755))
		must(t, os.WriteFile(filepath.Join(p, "f"), []byte("x"), 0o644))
		symlinkAs(t, o.dir, filepath.Join(p, "out"))
		chownNobody(t, filepath.Join(p, "f"))
		chownNobody(t, p)
	}, true},
	// Made by root: with fs.protected_hardlinks=0 a user may link a file
	// of root's; the link is root's file.
	{"hard link to an outside file", func(t *testing.T, p string, o outsideFiles) { must(t, os.Link(o.file, p)) }, true},
	{"file of another user", func(t *testing.T, p string, o outsideFiles) {
		must(t, os.WriteFile(p, []byte("not treetx's\n"), 0o644))
		chownNobody(t, p)
	}, false},
}

// kinds are the suffixes of treetx's names beside a directory N:
// .#treetx.N.SUFFIX.
var kinds = []string{"lock", "gate", "journal", "journal.tmp", "meta", "incomplete", "complete", "removing.0123456789abcdef", "failed.0123456789abcdef"}

// commands are what root runs, with the directory's path; sh is the shell
// recovery script.
var hostileCommands = []struct {
	name string
	args func(parent, dir string) []string
}{
	{"run", func(p, d string) []string { return []string{"run", d, "--", "true"} }},
	{"lock", func(p, d string) []string { return []string{"lock", d, "--", "true"} }},
	{"status", func(p, d string) []string { return []string{"status", d} }},
	{"recover", func(p, d string) []string { return []string{"recover", d} }},
	{"gc", func(p, d string) []string { return []string{"gc", p} }},
	{"recover --scan", func(p, d string) []string { return []string{"recover", "--scan", p} }},
	{"script", nil},
}

// expected is the exit status of command cmd with p planted as kind.
func expected(kind string, p plant, cmd string) int {
	read := cmd == "status"
	switch kind {
	case "lock", "gate":
		// The gate is opened only by a waiting locker, but one that is
		// not a regular file with one link would refuse every such
		// locker: status and recovery say it needs a person, as for the
		// lock. gc and scan find a directory by its other names: a lock
		// file or gate alone is not looked at.
		if p.bad && cmd != "gc" && cmd != "recover --scan" {
			return 125
		}
	case "journal":
		// Not a journal treetx wrote: a person must look.
		return 125
	case "journal.tmp", "meta", "incomplete":
		// Leftovers no journal claims: recovery removes them (a
		// directory with its planter's identity); status says so.
		if read {
			return 3
		}
		if kind == "incomplete" && cmd == "run" {
			// A shadow being built, without a journal: run refuses
			// until recovery removed it (a reader may go on: the tree
			// was never touched).
			return 125
		}
	case "complete":
		// A complete shadow no journal claims is never installed
		// nor deleted.
		if cmd == "lock" {
			return 0
		}
		return 125
	}
	return 0
}

func TestHostileParent(t *testing.T) {
	testenv.Require(t, testenv.Root)
	root := moduleRootT(t)
	script := filepath.Join(root, "scripts", "treetx-recover.sh")
	var cells, refusals atomic.Int64
	for _, kind := range kinds {
		for _, p := range plants {
			// The commands of one plant run at once, each on a plant of
			// its own: most of a cell is waiting for a process.
			t.Run(kind+"/"+p.name, func(t *testing.T) {
				t.Parallel()
				var wg sync.WaitGroup
				for _, c := range hostileCommands {
					wg.Go(func() {
						t.Run(c.name, func(t *testing.T) {
							cells.Add(1)
							top := t.TempDir()
							// Let user nobody reach the parent, as under /srv: the
							// script acts as a planted tree's owner by path.
							must(t, os.Chmod(filepath.Dir(top), 0o755))
							must(t, os.Chmod(top, 0o755))
							parent := filepath.Join(top, "p")
							must(t, os.Mkdir(parent, 0o755))
							must(t, os.Chmod(parent, 0o1777)) // as /tmp: anyone may plant
							dir := filepath.Join(parent, "repo")
							writeFiles(t, dir, map[string]string{"a": "1\n", "sub/b": "2\n", "sub/deeper/c": "3\n"})
							must(t, os.WriteFile(filepath.Join(parent, "neighbour"), []byte("mine\n"), 0o600))
							o := outsideFiles{file: filepath.Join(top, "outside", "secret"), dir: filepath.Join(top, "outside", "dir")}
							writeFiles(t, filepath.Dir(o.file), map[string]string{"secret": "root only\n", "dir/keep": "keep\n"})
							must(t, os.Chmod(o.file, 0o600))
							name := ".#treetx.repo." + kind
							p.make(t, filepath.Join(parent, name), o)

							before := hashOutside(t, top, name)
							var r result
							if c.args == nil {
								r = runScript(t, script, dir)
							} else {
								r = invoke(t, invocation{args: c.args(parent, dir)})
							}
							after := hashOutside(t, top, name)
							if diff := diffHashes(before, after); diff != "" {
								t.Errorf("%s with a planted %s as %s changed what is not treetx's:\n%s\n%v", c.name, p.name, name, diff, r)
							}
							want := expected(kind, p, c.name)
							if r.code != want {
								t.Errorf("exit %d, want %d\n%v", r.code, want, r)
							}
							if strings.Contains(r.stderr+r.stdout, "panic:") || strings.Contains(r.stderr, "goroutine ") {
								t.Errorf("crashed:\n%v", r)
							}
							if r.code == 125 {
								refusals.Add(1)
								if !strings.Contains(r.stderr+r.stdout, ".#treetx.repo.") {
									t.Errorf("the refusal does not name the entry:\n%v", r)
								}
							}
						})
					})
				}
				wg.Wait()
			})
		}
	}
	t.Cleanup(func() {
		fmt.Fprintf(os.Stderr, "hostile-parent cells: %d checked (%d refused), %d names x %d plants x %d commands\n",
			cells.Load(), refusals.Load(), len(kinds), len(plants), len(hostileCommands))
	})
}

// runScript runs the shell recovery script on dir, as root.
func runScript(t *testing.T, script, dir string) result {
	t.Helper()
	start := time.Now()
	cmd := exec.Command("timeout", "-s", "KILL", strconv.Itoa(int(runTimeout.Seconds())), "sh", script, dir)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	if time.Since(start) >= runTimeout || code == 137 {
		t.Errorf("the script hangs")
	}
	return result{code: code, stdout: stdout.String(), stderr: stderr.String(), elapsed: time.Since(start)}
}

// hashOutside describes every entry under top but the name planted and
// treetx's other names in the tree's parent: type, mode, owner, link
// target and a hash of the content (a FIFO or socket is not opened).
func hashOutside(t *testing.T, top, planted string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(top, path)
		if strings.HasPrefix(rel, "p/.#treetx.") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(path, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode %o owner %d:%d", st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" sha256 %x", sha256.Sum256(data))
		case unix.S_IFLNK:
			target, _ := os.Readlink(path)
			desc += " -> " + target
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diffHashes(a, b map[string]string) string {
	var lines []string
	for k, v := range a {
		if w, ok := b[k]; !ok {
			lines = append(lines, fmt.Sprintf("  removed %s (%s)", k, v))
		} else if w != v {
			lines = append(lines, fmt.Sprintf("  changed %s: %s -> %s", k, v, w))
		}
	}
	for k, v := range b {
		if _, ok := a[k]; !ok {
			lines = append(lines, fmt.Sprintf("  added %s (%s)", k, v))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func symlinkAs(t *testing.T, target, p string) {
	t.Helper()
	must(t, os.Symlink(target, p))
	chownNobody(t, p)
}

func chownNobody(t *testing.T, p string) {
	t.Helper()
	must(t, os.Lchown(p, 65534, 65534))
}

// makeSocket binds a socket at a short path (a socket's path is limited to
// 108 bytes) and renames it to p.
func makeSocket(t *testing.T, p string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	must(t, err)
	defer unix.Close(fd)
	short, err := os.MkdirTemp("", "s")
	must(t, err)
	defer os.RemoveAll(short)
	must(t, unix.Bind(fd, &unix.SockaddrUnix{Name: filepath.Join(short, "s")}))
	must(t, os.Rename(filepath.Join(short, "s"), p))
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func moduleRootT(t *testing.T) string {
	t.Helper()
	root, err := moduleRoot()
	must(t, err)
	return root
}
