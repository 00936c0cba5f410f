package snapshot

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestManifestRoundTrip(t *testing.T) {
	recs := []Record{
		{Path: "a/b.c,v", Ino: 12, Mode: 0o444, UID: 0, GID: 100, Size: 4096,
			Atime: unix.Timespec{Sec: 1, Nsec: 2}, Mtime: unix.Timespec{Sec: 1700000000, Nsec: 999999999}},
		{Path: "with space/and\nnewline\\back\x7f\xff", Ino: 1 << 40, Mode: 0o6755, UID: 65534, GID: 65534, Size: 0,
			Xattrs: []Xattr{{Name: "user.a,b=c", Value: []byte{0, 1, 0xff}}, {Name: "user.empty", Value: nil}}},
		{Path: "-", Ino: 3, Mode: 0o600, Mtime: unix.Timespec{Sec: -5, Nsec: 7}},
	}
	var buf bytes.Buffer
	w := NewManifestWriter(&buf)
	for _, r := range recs {
		if err := w.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(buf.String(), "\n"); n != len(recs)+2 {
		t.Errorf("manifest has %d lines, want %d (a name's newline must be escaped):\n%s", n, len(recs)+2, buf.String())
	}
	var got []Record
	if err := ReadManifest(bytes.NewReader(buf.Bytes()), func(r Record) error { got = append(got, r); return nil }); err != nil {
		t.Fatal(err)
	}
	for i := range recs {
		if recs[i].Xattrs != nil && got[i].Xattrs != nil {
			for j := range recs[i].Xattrs {
				if len(recs[i].Xattrs[j].Value) == 0 {
					recs[i].Xattrs[j].Value = got[i].Xattrs[j].Value
				}
			}
		}
	}
	if !reflect.DeepEqual(got, recs) {
		t.Errorf("read back\n%+v\nwant\n%+v", got, recs)
	}
}

func TestManifestRefusesDamage(t *testing.T) {
	var buf bytes.Buffer
	w := NewManifestWriter(&buf)
	w.Add(Record{Path: "x", Ino: 1, Mode: 0o644})
	w.Add(Record{Path: "y", Ino: 2, Mode: 0o644})
	w.Close()
	good := buf.String()
	lines := strings.SplitAfter(good, "\n")
	tests := map[string]string{
		"truncated":         strings.Join(lines[:3], ""),
		"cut mid-line":      good[:len(good)-20],
		"wrong count":       strings.Replace(good, "# end 2", "# end 3", 1),
		"wrong header":      strings.Replace(good, "manifest 1", "manifest 2", 1),
		"bad mode":          strings.Replace(good, " 644 ", " 948 ", 1),
		"bad escape":        strings.Replace(good, " x\n", " \\09\n", 1),
		"after the end":     good + "1 644 0 0 0 0.000000000 0.000000000 - z\n",
		"empty":             "",
		"bad xattr hex":     strings.Replace(good, " - x\n", " user.a=zz x\n", 1),
		"field missing":     strings.Replace(good, " - x\n", " x\n", 1),
		"short time digits": strings.Replace(good, "0.000000000", "0.0", 1),
	}
	for name, text := range tests {
		t.Run(name, func(t *testing.T) {
			err := ReadManifest(strings.NewReader(text), func(Record) error { return nil })
			if !errors.Is(err, ErrManifestCorrupt) {
				t.Errorf("ReadManifest = %v, want ErrManifestCorrupt", err)
			}
		})
	}
}

func TestMatcher(t *testing.T) {
	m, err := NewMatcher(append(DefaultExcludes(), "CVSROOT/history", "**/CVS/fileattr", "*.tmp", `lit\*`, "[xy]z?", "s/*/end", "**/deep/[0-9]")...)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path string
		want bool
	}{
		{"#cvs.lock", true},
		{"mod/d1/#cvs.lock", true},
		{"mod/d1/#cvs.rfl.host.123", true},
		{"mod/#cvs.wfl.h.1", true},
		{"mod/#cvs.pfl.h.1", true},
		{"CVSROOT/#cvs.history.lock", true},
		{"CVSROOT/#cvs.val-tags.lock", true},
		{"mod/d1/,f1.c,", true},
		{"mod/d1/f1.c,v", false},
		{"CVSROOT/history", true},
		{"mod/CVSROOT/history", false},
		{"CVS/fileattr", true},
		{"mod/d1/CVS/fileattr", true},
		{"mod/d1/CVS/fileattr.bak", false},
		{"a/b/x.tmp", true},
		{"a/b/x.tmpl", false},
		{"#cvs.lockx", false},
		{"a/lit*", true},
		{"a/litx", false},
		{"yzz", true},
		{"q/xz1", true},
		{"zz1", false},
		{"s/mid/end", true},
		{"s/mid/end2", false},
		{"t/mid/end", false},
		{"a/deep/7", true},
		{"deep/7", true},
		{"a/deep/x", false},
	}
	for _, tt := range tests {
		if got := m.Match(tt.path); got != tt.want {
			t.Errorf("Match(%q) = %v, want %v", tt.path, got, tt.want)
		}
	}
	if _, err := NewMatcher("[a-"); err == nil {
		t.Error("NewMatcher accepted a bad pattern")
	}
	var none *Matcher
	if none.Match("x") {
		t.Error("nil Matcher matched")
	}
}

// TestRecordsOfFindsEachInodesRecords reads records by inode through the
// index: every record of an inode (hard links within the tree), none for an
// inode the manifest does not have, long lines whole, all in the manifest's
// order; a record that is not where the index says is refused.
func TestRecordsOfFindsEachInodesRecords(t *testing.T) {
	long := strings.Repeat("d/", 600) + "long"
	recs := []Record{
		{Path: "a", Ino: 30, Mode: 0o644},
		{Path: "b", Ino: 10, Mode: 0o600},
		{Path: long, Ino: 20, Mode: 0o644, Size: 7},
		{Path: "a-link", Ino: 30, Mode: 0o644},
		{Path: "c", Ino: 40, Mode: 0o444},
	}
	var buf bytes.Buffer
	w := NewManifestWriter(&buf)
	w.KeepIndex()
	for _, r := range recs {
		if err := w.Add(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	idx := w.Index()
	var paths []string
	err := RecordsOf(bytes.NewReader(buf.Bytes()), idx, []uint64{5, 20, 30, 40, 99})(func(r Record) error {
		paths = append(paths, r.Path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", long, "a-link", "c"}; !reflect.DeepEqual(paths, want) {
		t.Errorf("records of 5, 20, 30, 40, 99: %q, want %q", paths, want)
	}
	// The same index on a manifest whose records moved.
	moved := strings.Replace(buf.String(), "\n", "\n\n", 2)
	err = RecordsOf(strings.NewReader(moved), idx, []uint64{10})(func(Record) error { return nil })
	if !errors.Is(err, ErrManifestCorrupt) {
		t.Errorf("record not where the index says: %v, want ErrManifestCorrupt", err)
	}
	if new := NewManifestWriter(&buf); new.Index() != nil {
		t.Error("an index without KeepIndex")
	}
}

// TestIndexAcrossChunks indexes more records than one chunk holds, with
// inodes descending and one inode's records in several chunks.
func TestIndexAcrossChunks(t *testing.T) {
	var buf bytes.Buffer
	w := NewManifestWriter(&buf)
	w.KeepIndex()
	const n = 2*indexChunkLen + 100
	for i := range n {
		ino := uint64(n - i)
		if i%indexChunkLen == 7 {
			ino = 1 // in each chunk
		}
		if err := w.Add(Record{Path: fmt.Sprint("f", i), Ino: ino}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var got []string
	err := RecordsOf(bytes.NewReader(buf.Bytes()), w.Index(), []uint64{1, 5, n - 3})(func(r Record) error {
		got = append(got, r.Path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"f3", "f7", fmt.Sprint("f", indexChunkLen+7), fmt.Sprint("f", 2*indexChunkLen+7), fmt.Sprint("f", n-5), fmt.Sprint("f", n-1)}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("records of 1, 5 and %d: %q, want %q", n-3, got, want)
	}
}
