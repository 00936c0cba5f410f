package layout

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestParseName: a name splits into the base of the directory it belongs
// to, its kind and its id, and Classify agrees with it; what treetx does
// not make is KindOther.
func TestParseName(t *testing.T) {
	id := "0123456789abcdef"
	tests := []struct {
		name, base string
		kind       Kind
		id         string
	}{
		{".#treetx.repo.lock", "repo", KindLock, ""},
		{".#treetx.repo.gate", "repo", KindGate, ""},
		{".#treetx.repo.journal", "repo", KindJournal, ""},
		{".#treetx.repo.journal.tmp", "repo", KindJournalTmp, ""},
		{".#treetx.repo.meta", "repo", KindMeta, ""},
		{".#treetx.repo.incomplete", "repo", KindIncomplete, ""},
		{".#treetx.repo.complete", "repo", KindComplete, ""},
		{".#treetx.repo.removing." + id, "repo", KindRemoving, id},
		{".#treetx.repo.failed." + id, "repo", KindFailed, id},
		{".#treetx.a.b.journal", "a.b", KindJournal, ""},
		{".#treetx.x.journal.journal", "x.journal", KindJournal, ""},
		{".#treetx.x.failed." + id + ".removing.fedcba9876543210", "x.failed." + id, KindRemoving, "fedcba9876543210"},
		{".#treetx.repo.removing.0123", "", KindOther, ""},
		{".#treetx.repo.removing.0123456789ABCDEF", "", KindOther, ""},
		{".#treetx.repo.other", "", KindOther, ""},
		{".#treetx..journal", "", KindOther, ""},
		{".#treetx." + strings.Repeat("n", MaxBaseLen+1) + ".lock", "", KindOther, ""},
		{"repo.journal", "", KindOther, ""},
	}
	for _, tt := range tests {
		base, kind, gotID := ParseName(tt.name)
		if base != tt.base || kind != tt.kind || gotID != tt.id {
			t.Errorf("ParseName(%q) = %q, %v, %q; want %q, %v, %q", tt.name, base, kind, gotID, tt.base, tt.kind, tt.id)
		}
		if tt.kind == KindOther {
			continue
		}
		n, err := NamesFor("/p/" + tt.base)
		if err != nil {
			t.Fatal(err)
		}
		if k := n.Classify(tt.name); k != tt.kind {
			t.Errorf("NamesFor(%q).Classify(%q) = %v, want %v", tt.base, tt.name, k, tt.kind)
		}
		if k := n.Classify(tt.name + "x"); k != KindOther {
			t.Errorf("Classify(%q) = %v, want KindOther", tt.name+"x", k)
		}
	}
	n, _ := NamesFor("/p/repo")
	for _, name := range []string{n.Lock, n.Gate, n.Journal, n.JournalTmp, n.Meta, n.Incomplete, n.Complete, n.Removing(id), n.Failed(id)} {
		if base, kind, _ := ParseName(name); base != "repo" || kind == KindOther {
			t.Errorf("ParseName(%q) of a name NamesFor made = %q, %v", name, base, kind)
		}
	}
}

// TestResolve: each use accepts a missing directory only where it says,
// refuses / and what is not a directory, and NoFollow refuses a symlink.
func TestResolve(t *testing.T) {
	p, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir, missing, file, link := filepath.Join(p, "repo"), filepath.Join(p, "gone"), filepath.Join(p, "file"), filepath.Join(p, "link")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("repo", link); err != nil {
		t.Fatal(err)
	}
	resolve := func(arg string, o ResolveOptions) string {
		n, err := Resolve(arg, o)
		if err != nil {
			return "error: " + err.Error()
		}
		return n.Dir
	}
	tx, lk, rec := ResolveOptions{Use: ForTransaction}, ResolveOptions{Use: ForLock}, ResolveOptions{Use: ForRecovery}
	for _, tt := range []struct {
		arg  string
		o    ResolveOptions
		want string // the directory, or a part of the error (one with a colon, or not a path)
	}{
		{dir, tx, dir}, {link, tx, dir}, {link, lk, dir}, {link, rec, dir},
		{"", tx, "no directory given"}, {"", lk, "no directory given"},
		{missing, tx, missing + ": no such directory"},
		{missing, lk, missing + ": no such directory"},
		{missing, rec, missing},
		{filepath.Join(missing, "x"), rec, "nor a parent holding treetx's names"},
		{file, tx, file + ": not a directory"}, {file, lk, file + ": not a directory"},
		{"/", tx, "to keep a shadow in"}, {"/", lk, "to keep a lock in"}, {"/", rec, "treetx keeps nothing for it"},
		{link, ResolveOptions{Use: ForRecovery, NoFollow: true}, "it is a symlink"},
		{dir, ResolveOptions{Use: ForRecovery, NoFollow: true}, dir},
	} {
		got := resolve(tt.arg, tt.o)
		wantErr := strings.Contains(tt.want, ":") || !strings.HasPrefix(tt.want, "/")
		if wantErr && (!strings.HasPrefix(got, "error: ") || !strings.Contains(got, tt.want)) || !wantErr && got != tt.want {
			t.Errorf("Resolve(%q, %+v) = %s; want %s", tt.arg, tt.o, got, tt.want)
		}
	}
	if _, err := Resolve(link, ResolveOptions{Use: ForRecovery, NoFollow: true}); !errors.Is(err, ErrNeedsPerson) {
		t.Errorf("NoFollow on a symlink: %v, want ErrNeedsPerson", err)
	}
	// A missing directory whose journal stands beside it: treetx lock
	// reports it needs recovery.
	n, _ := NamesFor(missing)
	if err := os.WriteFile(n.Path(n.Journal), []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := resolve(missing, lk); got != missing {
		t.Errorf("Resolve(%q, ForLock) beside its journal = %s", missing, got)
	}
}
