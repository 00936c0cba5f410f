package snapshot

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/treetx/treetx/internal/safeopen"
)

// FuzzReadManifest feeds arbitrary bytes to the manifest reader: it must
// never panic, and every record it yields must be one treetx could have
// written: a path that stays beneath the tree by its form, a mode within
// 07777, real owners, a non-negative size, valid times; written again,
// it reads back the same. Its seed corpus is in
// testdata/fuzz/FuzzReadManifest (plain go test runs it).
func FuzzReadManifest(f *testing.F) {
	f.Add([]byte("# treetx manifest 1\n12 644 0 0 5 1.000000000 2.000000000 - a/b\n# end 1\n"))
	f.Add([]byte("# treetx manifest 1\n12 4777 65534 65534 0 1.000000000 2.000000000 - ../../secret/shadow\n# end 1\n"))
	f.Add([]byte("# treetx manifest 1\n12 37777777777 0 0 0 1.000000000 2.000000000 - f\n# end 1\n"))
	f.Add([]byte("# treetx manifest 1\n12 644 0 0 0 1.000000000 2.000000000 user.a=00,security.capability=0100 d/\\0040x\n# end 1\n"))
	f.Add([]byte("# treetx manifest 1\n12 644 0 0 0 1.000000000 2.000000000 - /etc/passwd\n# end 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var recs []Record
		err := ReadManifest(bytes.NewReader(data), func(r Record) error {
			if err := safeopen.CheckRel(r.Path, false); err != nil {
				t.Fatalf("yielded path %q: %v", r.Path, err)
			}
			if r.Mode > 0o7777 || r.UID == ^uint32(0) || r.GID == ^uint32(0) || r.Size < 0 ||
				r.Atime.Nsec < 0 || r.Atime.Nsec >= 1e9 || r.Mtime.Nsec < 0 || r.Mtime.Nsec >= 1e9 {
				t.Fatalf("yielded %+v", r)
			}
			recs = append(recs, r)
			return nil
		})
		if err != nil {
			return
		}
		var out bytes.Buffer
		w := NewManifestWriter(&out)
		for _, r := range recs {
			if err := w.Add(r); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		var again []Record
		if err := ReadManifest(&out, func(r Record) error { again = append(again, r); return nil }); err != nil {
			t.Fatalf("rewritten manifest unreadable: %v", err)
		}
		if !reflect.DeepEqual(normalize(recs), normalize(again)) {
			t.Fatalf("round trip changed the records:\n%+v\n%+v", recs, again)
		}
	})
}

// normalize makes an empty attribute list and a nil one equal.
func normalize(rs []Record) []Record {
	out := make([]Record, len(rs))
	for i, r := range rs {
		if len(r.Xattrs) == 0 {
			r.Xattrs = nil
		}
		for j := range r.Xattrs {
			if len(r.Xattrs[j].Value) == 0 {
				r.Xattrs[j].Value = []byte{}
			}
		}
		out[i] = r
	}
	return out
}
