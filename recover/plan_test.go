package recover_test

import (
	"slices"
	"strings"
	"testing"

	txrecover "github.com/treetx/treetx/recover"
)

// planOf lists, for each row of docs/protocol.md's crash-state table that a
// crash of a transaction can leave, the steps recovery's plan takes; nil
// for the rows of what no journal claims, whose steps are G1..G3, one for
// each leftover.
var planOf = map[string][]string{
	"1": {}, "2": nil, "3": nil, "3a": nil,
	"5": {"C4", "C5", "C6", "C7", "C8"}, "6": {"C4", "C5", "C6", "C7", "C8"}, "7": {"C5", "C6", "C7", "C8"},
	"8":  {"R1", "R2", "R3", "R4", "R5", "R6", "R7"},
	"10": {"R3", "R4", "R5", "R6", "R7"}, "11": {"R3", "R5", "R6", "R7"}, "12": {"R3", "R5", "R7"}, "13": {"R3", "R4", "R5", "R7"},
	"14": {"C4", "C5", "C6", "C7", "C8"}, "15": {"C5", "C6", "C7", "C8"},
}

// TestPlanOfEachCrashState: on each distinct state a crash of a commit or a
// rollback leaves, Inspect and a dry run name the same row of the table and
// the steps of that row, in order; Recover then takes them (its report
// says done) and the directory is left consistent.
func TestPlanOfEachCrashState(t *testing.T) {
	seen := map[string]bool{}
	for _, path := range []string{"commit", "rollback"} {
		pl := dryRun(t, path)
		old, new := images(t, path)
		for _, cp := range uniqueStates(t, path, pl) {
			dir := newSample(t, path)
			if !runVictim(t, "txn", dir, path, cp.op.Step) {
				t.Fatalf("%s: the victim finished before step %d", path, cp.op.Step)
			}
			ins, err := txrecover.Inspect(dir)
			if err != nil {
				t.Fatalf("%s, crash after %s: inspect: %v", path, cp.op, err)
			}
			dry, err := txrecover.Recover(dir, txrecover.Options{DryRun: true})
			if err != nil {
				t.Fatalf("%s, crash after %s: dry run: %v", path, cp.op, err)
			}
			want, ok := planOf[ins.Row]
			got := ids(ins.Plan)
			switch {
			case !ok:
				t.Errorf("%s, crash after %s (%s): row %q, not one a crash leaves", path, cp.op, cp.state, ins.Row)
			case want == nil && (len(got) == 0 || strings.Trim(strings.Join(got, ""), "G123") != ""):
				t.Errorf("%s, crash after %s (%s): row %s, plan %v; want G1..G3 steps", path, cp.op, cp.state, ins.Row, got)
			case want != nil && !slices.Equal(got, want):
				t.Errorf("%s, crash after %s (%s): row %s, plan %v; want %v", path, cp.op, cp.state, ins.Row, got, want)
			}
			if dry.Row != ins.Row || !slices.Equal(ids(dry.Plan), got) {
				t.Errorf("%s, crash after %s: the dry run says row %s, plan %v; status row %s, plan %v", path, cp.op, dry.Row, ids(dry.Plan), ins.Row, got)
			}
			seen[ins.Row] = true
			r, err := txrecover.Recover(dir, txrecover.Options{})
			if err != nil && !strings.Contains(err.Error(), "is lost") {
				t.Fatalf("%s, crash after %s: recover: %v", path, cp.op, err)
			}
			if len(r.Plan) > 0 && !r.Done {
				t.Errorf("%s, crash after %s: recover took plan %v but did not say done", path, cp.op, ids(r.Plan))
			}
			w, opts := pl.want(path, cp.op.Step, old, new)
			if msg := checkInvariant(t, dir, w, opts); msg != "" {
				t.Errorf("%s, crash after %s: %s", path, cp.op, msg)
			}
		}
	}
	for _, row := range []string{"5", "6", "8", "10", "11", "12", "14", "15"} {
		if !seen[row] {
			t.Errorf("no crash left row %s (rows seen: %v)", row, seen)
		}
	}
}

func ids(steps []txrecover.Step) []string {
	out := []string{}
	for _, s := range steps {
		out = append(out, s.ID)
	}
	return out
}
