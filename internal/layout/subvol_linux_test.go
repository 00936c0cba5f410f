package layout

import (
	"errors"
	"strings"
	"testing"
)

// TestJournalMode: a journal's mode and subvolumes are read as written,
// and what recovery could not act on safely is corrupt: an unknown mode, a
// snapshot without its subvolumes or whose roots are not inode 256, a
// subvolume without an id or with a malformed UUID.
func TestJournalMode(t *testing.T) {
	const head = `{"version":1,"id":"3f9c0a1b2c3d4e5f","phase":"running","dir":{"dev":1,"ino":256},"shadow":{"dev":2,"ino":256}`
	const subvols = `"subvols":{"dir":{"id":257,"uuid":"7ae178cb-c084-ab44-ae12-82cc935b286b"},"shadow":{"id":262,"uuid":"0c41a2b3-0000-4000-8000-000000000001"}}`
	for _, tt := range []struct {
		name, tail string
		want       string // "" for a journal read, else part of the error
	}{
		{"hard links", `}`, ""},
		{"hard links on btrfs", `,` + subvols + `}`, ""},
		{"snapshot", `,"mode":"snapshot",` + subvols + `}`, ""},
		{"unknown mode", `,"mode":"reflink",` + subvols + `}`, `unknown mode "reflink"`},
		{"mode hardlink spelled out", `,"mode":"hardlink"}`, `unknown mode "hardlink"`},
		{"snapshot without subvolumes", `,"mode":"snapshot"}`, "without its subvolumes"},
		{"snapshot of the directory's own subvolume", `,"mode":"snapshot","subvols":{"dir":{"id":257,"uuid":"7ae178cb-c084-ab44-ae12-82cc935b286b"},"shadow":{"id":257,"uuid":"7ae178cb-c084-ab44-ae12-82cc935b286b"}}}`, "own subvolume"},
		{"subvolume id 0", `,"subvols":{"dir":{"id":0,"uuid":"7ae178cb-c084-ab44-ae12-82cc935b286b"},"shadow":{"id":262,"uuid":"0c41a2b3-0000-4000-8000-000000000001"}}}`, "bad subvolume"},
		{"malformed UUID", `,"subvols":{"dir":{"id":5,"uuid":"../etc"},"shadow":{"id":262,"uuid":"0c41a2b3-0000-4000-8000-000000000001"}}}`, "bad subvolume"},
		{"unknown field in subvols", `,"subvols":{"dir":{"id":5,"uuid":"7ae178cb-c084-ab44-ae12-82cc935b286b","x":1},"shadow":{"id":262,"uuid":"0c41a2b3-0000-4000-8000-000000000001"}}}`, "unknown field"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			j, err := parseJournal("journal", []byte(head+tt.tail))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("parse: %v", err)
			case tt.want != "" && (err == nil || !errors.Is(err, ErrJournalCorrupt) || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("parse: %v; want a corrupt journal: %s", err, tt.want)
			case tt.want != "":
				return
			}
			snap := strings.Contains(tt.tail, `"snapshot"`)
			if j.IsSnapshot() != snap || (j.ShownMode() == ModeSnapshot) != snap || (j.Subvols != nil) != strings.Contains(tt.tail, "subvols") {
				t.Errorf("read %+v", j)
			}
		})
	}
}

// TestParseMode: the values of --mode.
func TestParseMode(t *testing.T) {
	for in, want := range map[string]Mode{"": ModeAuto, "auto": ModeAuto, "hardlink": ModeHardlink, "snapshot": ModeSnapshot, "copy": ""} {
		got, err := ParseMode(in)
		if got != want || (err != nil) != (want == "") {
			t.Errorf("ParseMode(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}
