package integration

import (
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// cvsScript is the path of a script in scripts/, which must be executable.
func cvsScript(t testing.TB, name string) string {
	t.Helper()
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(root, "scripts", name)
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm()&0o111 == 0 {
		t.Fatalf("scripts/%s is missing or not executable: %v", name, err)
	}
	return p
}

// withTreetxInPath puts the directory of the treetx binary first in PATH,
// as installing it in /usr/local/bin does.
func withTreetxInPath(env []string) []string {
	return append(env, "PATH="+filepath.Dir(treetxPath)+string(os.PathListSeparator)+os.Getenv("PATH"))
}

// cvsClient is a cvs client process; its output goes to a file.
type cvsClient struct {
	cmd *exec.Cmd
	out string
}

// forkClient is "cvs -d :fork:ROOT ARGS" run in the working copy, with
// CVS_SERVER=server (the client runs "$CVS_SERVER server" as its child)
// and extra in its environment.
func (r *cvsRepo) forkClient(t *testing.T, root, server string, extra []string, args ...string) *cvsClient {
	t.Helper()
	cmd := exec.Command("cvs", append([]string{"-d", ":fork:" + root}, args...)...)
	cmd.Dir = r.work
	cmd.Env = append(withTreetxInPath(cvsEnviron(r.base, "CVS_SERVER="+server)), extra...)
	out := filepath.Join(t.TempDir(), "out")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	cmd.Stdout, cmd.Stderr = f, f
	return &cvsClient{cmd: cmd, out: out}
}

// output is what the client wrote so far.
func (c *cvsClient) output(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(c.out)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// run runs the client to the end and returns its output and exit status.
func (c *cvsClient) run(t *testing.T) (string, int) {
	t.Helper()
	err := c.cmd.Run()
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			return c.output(t), ee.ExitCode()
		}
		t.Fatalf("cvs client: %v", err)
	}
	return c.output(t), 0
}

// awaitTransaction waits until the transaction on root is over (its lock is
// free): a cvs client may exit before the server it started, which then
// still commits or rolls back, in the directory the test removes at its end.
func awaitTransaction(t *testing.T, root string) {
	t.Helper()
	wantCode(t, treetx(t, nil, "lock", "--lock-timeout", "90s", root, "--", "true"), 0)
}

// TestCVSServerWrapper: scripts/cvs-server-atomic as CVS_SERVER of a
// :fork: client (what ssh runs for :ext:) makes the whole client session
// one transaction on the repository it is configured for.
func TestCVSServerWrapper(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.CVS)
	server := cvsScript(t, "cvs-server-atomic")

	t.Run("not configured", func(t *testing.T) {
		t.Parallel()
		r := newCVSRepo(t, cvsSmall)
		before := capture(t, r.root)
		for _, tt := range []struct {
			env  []string
			want string
		}{
			{[]string{"TREETX_CVS_CONF=" + filepath.Join(r.base, "none")}, "cvs-server-atomic: no repository: set TREETX_CVSROOT"},
			{[]string{"TREETX_CVSROOT=tree"}, "must be an absolute path"},
			// Not a repository (yet): no transaction; cvs refuses the root.
			{[]string{"TREETX_CVSROOT=" + r.base}, "Bad root " + r.root},
		} {
			r.appendTo(t, "/* not committed */\n", "m1/d1/f1.c")
			out, code := r.forkClient(t, r.root, server, tt.env, "-Q", "commit", "-m", "x", "m1").run(t)
			if code == 0 {
				t.Errorf("with %q the client exited 0:\n%s", tt.env, out)
			}
			contains(t, "the client's output", out, tt.want)
		}
		treeimage.AssertEqual(t, "before", before, "after", capture(t, r.root))
		if exists(filepath.Join(r.parent, lockName("tree"))) {
			t.Errorf("treetx ran")
		}
		// Run by hand: exit 64 and one line.
		cmd := exec.Command(server, "server")
		cmd.Env = withTreetxInPath(cvsEnviron(r.base, "TREETX_CVS_CONF="+filepath.Join(r.base, "none")))
		var stderr strings.Builder
		cmd.Stderr = &stderr
		err := cmd.Run()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 64 {
			t.Errorf("cvs-server-atomic without a repository: %v, want exit 64", err)
		}
		oneLine(t, stderr.String(), "cvs-server-atomic: no repository: set TREETX_CVSROOT", filepath.Join(r.base, "none"))
	})

	// The README's client commands, with a configuration file standing for
	// /etc/treetx/cvsroot; for :ext:, a stand-in for ssh runs the command
	// here, as ssh runs it on the host.
	for _, line := range []string{
		`CVS_SERVER=/usr/local/bin/cvs-server-atomic cvs -d :fork:/srv/cvsroot commit -m "fix" m1 m2 m3`,
		`CVS_RSH=ssh CVS_SERVER=/usr/local/bin/cvs-server-atomic cvs -d :ext:cvs.example.org:/srv/cvsroot commit -m "fix" m1 m2 m3`,
	} {
		name := ":fork: client"
		if strings.Contains(line, ":ext:") {
			name = ":ext: client through ssh"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			r := newCVSRepo(t, cvsSmall)
			writeFiles(t, r.base, map[string]string{
				"cvsroot": "# the repository cvs-server-atomic protects\n\n" + r.root + "\n",
				"ssh":     fakeSSH,
			})
			if err := os.Chmod(filepath.Join(r.base, "ssh"), 0o755); err != nil {
				t.Fatal(err)
			}
			c := readmeCmd(t, line, r.work, "/srv/cvsroot", r.root, "/usr/local/bin/cvs-server-atomic", server, "CVS_RSH=ssh", "CVS_RSH="+filepath.Join(r.base, "ssh"))
			r.appendTo(t, "/* through the wrapper */\n", "m1/d1/f1.c", "m3/d3/d4/f1.c")
			client := exec.Command(c.argv[0], c.argv[1:]...)
			client.Dir = r.work
			client.Env = append(withTreetxInPath(cvsEnviron(r.base, "TREETX_CVS_CONF="+filepath.Join(r.base, "cvsroot"))), c.env...)
			if out, err := client.CombinedOutput(); err != nil {
				t.Fatalf("%s: %v\n%s", line, err, out)
			}
			if !exists(filepath.Join(r.parent, lockName("tree"))) {
				t.Errorf("the commit did not go through treetx: no lock file beside the repository")
			}
			awaitTransaction(t, r.root)
			noLeftovers(t, r.parent, "tree")
			r.check(t, r.files)
		})
	}

	t.Run("another root is refused", func(t *testing.T) {
		t.Parallel()
		r := newCVSRepo(t, cvsSmall)
		other := r.copy(t)
		before, beforeOther := capture(t, r.root), capture(t, other.root)
		r.appendTo(t, "/* not committed */\n", "m1/d1/f1.c")
		out, code := r.forkClient(t, other.root, server, []string{"TREETX_CVSROOT=" + r.root}, "-Q", "commit", "-m", "x", "m1").run(t)
		if code == 0 {
			t.Errorf("a client naming another repository exited 0:\n%s", out)
		}
		contains(t, "the client's output", out, "Bad root "+other.root)
		awaitTransaction(t, r.root)
		treeimage.AssertEqual(t, "before", before, "after", capture(t, r.root))
		treeimage.AssertEqual(t, "the other before", beforeOther, "after", capture(t, other.root))
		// An --allow-root for another repository (an inetd line for
		// pserver) is refused before cvs runs.
		cmd := exec.Command(server, "--allow-root="+other.root, "pserver")
		cmd.Env = withTreetxInPath(cvsEnviron(r.base, "TREETX_CVSROOT="+r.root))
		b, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 64 {
			t.Errorf("--allow-root=%s: %v, want exit 64", other.root, err)
		}
		contains(t, "output", string(b), "is not the repository "+r.root)
	})

	// Killing the client in the middle of a large commit: without the
	// wrapper, the server, cut off, stops where it is; with it, the
	// session is rolled back. With several repositories, the wrapper reads
	// the client's Root request first, and hands it to cvs through cat.
	for _, tt := range []struct {
		name             string
		wrapped, several bool
	}{
		{"client killed mid-commit, without treetx", false, false},
		{"client killed mid-commit", true, false},
		{"client killed mid-commit, two repositories", true, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if testing.Short() && !tt.wrapped {
				t.Skip("a demonstration (-short)")
			}
			r := newCVSRepo(t, cvsLarge)
			want := maps.Clone(r.files)
			for p := range r.files {
				r.appendTo(t, "/* large commit */\n", p)
			}
			before := capture(t, r.root)
			srv, conf := "cvs", []string{"TREETX_CVSROOT=" + r.root}
			if tt.wrapped {
				srv = server
			}
			if tt.several {
				second := newCVSRepo(t, cvsSmall)
				writeFiles(t, r.base, map[string]string{"cvsroot": second.root + "\n" + r.root + "\n"})
				conf = []string{"TREETX_CVS_CONF=" + filepath.Join(r.base, "cvsroot")}
				t.Cleanup(func() {
					if exists(filepath.Join(second.parent, lockName("tree"))) {
						t.Errorf("a session on one repository was a transaction on the other too")
					}
				})
			}
			w := watchRewrites(t, r.root)
			c := r.forkClient(t, r.root, srv, conf, "-Q", "commit", "-m", "large commit", "big")
			client := c.cmd
			if err := client.Start(); err != nil {
				t.Fatal(err)
			}
			w.await(t, 100, func() bool { return processGone(client.Process.Pid) })
			// The server: the client's child, which runs cvs, or the
			// wrapper, which becomes treetx (exec), or waits for cat and
			// treetx.
			server := watchExits(t, children(t, client.Process.Pid))
			client.Process.Kill()
			client.Wait()
			if !tt.wrapped {
				server.wait(t, "the server", time.Minute)
				t.Logf("client killed without treetx: %s", countHeads(t, r, slices.Collect(maps.Keys(want))))
				return
			}
			// The transaction is over when its lock is free; what treetx
			// says of it is all written when treetx has exited (it
			// reports after it unlocks).
			awaitTransaction(t, r.root)
			server.wait(t, "treetx (the server)", time.Minute)
			if out := c.output(t); strings.Contains(out, "treetx") {
				t.Errorf("treetx spoke of an ordinary rollback on the client's stderr, which the server shares:\n%s", out)
			}
			treeimage.AssertEqual(t, "before", before, "after", capture(t, r.root))
			noLeftovers(t, r.parent, "tree")
			r.check(t, want)
		})
	}
}

// inetd accepts connections on a port of 127.0.0.1 until the test ends,
// and runs for each the program argv[0] with the argument vector argv[1:]
// (its own argv[0] first), the connection as its standard input and output,
// its standard error to the returned file, with env as its environment:
// what inetd does with the line "cvspserver stream tcp nowait root ARGV".
// sessionsDone waits (up to limit) for the sessions started so far to exit.
func inetd(t *testing.T, env []string, argv ...string) (port int, stderr string, sessionsDone func(limit time.Duration)) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	stderr = filepath.Join(t.TempDir(), "stderr")
	errf, err := os.Create(stderr)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var sessions []chan struct{} // closed when the session has exited
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		errf.Close()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			f, err := c.(*net.TCPConn).File()
			c.Close()
			if err != nil {
				continue
			}
			cmd := exec.Command(argv[0], argv[2:]...)
			cmd.Args[0] = argv[1]
			cmd.Stdin, cmd.Stdout, cmd.Stderr, cmd.Env = f, f, errf, env
			err = cmd.Start()
			f.Close()
			if err == nil {
				done := make(chan struct{})
				mu.Lock()
				sessions = append(sessions, done)
				mu.Unlock()
				wg.Add(1)
				go func() { defer wg.Done(); cmd.Wait(); close(done) }()
			}
		}
	}()
	sessionsDone = func(limit time.Duration) {
		t.Helper()
		mu.Lock()
		started := slices.Clone(sessions)
		mu.Unlock()
		timeout := time.After(limit)
		for _, done := range started {
			select {
			case <-done:
			case <-timeout:
				t.Fatalf("a session did not exit within %v", limit)
			}
		}
	}
	return l.Addr().(*net.TCPAddr).Port, stderr, sessionsDone
}

// TestCVSPserverWrapper: scripts/cvs-server-atomic started by inetd as
// "cvs-server-atomic --allow-root=ROOT pserver": a commit through pserver
// is committed by treetx, and a client killed in the middle of a large
// commit leaves the repository as it was.
func TestCVSPserverWrapper(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.CVS)
	testenv.Require(t, testenv.Root)
	server := cvsScript(t, "cvs-server-atomic")
	for _, tt := range []struct {
		name string
		kill bool
	}{{"commit", false}, {"client killed mid-commit", true}} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			r := newCVSRepo(t, cvsLarge)
			want := maps.Clone(r.files)
			// The pserver user anon, any password, works as nobody.
			writeFiles(t, r.root, map[string]string{"CVSROOT/passwd": "anon::nobody\n"})
			r.forNobody(t)
			// The repository in a file standing for /etc/treetx/cvsroot.
			writeFiles(t, r.base, map[string]string{"cvsroot": r.root + "\n"})
			argv := readmeInetd(t, "cvspserver stream tcp nowait root /usr/local/bin/cvs-server-atomic cvs-server-atomic --allow-root=/srv/cvsroot pserver", "/srv/cvsroot", r.root, "/usr/local/bin/cvs-server-atomic", server)
			port, serverErr, sessionsDone := inetd(t, withTreetxInPath([]string{"TREETX_CVS_CONF=" + filepath.Join(r.base, "cvsroot")}), argv...)
			cvsroot := fmt.Sprintf(":pserver:anon@127.0.0.1:%d%s", port, r.root)
			// What cvs login writes for the empty password.
			writeFiles(t, r.base, map[string]string{"cvspass": "/1 " + cvsroot + " A\n"})
			env := cvsEnviron(r.base, "CVS_PASSFILE="+filepath.Join(r.base, "cvspass"))
			if tt.kill {
				for p := range r.files {
					r.appendTo(t, "/* large commit */\n", p)
				}
			} else {
				r.appendTo(t, "/* through pserver */\n", "big/a/f1.c", "big/h/i/f2.c")
				want = r.files
			}
			before := capture(t, r.root)
			w := watchRewrites(t, r.root)
			client := exec.Command("cvs", "-Q", "-d", cvsroot, "commit", "-m", "through pserver", "big")
			client.Dir, client.Env = r.work, env
			out, err := os.Create(filepath.Join(r.base, "client.out"))
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			client.Stdout, client.Stderr = out, out
			if err := client.Start(); err != nil {
				t.Fatal(err)
			}
			if tt.kill {
				w.await(t, 100, func() bool { return processGone(client.Process.Pid) })
				client.Process.Kill()
				client.Wait()
			} else if err := client.Wait(); err != nil {
				b, _ := os.ReadFile(out.Name())
				t.Fatalf("the client: %v\n%s", err, b)
			}
			// The transaction is over when its lock is free; what treetx
			// says of it is all written when the session (treetx, which
			// the wrapper became) has exited: it reports after it unlocks.
			awaitTransaction(t, r.root)
			sessionsDone(time.Minute)
			b, _ := os.ReadFile(serverErr)
			if tt.kill {
				treeimage.AssertEqual(t, "before", before, "after", capture(t, r.root))
			}
			if strings.Contains(string(b), "treetx") {
				// (cvs pserver reads CVSROOT/config twice, and warns
				// that each setting is a duplicate of itself.)
				t.Errorf("the server's stderr:\n%s", b)
			}
			if !exists(filepath.Join(r.parent, lockName("tree"))) {
				t.Errorf("the session did not go through treetx: no lock file beside the repository")
			}
			noLeftovers(t, r.parent, "tree")
			r.check(t, want)
		})
	}
}

// fakeSSH stands in for ssh as cvs runs it for :ext: ("ssh [-l USER] HOST
// COMMAND..."): it runs COMMAND here, through sh, as sshd does on HOST.
const fakeSSH = `#!/bin/sh
while [ $# -gt 0 ]; do
	case $1 in
	-l | -p | -o | -i) shift 2 ;;
	-*) shift ;;
	*) break ;;
	esac
done
shift
exec sh -c "$*"
`

// TestCVSServerWrapperRepositories: one cvs-server-atomic serves several
// repositories (one a line in its configuration file); each session is a
// transaction on the repository its client names, and on no other; a
// repository listed but not made yet is made by cvs init, without a
// transaction.
func TestCVSServerWrapperRepositories(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.CVS)
	server := cvsScript(t, "cvs-server-atomic")
	r := newCVSRepo(t, cvsSmall)
	other := r.copy(t)
	fresh := filepath.Join(r.base, "fresh", "cvsroot")
	if err := os.Mkdir(filepath.Dir(fresh), 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(r.base, "cvsroot")
	writeFiles(t, r.base, map[string]string{"cvsroot": "# served here\n" + r.root + "\n  " + other.root + "/\n\n" + fresh + "\n"})
	env := []string{"TREETX_CVS_CONF=" + conf}
	locked := func(root string) bool {
		return exists(filepath.Join(filepath.Dir(root), lockName(filepath.Base(root))))
	}

	r.appendTo(t, "/* to r */\n", "m1/d1/f1.c")
	if out, code := r.forkClient(t, r.root, server, env, "-Q", "commit", "-m", "to r", "m1").run(t); code != 0 {
		t.Fatalf("commit to r: exit %d\n%s", code, out)
	}
	awaitTransaction(t, r.root)
	if !locked(r.root) || locked(other.root) {
		t.Errorf("a commit to r: a transaction on r %v, on the other %v; want on r alone", locked(r.root), locked(other.root))
	}
	r.check(t, r.files)

	other.appendTo(t, "/* to the other */\n", "m2/d2/f2.c")
	if out, code := other.forkClient(t, other.root, server, env, "-Q", "commit", "-m", "to the other", "m2").run(t); code != 0 {
		t.Fatalf("commit to the other: exit %d\n%s", code, out)
	}
	awaitTransaction(t, other.root)
	if !locked(other.root) {
		t.Errorf("the commit to the other was no transaction on it")
	}
	other.check(t, other.files)

	// A root not served: cvs refuses it, and nothing changes.
	before, beforeOther := capture(t, r.root), capture(t, other.root)
	third := filepath.Join(r.base, "third")
	out, code := r.forkClient(t, third, server, env, "-Q", "update").run(t)
	if code == 0 {
		t.Errorf("a client naming %s exited 0:\n%s", third, out)
	}
	contains(t, "the client's output", out, "Bad root "+third)
	awaitTransaction(t, r.root)
	awaitTransaction(t, other.root)
	treeimage.AssertEqual(t, "r before", before, "after", capture(t, r.root))
	treeimage.AssertEqual(t, "the other before", beforeOther, "after", capture(t, other.root))

	// cvs init of the one not made yet, then an import into it.
	if out, code := r.forkClient(t, fresh, server, env, "init").run(t); code != 0 {
		t.Fatalf("cvs init through the wrapper: exit %d\n%s", code, out)
	}
	if !exists(filepath.Join(fresh, "CVSROOT", "config")) || locked(fresh) {
		t.Errorf("cvs init: made %v, in a transaction %v; want made, no transaction", exists(filepath.Join(fresh, "CVSROOT")), locked(fresh))
	}
	src := filepath.Join(r.base, "src")
	writeFiles(t, src, map[string]string{"a.c": "a\n"})
	imp := exec.Command("cvs", "-Q", "-d", ":fork:"+fresh, "import", "-m", "first", "mod", "vendor", "start")
	imp.Dir, imp.Env = src, append(withTreetxInPath(cvsEnviron(r.base, "CVS_SERVER="+server)), env...)
	if b, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("import into the new repository: %v\n%s", err, b)
	}
	awaitTransaction(t, fresh)
	if !locked(fresh) {
		t.Errorf("the import into the new repository was no transaction on it")
	}
	if !exists(filepath.Join(fresh, "mod", "a.c,v")) {
		t.Errorf("nothing imported")
	}

	// One repository, not made yet: cvs init is no transaction either.
	alone := filepath.Join(r.base, "alone")
	if out, code := r.forkClient(t, alone, server, []string{"TREETX_CVSROOT=" + alone}, "init").run(t); code != 0 || !exists(filepath.Join(alone, "CVSROOT")) || locked(alone) {
		t.Errorf("cvs init of the only repository: exit %d, made %v, transaction %v\n%s", code, exists(filepath.Join(alone, "CVSROOT")), locked(alone), out)
	}
}

// TestCVSPserverWrapperRepositories: "cvs-server-atomic --allow-root=R1
// --allow-root=R2 pserver" from inetd, with no configuration file: cvs
// login needs no transaction, a commit is a transaction on the repository
// the client names alone; and when cvs dies in the middle of a session
// (killed while its client waits), the session is rolled back and the
// connection closes.
func TestCVSPserverWrapperRepositories(t *testing.T) {
	t.Parallel()
	testenv.Require(t, testenv.CVS)
	testenv.Require(t, testenv.Root)
	server := cvsScript(t, "cvs-server-atomic")
	r := newCVSRepo(t, cvsLarge)
	other := newCVSRepo(t, cvsSmall)
	for _, x := range []*cvsRepo{r, other} {
		writeFiles(t, x.root, map[string]string{"CVSROOT/passwd": "anon::nobody\n"})
		x.forNobody(t)
	}
	port, serverErr, sessionsDone := inetd(t, withTreetxInPath([]string{"TREETX_CVS_CONF=" + filepath.Join(r.base, "none")}),
		server, "cvs-server-atomic", "--allow-root="+r.root, "--allow-root="+other.root, "pserver")
	cvsroot := func(root string) string { return fmt.Sprintf(":pserver:anon@127.0.0.1:%d%s", port, root) }
	env := cvsEnviron(r.base, "CVS_PASSFILE="+filepath.Join(r.base, "cvspass"))
	locked := func(x *cvsRepo) bool { return exists(filepath.Join(x.parent, lockName("tree"))) }
	client := func(dir string, args ...string) *exec.Cmd {
		c := exec.Command("cvs", args...)
		c.Dir, c.Env = dir, env
		return c
	}

	// cvs login (the empty password) writes the password file.
	if b, err := client(r.base, "-d", cvsroot(other.root), "login").CombinedOutput(); err != nil {
		t.Fatalf("cvs login: %v\n%s", err, b)
	}
	if b, err := client(r.base, "-d", cvsroot(r.root), "login").CombinedOutput(); err != nil {
		t.Fatalf("cvs login: %v\n%s", err, b)
	}
	sessionsDone(time.Minute)
	if locked(r) || locked(other) {
		t.Errorf("cvs login went through treetx")
	}

	r.appendTo(t, "/* through pserver */\n", "big/a/f1.c")
	if b, err := client(r.work, "-Q", "-d", cvsroot(r.root), "commit", "-m", "through pserver", "big/a").CombinedOutput(); err != nil {
		t.Fatalf("commit: %v\n%s", err, b)
	}
	sessionsDone(time.Minute)
	if !locked(r) || locked(other) {
		t.Errorf("a commit to r: a transaction on r %v, on the other %v; want on r alone", locked(r), locked(other))
	}
	r.check(t, r.files)

	// cvs killed while the client waits for its answer.
	want := maps.Clone(r.files)
	for p := range r.files {
		r.appendTo(t, "/* large commit */\n", p)
	}
	before := capture(t, r.root)
	w := watchRewrites(t, r.root)
	c := client(r.work, "-Q", "-d", cvsroot(r.root), "commit", "-m", "large commit", "big")
	if err := c.Start(); err != nil {
		t.Fatal(err)
	}
	w.await(t, 100, func() bool { return processGone(c.Process.Pid) })
	pid := pserverProcess(t, r.root)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- c.Wait() }()
	select {
	case err := <-exited:
		if err == nil {
			t.Errorf("the client exited 0 after its server was killed")
		}
	case <-time.After(time.Minute):
		c.Process.Kill()
		t.Errorf("the client still waits a minute after its server was killed: the connection stays open")
	}
	awaitTransaction(t, r.root)
	sessionsDone(time.Minute)
	treeimage.AssertEqual(t, "before", before, "after", capture(t, r.root))
	noLeftovers(t, r.parent, "tree")
	r.check(t, want)
	if b, _ := os.ReadFile(serverErr); strings.Contains(string(b), "treetx") {
		t.Errorf("the server's stderr:\n%s", b)
	}
}

// pserverProcess finds the cvs pserver process serving root (its command
// line names it in --allow-root), a descendant of this test's inetd.
func pserverProcess(t *testing.T, root string) int {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			continue
		}
		args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
		if len(args) > 1 && filepath.Base(args[0]) == "cvs" && slices.Contains(args, "--allow-root="+root) && slices.Contains(args, "pserver") {
			return pid
		}
	}
	t.Fatalf("no cvs pserver process for %s", root)
	return 0
}
