package recover

import (
	"fmt"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/btrfs"
	"github.com/treetx/treetx/internal/layout"
)

// Snapshot mode (docs/protocol.md, "Snapshot mode"): a journal in that mode
// is in one of rows 19 to 28, the rows of hard-link mode with the same
// phase and the same names (5..8, 10..15), whose plan leaves out what a
// snapshot has no use for (R1, R3, the manifest); row 18 is row 2 with a
// snapshot under the name Incomplete. Rows 9, 16 and 17 (refusals) are the
// same in both modes.

// snapshotRow is the row of the state, in the mode of the journal j, that
// checkShadow named row in hard-link mode's terms: in snapshot mode, the
// row of the same phase and names.
func snapshotRow(j *layout.Journal, row string) string {
	// rows 19, 20, 21, 22, 23, 24, 25, 26, 27, 28: those of rows 5..8, 10..15
	same := map[string]string{"5": "19", "6": "20", "7": "21", "8": "22", "10": "23", "11": "24", "12": "25", "13": "26", "14": "27", "15": "28"}
	if r, ok := same[row]; ok && j.IsSnapshot() {
		return r
	}
	return row
}

// snapshotFound is what the report says of the shadow of j, in snapshot
// mode ("" otherwise).
func snapshotFound(j *layout.Journal) string {
	if !j.IsSnapshot() {
		return ""
	}
	return fmt.Sprintf("; its shadow is a btrfs snapshot (subvolume %d)", j.Subvols.Shadow.ID)
}

// isSnapshotLeftover tells whether name, in n's parent, is the root of a
// btrfs subvolume: a snapshot shadow no journal claims (row 18).
func isSnapshotLeftover(n layout.Names, name string) bool {
	ok, err := btrfs.IsSubvolumeRootAt(unix.AT_FDCWD, n.Path(name))
	return err == nil && ok
}

// snapshotSteps are the steps that finish the transaction of the journal
// j, in snapshot mode, from the row the crash left (rows 19 to 28);
// shadowAt is the name holding the shadow.
func snapshotSteps(n layout.Names, j *layout.Journal, row, shadowAt string) []Step {
	step := func(id, do, path string) Step { return Step{ID: id, Do: do, Path: path, stage: stageJournal} }
	end := []Step{ // C5..C8
		step("C5", "unlink the journal; fsync the parent", n.Path(n.Journal)),
		step("C6", "unlink a stale manifest or temporary journal", n.Path(n.JournalTmp)),
		step("C7", "delete the trees named for removal (this transaction's is "+n.Removing(j.ID)+", a subvolume: one deletion where this user may, else entry by entry)", n.Path(n.Removing(j.ID))),
		step("C8", "release the lock", n.Path(n.Lock)),
	}
	exchange := step("R4", "exchange the snapshot and "+n.Dir, n.Path(n.Complete))
	syncfs := step("R5", "syncfs: the exchange is durable", n.Parent)
	putAway := step("R6", "rename the failed tree to "+n.Removing(j.ID)+"; fsync the parent", n.Path(n.Complete))
	r7 := step("R7", "end the transaction, as C5..C8", n.Path(n.Journal))
	switch row {
	case "19", "20", "27": // rows 19, 20, 27: the snapshot is there: C4, then C5..C8
		c4 := step("C4", "rename the snapshot to "+n.Removing(j.ID)+" (delete it in place if the rename fails); fsync the parent", n.Path(shadowAt))
		return append([]Step{c4}, end...)
	case "21", "28": // rows 21, 28: C5..C8
		return end
	case "22": // row 22: R2, R4..R7: nothing to check or restore in a snapshot
		return []Step{step("R2", "write the journal with phase rollback", n.Path(n.Journal)), exchange, syncfs, putAway, r7}
	case "23": // row 23: from R4
		return []Step{exchange, syncfs, putAway, r7}
	case "24": // row 24: R5, R6, R7
		return []Step{syncfs, putAway, r7}
	case "25": // row 25: R5, R7
		return []Step{syncfs, r7}
	case "26": // row 26: the snapshot renamed into place, R5, R7
		return []Step{step("R4", "rename the snapshot to "+n.Dir+", which is missing", n.Path(n.Complete)), syncfs, r7}
	}
	return nil
}

// mountID is the id of the mount holding the open file fd (statx
// STATX_MNT_ID, Linux 5.8); 0 where it cannot be had.
func mountID(fd int) uint64 {
	var stx unix.Statx_t
	if unix.Statx(fd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx) != nil || stx.Mask&unix.STATX_MNT_ID == 0 {
		return 0
	}
	return stx.Mnt_id
}
