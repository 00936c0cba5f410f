package integration

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/treetx/treetx/internal/testenv"
)

// BenchmarkCVSDropIn: what cvs-atomic costs, against the plain cvs, on a
// small repository (71 entries: CVSROOT and a module of 19 files in three
// directories), as the user running the benchmark and, as root, as user
// nobody too:
//
//	go test ./integration/ -run '^$' -bench CVSDropIn -benchtime 40x
//
// "tag" is cvs -Q tag -F (a transaction on the repository), "update" cvs -Q
// update (the shared lock); "script" is cvs-atomic with a treetx that only
// runs its command (what the shell script itself costs); "run true" and
// "lock true" are treetx alone around true, "run run true" two nested runs
// (a second tree: another repository, or the working copy).
func BenchmarkCVSDropIn(b *testing.B) {
	testenv.Require(b, testenv.CVS)
	users := []string{"self"}
	if os.Geteuid() == 0 {
		users = append(users, "nobody")
	}
	for _, user := range users {
		base := b.TempDir()
		if err := os.Chmod(base, 0o755); err != nil {
			b.Fatal(err)
		}
		root, wc := costRepository(b, base)
		var cred *syscall.Credential
		if user == "nobody" {
			cmd := exec.Command("chown", "-R", fmt.Sprint(nobodyID)+":"+fmt.Sprint(nobodyID), base)
			if out, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("chown: %v\n%s", err, out)
			}
			for d := filepath.Dir(base); d != "/"; d = filepath.Dir(d) {
				if fi, err := os.Stat(d); err == nil {
					os.Chmod(d, fi.Mode().Perm()|0o055)
				}
			}
			cred = &syscall.Credential{Uid: nobodyID, Gid: nobodyID}
		}
		fake := filepath.Join(base, "fake-treetx")
		if err := os.WriteFile(fake, []byte("#!/bin/sh\nwhile [ \"$1\" != -- ]; do shift; done\nshift\nexec \"$@\"\n"), 0o755); err != nil {
			b.Fatal(err)
		}
		dropin := dropIn(b, base)
		other := filepath.Join(base, "p", "other")
		if err := os.Mkdir(other, 0o755); err != nil {
			b.Fatal(err)
		}
		if cred != nil {
			os.Chown(other, nobodyID, nobodyID)
		}
		for _, bm := range []struct {
			name string
			env  []string
			argv []string
		}{
			{"tag/plain", cvsEnviron(base), []string{"cvs", "-Q", "tag", "-F", "T"}},
			{"tag/drop-in", dropin, []string{"cvs", "-Q", "tag", "-F", "T"}},
			{"tag/script", append(dropin, "TREETX="+fake), []string{"cvs", "-Q", "tag", "-F", "T"}},
			{"update/plain", cvsEnviron(base), []string{"cvs", "-Q", "update"}},
			{"update/drop-in", dropin, []string{"cvs", "-Q", "update"}},
			{"treetx/run true", nil, []string{treetxPath, "run", "-q", root, "--", "true"}},
			{"treetx/run run true", nil, []string{treetxPath, "run", "-q", root, "--", treetxPath, "run", "-q", other, "--", "true"}},
			{"treetx/lock true", nil, []string{treetxPath, "lock", "-q", "--shared", root, "--", "true"}},
		} {
			b.Run(user+"/"+bm.name, func(b *testing.B) {
				cmd := costCommand(b, wc, bm.env, bm.argv)
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
				if out, err := cmd.CombinedOutput(); err != nil {
					b.Fatalf("%q: %v\n%s", bm.argv, err, out)
				}
				b.ResetTimer()
				for range b.N {
					cmd := costCommand(b, wc, bm.env, bm.argv)
					cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
					if out, err := cmd.CombinedOutput(); err != nil {
						b.Fatalf("%q: %v\n%s", bm.argv, err, out)
					}
				}
				b.StopTimer()
				// treetx's detached cleaners, before the next benchmark.
				for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
					names, _ := filepath.Glob(filepath.Join(filepath.Dir(root), ".#treetx.*.removing.*"))
					if len(names) == 0 {
						break
					}
				}
			})
		}
	}
}

// costRepository makes BASE/p/root (cvs init, and an import of module m:
// 7 files, and 6 in each of m/d1 and m/d2) and a checkout of m at BASE/m.
func costRepository(b *testing.B, base string) (root, wc string) {
	b.Helper()
	root, src := filepath.Join(base, "p", "root"), filepath.Join(base, "src")
	files := map[string]string{}
	for i := 1; i <= 7; i++ {
		files[fmt.Sprintf("f%d.c", i)] = fmt.Sprintf("int x%d;\n", i)
	}
	for _, d := range []string{"d1", "d2"} {
		for i := 1; i <= 6; i++ {
			files[fmt.Sprintf("%s/f%d.c", d, i)] = fmt.Sprintf("int %s%d;\n", d, i)
		}
	}
	for p, c := range files {
		if err := os.MkdirAll(filepath.Join(src, filepath.Dir(p)), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, p), []byte(c), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Dir(root), 0o755); err != nil {
		b.Fatal(err)
	}
	env := cvsEnviron(base)
	for _, c := range []struct {
		dir  string
		args []string
	}{
		{base, []string{"-Q", "-d", root, "init"}},
		{src, []string{"-Q", "-d", root, "import", "-m", "initial", "m", "vendor", "start"}},
		{base, []string{"-Q", "-d", root, "checkout", "m"}},
	} {
		cmd := exec.Command("cvs", c.args...)
		cmd.Dir, cmd.Env = c.dir, env
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("cvs %q: %v\n%s", c.args, err, out)
		}
	}
	n := -1 // root itself
	filepath.WalkDir(root, func(string, os.DirEntry, error) error { n++; return nil })
	if n != 71 {
		b.Fatalf("the repository has %d entries, want 71", n)
	}
	return root, filepath.Join(base, "m")
}

// costCommand is argv in dir with env (nil: the benchmark's own), its
// first word looked up in env's PATH.
func costCommand(b *testing.B, dir string, env, argv []string) *exec.Cmd {
	b.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	for _, kv := range env {
		if p, ok := strings.CutPrefix(kv, "PATH="); ok && !filepath.IsAbs(argv[0]) {
			for _, d := range filepath.SplitList(p) {
				if c := filepath.Join(d, argv[0]); exists(c) {
					cmd.Path = c
					break
				}
			}
		}
	}
	cmd.Dir, cmd.Env = dir, env
	return cmd
}
