package treeimage

import (
	"fmt"
	"strings"
	"testing"
)

// maxReported bounds the differences AssertEqual prints.
const maxReported = 20

// AssertEqual marks t as failed (with t.Errorf, so the test goes on) when
// got differs from want, listing at most 20 differences. Values are shown
// as want's != got's, and entries present on one side only are reported as
// "only in <label>: path".
func AssertEqual(t testing.TB, wantLabel string, want Image, gotLabel string, got Image) {
	t.Helper()
	d := diff(want, got, wantLabel, gotLabel)
	if len(d) == 0 {
		return
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "tree %s differs from %s in %d way(s) (shown as %s != %s):",
		gotLabel, wantLabel, len(d), wantLabel, gotLabel)
	for i, line := range d {
		if i == maxReported {
			fmt.Fprintf(&sb, "\n\t... and %d more", len(d)-maxReported)
			break
		}
		sb.WriteString("\n\t" + line)
	}
	t.Errorf("%s", sb.String())
}

// MustCapture captures root like Capture and stops the test with t.Fatalf
// on error.
func MustCapture(t testing.TB, root string, opts Options) Image {
	t.Helper()
	img, err := Capture(root, opts)
	if err != nil {
		t.Fatalf("%v", err)
	}
	return img
}
