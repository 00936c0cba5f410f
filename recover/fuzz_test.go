package recover

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/testenv"
)

// FuzzRecover builds a crash state out of fuzzed parts (a phase, where the
// shadow is and whose it is, a manifest's bytes, who owns the journal and
// manifest) beside a directory, next to a file outside it, and recovers it.
// Whatever the parts, recovery must not panic or hang, must end in a known
// state, and must not change the outside file (content, mode, owner): a
// forged manifest naming it by "..", by an absolute path, or through a
// symlink inside the tree must not reach it. Its seed corpus is in
// testdata/fuzz/FuzzRecover (plain go test runs it).
func FuzzRecover(f *testing.F) {
	good := "# treetx manifest 1\n@F 644 0 0 4 1.000000000 2.000000000 - f\n# end 1\n"
	f.Add(byte(1), byte(0), byte(0), []byte(good))
	f.Add(byte(1), byte(0), byte(1), []byte("# treetx manifest 1\n@S 4777 65534 65534 6 1.000000000 2.000000000 - ../../outside/secret\n# end 1\n"))
	f.Add(byte(1), byte(0), byte(0), []byte("# treetx manifest 1\n@S 4777 65534 65534 6 1.000000000 2.000000000 - link/secret\n# end 1\n"))
	f.Add(byte(1), byte(2), byte(3), []byte("# treetx manifest 1\n@F 37777777777 0 0 4 1.000000000 2.000000000 - f\n# end 1\n"))
	f.Add(byte(0), byte(3), byte(2), []byte(good))
	f.Add(byte(2), byte(0), byte(0), []byte(good))
	f.Fuzz(func(t *testing.T, phase, shadow, owners byte, manifest []byte) {
		testenv.Require(t, testenv.Root)
		top := t.TempDir()
		p := filepath.Join(top, "p")
		outside := filepath.Join(top, "outside")
		dir := filepath.Join(p, "repo")
		for _, d := range []string{p, outside, dir, filepath.Join(dir, "sub")} {
			must(t, os.MkdirAll(d, 0o755))
		}
		secret := filepath.Join(outside, "secret")
		must(t, os.WriteFile(secret, []byte("secret"), 0o600))
		must(t, os.WriteFile(filepath.Join(dir, "f"), []byte("old\n"), 0o644))
		n, err := layout.NamesFor(dir)
		must(t, err)
		// The shadow: a directory holding a hard link of f, and a
		// symlink out of the tree.
		shadowName := []string{n.Complete, n.Incomplete, n.Base, "elsewhere"}[int(shadow)%4]
		sh := filepath.Join(p, n.Complete)
		if shadowName == n.Incomplete {
			sh = filepath.Join(p, n.Incomplete)
		}
		must(t, os.Mkdir(sh, 0o755))
		must(t, os.Link(filepath.Join(dir, "f"), filepath.Join(sh, "f")))
		must(t, os.Symlink(outside, filepath.Join(sh, "link")))
		var st, fst unix.Stat_t
		must(t, unix.Lstat(sh, &st))
		must(t, unix.Lstat(filepath.Join(dir, "f"), &fst))
		shadowID := layout.FileID{Dev: uint64(st.Dev), Ino: st.Ino}
		switch shadowName {
		case n.Base:
			must(t, unix.Lstat(dir, &st))
			shadowID = layout.FileID{Dev: uint64(st.Dev), Ino: st.Ino}
		case "elsewhere":
			shadowID.Ino++
		}
		phases := []Phase{PhaseSnapshot, PhaseRunning, PhaseCommit, PhaseRollback, "bogus"}
		j := map[string]any{
			"version": 1, "id": "3f9c0a1b2c3d4e5f", "pid": 1, "host": "h", "user": "u",
			"command": []string{"true"}, "start": "2026-11-22T01:02:03.456Z",
			"phase": phases[int(phase)%len(phases)], "dir": map[string]uint64{"dev": uint64(st.Dev), "ino": 1},
			"shadow": shadowID,
		}
		data, _ := json.Marshal(j)
		must(t, os.WriteFile(filepath.Join(p, n.Journal), data, 0o644))
		var sst unix.Stat_t
		must(t, unix.Lstat(secret, &sst))
		// @F and @S stand for the inodes of f and of the outside file.
		manifest = bytes.ReplaceAll(manifest, []byte("@F"), []byte(fmt.Sprint(fst.Ino)))
		manifest = bytes.ReplaceAll(manifest, []byte("@S"), []byte(fmt.Sprint(sst.Ino)))
		must(t, os.WriteFile(filepath.Join(p, n.Meta), manifest, 0o600))
		if owners&1 != 0 {
			must(t, os.Lchown(filepath.Join(p, n.Journal), 65534, 65534))
			must(t, os.Lchown(filepath.Join(p, n.Meta), 65534, 65534))
		}
		if owners&2 != 0 {
			must(t, os.Lchown(sh, 65534, 65534))
		}
		before := outsideState(t, secret)

		r, _ := Recover(dir, Options{})
		switch r.State {
		case StateIdle, StateInProgress, StateNeedsRecovery, StateNeedsPerson, StateError:
		default:
			t.Fatalf("unknown state %q", r.State)
		}
		if after := outsideState(t, secret); after != before {
			t.Fatalf("the outside file changed: %s -> %s (report %+v)", before, after, r)
		}
	})
}

// outsideState describes a file's content, mode and owner.
func outsideState(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	must(t, unix.Lstat(path, &st))
	data, err := os.ReadFile(path)
	must(t, err)
	return fmt.Sprintf("%q mode %o owner %d:%d", data, st.Mode, st.Uid, st.Gid)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
