package layout

import (
	"testing"

	"github.com/treetx/treetx/internal/safeopen"
)

// FuzzParseJournal feeds arbitrary bytes to the journal parser: it must
// never panic, and whatever it accepts must be a journal recovery may act
// on: a known version and phase, a well-formed id, a shadow inode, and lost
// paths that stay beneath the directory. Its seed corpus is in
// testdata/fuzz/FuzzParseJournal (plain go test runs it).
func FuzzParseJournal(f *testing.F) {
	f.Add([]byte(`{"version":1,"id":"3f9c0a1b2c3d4e5f","pid":1,"host":"h","user":"u","command":["true"],"start":"2026-11-22T01:02:03.456Z","phase":"running","dir":{"dev":1,"ino":2},"shadow":{"dev":1,"ino":3}}`))
	f.Add([]byte(`{"version":1,"id":"3f9c0a1b2c3d4e5f","phase":"rollback","shadow":{"dev":1,"ino":3},"lost":["a/b","../etc/passwd"]}`))
	f.Add([]byte(`{"version":1,"id":"3f9c0a1b2c3d4e5f","phase":"rollback","dir":{"dev":1,"ino":256},"shadow":{"dev":2,"ino":256},"mode":"snapshot","subvols":{"dir":{"id":257,"uuid":"7ae178cb-c084-ab44-ae12-82cc935b286b"},"shadow":{"id":262,"uuid":"0c41a2b3-0000-4000-8000-000000000001"}}}`))
	f.Add([]byte(`{"version":2}`))
	f.Add([]byte(`{"version":1,"Owner":0}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		j, err := parseJournal("journal", data)
		if err != nil {
			return
		}
		if j.Version != 1 && j.Version != 2 || !IsID(j.ID) || j.Shadow.Ino == 0 {
			t.Fatalf("accepted %+v", j)
		}
		switch j.Phase {
		case PhaseSnapshot, PhaseRunning, PhaseCommit, PhaseRollback:
		default:
			t.Fatalf("accepted phase %q", j.Phase)
		}
		for _, l := range j.Lost {
			if err := safeopen.CheckRel(l, false); err != nil {
				t.Fatalf("accepted lost path %q: %v", l, err)
			}
		}
		if j.Owner != 0 {
			t.Fatalf("the journal's text set its owner: %d", j.Owner)
		}
	})
}
