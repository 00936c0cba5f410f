package protocol

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// TestProtocolIDsInCode: every step (B1..B8, C1..C8, R1..R7, G1..G3) and
// every crash-state row (1..17, 3a) that docs/protocol.md names is named in
// the code that performs it (a step here or in recover, a row here, in
// layout or in recover), and the code names none the document does not
// have.
func TestProtocolIDsInCode(t *testing.T) {
	doc := readDoc(t)
	docSteps := matches(regexp.MustCompile(`(?m)^\| ([BCRG][0-9]) \|`), doc)
	docRows := matches(regexp.MustCompile(`(?m)^\| ([0-9]+a?) \|`), doc)
	if len(docSteps) < 20 || len(docRows) < 16 {
		t.Fatalf("docs/protocol.md: found steps %v and rows %v: is the table still there?", docSteps, docRows)
	}
	var code strings.Builder
	for _, dir := range []string{".", filepath.Join("..", "layout"), filepath.Join("..", "..", "recover")} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			code.Write(data)
		}
	}
	// A step is named as a string ("B3") or in a comment (// B3: ...,
	// C5..C8); a row in a comment (// row 8, // rows 10, 11).
	codeSteps := matches(regexp.MustCompile(`["\s(]([BCRG][0-9])\b`), code.String())
	for _, r := range regexp.MustCompile(`([BCRG])([0-9])\.\.[BCRG]([0-9])`).FindAllStringSubmatch(code.String(), -1) {
		for i := r[2][0]; i <= r[3][0]; i++ {
			codeSteps = append(codeSteps, r[1]+string(i))
		}
	}
	var codeRows []string
	for _, m := range regexp.MustCompile(`(?i)// rows? ([^:(\n]*)`).FindAllStringSubmatch(code.String(), -1) {
		codeRows = append(codeRows, regexp.MustCompile(`\b[0-9]+a?\b`).FindAllString(m[1], -1)...)
	}
	compare(t, "step", docSteps, codeSteps)
	compare(t, "crash-state row", docRows, codeRows)
}

// TestScriptStepsNamed: scripts/treetx-recover.sh names, in a "# step ID"
// header, every step of docs/protocol.md that recovery takes (C3 in row 29,
// C4..C8, R1..R7, G1..G3) in the function that takes it, and no other.
func TestScriptStepsNamed(t *testing.T) {
	doc := readDoc(t)
	var want []string
	for _, id := range matches(regexp.MustCompile(`(?m)^\| ([CRG][0-9]) \|`), doc) {
		if id[0] != 'C' || id >= "C3" {
			want = append(want, id)
		}
	}
	script, err := os.ReadFile(filepath.Join("..", "..", "scripts", "treetx-recover.sh"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range regexp.MustCompile(`(?m)^# steps? ([^:\n]*)`).FindAllStringSubmatch(string(script), -1) {
		got = append(got, regexp.MustCompile(`\b[BCRG][0-9]\b`).FindAllString(m[1], -1)...)
	}
	for _, m := range regexp.MustCompile(`(?m)^# steps? .*\n(?:#.*\n)*([A-Za-z_0-9]+)\(\)`).FindAllStringSubmatch(string(script), -1) {
		if !strings.HasPrefix(m[1], "step_") {
			t.Errorf("scripts/treetx-recover.sh: %s has a step header, but its name does not start with step_", m[1])
		}
	}
	compare(t, "recovery step (scripts/treetx-recover.sh)", want, got)
}

func readDoc(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "protocol.md"))
	if err != nil {
		t.Fatal(err)
	}
	return string(doc)
}

func matches(re *regexp.Regexp, s string) []string {
	var out []string
	for _, m := range re.FindAllStringSubmatch(s, -1) {
		out = append(out, m[1])
	}
	return out
}

func compare(t *testing.T, what string, doc, code []string) {
	t.Helper()
	slices.Sort(doc)
	doc = slices.Compact(doc)
	slices.Sort(code)
	code = slices.Compact(code)
	for _, id := range doc {
		if !slices.Contains(code, id) {
			t.Errorf("docs/protocol.md names %s %s, which the code does not name", what, id)
		}
	}
	for _, id := range code {
		if !slices.Contains(doc, id) {
			t.Errorf("the code names %s %s, which docs/protocol.md does not have", what, id)
		}
	}
}
