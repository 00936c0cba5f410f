package recover_test

// Hostile states for recovery (issue 10; the trust rules T1..T5 of
// docs/protocol.md): recovery runs as root, from cron and at boot, over
// trees whose parent other users can write. Each case plants something
// beside a directory as uid 65534 would (the attacker's files are owned by
// 65534), or as root's own crashed transaction left it and then someone
// changed, and says what recovery must do: refuse (exit 125, "needs a
// person", one line naming the path and what was expected, nothing
// changed), or remove garbage, or recover, and in every case change nothing
// outside treetx's names and never hang.
//
// The table runs against any recoverer, func(dir) (exit, output): the
// script (TestScriptHostile) and recover.Recover (TestGoHostile).

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
	txrecover "github.com/treetx/treetx/recover"
)

// The attacker.
const hostileUID = 65534

// hostileTimeout is how long one recovery may take before it counts as hung
// (a recovery takes a second or two; a loaded machine running many at once
// can take ten times that).
const hostileTimeout = 60 * time.Second

// hostileWorld is where a case plants its state:
//
//	base/            0755 root
//	  outside/       files outside treetx's reach, secret among them
//	  parent/        P: 1777 root (sticky: anyone may add names)
//	    repo/        DIR, root's
type hostileWorld struct {
	base, outside, secret, parent, dir string
	pl                                 plan // crash points of a rollback run
}

func (w *hostileWorld) name(n string) string { return filepath.Join(w.parent, ".#treetx.repo."+n) }

// What a recovery must do.
type hostileOutcome int

const (
	refused   hostileOutcome = iota // 125, needs a person, nothing changed
	removed                         // 0: the names in gone are gone, nothing else changed
	idleKept                        // 0: nothing changed (names kept, a lock file may be made)
	recovered                       // 0: the journal is gone, DIR is the old tree
	failed                          // 125: an action failed; check says what is left
)

type hostileCase struct {
	name  string
	setup func(t *testing.T, w *hostileWorld)
	want  hostileOutcome
	// gone lists the names (of P) a removed case takes away.
	gone []string
	// msg lists what the output must hold (case-insensitive; "{P}" stands
	// for the parent, "{outside}" for the outside directory).
	msg []string
	// rootUID is the owner of DIR's root after a recovery (recovered);
	// allUID, when set, of every entry in it.
	rootUID, allUID int
	// check, if set, checks what is left after the recovery.
	check func(t *testing.T, w *hostileWorld, out string)
}

// The ways a name is planted.
var plantings = []string{"symlink to a file", "symlink to a directory", "dangling symlink", "FIFO", "socket", "directory", "hard link to an outside file", "owned by 65534"}

// plant puts at path what how says, owned by the attacker (but a hard link,
// whose inode is the outside file's).
func plant(t *testing.T, w *hostileWorld, path, how string) {
	t.Helper()
	var err error
	switch how {
	case "symlink to a file":
		err = os.Symlink(w.secret, path)
	case "symlink to a directory":
		err = os.Symlink(w.outside, path)
	case "dangling symlink":
		err = os.Symlink(filepath.Join(w.outside, "made-by-following"), path)
	case "FIFO":
		err = unix.Mkfifo(path, 0o644)
	case "socket":
		err = bindSocket(path)
	case "directory":
		if err = os.Mkdir(path, 0o755); err == nil {
			err = os.WriteFile(filepath.Join(path, "inside"), []byte("planted\n"), 0o644)
			chownAttacker(t, filepath.Join(path, "inside"))
		}
	case "hard link to an outside file":
		if err := os.Link(w.secret, path); err != nil {
			t.Fatal(err)
		}
		return
	case "owned by 65534":
		err = os.WriteFile(path, []byte("planted\n"), 0o644)
	default:
		t.Fatalf("no planting %q", how)
	}
	if err != nil {
		t.Fatal(err)
	}
	chownAttacker(t, path)
}

func chownAttacker(t *testing.T, path string) {
	t.Helper()
	if err := os.Lchown(path, hostileUID, hostileUID); err != nil {
		t.Fatal(err)
	}
}

// bindSocket leaves a unix socket at path.
func bindSocket(path string) error {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return unix.Bind(fd, &unix.SockaddrUnix{Name: path})
}

// isLink tells the plantings that are symlinks.
func isLink(how string) bool { return strings.Contains(how, "symlink") }

// hostileCases is the table.
func hostileCases() []hostileCase {
	var cases []hostileCase
	add := func(c hostileCase) { cases = append(cases, c) }
	const id = "0123456789abcdef"

	// T1: every name planted every way, with no journal beside it (but
	// the journal itself).
	for _, n := range []string{"lock", "gate", "journal", "journal.tmp", "meta", "incomplete", "complete", "removing." + id, "failed." + id} {
		for _, how := range plantings {
			c := hostileCase{name: n + "/" + how}
			c.setup = func(t *testing.T, w *hostileWorld) {
				if how == "owned by 65534" && slices.Contains([]string{"incomplete", "removing." + id, "failed." + id}, n) {
					// A tree of the attacker's.
					plant(t, w, w.name(n), "directory")
					return
				}
				plant(t, w, w.name(n), how)
			}
			path := "{P}/.#treetx.repo." + n
			switch n {
			case "lock", "gate":
				// A regular file with one link, whoever owns it, is a lock.
				c.want, c.msg = refused, []string{path, "expected a regular file with one link"}
				if how == "owned by 65534" {
					c.want, c.msg = idleKept, nil
				}
			case "journal":
				c.want, c.msg = refused, []string{path, "expected a regular file with one link"}
				if how == "owned by 65534" {
					c.msg = []string{path, "corrupt"} // a journal, but not one treetx wrote
				}
			case "complete":
				// A shadow no journal claims is never installed nor deleted.
				c.want, c.msg = refused, []string{path, "no journal claims it"}
			case "failed." + id:
				c.want = idleKept
			default:
				// T2: garbage. Only the name goes (a tree is deleted as
				// its owner, without following symlinks).
				c.want, c.gone = removed, []string{".#treetx.repo." + n}
			}
			add(c)
		}
	}

	// T1 and T3 beside a real journal: root's transaction crashed while
	// its command ran (journal "running", the shadow at .complete).
	crashed := func(t *testing.T, w *hostileWorld) {
		t.Helper()
		if !runVictim(t, "txn", w.dir, "rollback", w.pl.begun) {
			t.Fatal("the victim finished")
		}
	}
	for _, how := range plantings {
		c := hostileCase{name: "with journal/journal.tmp/" + how, want: refused,
			msg: []string{"{P}/.#treetx.repo.journal.tmp", "expected a regular file"}}
		c.setup = func(t *testing.T, w *hostileWorld) {
			crashed(t, w)
			plant(t, w, w.name("journal.tmp"), how)
		}
		if how != "directory" {
			// A stale temporary journal: unlinked by name (unlinkat and
			// rm never follow it), whatever it is and whoever owns it,
			// before the next journal write.
			c.want, c.msg = recovered, nil
		}
		add(c)
	}
	for _, how := range plantings {
		c := hostileCase{name: "with journal/meta/" + how, want: refused,
			msg: []string{"{P}/.#treetx.repo.meta", "expected a regular file with one link"}}
		c.setup = func(t *testing.T, w *hostileWorld) {
			crashed(t, w)
			if err := os.Remove(w.name("meta")); err != nil {
				t.Fatal(err)
			}
			plant(t, w, w.name("meta"), how)
		}
		add(c)
	}
	for _, how := range plantings {
		c := hostileCase{name: "with journal/complete/" + how, want: refused,
			msg: []string{"{P}/.#treetx.repo.complete", "not the shadow"}}
		c.setup = func(t *testing.T, w *hostileWorld) {
			crashed(t, w)
			// The real shadow moves aside; what is planted is not it.
			if err := os.Rename(w.name("complete"), filepath.Join(w.parent, "moved-shadow")); err != nil {
				t.Fatal(err)
			}
			if how == "symlink to a directory" {
				if err := os.Symlink("moved-shadow", w.name("complete")); err != nil {
					t.Fatal(err)
				}
				chownAttacker(t, w.name("complete"))
				return
			}
			plant(t, w, w.name("complete"), how)
		}
		add(c)
	}
	add(hostileCase{name: "with journal/meta owned by 65534", want: refused,
		msg: []string{"{P}/.#treetx.repo.meta", "owned by uid 0"},
		setup: func(t *testing.T, w *hostileWorld) {
			crashed(t, w)
			chownAttacker(t, w.name("meta"))
		}})
	add(hostileCase{name: "with journal/journal writable by others", want: refused,
		msg: []string{"{P}/.#treetx.repo.journal", "not writable by group or others"},
		setup: func(t *testing.T, w *hostileWorld) {
			crashed(t, w)
			if err := os.Chmod(w.name("journal"), 0o666); err != nil {
				t.Fatal(err)
			}
		}})
	add(hostileCase{name: "with journal/meta writable by others", want: refused,
		msg: []string{"{P}/.#treetx.repo.meta", "not writable by group or others"},
		setup: func(t *testing.T, w *hostileWorld) {
			crashed(t, w)
			if err := os.Chmod(w.name("meta"), 0o606); err != nil {
				t.Fatal(err)
			}
		}})
	add(hostileCase{name: "with journal/shadow owned by 65534, journal root's", want: recovered, rootUID: hostileUID,
		setup: func(t *testing.T, w *hostileWorld) {
			// Root gives the shadow DIR's owner: any owner is root's.
			crashed(t, w)
			chownAttacker(t, w.name("complete"))
		}})
	add(hostileCase{name: "with journal/journal owned by 65534", want: refused,
		msg: []string{"{P}/.#treetx.repo.meta", "owned by uid 65534"},
		setup: func(t *testing.T, w *hostileWorld) {
			// Recovered as 65534 (T3), which finds the manifest root's.
			crashed(t, w)
			chownAttacker(t, w.name("journal"))
		}})
	add(hostileCase{name: "with journal/journal and meta owned by 65534", want: refused,
		msg: []string{"{P}/.#treetx.repo.complete", "owned by uid 65534"},
		setup: func(t *testing.T, w *hostileWorld) {
			crashed(t, w)
			chownAttacker(t, w.name("journal"))
			chownAttacker(t, w.name("meta"))
		}})

	add(hostileCase{name: "with journal/journal over 1 MiB", want: refused,
		msg: []string{"{P}/.#treetx.repo.journal", "at most 1 MiB"},
		setup: func(t *testing.T, w *hostileWorld) {
			crashed(t, w)
			f, err := os.OpenFile(w.name("journal"), os.O_WRONLY|os.O_APPEND, 0)
			if err == nil {
				_, err = f.Write(make([]byte, 1<<20))
				err = errors.Join(err, f.Close())
			}
			if err != nil {
				t.Fatal(err)
			}
		}})
	// Another tree being removed, the attacker's, holding links to the
	// outside: deleted as the attacker once root's transaction is rolled
	// back.
	add(hostileCase{name: "with journal/attacker's tree being removed", want: recovered,
		setup: func(t *testing.T, w *hostileWorld) {
			crashed(t, w)
			d := w.name("removing.00000000000000aa")
			plant(t, w, d, "directory")
			if err := os.Link(w.secret, filepath.Join(d, "secret")); err != nil {
				t.Fatal(err)
			}
			plant(t, w, filepath.Join(d, "to-outside"), "symlink to a directory")
		}})
	// T3 doing its work: a transaction of uid 65534's crashed; root
	// recovers it as 65534, who owns DIR, the shadow, the journal and the
	// manifest (and the files the manifest records).
	add(hostileCase{name: "with journal/transaction of uid 65534", want: recovered, allUID: hostileUID, rootUID: hostileUID,
		setup: func(t *testing.T, w *hostileWorld) {
			crashed(t, w)
			for _, root := range []string{w.dir, w.name("complete")} {
				err := filepath.WalkDir(root, func(p string, _ fs.DirEntry, err error) error {
					if err != nil {
						return err
					}
					return os.Lchown(p, hostileUID, hostileUID)
				})
				if err != nil {
					t.Fatal(err)
				}
			}
			chownAttacker(t, w.name("journal"))
			chownAttacker(t, w.name("meta"))
			data, err := os.ReadFile(w.name("meta"))
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(string(data), "\n")
			for i, l := range lines {
				if f := strings.Split(l, " "); len(f) == 9 && !strings.HasPrefix(l, "#") {
					f[2], f[3] = "65534", "65534"
					lines[i] = strings.Join(f, " ")
				}
			}
			if err := os.WriteFile(w.name("meta"), []byte(strings.Join(lines, "\n")), 0o600); err != nil {
				t.Fatal(err)
			}
		}})

	// T2: a tree of the attacker's that holds an outside file's hard link
	// and a symlink to the outside is deleted as the attacker: the outside
	// is untouched.
	add(hostileCase{name: "garbage tree/links to the outside", want: removed, gone: []string{".#treetx.repo.incomplete"},
		setup: func(t *testing.T, w *hostileWorld) {
			d := w.name("incomplete")
			plant(t, w, d, "directory")
			if err := os.Link(w.secret, filepath.Join(d, "secret")); err != nil {
				t.Fatal(err)
			}
			plant(t, w, filepath.Join(d, "to-outside"), "symlink to a directory")
			if err := os.Mkdir(filepath.Join(d, "sub"), 0o700); err != nil {
				t.Fatal(err)
			}
			plant(t, w, filepath.Join(d, "sub", "to-secret"), "symlink to a file")
			chownAttacker(t, filepath.Join(d, "sub"))
		}})
	// A tree of the attacker's holding root's directory: the attacker
	// cannot delete it, so neither does recovery; it is left under its
	// removal name, and recovery says so (125).
	add(hostileCase{name: "garbage tree/holding root's directory", want: failed,
		msg: []string{"as uid 65534"},
		setup: func(t *testing.T, w *hostileWorld) {
			d := w.name("journal.tmp")
			plant(t, w, d, "directory")
			if err := os.MkdirAll(filepath.Join(d, "roots", "deep"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, "roots", "deep", "file"), []byte("root's\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		},
		check: func(t *testing.T, w *hostileWorld, _ string) {
			left, _ := filepath.Glob(filepath.Join(w.parent, ".#treetx.repo.removing.*", "roots", "deep", "file"))
			if len(left) != 1 {
				t.Errorf("root's file in the attacker's tree: want it left under a removal name, found %v", left)
			}
		}})

	// T3, T4: a journal, a manifest and a shadow planted by the attacker,
	// the manifest aiming at the outside. Each is refused before anything
	// is done, or fails for want of the attacker's rights.
	for _, a := range []struct {
		name string
		rec  func(w *hostileWorld, st *unix.Stat_t) string // the record line
		prep func(t *testing.T, w *hostileWorld, shadow string) *unix.Stat_t
		want hostileOutcome
		msg  []string
	}{
		{name: "path with ..", want: refused, msg: []string{"../../outside/secret", "expected a relative path"},
			rec: func(w *hostileWorld, st *unix.Stat_t) string {
				return record(st, "4777 65534 65534", "../../outside/secret")
			}},
		{name: "absolute path", want: refused, msg: []string{"expected a relative path"},
			rec: func(w *hostileWorld, st *unix.Stat_t) string { return record(st, "4777 65534 65534", w.secret) }},
		{name: "empty component", want: refused, msg: []string{"sub//secret", "expected a relative path"},
			rec: func(w *hostileWorld, st *unix.Stat_t) string { return record(st, "4777 65534 65534", "sub//secret") }},
		{name: "dot component", want: refused, msg: []string{"./secret", "expected a relative path"},
			rec: func(w *hostileWorld, st *unix.Stat_t) string { return record(st, "4777 65534 65534", "./secret") }},
		{name: "escaped slashes and dots", want: refused, msg: []string{"expected a relative path"},
			rec: func(w *hostileWorld, st *unix.Stat_t) string {
				return record(st, "4777 65534 65534", `\0056\0056\0057\0056\0056\0057outside\0057secret`)
			}},
		{name: "mode out of range", want: refused, msg: []string{"37777777777", "expected at most 07777"},
			rec:  func(w *hostileWorld, st *unix.Stat_t) string { return record(st, "37777777777 65534 65534", "own") },
			prep: func(t *testing.T, w *hostileWorld, shadow string) *unix.Stat_t { return ownFile(t, shadow, "own") }},
		{name: "owner out of range", want: refused, msg: []string{"4294967295", "expected a uid and a gid below"},
			rec:  func(w *hostileWorld, st *unix.Stat_t) string { return record(st, "644 4294967295 0", "own") },
			prep: func(t *testing.T, w *hostileWorld, shadow string) *unix.Stat_t { return ownFile(t, shadow, "own") }},
		{name: "symlink on the way", want: refused, msg: []string{".#treetx.repo.complete/link", "expected a directory"},
			rec: func(w *hostileWorld, st *unix.Stat_t) string { return record(st, "4777 65534 65534", "link/secret") },
			prep: func(t *testing.T, w *hostileWorld, shadow string) *unix.Stat_t {
				plant(t, w, filepath.Join(shadow, "link"), "symlink to a directory")
				return statOf(t, w.secret)
			}},
		{name: "symlink as the file", want: refused, msg: []string{".#treetx.repo.complete/secret", "found a symbolic link"},
			rec: func(w *hostileWorld, st *unix.Stat_t) string { return record(st, "4777 65534 65534", "secret") },
			prep: func(t *testing.T, w *hostileWorld, shadow string) *unix.Stat_t {
				p := filepath.Join(shadow, "secret")
				plant(t, w, p, "symlink to a file")
				var st unix.Stat_t
				if err := unix.Lstat(p, &st); err != nil {
					t.Fatal(err)
				}
				return &st // the symlink's own inode
			}},
		{name: "symlink to the outside file's inode", want: refused, msg: []string{".#treetx.repo.complete/secret", "changed by name"},
			rec: func(w *hostileWorld, st *unix.Stat_t) string { return record(st, "4777 65534 65534", "secret") },
			prep: func(t *testing.T, w *hostileWorld, shadow string) *unix.Stat_t {
				plant(t, w, filepath.Join(shadow, "secret"), "symlink to a file")
				return statOf(t, w.secret)
			}},
		// Where protected_hardlinks is off, the attacker may link root's
		// file into its shadow: recovered as the attacker (T3), the
		// record's chown and chmod are refused by the kernel.
		{name: "hard link of the outside file", want: failed, msg: []string{"not permitted"},
			rec: func(w *hostileWorld, st *unix.Stat_t) string { return record(st, "4777 65534 65534", "secret") },
			prep: func(t *testing.T, w *hostileWorld, shadow string) *unix.Stat_t {
				if err := os.Link(w.secret, filepath.Join(shadow, "secret")); err != nil {
					t.Fatal(err)
				}
				return statOf(t, w.secret)
			}},
		// A well-formed state: recovered as the attacker, who may not
		// rename root's DIR in a sticky parent.
		{name: "confined records", want: failed, msg: []string{"not permitted"},
			rec:  func(w *hostileWorld, st *unix.Stat_t) string { return record(st, "4755 65534 65534", "own") },
			prep: func(t *testing.T, w *hostileWorld, shadow string) *unix.Stat_t { return ownFile(t, shadow, "own") }},
	} {
		add(hostileCase{name: "planted journal/" + a.name, want: a.want, msg: a.msg,
			setup: func(t *testing.T, w *hostileWorld) {
				shadow := w.name("complete")
				plant(t, w, shadow, "directory")
				var st *unix.Stat_t
				if a.prep != nil {
					st = a.prep(t, w, shadow)
				} else {
					st = statOf(t, w.secret)
				}
				plantJournal(t, w, shadow, a.rec(w, st))
			},
			check: func(t *testing.T, w *hostileWorld, _ string) {
				if a.want == failed {
					// Nothing but the attacker's own names changed.
					if _, err := os.Lstat(w.name("complete")); err != nil {
						t.Errorf("the attacker's shadow: %v", err)
					}
				}
			}})
	}
	return cases
}

// record writes a manifest line for the file st, with mode and owner
// ("MODE UID GID") and the escaped path.
func record(st *unix.Stat_t, modeOwner, path string) string {
	return fmt.Sprintf("%d %s %d %d.%09d %d.%09d - %s", st.Ino, modeOwner, st.Size, st.Atim.Sec, st.Atim.Nsec, st.Mtim.Sec, st.Mtim.Nsec, path)
}

func statOf(t *testing.T, path string) *unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return &st
}

// ownFile makes a file of the attacker's in its shadow.
func ownFile(t *testing.T, shadow, name string) *unix.Stat_t {
	t.Helper()
	p := filepath.Join(shadow, name)
	if err := os.WriteFile(p, []byte("mine\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(p, hostileUID, hostileUID); err != nil {
		t.Fatal(err)
	}
	return statOf(t, p)
}

// plantJournal writes, as the attacker, a journal as treetx writes it
// (phase running, the shadow at .complete) and a manifest of one record.
func plantJournal(t *testing.T, w *hostileWorld, shadow, rec string) {
	t.Helper()
	dir, sh := statOf(t, w.dir), statOf(t, shadow)
	j := txrecover.Journal{Version: 1, ID: "fedcba9876543210", PID: 1, Host: "elsewhere", User: "nobody",
		Command: []string{"true"}, Start: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Phase: txrecover.PhaseRunning,
		Dir: layout.FileID{Dev: dir.Dev, Ino: dir.Ino}, Shadow: layout.FileID{Dev: sh.Dev, Ino: sh.Ino}}
	data, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		name string
		data string
		mode os.FileMode
	}{
		{"journal", string(data) + "\n", 0o644},
		{"meta", "# treetx manifest 1\n" + rec + "\n# end 1\n", 0o600},
	} {
		if err := os.WriteFile(w.name(f.name), []byte(f.data), f.mode); err != nil {
			t.Fatal(err)
		}
		chownAttacker(t, w.name(f.name))
	}
}

// newHostileWorld lays out base/outside and base/parent/repo.
func newHostileWorld(t *testing.T, pl plan) *hostileWorld {
	t.Helper()
	// On a tmpfs where there is one: syncs cost nothing there.
	tmp := ""
	if shmUsable() {
		tmp = "/dev/shm"
	}
	base, err := os.MkdirTemp(tmp, "treetx-hostile-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	w := &hostileWorld{base: base, outside: filepath.Join(base, "outside"), parent: filepath.Join(base, "parent"), pl: pl}
	w.secret = filepath.Join(w.outside, "secret")
	w.dir = filepath.Join(w.parent, "repo")
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{w.outside, filepath.Join(w.outside, "sub"), w.parent} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Chmod(w.parent, 0o1777); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]os.FileMode{"secret": 0o600, "passwd": 0o644, "sub/file": 0o640} {
		if err := os.WriteFile(filepath.Join(w.outside, name), []byte(name+" of root\n"), mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := treeimage.BuildSample(w.dir); err != nil {
		t.Fatal(err)
	}
	return w
}

// describe describes everything under root (not following symlinks): each
// entry's path, type, mode, owner, size, mtime and content or target. A
// name in skip (relative to root) is left out; the lock file's content and
// times are left out (recovery writes and clears its holder record), and
// the size and times of the parent.
func describe(t *testing.T, root string, skip []string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if slices.Contains(skip, rel) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		isLock := strings.HasSuffix(rel, ".#treetx.repo.lock")
		fmt.Fprintf(&b, "%q mode %o owner %d:%d", rel, st.Mode, st.Uid, st.Gid)
		// P's own size and times change with every name made in it (the
		// lock file among them).
		if !isLock && rel != "parent" {
			fmt.Fprintf(&b, " size %d mtime %d.%09d", st.Size, st.Mtim.Sec, st.Mtim.Nsec)
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			if !isLock {
				data, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				fmt.Fprintf(&b, " sha256 %x", sha256.Sum256(data))
			}
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " -> %q", target)
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// runHostile runs every case of the table against recoverer; with
// phrases, its output must also hold each case's msg (the script's
// wording: the Go side says the same in its own words, and is held to the
// outcome).
func runHostile(t *testing.T, recoverer func(dir string) (exit int, output string), phrases bool) {
	testenv.Require(t, testenv.Root) // files of uid 65534, recovery as root
	pl := dryRun(t, "rollback")
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newHostileWorld(t, pl)
			tc.setup(t, w)
			// The lock file is left out where the case did not plant it:
			// recovery may make it.
			var skip []string
			if _, err := os.Lstat(w.name("lock")); err != nil {
				skip = append(skip, "parent/.#treetx.repo.lock")
			}
			outsideBefore := describe(t, w.outside, nil)
			before := describe(t, w.base, skip)

			type result struct {
				exit int
				out  string
			}
			done := make(chan result, 1)
			go func() {
				exit, out := recoverer(w.dir)
				done <- result{exit, out}
			}()
			var r result
			select {
			case r = <-done:
			case <-time.After(hostileTimeout + 5*time.Second):
				t.Fatalf("recovery hung (over %v)", hostileTimeout)
			}
			if r.exit < 0 {
				t.Fatalf("recovery hung (killed after %v): %s", hostileTimeout, r.out)
			}
			if after := describe(t, w.outside, nil); after != outsideBefore {
				t.Errorf("the outside changed:\nbefore:\n%s\nafter:\n%s\noutput: %s", outsideBefore, after, r.out)
			}
			if _, err := os.Lstat(filepath.Join(w.outside, "made-by-following")); err == nil {
				t.Errorf("a dangling symlink was followed: %s", r.out)
			}
			low := strings.ToLower(r.out)
			for _, m := range tc.msg {
				if !phrases {
					break
				}
				m = strings.NewReplacer("{P}", w.parent, "{outside}", w.outside).Replace(m)
				if !strings.Contains(low, strings.ToLower(m)) {
					t.Errorf("the output does not say %q: %s", m, r.out)
				}
			}
			switch tc.want {
			case refused:
				if r.exit != 125 || !strings.Contains(r.out, ": needs a person: ") {
					t.Errorf("exit %d, want 125 and needs a person: %s", r.exit, r.out)
				}
				if after := describe(t, w.base, skip); after != before {
					t.Errorf("refused, but something changed:\n%s\noutput: %s", diffLines(before, after), r.out)
				}
			case idleKept, removed:
				if r.exit != 0 {
					t.Errorf("exit %d, want 0: %s", r.exit, r.out)
				}
				var gone []string
				for _, g := range tc.gone {
					gone = append(gone, "parent/"+g)
					if _, err := os.Lstat(filepath.Join(w.parent, g)); err == nil {
						t.Errorf("%s is still there: %s", g, r.out)
					}
				}
				if after := describe(t, w.base, skip); after != withoutLines(before, gone) {
					t.Errorf("more than %v changed:\n%s\noutput: %s", tc.gone, diffLines(withoutLines(before, gone), after), r.out)
				}
			case recovered:
				if r.exit != 0 {
					t.Errorf("exit %d, want 0: %s", r.exit, r.out)
				}
				old := treeimage.MustCapture(t, newSampleIn(t, "rollback", scratch(t, false)), treeimage.Options{})
				for i := range old {
					if old[i].Path == "." {
						old[i].UID, old[i].GID = tc.rootUID, tc.rootUID
					}
					if tc.allUID != 0 {
						old[i].UID, old[i].GID = tc.allUID, tc.allUID
					}
				}
				if v := checkInvariant(t, w.dir, old, treeimage.Options{}); v != "" {
					t.Errorf("after recovery: %s: %s", v, r.out)
				}
			case failed:
				if r.exit != 125 {
					t.Errorf("exit %d, want 125: %s", r.exit, r.out)
				}
				// DIR is root's: it is as it was.
				repoBefore := linesUnder(before, "parent/repo")
				if repoAfter := linesUnder(describe(t, w.base, skip), "parent/repo"); repoAfter != repoBefore {
					t.Errorf("DIR changed:\n%s\noutput: %s", diffLines(repoBefore, repoAfter), r.out)
				}
			}
			if tc.check != nil {
				tc.check(t, w, r.out)
			}
		})
	}
}

// withoutLines drops the lines of a description that are, or are under,
// one of names.
func withoutLines(desc string, names []string) string {
	var b strings.Builder
	for line := range strings.SplitAfterSeq(desc, "\n") {
		keep := true
		for _, n := range names {
			if strings.HasPrefix(line, fmt.Sprintf("%q ", n)) || strings.HasPrefix(line, strings.TrimSuffix(fmt.Sprintf("%q", n), `"`)+"/") {
				keep = false
			}
		}
		if keep {
			b.WriteString(line)
		}
	}
	return b.String()
}

// linesUnder keeps the lines of a description that are, or are under, name.
func linesUnder(desc, name string) string {
	var b strings.Builder
	for line := range strings.SplitAfterSeq(desc, "\n") {
		if strings.HasPrefix(line, fmt.Sprintf("%q ", name)) || strings.HasPrefix(line, strings.TrimSuffix(fmt.Sprintf("%q", name), `"`)+"/") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// diffLines shows the lines only in a (-) and only in b (+).
func diffLines(a, b string) string {
	as, bs := strings.Split(a, "\n"), strings.Split(b, "\n")
	var out []string
	for _, l := range as {
		if !slices.Contains(bs, l) {
			out = append(out, "- "+l)
		}
	}
	for _, l := range bs {
		if !slices.Contains(as, l) {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// scriptRecoverer runs scripts/treetx-recover.sh on dir, killing it (and
// reporting exit -1) if it takes longer than hostileTimeout.
func scriptRecoverer(t *testing.T) func(dir string) (int, string) {
	t.Helper()
	testenv.Require(t, testenv.RecoveryScript)
	script, err := filepath.Abs("../scripts/treetx-recover.sh")
	if err != nil {
		t.Fatal(err)
	}
	return func(dir string) (int, string) {
		ctx, cancel := context.WithTimeout(context.Background(), hostileTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, "sh", script, dir)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=/", "LANG=C"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = 2 * time.Second
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			return -1, string(out)
		}
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			return -2, err.Error()
		}
		return 0, string(out)
	}
}

// TestScriptHostile runs the hostile states against the script.
func TestScriptHostile(t *testing.T) {
	runHostile(t, scriptRecoverer(t), true)
}

// TestGoHostile runs the hostile states against recover.Recover, with the
// exit status treetx recover gives its error.
func TestGoHostile(t *testing.T) {
	runHostile(t, func(dir string) (int, string) {
		r, err := txrecover.Recover(dir, txrecover.Options{})
		out := fmt.Sprintf("%s: %s: %s", r.Dir, r.State, r.Found)
		switch {
		case err == nil:
			return 0, out
		case errors.Is(err, txrecover.ErrBusy):
			return 75, out + "\n" + err.Error()
		default:
			return 125, out + "\n" + err.Error()
		}
	}, false)
}
