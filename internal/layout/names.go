// Package layout is the one owner of what treetx keeps on disk beside a
// directory: the names it makes in the directory's parent
// (".#treetx.NAME.KIND[.ID]"), the transaction's journal, where the shadow
// is (found by its inode, never by name alone), and how a tree under one of
// those names is dropped (renamed to a removal name, durably, then deleted).
// It also resolves the directory a user names, and opens its parent.
//
// docs/protocol.md describes all of it ("Names", "The journal", "Threat
// model"). No other package parses or makes those names: the protocol's
// steps (internal/protocol), recovery (package recover) and the command line
// ask this one.
package layout

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
	Group      string // the marker of a transaction over several trees (layout.Group)
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
		Lock: p + KindLock.suffix(), Gate: p + KindGate.suffix(), Journal: p + KindJournal.suffix(),
		JournalTmp: p + KindJournalTmp.suffix(), Meta: p + KindMeta.suffix(),
		Incomplete: p + KindIncomplete.suffix(), Complete: p + KindComplete.suffix(),
		Group: p + KindGroup.suffix(),
	}, nil
}

// Removing is the name of a tree that is garbage and being deleted.
func (n Names) Removing(id string) string { return Prefix + n.Base + "." + KindRemoving.suffix() + id }

// Failed is the name of a failed tree kept for inspection after a rollback
// that found content lost.
func (n Names) Failed(id string) string { return Prefix + n.Base + "." + KindFailed.suffix() + id }

// Converting is the name of the subvolume treetx convert fills beside the
// directory. It is no transaction's: recovery and gc leave it (Classify says
// KindOther) to a rerun of treetx convert, which finishes or undoes it.
func (n Names) Converting() string { return Prefix + n.Base + ".converting" }

// NestedCopies are the names of another tree's lock and gate, met inside a
// tree: its shadow holds copies of them, not links (see
// snapshot.Options.Copy).
func NestedCopies() []string { return []string{Prefix + "*.lock", Prefix + "*.gate"} }

// NestedGarbage are the names of the trees that a transaction on another
// tree named for removal, met inside a tree: its shadow leaves them out
// (their deletion runs without a lock, and may be under way).
func NestedGarbage() []string { return []string{Prefix + "*.removing.*"} }

// NestedUnfinished are the names an unfinished transaction on another tree
// leaves beside it: met inside a tree, they keep a transaction on that tree
// from beginning (its rollback would put back what a recovery of the tree
// inside must find).
func NestedUnfinished() []string {
	return []string{Prefix + "*.journal", Prefix + "*.incomplete", Prefix + "*.complete", Prefix + "*.group"}
}

// LockOf returns the path of the lock file of the directory dir (absolute
// and clean).
func LockOf(dir string) (string, error) {
	n, err := NamesFor(dir)
	if err != nil {
		return "", err
	}
	return n.Path(n.Lock), nil
}

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
	KindGroup
	KindRemoving // followed by an id
	KindFailed   // followed by an id
)

// suffix is what follows ".#treetx.NAME." in a name of kind k (for
// KindRemoving and KindFailed, before the id); "" for KindOther.
func (k Kind) suffix() string {
	switch k {
	case KindLock:
		return "lock"
	case KindGate:
		return "gate"
	case KindJournal:
		return "journal"
	case KindJournalTmp:
		return "journal.tmp"
	case KindMeta:
		return "meta"
	case KindIncomplete:
		return "incomplete"
	case KindComplete:
		return "complete"
	case KindGroup:
		return "group"
	case KindRemoving:
		return "removing."
	case KindFailed:
		return "failed."
	}
	return ""
}

// ParseName splits name, an entry of some parent directory, into the base
// name of the directory it belongs to, its kind and, for KindRemoving and
// KindFailed, its id. A name treetx does not make is KindOther (base and id
// ""). No two parses of a name are possible: no kind's suffix ends another.
func ParseName(name string) (base string, kind Kind, id string) {
	rest, ok := strings.CutPrefix(name, Prefix)
	if !ok {
		return "", KindOther, ""
	}
	for k := KindLock; k <= KindFailed; k++ {
		b, tail := rest, ""
		if k == KindRemoving || k == KindFailed {
			if len(rest) < idLen {
				continue
			}
			b, tail = rest[:len(rest)-idLen], rest[len(rest)-idLen:]
			if !IsID(tail) {
				continue
			}
		}
		if b, ok := strings.CutSuffix(b, "."+k.suffix()); ok && b != "" && len(b) <= MaxBaseLen {
			return b, k, tail
		}
	}
	return "", KindOther, ""
}

// Classify says which of n's names name is (KindOther if none).
func (n Names) Classify(name string) Kind {
	if base, k, _ := ParseName(name); base == n.Base {
		return k
	}
	return KindOther
}

// IsID reports whether s is a transaction id: 16 lowercase hex digits.
func IsID(s string) bool {
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

// NewID returns a new random id, for a transaction or a removal name.
func NewID() (string, error) {
	var b [idLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("new id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
