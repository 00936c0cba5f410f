package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/treetx/treetx/internal/layout"
	txrecover "github.com/treetx/treetx/recover"
)

type gcOptions struct {
	olderThan durationFlag
	dryRun    bool
	json      bool
}

func newGCCommand() *cobra.Command {
	o := &gcOptions{olderThan: durationFlag(txrecover.DefaultFailedAge)}
	c := &cobra.Command{
		Use:                   "gc [--older-than DURATION] [--dry-run] [--json] ROOT...",
		DisableFlagsInUseLine: true,
		Short:                 "Remove what finished or abandoned transactions left under each ROOT",
		Long: `Remove what finished or abandoned transactions left under each ROOT; for cron.

gc walks each ROOT as recover --scan does (no symlinks followed, no mount
points crossed, treetx's own trees not entered) and, for every directory with
leftovers beside it, takes its lock without waiting (a live transaction is
never touched) and removes: trees being removed (.removing.*), abandoned
shadows without a journal (.incomplete), stale temporaries (.meta,
.journal.tmp), and the failed trees kept for inspection (.failed.*) older than
--older-than (default 720h, 30 days; the age is the time since the failed
tree's root last changed status, which is when the rollback renamed it). A
transaction that a crash interrupted is recovered exactly as treetx recover
does (rolled back, or its commit finished), never just deleted. A tree is
renamed to its removal name, durably, before it is deleted.

Silent when there is nothing to do; otherwise one line:
  gc: N directories: removed X trees, recovered Y; Z busy
(--json: one object per directory acted on instead, see docs/protocol.md).

Exit status: 0 done; 75 some directory is busy; 125 some directory needs a
person, or gc failed (125 wins over 75); 64 bad command line.`,
		Example:           "  treetx gc /srv/cvs\n  treetx gc --older-than 168h --dry-run /srv/cvs /srv/www",
		Args:              usageArgs(cobra.MinimumNArgs(1)),
		ValidArgsFunction: completeDirs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGC(args, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := c.Flags()
	f.Var(&o.olderThan, "older-than", "remove failed trees kept for inspection once they are older than this (0s: all)")
	f.BoolVar(&o.dryRun, "dry-run", false, "say what would be done, change nothing")
	f.BoolVar(&o.json, "json", false, "print one JSON object per directory acted on (see docs/protocol.md)")
	return c
}

func runGC(roots []string, o *gcOptions, stdout, stderr io.Writer) error {
	var codes exitCodes
	var sum gcSummary
	progress := newProgressLine(stderr, false)
	for _, dir := range scanRoots(roots, &codes, "gc", stderr) {
		r, err := txrecover.GC(dir, txrecover.GCOptions{
			Options:         txrecover.Options{DryRun: o.dryRun, NoFollow: true, Progress: progress.report()},
			FailedOlderThan: time.Duration(o.olderThan),
		})
		progress.clear()
		if sum.add(r, o.dryRun) && o.json {
			printReport(stdout, r, true, o.dryRun)
		}
		if err != nil {
			if !errors.Is(err, txrecover.ErrBusy) {
				fmt.Fprintf(stderr, "treetx: gc: %v\n", err)
			}
			codes.add(exitCode(err))
		}
	}
	if !o.json && sum.dirs > 0 {
		fmt.Fprintln(stdout, sum.line(o.dryRun))
	}
	return codes.err()
}

// gcSummary counts what gc did.
type gcSummary struct {
	dirs, trees, files, recovered, busy, person int
}

// add counts r and reports whether gc acted on (or would act on, or could
// not act on) its directory.
func (s *gcSummary) add(r *txrecover.Report, dryRun bool) bool {
	acted := true
	switch {
	case r.State == txrecover.StateInProgress:
		s.busy++
	case r.State == txrecover.StateNeedsPerson || r.State == txrecover.StateError || r.Error != "":
		s.person++
	default:
		acted = false
	}
	if n, err := layout.NamesFor(r.Dir); err == nil {
		for _, p := range r.Removed {
			switch n.Classify(filepath.Base(p)) {
			case layout.KindMeta, layout.KindJournalTmp:
				s.files++
			default:
				s.trees++
			}
			acted = true
		}
	}
	if r.Journal != nil && r.State == txrecover.StateNeedsRecovery && (r.Done || dryRun) {
		s.recovered++
		acted = true
	}
	if acted {
		s.dirs++
	}
	return acted
}

func (s *gcSummary) line(dryRun bool) string {
	remove, recov, prefix := "removed", "recovered", "gc"
	if dryRun {
		remove, recov, prefix = "would remove", "would recover", "gc (dry run)"
	}
	line := fmt.Sprintf("%s: %d directories: %s %d trees", prefix, s.dirs, remove, s.trees)
	if s.files > 0 {
		line += fmt.Sprintf(" and %d files", s.files)
	}
	line += fmt.Sprintf(", %s %d; %d busy", recov, s.recovered, s.busy)
	if s.person > 0 {
		line += fmt.Sprintf("; %d need a person", s.person)
	}
	return line
}
