package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// A Group is the tests that need the same things of the machine.
type Group struct {
	Name  string   // as in "skipping CVS tests"
	Tools []string // commands that must be in PATH
	Root  bool     // needs euid 0
}

// The groups of this module's tests.
var (
	Root           = Group{Name: "root-only", Root: true}
	CVS            = Group{Name: "CVS", Tools: []string{"cvs"}}
	RCS            = Group{Name: "RCS", Tools: []string{"ci", "co", "rcs", "rlog"}}
	Ext4           = Group{Name: "ext4 image", Tools: []string{"mkfs.ext4", "mount", "umount"}, Root: true}
	XFS            = Group{Name: "XFS", Tools: []string{"mkfs.xfs", "mount", "umount"}, Root: true}
	Btrfs          = Group{Name: "btrfs", Tools: []string{"mkfs.btrfs", "btrfs", "mount", "umount"}, Root: true}
	Mount          = Group{Name: "mount", Tools: []string{"mount", "umount"}, Root: true}
	Shellcheck     = Group{Name: "shellcheck", Tools: []string{"shellcheck"}}
	Systemd        = Group{Name: "systemd unit", Tools: []string{"systemd-analyze", "systemd-escape"}}
	RecoveryScript = Group{Name: "recovery script", Tools: []string{"sh", "flock", "awk", "sed", "grep", "mv", "rm", "stat", "sync", "touch", "chmod", "chown", "realpath", "od", "tr", "wc", "id", "date", "uname", "setpriv", "dd"}}
)

// Missing says why g's tests cannot run here ("cvs not found"), or "".
func (g Group) Missing() string {
	var why []string
	if g.Root && os.Geteuid() != 0 {
		why = append(why, fmt.Sprintf("not root (euid %d)", os.Geteuid()))
	}
	var tools []string
	for _, tool := range g.Tools {
		if _, err := exec.LookPath(tool); err != nil {
			tools = append(tools, tool)
		}
	}
	switch len(tools) {
	case 0:
	case 1:
		why = append(why, tools[0]+" not found")
	default:
		why = append(why, strings.Join(tools, ", ")+" not found")
	}
	return strings.Join(why, "; ")
}

// Require skips t when g's tests cannot run here, or fails it under
// CI=true, where everything must be installed.
func Require(t testing.TB, g Group) {
	t.Helper()
	if why := g.Missing(); why != "" {
		Unavailable(t, "%s tests: %s", g.Name, why)
	}
}

// Tool is Require for a group of one tool; it returns the tool's path.
func Tool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Unavailable(t, "%s not found: %v", name, err)
	}
	return p
}

// Unavailable skips t because the machine lacks what it needs (a tool, a
// file system the kernel mounts, ...), or fails it under CI=true.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	if CI() {
		t.Fatalf("CI=true: "+format, args...)
	}
	t.Skipf(format, args...)
}

// Announce prints one line for each of groups whose tests will be skipped
// (or fail, under CI=true), as "treetx tests: skipping CVS tests: cvs not
// found", where the person running go test sees it (see visible). Call it
// from TestMain, before m.Run, in the process go test started (not in a
// child the tests start from the same binary).
func Announce(groups ...Group) {
	var lines []string
	for _, g := range groups {
		why := g.Missing()
		switch {
		case why == "":
		case CI():
			lines = append(lines, fmt.Sprintf("treetx tests: CI=true: the %s tests fail: %s\n", g.Name, why))
		default:
			lines = append(lines, fmt.Sprintf("treetx tests: skipping %s tests: %s\n", g.Name, why))
		}
	}
	if len(lines) == 0 {
		return
	}
	w, done := visible()
	defer done()
	for _, l := range lines {
		w.Write([]byte(l))
	}
}
