// Package protocol performs the steps of treetx's protocol on one directory:
// Begin (B1..B8), Commit (C1..C8), Rollback (R1..R7), and Finish, which
// resumes a transaction a crash left, from its journal. Package txn is its
// public face; package recover decides, from what a crash left, whether to
// call Finish; the names, the journal and the shadow's whereabouts are
// internal/layout's.
//
// Where each step of docs/protocol.md is performed (the log's "step" field
// names it too; TestProtocolIDsInCode keeps the two in step):
//
//	B1 lock                     Begin (lock.Acquire)
//	B2 refuse, clear stale      Tx.checkClean
//	B3 mkdir shadow             Begin
//	B4 journal snapshot         Tx.setPhase (layout.WriteJournal)
//	B5 build, manifest          Tx.build (snapshot.Build)
//	B6 syncfs                   Begin
//	B7 rename to complete       Begin
//	B8 journal running          Tx.setPhase
//	C1 syncfs                   Tx.Commit
//	C2 check writes in place    Tx.stopWatch, Tx.changed (snapshot.Changed)
//	C3 journal commit           Tx.setPhase: the commit point
//	C4 shadow to removal name   Tx.discard
//	C5 unlink journal           Tx.finish
//	C6 manifest away            Tx.finish
//	C7 delete removal trees     Tx.removeGarbage (layout.Names.RemoveTree)
//	C8 release the lock         Tx.close
//	R1 list lost content        Tx.Rollback, Tx.changed
//	R2 journal rollback         Tx.setPhase
//	R3 restore metadata         Tx.restore (snapshot.Restore)
//	R4 exchange                 Tx.swap
//	R5 syncfs                   Tx.putBack
//	R6 failed tree away         Tx.putBack
//	R7 as C5..C8                Tx.finish
//
// In snapshot mode (snapshot_linux.go; docs/protocol.md, "Snapshot mode"),
// where the directory is the root of a btrfs subvolume: B2 also chooses the
// mode and refuses nested subvolumes (Tx.chooseMode); B3..B8 are
// Tx.beginSnapshot (B3 a snapshot, B5 nothing); C2, R1 and R3 do nothing
// (Tx.changed, Tx.restore); C7 deletes a subvolume with one call where it
// may (snapshot.RemoveWith).
//
// Recovery's own steps, on what no journal claims (G1..G3), are package
// recover's (apply, with layout.Names.DropTree). The crash-state rows are
// told apart by package recover (classify: rows 1 to 28) and, as it goes,
// by Tx.putBack (rows 10 to 13 and 23 to 26, by where the shadow is);
// Finish carries out rows 5 to 15 and 19 to 28.
//
// Every file-system mutation goes through an fsys.FS, so tests can record,
// fail or stop the protocol at any step.
package protocol
