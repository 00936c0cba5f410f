package txn

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
)

// Prefix starts every name treetx makes beside a directory. For a directory
// NAME, the names ".#treetx.NAME.*" in its parent are reserved for treetx.
const Prefix = ".#treetx."

const (
	idLen        = 16 // hex digits of a transaction id
	nameMax      = 255
	longestAfter = len(".removing.") + idLen
)

// MaxBaseLen is the longest directory base name treetx can handle: longer
// ones would make shadow names exceed NAME_MAX.
const MaxBaseLen = nameMax - len(Prefix) - longestAfter

// Names are the paths of everything treetx keeps beside a directory. All but
// Dir live in Parent; every rename of the protocol stays inside Parent.
type Names struct {
	Dir    string // the directory, absolute and resolved
	Parent string // its parent directory
	Base   string // its base name

	Lock       string // lock file, never deleted
	Gate       string // the lock's queue for writers (lock.Options.Gate), never deleted
	Journal    string // the transaction's journal
	JournalTmp string // a journal being replaced
	Meta       string // the manifest of hard-linked files
	Incomplete string // a shadow being built
	Complete   string // a whole, durable shadow (after a rollback's exchange, the failed tree)
}

// NamesFor returns the names for the absolute, clean directory path dir.
func NamesFor(dir string) (Names, error) {
	base := filepath.Base(dir)
	if len(base) > MaxBaseLen {
		return Names{}, fmt.Errorf("%s: name is %d bytes long; treetx's names beside it would exceed the %d-byte limit of a file name (at most %d bytes)", dir, len(base), nameMax, MaxBaseLen)
	}
	p := Prefix + base + "."
	return Names{
		Dir: dir, Parent: filepath.Dir(dir), Base: base,
		Lock: p + "lock", Gate: p + "gate", Journal: p + "journal", JournalTmp: p + "journal.tmp",
		Meta: p + "meta", Incomplete: p + "incomplete", Complete: p + "complete",
	}, nil
}

// Removing is the name of a tree that is garbage and being deleted.
func (n Names) Removing(id string) string { return Prefix + n.Base + ".removing." + id }

// Failed is the name of a failed tree kept for inspection after a rollback
// that found content lost.
func (n Names) Failed(id string) string { return Prefix + n.Base + ".failed." + id }

// Path joins a name of n to its parent.
func (n Names) Path(name string) string { return filepath.Join(n.Parent, name) }

// Kind classifies a name in the parent directory.
type Kind int

// The kinds of names beside a directory.
const (
	KindOther Kind = iota
	KindLock
	KindGate
	KindJournal
	KindJournalTmp
	KindMeta
	KindIncomplete
	KindComplete
	KindRemoving
	KindFailed
)

// Classify says which of n's names name is (KindOther if none).
func (n Names) Classify(name string) Kind {
	rest, ok := strings.CutPrefix(name, Prefix+n.Base+".")
	if !ok {
		return KindOther
	}
	switch rest {
	case "lock":
		return KindLock
	case "gate":
		return KindGate
	case "journal":
		return KindJournal
	case "journal.tmp":
		return KindJournalTmp
	case "meta":
		return KindMeta
	case "incomplete":
		return KindIncomplete
	case "complete":
		return KindComplete
	}
	if id, ok := strings.CutPrefix(rest, "removing."); ok && isID(id) {
		return KindRemoving
	}
	if id, ok := strings.CutPrefix(rest, "failed."); ok && isID(id) {
		return KindFailed
	}
	return KindOther
}

func isID(s string) bool {
	if len(s) != idLen {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func newID() (string, error) {
	var b [idLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("transaction id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
