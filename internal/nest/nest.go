// Package nest lets a treetx started, directly or not, by a command that
// treetx runs join the transaction (or lock) that encloses it, instead of
// waiting forever for a lock its own ancestor holds.
//
// The enclosing treetx gives its command the lock file of every tree it
// holds as an inherited descriptor, and names them in the environment
// variable TREETX_HELD (Env): a JSON array of {fd, mode, dir, dev, ino}. The
// variable is only a hint. A tree it names counts only if the descriptor is
// open in this process on the lock file beside that directory (found by the
// caller's lockOf) and holds that file's flock lock in the mode named, which
// the kernel shows in /proc/self/fdinfo only on descriptors of the open file
// description that took the lock (lock.Inherited): a forged variable, or one
// left in the environment of a process that did not inherit the lock, gives
// nothing.
package nest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/lock"
)

// Env is the environment variable that names the trees held.
const Env = "TREETX_HELD"

// Tree is a tree an enclosing treetx holds.
type Tree struct {
	// FD is the inherited descriptor of the tree's lock file.
	FD int `json:"fd"`
	// Mode is "exclusive" (a transaction, or treetx lock) or "shared".
	Mode string `json:"mode"`
	// Dir is the tree, absolute and resolved; Dev and Ino identify it.
	Dir string `json:"dir"`
	Dev uint64 `json:"dev"`
	Ino uint64 `json:"ino"`
}

// Exclusive reports whether t is held exclusively.
func (t Tree) Exclusive() bool { return t.Mode == lock.Exclusive.String() }

// Format returns the value of Env that names trees.
func Format(trees []Tree) string {
	data, err := json.Marshal(trees)
	if err != nil {
		return ""
	}
	return string(data)
}

// Held returns the trees that env's value of Env names and that this process
// really holds (see the package documentation); lockOf gives the lock file
// of a tree. Anything else in the variable is ignored.
func Held(value string, lockOf func(dir string) (string, error)) []Tree {
	if value == "" || len(value) > 1<<16 {
		return nil
	}
	var named []Tree
	if json.Unmarshal([]byte(value), &named) != nil {
		return nil
	}
	var held []Tree
	for _, t := range named {
		if !filepath.IsAbs(t.Dir) || filepath.Clean(t.Dir) != t.Dir {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(t.Dir, &st) != nil || uint64(st.Dev) != t.Dev || st.Ino != t.Ino {
			continue
		}
		path, err := lockOf(t.Dir)
		if err != nil {
			continue
		}
		mode, ok := lock.Inherited(t.FD, path)
		if !ok || mode.String() != t.Mode {
			continue
		}
		held = append(held, t)
	}
	return held
}

// FromEnv is Held for this process's environment.
func FromEnv(lockOf func(dir string) (string, error)) []Tree {
	return Held(os.Getenv(Env), lockOf)
}

// Within returns the held tree that dir (absolute and resolved) is, or lies
// inside, if any.
func Within(held []Tree, dir string) (Tree, bool) {
	for _, t := range held {
		if dir == t.Dir || strings.HasPrefix(dir, t.Dir+"/") || t.Dir == "/" {
			return t, true
		}
	}
	return Tree{}, false
}

// Inside returns a held tree that lies inside dir, if any: a lock on dir
// would wait for it, that is for this process's own ancestor.
func Inside(held []Tree, dir string) (Tree, bool) {
	for _, t := range held {
		if strings.HasPrefix(t.Dir, dir+"/") || dir == "/" && t.Dir != "/" {
			return t, true
		}
	}
	return Tree{}, false
}

// Error says why a lock on dir is not taken inside the trees held.
type Error struct {
	Dir  string
	Held Tree
	Why  string
}

func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s (held %s by the treetx that runs this one, on %s)", e.Dir, e.Why, e.Held.Mode, e.Held.Dir)
}

// Unwrap returns lock.ErrLocked: the lock is not had.
func (e *Error) Unwrap() error { return lock.ErrLocked }

// Join decides what a lock on dir in mode does inside the trees held: join
// (the returned tree holds dir; nothing is to be taken), go on as usual (no
// tree, nil), or refuse, where waiting would wait for this process's own
// ancestor (*Error).
func Join(held []Tree, dir string, mode lock.Mode) (*Tree, error) {
	if t, ok := Within(held, dir); ok {
		if mode == lock.Exclusive && !t.Exclusive() {
			return nil, &Error{Dir: dir, Held: t, Why: "cannot be changed inside a shared lock on it: it would wait for itself"}
		}
		return &t, nil
	}
	if t, ok := Inside(held, dir); ok {
		return nil, &Error{Dir: dir, Held: t, Why: "contains a tree locked by an enclosing treetx: a lock on it would wait for itself"}
	}
	return nil, nil
}

// Pass returns what a child needs to be told of held trees: the files to
// give it (copies of the inherited descriptors, closed with the child's
// other extra files) from descriptor first on, and held renumbered to match.
func Pass(held []Tree, first int) (files []*os.File, renumbered []Tree) {
	for _, t := range held {
		fd, err := unix.FcntlInt(uintptr(t.FD), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			continue
		}
		files = append(files, os.NewFile(uintptr(fd), t.Dir))
		t.FD = first + len(renumbered)
		renumbered = append(renumbered, t)
	}
	return files, renumbered
}

// Environ returns env with Env set to name trees (or removed if none).
func Environ(env []string, trees []Tree) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, Env+"=") {
			out = append(out, kv)
		}
	}
	if len(trees) > 0 {
		out = append(out, Env+"="+Format(trees))
	}
	return out
}
