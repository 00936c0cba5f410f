package command

import "testing"

func TestShow(t *testing.T) {
	got := Show([]string{"cvs", "-d", "/srv/cvs", "commit", "-m", "two\nlines", "", "a b", "\x1b[2J"})
	want := `cvs -d /srv/cvs commit -m "two\nlines" "" "a b" "\x1b[2J"`
	if got != want {
		t.Errorf("Show = %s, want %s", got, want)
	}
}
