package treeimage

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// buildSample builds a sample tree in a fresh temporary directory and makes
// sure it can be removed afterwards even by a non-root user.
func buildSample(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "sample")
	if err := BuildSample(root); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(filepath.Join(root, "ro"), 0o755) })
	return root
}

func find(img Image, p string) (Entry, bool) {
	for _, e := range img {
		if e.Path == p {
			return e, true
		}
	}
	return Entry{}, false
}

// setMtime sets the mtime of root/rel without following symlinks.
func setMtime(t *testing.T, root, rel string, ns int64) {
	t.Helper()
	ts := []unix.Timespec{unix.NsecToTimespec(ns), unix.NsecToTimespec(ns)}
	p := filepath.Join(root, filepath.FromSlash(rel))
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestSampleCapturesEqualToItself(t *testing.T) {
	root := buildSample(t)
	first := MustCapture(t, root, Options{})
	second := MustCapture(t, root, Options{})
	AssertEqual(t, "first capture", first, "second capture", second)
	other := MustCapture(t, buildSample(t), Options{})
	AssertEqual(t, "sample", first, "another sample", other)
	if first.Hash() != other.Hash() {
		t.Errorf("hashes differ: %s != %s", first.Hash(), other.Hash())
	}
	if !first.Equal(other) {
		t.Error("Equal = false for identical samples")
	}
	if len(first) != len(sampleNodes()) {
		t.Errorf("captured %d entries, want %d:\n%s", len(first), len(sampleNodes()), first)
	}
	if !slices.IsSortedFunc(first, byPath) {
		t.Errorf("image not sorted:\n%s", first)
	}
}

func TestSampleContents(t *testing.T) {
	img := MustCapture(t, buildSample(t), Options{})
	tests := []struct {
		path, typ string
		mode      fs.FileMode
		target    string
		size      int64
	}{
		{".", "dir", 0o755, "", 0},
		{"a/b/c", "dir", 0o755, "", 0},
		{"empty", "dir", 0o755, "", 0},
		{"private", "dir", 0o750, "", 0},
		{"ro", "dir", 0o555, "", 0},
		{"shared", "dir", fs.ModeSetgid | 0o775, "", 0},
		{"sticky", "dir", fs.ModeSticky | 0o777, "", 0},
		{"a/b/c/deep.txt", "file", 0o644, "", 18},
		{"a/b/notes.txt", "file", 0o600, "", 14},
		{"a/run.sh", "file", 0o755, "", 21},
		{"a/readonly.txt", "file", 0o444, "", 12},
		{"CVSROOT/val-tags", "file", 0o664, "", 0},
		{"with space.txt", "file", 0o644, "", 18},
		{"new\nline.txt", "file", 0o644, "", 20},
		{"mod/d1/f1.c,v", "file", 0o444, "", 199},
		{"links/to-file", "symlink", 0o777, "../a/run.sh", 0},
		{"links/dangling", "symlink", 0o777, "does-not-exist", 0},
		{"links/to-dir", "symlink", 0o777, "../a/b", 0},
		{"links/absolute", "symlink", 0o777, "/nonexistent/treeimage/absolute-target", 0},
		{"fifo", "fifo", 0o644, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			e, ok := find(img, tt.path)
			if !ok {
				t.Fatalf("missing from image:\n%s", img)
			}
			if e.Type != tt.typ || e.Mode != tt.mode || e.Target != tt.target || e.Size != tt.size {
				t.Errorf("got %s %s %q size %d, want %s %s %q size %d",
					e.Type, octal(e.Mode), e.Target, e.Size, tt.typ, octal(tt.mode), tt.target, tt.size)
			}
			if (e.Type == "file") != (e.Hash != "") {
				t.Errorf("type %s has hash %q", e.Type, e.Hash)
			}
			if wantMtime := e.Type != "fifo"; wantMtime != (e.MtimeNs != 0) {
				t.Errorf("type %s has mtime %d", e.Type, e.MtimeNs)
			}
		})
	}
	seen := map[int64]string{}
	for _, e := range img {
		if other, dup := seen[e.MtimeNs]; dup && e.MtimeNs != 0 {
			t.Errorf("%q and %q share mtime %d", other, e.Path, e.MtimeNs)
		}
		seen[e.MtimeNs] = e.Path
	}
	sum := sha256.Sum256([]byte("three levels down\n"))
	if e, _ := find(img, "a/b/c/deep.txt"); e.Hash != hex.EncodeToString(sum[:]) {
		t.Errorf("deep.txt hash = %q, want %x", e.Hash, sum)
	}
}

func TestBuildSampleErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		root string
		want error
	}{
		{"root exists", dir, fs.ErrExist},
		{"parent missing", filepath.Join(dir, "no", "such"), fs.ErrNotExist},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := BuildSample(tt.root)
			if !errors.Is(err, tt.want) {
				t.Fatalf("BuildSample(%s) = %v, want %v", tt.root, err, tt.want)
			}
			if !strings.Contains(err.Error(), tt.root) {
				t.Errorf("error %q does not name %s", err, tt.root)
			}
		})
	}
}

// TestDiffDetectsChanges mutates a fresh sample and checks the differences
// against an untouched capture. Mtimes listed in restore are put back after
// the mutation so that each case reports only its own change.
func TestDiffDetectsChanges(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(t *testing.T, root string)
		restore []string
		want    []string // exact lines, or prefixes ending in a space
	}{
		{
			name: "changed byte",
			mutate: func(t *testing.T, root string) {
				f, err := os.OpenFile(filepath.Join(root, "a/b/c/deep.txt"), os.O_WRONLY, 0)
				must(t, err)
				_, err = f.WriteAt([]byte("T"), 0)
				must(t, err)
				must(t, f.Close())
			},
			restore: []string{"a/b/c/deep.txt"},
			want:    []string{"a/b/c/deep.txt: sha256 "},
		},
		{
			name: "appended byte",
			mutate: func(t *testing.T, root string) {
				f, err := os.OpenFile(filepath.Join(root, "a/run.sh"), os.O_WRONLY|os.O_APPEND, 0)
				must(t, err)
				_, err = f.WriteString("\n")
				must(t, err)
				must(t, f.Close())
			},
			restore: []string{"a/run.sh"},
			want:    []string{"a/run.sh: size 21 != 22", "a/run.sh: sha256 "},
		},
		{
			name:   "changed mode",
			mutate: func(t *testing.T, root string) { must(t, os.Chmod(filepath.Join(root, "a/run.sh"), 0o700)) },
			want:   []string{"a/run.sh: mode 0755 != 0700"},
		},
		{
			name:   "lost setgid",
			mutate: func(t *testing.T, root string) { must(t, os.Chmod(filepath.Join(root, "shared"), 0o775)) },
			want:   []string{"shared: mode 2775 != 0775"},
		},
		{
			name: "changed dir mtime",
			mutate: func(t *testing.T, root string) {
				setMtime(t, root, "a/b", time.Date(2020, 1, 1, 0, 0, 0, 5, time.UTC).UnixNano())
			},
			want: []string{"a/b: mtime 2001-02-03T06:05:06.000002002Z != 2020-01-01T00:00:00.000000005Z"},
		},
		{
			name: "changed symlink target",
			mutate: func(t *testing.T, root string) {
				p := filepath.Join(root, "links/to-dir")
				must(t, os.Remove(p))
				must(t, os.Symlink("../a", p))
			},
			restore: []string{"links/to-dir", "links"},
			want:    []string{`links/to-dir: target "../a/b" != "../a"`},
		},
		{
			name:    "added empty dir",
			mutate:  func(t *testing.T, root string) { must(t, os.Mkdir(filepath.Join(root, "zz-new"), 0o755)) },
			restore: []string{"."},
			want:    []string{"only in second: zz-new"},
		},
		{
			name:    "removed file",
			mutate:  func(t *testing.T, root string) { must(t, os.Remove(filepath.Join(root, "private/secret.txt"))) },
			restore: []string{"private"},
			want:    []string{"only in first: private/secret.txt"},
		},
		{
			name: "fifo replaced by file",
			mutate: func(t *testing.T, root string) {
				p := filepath.Join(root, "fifo")
				must(t, os.Remove(p))
				must(t, os.WriteFile(p, nil, 0o644))
			},
			restore: []string{"."},
			want:    []string{"fifo: type fifo != file"},
		},
		{
			name: "removed subtree",
			mutate: func(t *testing.T, root string) {
				must(t, os.RemoveAll(filepath.Join(root, "mod/d1")))
			},
			restore: []string{"mod"},
			want: []string{
				"only in first: mod/d1", "only in first: mod/d1/CVS",
				"only in first: mod/d1/CVS/fileattr", "only in first: mod/d1/f1.c,v",
			},
		},
		{
			name: "renamed file with newline",
			mutate: func(t *testing.T, root string) {
				must(t, os.Rename(filepath.Join(root, "new\nline.txt"), filepath.Join(root, "new line.txt")))
			},
			restore: []string{"."},
			want:    []string{`only in first: "new\nline.txt"`, "only in second: new line.txt"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := buildSample(t)
			want := MustCapture(t, root, Options{})
			tt.mutate(t, root)
			for _, p := range tt.restore {
				e, ok := find(want, p)
				if !ok {
					t.Fatalf("restore: %q not in image", p)
				}
				setMtime(t, root, p, e.MtimeNs)
			}
			got := MustCapture(t, root, Options{})
			d := want.Diff(got)
			if len(d) != len(tt.want) {
				t.Fatalf("Diff = %q, want %q", d, tt.want)
			}
			for i, line := range d {
				if w := tt.want[i]; line != w && !(strings.HasSuffix(w, " ") && strings.HasPrefix(line, w)) {
					t.Errorf("Diff[%d] = %q, want %q", i, line, w)
				}
			}
			if want.Equal(got) || want.Hash() == got.Hash() {
				t.Error("Equal or Hash did not notice the change")
			}
		})
	}
}

func TestDiffSynthetic(t *testing.T) {
	base := Image{
		{Path: ".", Type: "dir", Mode: 0o755, MtimeNs: 1},
		{Path: "f", Type: "file", Mode: 0o644, UID: 1, GID: 2, Size: 3, Hash: "aa", MtimeNs: 2},
		{Path: "l", Type: "symlink", Mode: 0o777, Target: "f", MtimeNs: 3},
	}
	change := func(i int, f func(*Entry)) Image {
		img := slices.Clone(base)
		f(&img[i])
		return img
	}
	tests := []struct {
		name string
		a, b Image
		want []string
	}{
		{"equal", base, slices.Clone(base), nil},
		{"both empty", nil, Image{}, nil},
		{"order does not matter", base, Image{base[2], base[0], base[1]}, nil},
		{"uid and gid", base, change(1, func(e *Entry) { e.UID, e.GID = 7, 8 }), []string{"f: uid 1 != 7", "f: gid 2 != 8"}},
		{"setuid and sticky", base, change(1, func(e *Entry) { e.Mode |= fs.ModeSetuid | fs.ModeSticky }), []string{"f: mode 0644 != 5644"}},
		{"mtime", base, change(2, func(e *Entry) { e.MtimeNs = 0 }), []string{"l: mtime 1970-01-01T00:00:00.000000003Z != 1970-01-01T00:00:00Z"}},
		{"type hides other fields", base, change(1, func(e *Entry) { e.Type, e.Mode = "dir", 0o700 }), []string{"f: type file != dir"}},
		{"only in first", base, base[:2], []string{"only in first: l"}},
		{"only in second", base[1:], base, []string{"only in second: ."}},
		{"quoted path", nil, Image{{Path: "a\tb", Type: "fifo"}}, []string{`only in second: "a\tb"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.a.Diff(tt.b); !slices.Equal(got, tt.want) {
				t.Errorf("Diff = %q, want %q", got, tt.want)
			}
			if got, want := tt.a.Equal(tt.b), tt.want == nil; got != want {
				t.Errorf("Equal = %v, want %v", got, want)
			}
			if got, want := tt.a.Hash() == tt.b.Hash(), tt.want == nil; got != want {
				t.Errorf("equal hashes = %v, want %v", got, want)
			}
		})
	}
}

func TestHashCoversEveryField(t *testing.T) {
	e := Entry{Path: "p", Type: "file", Mode: 0o644, UID: 1, GID: 2, Size: 3, Hash: "h", Target: "t", MtimeNs: 4}
	mutations := map[string]func(*Entry){
		"path":   func(e *Entry) { e.Path = "q" },
		"type":   func(e *Entry) { e.Type = "dir" },
		"mode":   func(e *Entry) { e.Mode |= fs.ModeSetgid },
		"uid":    func(e *Entry) { e.UID++ },
		"gid":    func(e *Entry) { e.GID++ },
		"size":   func(e *Entry) { e.Size++ },
		"hash":   func(e *Entry) { e.Hash = "i" },
		"target": func(e *Entry) { e.Target = "u" },
		"mtime":  func(e *Entry) { e.MtimeNs++ },
	}
	want := Image{e}.Hash()
	for name, mutate := range mutations {
		t.Run(name, func(t *testing.T) {
			c := e
			mutate(&c)
			if (Image{c}).Hash() == want {
				t.Errorf("hash ignores %s", name)
			}
		})
	}
}

func TestCaptureOptions(t *testing.T) {
	root := buildSample(t)
	full := MustCapture(t, root, Options{})
	tests := []struct {
		name  string
		opts  Options
		check func(t *testing.T, img Image)
	}{
		{
			name: "ignore subtree and file",
			opts: Options{Ignore: func(p string) bool { return p == "mod" || p == "CVSROOT/history" }},
			check: func(t *testing.T, img Image) {
				for _, e := range img {
					if e.Path == "mod" || strings.HasPrefix(e.Path, "mod/") || e.Path == "CVSROOT/history" {
						t.Errorf("ignored entry %q captured", e.Path)
					}
				}
				if len(img) != len(full)-8 {
					t.Errorf("captured %d entries, want %d", len(img), len(full)-8)
				}
			},
		},
		{
			name: "ignore everything keeps root",
			opts: Options{Ignore: func(string) bool { return true }},
			check: func(t *testing.T, img Image) {
				if len(img) != 1 || img[0].Path != "." {
					t.Errorf("got %s, want only the root", img)
				}
			},
		},
		{
			name: "ignore dir mtime",
			opts: Options{IgnoreDirMtime: true},
			check: func(t *testing.T, img Image) {
				for _, e := range img {
					if (e.Type == "dir") != (e.MtimeNs == 0) && e.Type != "fifo" {
						t.Errorf("%s %q: mtime %d", e.Type, e.Path, e.MtimeNs)
					}
				}
			},
		},
		{
			name: "ignore file mtime",
			opts: Options{IgnoreFileMtime: true},
			check: func(t *testing.T, img Image) {
				for _, e := range img {
					if (e.Type == "dir") != (e.MtimeNs != 0) {
						t.Errorf("%s %q: mtime %d", e.Type, e.Path, e.MtimeNs)
					}
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.check(t, MustCapture(t, root, tt.opts))
		})
	}
}

func TestIgnoreSeesSlashPaths(t *testing.T) {
	var seen []string
	MustCapture(t, buildSample(t), Options{Ignore: func(p string) bool {
		seen = append(seen, p)
		return p == "a/b"
	}})
	for _, p := range []string{"a", "a/b", "a/run.sh", "new\nline.txt", "mod/d1/CVS/fileattr"} {
		if !slices.Contains(seen, p) {
			t.Errorf("Ignore not called with %q", p)
		}
	}
	for _, p := range []string{".", "a/b/c", "a/b/notes.txt"} {
		if slices.Contains(seen, p) {
			t.Errorf("Ignore called with %q", p)
		}
	}
}

func TestIgnoreMtimeMakesRetimedTreesEqual(t *testing.T) {
	root := buildSample(t)
	want := MustCapture(t, root, Options{IgnoreDirMtime: true, IgnoreFileMtime: true})
	setMtime(t, root, "a/b", 1)
	setMtime(t, root, "a/run.sh", 2)
	setMtime(t, root, "links/to-dir", 3)
	AssertEqual(t, "before", want, "after", MustCapture(t, root, Options{IgnoreDirMtime: true, IgnoreFileMtime: true}))
}

func TestCaptureRootErrors(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	must(t, os.WriteFile(file, nil, 0o644))
	link := filepath.Join(dir, "link")
	must(t, os.Symlink(dir, link))
	tests := []struct {
		name, root, want string
	}{
		{"symlink", link, "root is a symlink"},
		{"file", file, "root is not a directory"},
		{"missing", filepath.Join(dir, "missing"), "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			img, err := Capture(tt.root, Options{})
			if err == nil || img != nil {
				t.Fatalf("Capture(%s) = %v, %v; want error", tt.root, img, err)
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), tt.root) {
				t.Errorf("error %q should mention %q and %s", err, tt.want, tt.root)
			}
		})
	}
	if _, err := Capture(filepath.Join(dir, "missing"), Options{}); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("missing root: %v does not wrap fs.ErrNotExist", err)
	}
}

func TestCaptureDoesNotFollowSymlinkedDir(t *testing.T) {
	root := buildSample(t)
	img := MustCapture(t, root, Options{})
	for _, e := range img {
		if strings.HasPrefix(e.Path, "links/to-dir/") {
			t.Errorf("followed symlink into %q", e.Path)
		}
	}
}

func TestString(t *testing.T) {
	img := MustCapture(t, buildSample(t), Options{})
	s := img.String()
	if n := strings.Count(s, "\n"); n != len(img) {
		t.Errorf("String has %d lines for %d entries:\n%s", n, len(img), s)
	}
	for _, want := range []string{
		`"new\nline.txt" file 0644 `,
		`links/to-dir symlink 0777 `,
		` -> "../a/b" mtime=`,
		"shared dir 2775 ",
		"fifo fifo 0644 ",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("String lacks %q:\n%s", want, s)
		}
	}
}

// fakeTB records failures instead of failing the real test.
type fakeTB struct {
	testing.TB
	errors, fatals []string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Errorf(format string, args ...any) {
	f.errors = append(f.errors, fmt.Sprintf(format, args...))
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.fatals = append(f.fatals, fmt.Sprintf(format, args...))
}

func TestAssertEqual(t *testing.T) {
	many := Image{}
	for i := range 25 {
		many = append(many, Entry{Path: fmt.Sprintf("f%02d", i), Type: "file"})
	}
	tests := []struct {
		name      string
		want, got Image
		contains  []string
		absent    []string
	}{
		{"equal", many, many, nil, nil},
		{
			"few", Image{{Path: "x", Type: "file", Mode: 0o644}}, Image{{Path: "x", Type: "file", Mode: 0o600}, {Path: "y", Type: "dir"}},
			[]string{"tree copy differs from orig in 2 way(s)", "x: mode 0644 != 0600", "only in copy: y"},
			[]string{"more"},
		},
		{
			"capped", many, nil,
			[]string{"in 25 way(s)", "only in orig: f19", "... and 5 more"},
			[]string{"f20"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &fakeTB{TB: t}
			AssertEqual(f, "orig", tt.want, "copy", tt.got)
			if len(f.fatals) != 0 || len(f.errors) != min(1, len(tt.contains)) {
				t.Fatalf("errors %q, fatals %q", f.errors, f.fatals)
			}
			msg := strings.Join(f.errors, "")
			for _, s := range tt.contains {
				if !strings.Contains(msg, s) {
					t.Errorf("message lacks %q:\n%s", s, msg)
				}
			}
			for _, s := range tt.absent {
				if strings.Contains(msg, s) {
					t.Errorf("message has %q:\n%s", s, msg)
				}
			}
		})
	}
}

func TestMustCaptureFails(t *testing.T) {
	f := &fakeTB{TB: t}
	missing := filepath.Join(t.TempDir(), "missing")
	if img := MustCapture(f, missing, Options{}); img != nil || len(f.fatals) != 1 || !strings.Contains(f.fatals[0], missing) {
		t.Errorf("MustCapture = %v, fatals %q", img, f.fatals)
	}
}
