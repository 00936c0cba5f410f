package integration

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// The hardened units in scripts/systemd are checked here without a running
// systemd: each unit's own directives are read and reproduced where they
// bear on what treetx does to a tree, and a real crash state is recovered
// under them:
//
//   - CapabilityBoundingSet= and NoNewPrivileges= by setpriv (root keeps only
//     those capabilities across exec, as under systemd);
//   - ProtectSystem=strict and ReadWritePaths= in a mount namespace: "/"
//     bind-remounted read-only, and each ReadWritePaths= directory a
//     writable bind mount of the same directory in a scratch tree;
//   - UMask= by umask;
//   - SystemCallFilter= by tracing the commands with strace and checking
//     every system call they made against the filter, expanded by
//     systemd-analyze syscall-filter.
//
// The other directives (private /tmp, /dev, network, IPC; protected kernel
// and clock; restricted namespaces, realtime, address families) do not
// touch a tree under a root, and are left to systemd-analyze.

// securityThreshold is the highest exposure, in tenths, that
// systemd-analyze security --offline may give a unit: both score 1.6
// ("OK") with systemd 252 (1.4 before CAP_SETUID and CAP_SETGID, which
// finishing another user's transaction as that user needs), against 9.6
// ("UNSAFE") before they were hardened; the tenth above is slack for other
// versions' weights.
const securityThreshold = 17

// directive is one line of a unit file.
type directive struct{ section, key, value string }

// readUnit returns a unit file's directives in order (continuation lines
// joined, comments dropped).
func readUnit(t *testing.T, path string) []directive {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ds []directive
	section, pending := "", ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if pending == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if strings.HasSuffix(line, `\`) {
			pending += strings.TrimSuffix(line, `\`) + " "
			continue
		}
		line, pending = pending+line, ""
		if strings.HasPrefix(line, "[") {
			section = strings.Trim(line, "[]")
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not a directive: %q", path, line)
		}
		ds = append(ds, directive{section, strings.TrimSpace(k), strings.TrimSpace(v)})
	}
	return ds
}

// values returns the values of key in section, in order.
func values(ds []directive, section, key string) []string {
	var vs []string
	for _, d := range ds {
		if d.section == section && d.key == key {
			vs = append(vs, d.value)
		}
	}
	return vs
}

// only returns the single value of key in [Service], failing if it is set
// more than once; "" if it is not set.
func only(t *testing.T, ds []directive, key string) string {
	t.Helper()
	vs := values(ds, "Service", key)
	if len(vs) > 1 {
		t.Fatalf("%s= is set %d times", key, len(vs))
	}
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

// capabilities returns the unit's CapabilityBoundingSet=, in setpriv's
// names (chown, dac_override...).
func capabilities(t *testing.T, ds []directive) []string {
	t.Helper()
	var caps []string
	for _, v := range values(ds, "Service", "CapabilityBoundingSet") {
		for _, c := range strings.Fields(v) {
			if !strings.HasPrefix(c, "CAP_") {
				t.Fatalf("CapabilityBoundingSet=%s: only a list of capabilities is understood here", v)
			}
			caps = append(caps, strings.ToLower(strings.TrimPrefix(c, "CAP_")))
		}
	}
	if len(caps) == 0 {
		t.Fatalf("no CapabilityBoundingSet=")
	}
	slices.Sort(caps)
	return slices.Compact(caps)
}

// expandCommand turns an Exec line into argv as systemd does for the lines
// in these units: specifiers (%f, %i, %I, %n, %%), then words (quotes),
// then in each word $$ to $ and ${NAME} to the variable, and a word that is
// just $NAME to the variable's value split at white space.
func expandCommand(t *testing.T, line string, spec map[byte]string, env map[string]string) []string {
	t.Helper()
	var b strings.Builder
	for i := 0; i < len(line); i++ {
		if line[i] != '%' {
			b.WriteByte(line[i])
			continue
		}
		i++
		if i == len(line) {
			t.Fatalf("%q: trailing %%", line)
		}
		if line[i] == '%' {
			b.WriteByte('%')
			continue
		}
		v, ok := spec[line[i]]
		if !ok {
			t.Fatalf("%q: specifier %%%c not known here", line, line[i])
		}
		b.WriteString(v)
	}
	var words []string
	var w strings.Builder
	inWord, quote := false, byte(0)
	s := b.String()
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quote != 0 && c == quote:
			quote = 0
		case quote != 0:
			w.WriteByte(c)
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, w.String())
				w.Reset()
				inWord = false
			}
		case c == '\\' && i+1 < len(s):
			i++
			w.WriteByte(s[i])
			inWord = true
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if quote != 0 {
		t.Fatalf("%q: unterminated quote", line)
	}
	if inWord {
		words = append(words, w.String())
	}
	name := regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*`)
	var argv []string
	for _, word := range words {
		if strings.HasPrefix(word, "$") && name.MatchString(word[1:]) && len(name.FindString(word[1:])) == len(word)-1 {
			argv = append(argv, strings.Fields(env[word[1:]])...)
			continue
		}
		var o strings.Builder
		for i := 0; i < len(word); i++ {
			switch {
			case strings.HasPrefix(word[i:], "$$"):
				o.WriteByte('$')
				i++
			case strings.HasPrefix(word[i:], "${"):
				n := name.FindString(word[i+2:])
				if n != "" && strings.HasPrefix(word[i+2+len(n):], "}") {
					o.WriteString(env[n])
					i += 2 + len(n)
					continue
				}
				o.WriteByte('$')
			default:
				o.WriteByte(word[i])
			}
		}
		argv = append(argv, o.String())
	}
	return argv
}

// sandbox runs argv as the unit ds would: under its capability bounding
// set and no_new_privs, with its umask and environment, "/" read-only and
// each of its ReadWritePaths= a writable bind mount of that path under
// scratch. It returns the exit status and the output.
func sandbox(t *testing.T, ds []directive, caps []string, scratch string, env []string, argv []string) (int, string) {
	t.Helper()
	if only(t, ds, "ProtectSystem") != "strict" {
		t.Fatalf("ProtectSystem=%s, want strict", only(t, ds, "ProtectSystem"))
	}
	if only(t, ds, "NoNewPrivileges") != "yes" {
		t.Fatalf("NoNewPrivileges=%s, want yes", only(t, ds, "NoNewPrivileges"))
	}
	var mounts []string
	for _, v := range values(ds, "Service", "ReadWritePaths") {
		for _, p := range strings.Fields(v) {
			p = strings.TrimPrefix(p, "-") // optional: the test needs it anyway
			src := filepath.Join(scratch, p)
			if _, err := os.Stat(p); err != nil {
				testenv.Unavailable(t, "ReadWritePaths=%s: no directory to mount the scratch one on: %v", p, err)
			}
			if err := os.MkdirAll(src, 0o755); err != nil {
				t.Fatal(err)
			}
			mounts = append(mounts, src, p)
		}
	}
	bounding := "-all"
	for _, c := range caps {
		bounding += ",+" + c
	}
	umask := only(t, ds, "UMask")
	if umask == "" {
		umask = "0022"
	}
	script := `set -e
n=$1; shift
while [ "$n" -gt 0 ]; do mount --bind "$1" "$2"; mount -o remount,bind,rw "$2"; shift 2; n=$((n-1)); done
mount -o remount,bind,ro /
umask ` + umask + `
exec setpriv --bounding-set=` + bounding + ` --inh-caps=-all --no-new-privs -- "$@"`
	args := append([]string{"-m", "--propagation", "private", "sh", "-c", script, "sh", strconv.Itoa(len(mounts) / 2)}, mounts...)
	cmd := exec.Command("unshare", append(args, argv...)...)
	cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}, env...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("unshare: %v", err)
	}
	return cmd.ProcessState.ExitCode(), string(out)
}

// unitEnv returns the unit's Environment= settings (without
// EnvironmentFile=, which the test does not have), with overrides.
func unitEnv(ds []directive, overrides ...string) (map[string]string, []string) {
	m := map[string]string{}
	for _, v := range values(ds, "Service", "Environment") {
		if k, val, ok := strings.Cut(v, "="); ok {
			m[k] = val
		}
	}
	for _, o := range overrides {
		k, v, _ := strings.Cut(o, "=")
		m[k] = v
	}
	var list []string
	for k, v := range m {
		list = append(list, k+"="+v)
	}
	slices.Sort(list)
	return m, list
}

// fileCap is a file capability (cap_net_bind_service+ep, revision 2) as
// the security.capability attribute holds it.
var fileCap, _ = base64.StdEncoding.DecodeString("AQAAAgAEAAAAAAAAAAAAAAAAAAA=")

// foreignGID is a group root is not a member of.
const foreignGID = 54321

// sysTree makes dir a tree whose restoring needs every capability a
// recovery may use: everything is another user's (nobody, foreignGID), a
// file is setuid, a file and a directory setgid, a file carries a file
// capability, a directory and the one in it have mode 000, another
// directory is sticky.
func sysTree(t *testing.T, dir string) {
	t.Helper()
	writeFiles(t, dir, map[string]string{"suid": "s\n", "sgid": "g\n", "capfile": "c\n", "sgid-dir/sub/f": "f\n", "locked/inner/f": "l\n", "sticky/f": "n\n"})
	sh(t, []string{"D=" + dir, "G=" + strconv.Itoa(foreignGID)}, `
chown -R 65534:"$G" "$D"
chmod 4755 "$D/suid"; chmod 2755 "$D/sgid"; chmod 2775 "$D/sgid-dir"; chmod 1777 "$D/sticky"`)
	if err := unix.Lsetxattr(filepath.Join(dir, "capfile"), "security.capability", fileCap, 0); err != nil {
		testenv.Unavailable(t, "set a file capability in %s: %v", dir, err)
	}
	for _, d := range []string{"locked/inner", "locked"} {
		if err := os.Chmod(filepath.Join(dir, d), 0); err != nil {
			t.Fatal(err)
		}
	}
}

// sysScript undoes all of that, as root, and is SIGKILLed with treetx.
const sysScript = `chown 0:0 "$T/suid" "$T/sgid" "$T/capfile"
chmod 644 "$T/suid" "$T/sgid"
chmod 755 "$T/sgid-dir" && echo new > "$T/sgid-dir/new"
chmod 700 "$T/locked" "$T/locked/inner" && rm -r "$T/locked/inner"
echo $$ > "$O/pid"
touch "$O/started"
exec sleep 30
`

// sysCrash builds sysTree at dir and leaves it as a treetx run SIGKILLed
// while sysScript ran; it returns the tree from before.
func sysCrash(t *testing.T, dir string) treeimage.Image {
	t.Helper()
	sysTree(t, dir)
	before := capture(t, dir)
	out := t.TempDir()
	killRun(t, dir, out, invocation{args: runArgs(dir, script(sysScript)), env: env(dir, out)})
	return before
}

// killRun starts inv, a treetx run on dir whose command writes its pid to
// out/pid and touches out/started, SIGKILLs treetx once the command has
// started, and waits for the command to die with it: dir is left in a
// crash state.
func killRun(t *testing.T, dir, out string, inv invocation) {
	t.Helper()
	p := start(t, inv)
	waitForFile(t, p, filepath.Join(out, "started"))
	p.signal(t, syscall.SIGKILL)
	if r := p.wait(t); r.code != -1 {
		t.Fatalf("treetx was not killed: %v", r)
	}
	child := readPID(t, filepath.Join(out, "pid"))
	waitFor(t, "the command to die with treetx", 5*time.Second, func() bool { return processGone(child) })
	if !exists(filepath.Join(filepath.Dir(dir), ".#treetx."+filepath.Base(dir)+".journal")) {
		t.Fatalf("no journal beside %s: not a crash state", dir)
	}
}

// userCrash makes dir the crash state of a transaction of user nobody's:
// a tree of nobody's in a parent nobody may write, a treetx run as nobody
// SIGKILLed while its command changed a file.
func userCrash(t *testing.T, dir string) treeimage.Image {
	t.Helper()
	writeFiles(t, dir, map[string]string{"f": "old\n", "sub/g": "g\n"})
	for p := filepath.Dir(dir); p != os.TempDir() && p != "/"; p = filepath.Dir(p) {
		// Let nobody reach the parent: the test's directories are 0700.
		if err := os.Chmod(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Dir(dir), 0o1777); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{dir, filepath.Join(dir, "f"), filepath.Join(dir, "sub"), filepath.Join(dir, "sub", "g")} {
		if err := os.Lchown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	before := capture(t, dir)
	out := t.TempDir()
	if err := os.Chmod(out, 0o777); err != nil {
		t.Fatal(err)
	}
	killRun(t, dir, out, invocation{args: runArgs(dir, script(`echo new > "$T/f.new"; mv "$T/f.new" "$T/f"; echo $$ > "$O/pid"; touch "$O/started"; exec sleep 60`)),
		env: env(dir, out), cred: &syscall.Credential{Uid: 65534, Gid: 65534}})
	return before
}

// restored reports how the tree at dir differs from before (nil if it
// does not), file capability included.
func restored(t *testing.T, dir string, before treeimage.Image) []string {
	t.Helper()
	diffs := before.Diff(capture(t, dir))
	buf := make([]byte, 64)
	n, err := unix.Lgetxattr(filepath.Join(dir, "capfile"), "security.capability", buf)
	if err != nil || !bytes.Equal(buf[:n], fileCap) {
		diffs = append(diffs, fmt.Sprintf("capfile: security.capability %x, %v; want %x", buf[:max(n, 0)], err, fileCap))
	}
	return diffs
}

// hardenedUnit is a unit to run, with where its commands work.
type hardenedUnit struct {
	file string                  // in scripts/systemd
	spec map[byte]string         // specifiers of the instance
	env  []string                // Environment= overrides
	dir  func(srv string) string // the crashed directory, given the root's /srv
}

func hardenedUnits() []hardenedUnit {
	return []hardenedUnit{
		{file: "treetx-gc.service", dir: func(srv string) string { return filepath.Join(srv, "cvs", "repo") }, env: []string{"TREETX_GC_ROOTS=/srv/cvs"}},
		{file: "treetx-recover@.service", spec: map[byte]string{'f': "/srv/repo", 'i': "srv-repo", 'I': "srv/repo", 'n': "treetx-recover@srv-repo.service"},
			dir: func(srv string) string { return filepath.Join(srv, "repo") }},
	}
}

// commands returns the unit's ExecStartPre= and ExecStart= lines as argv,
// treetx replaced by the binary under test, and the exit statuses that
// count as success.
func commands(t *testing.T, ds []directive, spec map[byte]string, env map[string]string) ([][]string, []int) {
	t.Helper()
	var cmds [][]string
	for _, key := range []string{"ExecStartPre", "ExecStart"} {
		for _, line := range values(ds, "Service", key) {
			argv := expandCommand(t, line, spec, env)
			if argv[0] == "/usr/local/bin/treetx" {
				argv[0] = treetxPath
			}
			cmds = append(cmds, argv)
		}
	}
	ok := []int{0}
	for _, v := range values(ds, "Service", "SuccessExitStatus") {
		for _, f := range strings.Fields(v) {
			n, err := strconv.Atoi(f)
			if err != nil {
				t.Fatalf("SuccessExitStatus=%s: %v", v, err)
			}
			ok = append(ok, n)
		}
	}
	return cmds, ok
}

func unitPath(t *testing.T, file string) string {
	t.Helper()
	mod, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(mod, "scripts", "systemd", file)
}

func requireSandbox(t *testing.T) {
	t.Helper()
	testenv.Require(t, testenv.Root)
	for _, tool := range []string{"setpriv", "unshare", "mount"} {
		testenv.Tool(t, tool)
	}
	if out, err := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", "mount -o remount,bind,ro /").CombinedOutput(); err != nil {
		testenv.Unavailable(t, "cannot make / read-only in a mount namespace: %v: %s", err, out)
	}
}

// TestSystemdUnitsRecoverUnderTheirSandbox: each unit's commands, run
// under the unit's capability bounding set, no_new_privs, umask and
// read-only file system with its ReadWritePaths= writable, recover a real
// crash state (a treetx run SIGKILLed while its command changed owners,
// set-id bits, a file capability and a mode-000 directory) exactly to the
// tree from before, making a lock file others can read. Its ExecStartPre
// refuses a directory outside ReadWritePaths= (gc: a root; recover: a
// directory whose parent is not writable), before treetx runs.
func TestSystemdUnitsRecoverUnderTheirSandbox(t *testing.T) {
	requireSandbox(t)
	for _, u := range hardenedUnits() {
		t.Run(u.file, func(t *testing.T) {
			t.Parallel()
			ds := readUnit(t, unitPath(t, u.file))
			caps := capabilities(t, ds)
			t.Logf("CapabilityBoundingSet: %v", caps)
			scratch := t.TempDir()
			dir := u.dir(filepath.Join(scratch, "srv"))
			before := sysCrash(t, dir)
			// Recovery makes the lock file anew, under the unit's umask:
			// the users who run transactions must still read it.
			lockPath := filepath.Join(filepath.Dir(dir), lockName(filepath.Base(dir)))
			if err := os.Remove(lockPath); err != nil {
				t.Fatal(err)
			}
			envMap, envList := unitEnv(ds, u.env...)
			cmds, okCodes := commands(t, ds, u.spec, envMap)
			for _, argv := range cmds {
				code, out := sandbox(t, ds, caps, scratch, envList, argv)
				if !slices.Contains(okCodes, code) {
					t.Fatalf("%q exited %d in the unit's sandbox:\n%s", argv, code, out)
				}
				t.Logf("%q: exit %d\n%s", argv, code, out)
			}
			for _, d := range restored(t, dir, before) {
				t.Errorf("after recovery: %s", d)
			}
			if fi, err := os.Stat(lockPath); err != nil {
				t.Errorf("no lock file after recovery: %v", err)
			} else if fi.Mode().Perm() != 0o644 {
				t.Errorf("lock file made by recovery: mode %#o, want 0644", fi.Mode().Perm())
			}
			noLeftovers(t, filepath.Dir(dir), filepath.Base(dir))

			// Outside ReadWritePaths=, ExecStartPre stops the unit.
			spec := map[byte]string{'f': "/var/lib/repo", 'i': "var-lib-repo", 'I': "var/lib/repo", 'n': "treetx-recover@var-lib-repo.service"}
			envMap, envList = unitEnv(ds, append(u.env, "TREETX_GC_ROOTS=/srv/cvs /var/lib")...)
			cmds, _ = commands(t, ds, spec, envMap)
			if len(cmds) < 2 {
				t.Fatalf("no ExecStartPre= check")
			}
			code, out := sandbox(t, ds, caps, scratch, envList, cmds[0])
			if code == 0 || !strings.Contains(out, "/var/lib") || !strings.Contains(out, "ReadWritePaths=") {
				t.Errorf("ExecStartPre %q with /var/lib not writable: exit %d, want a failure naming it and ReadWritePaths=:\n%s", cmds[0], code, out)
			}
		})
	}
}

// TestSystemdCapabilitiesAreNeeded: the recover unit's bounding set less
// any one of its capabilities no longer recovers the crash state of
// TestSystemdUnitsRecoverUnderTheirSandbox: recovery fails, or, worse,
// succeeds with the tree not as it was (without fsetid the setgid bit of a
// file of another group is dropped, without setfcap the file capability).
func TestSystemdCapabilitiesAreNeeded(t *testing.T) {
	requireSandbox(t)
	u := hardenedUnits()[1]
	ds := readUnit(t, unitPath(t, u.file))
	all := capabilities(t, ds)
	for _, drop := range all {
		t.Run("without "+drop, func(t *testing.T) {
			t.Parallel()
			caps := slices.DeleteFunc(slices.Clone(all), func(c string) bool { return c == drop })
			scratch := t.TempDir()
			dir := u.dir(filepath.Join(scratch, "srv"))
			crash, check := sysCrash, restored
			if drop == "setuid" || drop == "setgid" {
				// Needed to finish another user's transaction with
				// that user's identity (docs/protocol.md, "Threat
				// model").
				crash, check = userCrash, func(t *testing.T, dir string, before treeimage.Image) []string {
					return before.Diff(capture(t, dir))
				}
			}
			before := crash(t, dir)
			envMap, envList := unitEnv(ds)
			cmds, _ := commands(t, ds, u.spec, envMap)
			code, out := sandbox(t, ds, caps, scratch, envList, cmds[len(cmds)-1])
			diffs := check(t, dir, before)
			if code == 0 && len(diffs) == 0 {
				t.Errorf("recovery without %s restored everything: the unit does not need it\n%s", drop, out)
			}
			t.Logf("without %s: exit %d, %d differences %q\n%s", drop, code, len(diffs), diffs, out)
			// What is left recovers with every capability.
			if r := treetx(t, nil, "recover", dir); r.code != 0 {
				t.Errorf("recover with every capability afterwards: %v", r)
			}
		})
	}
}

// allowedSyscalls expands the unit's SystemCallFilter= lines (an allow
// list, then ~ lines taking away) with systemd-analyze's sets.
func allowedSyscalls(t *testing.T, ds []directive) map[string]bool {
	t.Helper()
	analyze := testenv.Tool(t, "systemd-analyze")
	out, err := exec.Command(analyze, "syscall-filter").Output()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter: %v", err)
	}
	sets := map[string][]string{}
	cur := ""
	for line := range strings.Lines(string(out)) {
		f := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "@"):
			cur = f
		case cur != "" && f != "" && !strings.HasPrefix(f, "#"):
			sets[cur] = append(sets[cur], f)
		}
	}
	var expand func(name string, seen map[string]bool) []string
	expand = func(name string, seen map[string]bool) []string {
		if !strings.HasPrefix(name, "@") {
			return []string{name}
		}
		if seen[name] {
			return nil
		}
		seen[name] = true
		members, ok := sets[name]
		if !ok {
			t.Fatalf("SystemCallFilter: unknown set %s", name)
		}
		var all []string
		for _, m := range members {
			all = append(all, expand(m, seen)...)
		}
		return all
	}
	allowed := map[string]bool{}
	lines := values(ds, "Service", "SystemCallFilter")
	if len(lines) == 0 || strings.HasPrefix(lines[0], "~") {
		t.Fatalf("SystemCallFilter=%q: want an allow list first", lines)
	}
	for i, v := range lines {
		deny := strings.HasPrefix(v, "~")
		if i > 0 && !deny {
			t.Fatalf("SystemCallFilter=%s: only one allow list, then ~ lines, are understood here", v)
		}
		for _, name := range strings.Fields(strings.TrimPrefix(v, "~")) {
			for _, sc := range expand(name, map[string]bool{}) {
				allowed[sc] = !deny
			}
		}
	}
	return allowed
}

// tracedSyscalls returns the names of the system calls in an strace -f
// log.
func tracedSyscalls(t *testing.T, path string) map[string]bool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	call := regexp.MustCompile(`^(?:\d+\s+)?([a-z_][a-z0-9_]*)\(`)
	used := map[string]bool{}
	for line := range strings.Lines(string(data)) {
		if m := call.FindStringSubmatch(line); m != nil {
			used[m[1]] = true
		}
	}
	return used
}

// TestSystemdSyscallFilter: every system call the units' commands make on
// a crash state (treetx gc removing and recovering, treetx recover rolling
// back, the ExecStartPre shell) is one their SystemCallFilter= allows.
// Outside the filter, systemd would fail the call (EPERM) or, for a call
// newer than systemd, kill the service.
func TestSystemdSyscallFilter(t *testing.T) {
	testenv.Require(t, testenv.Root)
	strace := testenv.Tool(t, "strace")
	for _, u := range hardenedUnits() {
		t.Run(u.file, func(t *testing.T) {
			t.Parallel()
			ds := readUnit(t, unitPath(t, u.file))
			allowed := allowedSyscalls(t, ds)
			// The commands run as they are, on the scratch tree.
			scratch := t.TempDir()
			srv := filepath.Join(scratch, "srv")
			dir := u.dir(srv)
			sysCrash(t, dir)
			writeFiles(t, filepath.Join(filepath.Dir(dir), ".#treetx.old.failed.0123456789abcdef"), map[string]string{"d/f": "x"})
			spec := map[byte]string{}
			for k, v := range u.spec {
				spec[k] = strings.Replace(v, "/srv", srv, 1)
			}
			var env []string
			for _, e := range u.env {
				env = append(env, strings.Replace(e, "=/srv", "="+srv, 1))
			}
			envMap, envList := unitEnv(ds, append(env, "TREETX_GC_OPTIONS=--older-than 0s")...)
			cmds, okCodes := commands(t, ds, spec, envMap)
			log := filepath.Join(t.TempDir(), "strace")
			for i, argv := range cmds {
				f := fmt.Sprintf("%s.%d", log, i)
				cmd := exec.Command(strace, append([]string{"-f", "-qq", "-o", f}, argv...)...)
				cmd.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}, envList...)
				out, err := cmd.CombinedOutput()
				var ee *exec.ExitError
				if err != nil && (!errors.As(err, &ee) || !slices.Contains(okCodes, ee.ExitCode())) {
					t.Fatalf("strace %q: %v\n%s", argv, err, out)
				}
				used := tracedSyscalls(t, f)
				if len(used) < 10 {
					t.Fatalf("strace %q logged only %v", argv, used)
				}
				var outside []string
				for sc := range used {
					// fchmodat2 (452) is newer than systemd 252's
					// lists; where a filter refuses it, treetx falls
					// back to fchmodat (internal/fsys).
					if !allowed[sc] && sc != "syscall_0x1c4" && sc != "fchmodat2" {
						outside = append(outside, sc)
					}
				}
				slices.Sort(outside)
				if len(outside) > 0 {
					t.Errorf("%q made system calls outside SystemCallFilter=: %v", argv, outside)
				}
			}
			if exists(filepath.Join(filepath.Dir(dir), ".#treetx."+filepath.Base(dir)+".journal")) {
				t.Errorf("the crash state was not recovered: the trace does not cover a recovery")
			}
		})
	}
}

// TestSystemdSecurityExposure: systemd-analyze security --offline rates
// each unit at or below securityThreshold.
func TestSystemdSecurityExposure(t *testing.T) {
	t.Parallel()
	analyze := testenv.Tool(t, "systemd-analyze")
	dir := t.TempDir()
	for _, u := range hardenedUnits() {
		data, err := os.ReadFile(unitPath(t, u.file))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, u.file), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	level := regexp.MustCompile(`Overall exposure level for (\S+): (\d+\.\d)`)
	for _, name := range []string{"treetx-gc.service", "treetx-recover@srv-cvsroot.service"} {
		cmd := exec.Command(analyze, "security", "--offline=true", "--no-pager", "--threshold="+strconv.Itoa(securityThreshold), name)
		cmd.Dir = dir
		out, err := cmd.CombinedOutput()
		m := level.FindStringSubmatch(string(out))
		if m == nil || m[1] != name {
			t.Fatalf("systemd-analyze security %s: %v, no overall exposure level:\n%s", name, err, out)
		}
		t.Logf("%s: exposure %s", name, m[2])
		if err != nil {
			t.Errorf("systemd-analyze security --threshold=%d %s: %v (exposure %s):\n%s", securityThreshold, name, err, m[2], out)
		}
	}
}
