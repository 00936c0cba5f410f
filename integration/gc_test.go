package integration

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
)

// TestGC: treetx gc under a root that holds every kind of leftover, an
// interrupted transaction and a live one beside them. gc removes the
// garbage, recovers the interrupted transaction (rolls it back, never just
// deletes it), keeps failed trees younger than --older-than and removes
// them with --older-than 0s, never touches the live transaction (which
// commits fine afterward), and is silent once there is nothing to do.
func TestGC(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	dir := func(name string) string { return filepath.Join(root, name) }
	side := func(base, kind string) string { return dir(".#treetx." + base + "." + kind) }
	images := map[string]treeimage.Image{}
	for _, base := range []string{"failed", "doomed", "incomplete", "stale", "idle"} {
		writeFiles(t, dir(base), handFiles)
		images[base] = capture(t, dir(base))
	}
	writeFiles(t, side("failed", "failed.0123456789abcdef"), map[string]string{"f": "bad\n", "d/x": "x"})
	writeFiles(t, side("doomed", "removing.0123456789abcdef"), map[string]string{"a/b/c": "c", "d": "d"})
	writeFiles(t, side("incomplete", "incomplete"), map[string]string{"f": "old\n", "d/": ""})
	writeFiles(t, root, map[string]string{".#treetx.stale.meta": "# treetx manifest 1\n", ".#treetx.stale.journal.tmp": "{"})
	interrupted := handMade(t, root, "interrupted", "running")
	images["interrupted"] = interrupted.old
	writeFiles(t, dir("live"), handFiles)
	live, release := liveRun(t, dir("live"))
	liveNames := []string{side("live", "journal"), side("live", "complete"), side("live", "meta")}

	// A dry run changes nothing.
	names := listing(t, root)
	r := treetx(t, nil, "gc", "--dry-run", root)
	wantCode(t, r, 75)
	contains(t, "gc --dry-run", r.stdout, "gc (dry run): 5 directories: would remove 2 trees and 2 files, would recover 1; 1 busy\n")
	namesUnchanged(t, root, names)
	for _, base := range []string{"failed", "doomed", "incomplete", "stale", "idle"} {
		if exists(side(base, "lock")) {
			t.Errorf("gc --dry-run left a lock file for %s", base)
		}
	}

	// Failed trees younger than 1000h are kept.
	r = treetx(t, nil, "gc", "--older-than", "1000h", root)
	wantCode(t, r, 75)
	if r.stdout != "gc: 5 directories: removed 2 trees and 2 files, recovered 1; 1 busy\n" {
		t.Errorf("gc's summary:\n%v", r)
	}
	if r.stderr != "" {
		t.Errorf("gc wrote to stderr:\n%s", r.stderr)
	}
	for base, img := range images {
		treeimage.AssertEqual(t, base+" before", img, base+" after gc", capture(t, dir(base)))
	}
	for _, base := range []string{"doomed", "incomplete", "stale", "interrupted"} {
		noLeftovers(t, root, base)
	}
	if !exists(side("failed", "failed.0123456789abcdef")) {
		t.Errorf("gc removed a failed tree younger than --older-than")
	}
	for _, p := range liveNames {
		if !exists(p) {
			t.Errorf("gc touched the live transaction: %s is gone", p)
		}
	}

	// With --older-than 0s, the failed tree goes too.
	r = treetx(t, nil, "gc", "--older-than", "0s", root)
	wantCode(t, r, 75)
	if r.stdout != "gc: 2 directories: removed 1 trees, recovered 0; 1 busy\n" {
		t.Errorf("gc's summary:\n%v", r)
	}
	noLeftovers(t, root, "failed")
	treeimage.AssertEqual(t, "failed before", images["failed"], "after gc", capture(t, dir("failed")))

	// The live transaction commits.
	release()
	wantCode(t, live.wait(t), 0)
	if b, err := os.ReadFile(filepath.Join(dir("live"), "live")); err != nil || string(b) != "live" {
		t.Errorf("the live transaction's change: %q, %v", b, err)
	}
	noLeftovers(t, root, "live")

	// Nothing to do: silent, 0.
	r = treetx(t, nil, "gc", root)
	wantCode(t, r, 0)
	if r.stdout != "" || r.stderr != "" {
		t.Errorf("gc with nothing to do is not silent:\n%v", r)
	}
}

// TestGCSilentAndExitCodes: gc on a root with nothing but idle trees and
// young failed trees says nothing; a corrupt journal makes it 125 with a
// line on stderr and the journal kept; --json prints one object per
// directory acted on.
func TestGCSilentAndExitCodes(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	writeFiles(t, filepath.Join(root, "a"), handFiles)
	writeFiles(t, filepath.Join(root, "b", "c"), handFiles)
	writeFiles(t, filepath.Join(root, ".#treetx.a.failed.0123456789abcdef"), map[string]string{"f": "f"})
	r := treetx(t, nil, "gc", root)
	wantCode(t, r, 0)
	if r.stdout != "" || r.stderr != "" {
		t.Errorf("gc with nothing to do is not silent:\n%v", r)
	}

	writeFiles(t, filepath.Join(root, "b"), map[string]string{".#treetx.c.journal": "{"})
	writeFiles(t, filepath.Join(root, "b", ".#treetx.c.removing.0123456789abcdef"), map[string]string{"x": "x"})
	writeFiles(t, root, map[string]string{".#treetx.a.meta": "m"})
	r = treetx(t, nil, "gc", root)
	wantCode(t, r, 125)
	if r.stdout != "gc: 2 directories: removed 0 trees and 1 files, recovered 0; 0 busy; 1 need a person\n" {
		t.Errorf("gc's summary:\n%v", r)
	}
	oneLine(t, r.stderr, filepath.Join(root, "b", "c"), "needs a person")
	for _, p := range []string{".#treetx.c.journal", ".#treetx.c.removing.0123456789abcdef"} {
		if !exists(filepath.Join(root, "b", p)) {
			t.Errorf("gc acted beside a corrupt journal: %s is gone", p)
		}
	}

	r = treetx(t, nil, "gc", "--json", "--older-than", "0s", root)
	wantCode(t, r, 125)
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 2 {
		t.Fatalf("gc --json: %d lines, want 2:\n%s", len(lines), r.stdout)
	}
	a := decodeReport(t, lines[0]+"\n")
	if a["dir"] != filepath.Join(root, "a") || a["done"] != true || len(a["removed"].([]any)) != 1 {
		t.Errorf("gc --json, a: %s", lines[0])
	}
	c := decodeReport(t, lines[1]+"\n")
	if c["dir"] != filepath.Join(root, "b", "c") || c["state"] != "needs a person" {
		t.Errorf("gc --json, c: %s", lines[1])
	}
}

// TestGCBadUsage: gc needs a root; a negative or malformed duration is a
// usage error.
func TestGCBadUsage(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	for _, args := range [][]string{{"gc"}, {"gc", "--older-than", "-1h", root}, {"gc", "--older-than", "week", root}} {
		r := treetx(t, nil, args...)
		wantCode(t, r, 64)
	}
}

// TestSystemdUnitsAndCrontab: the unit files in scripts/systemd pass
// systemd-analyze verify (in a scratch root holding the system's own units,
// the binary at /usr/local/bin/treetx and /bin/sh for ExecStartPre), with
// an instance of the recover template named as README.md says and a
// service ordered after it; the crontab's entries run treetx gc.
func TestSystemdUnitsAndCrontab(t *testing.T) {
	t.Parallel()
	mod, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	crontab, err := os.ReadFile(filepath.Join(mod, "scripts", "cron", "treetx-gc"))
	if err != nil {
		t.Fatal(err)
	}
	entries := 0
	for line := range strings.Lines(string(crontab)) {
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") || strings.Contains(f[0], "=") {
			continue
		}
		entries++
		if len(f) < 8 || f[5] != "root" || f[6] != "treetx" || f[7] != "gc" {
			t.Errorf("crontab entry %q: want 5 time fields, root, treetx gc", line)
		}
	}
	if entries == 0 {
		t.Errorf("the crontab has no entry")
	}

	testenv.Require(t, testenv.Systemd)
	var system string
	for _, d := range []string{"/usr/lib/systemd/system", "/lib/systemd/system"} {
		if _, err := os.Stat(filepath.Join(d, "sysinit.target")); err == nil {
			system = d
			break
		}
	}
	if system == "" {
		testenv.Unavailable(t, "no systemd units (sysinit.target) installed")
	}
	root := t.TempDir()
	etc := filepath.Join(root, "etc", "systemd", "system")
	for _, d := range []string{etc, filepath.Join(root, "usr", "lib", "systemd"), filepath.Join(root, "usr", "local", "bin")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	sh(t, []string{"SYSTEM=" + system, "ROOT=" + root, "ETC=" + etc, "MOD=" + mod, "BIN=" + treetxPath}, `
cp -a "$SYSTEM" "$ROOT/usr/lib/systemd/system"
cp "$BIN" "$ROOT/usr/local/bin/treetx"
mkdir "$ROOT/bin" && cp -L /bin/sh "$ROOT/bin/sh"
cp "$MOD"/scripts/systemd/* "$ETC/"`)
	out, err := exec.Command("systemd-escape", "--path", "--template", "treetx-recover@.service", "/srv/cvsroot").Output()
	if err != nil {
		t.Fatalf("systemd-escape: %v", err)
	}
	unit := strings.TrimSpace(string(out))
	if unit != "treetx-recover@srv-cvsroot.service" {
		t.Errorf("systemd-escape gave %q", unit)
	}
	writeFiles(t, etc, map[string]string{
		unit + ".d/before.conf": "[Unit]\nBefore=cvspserver.service\n",
		"cvspserver.service":    "[Unit]\nDescription=CVS\nRequires=" + unit + "\nAfter=" + unit + "\n[Service]\nExecStart=/usr/local/bin/treetx lock --shared /srv/cvsroot -- /usr/local/bin/treetx status /srv/cvsroot\n",
	})
	cmd := exec.Command("systemd-analyze", "verify", "--man=no", "--root="+root, unit, "treetx-gc.service", "treetx-gc.timer", "cvspserver.service")
	got, err := cmd.CombinedOutput()
	if err != nil || len(got) != 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, got)
	}
}
