package txn_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/fsys"
	"github.com/treetx/treetx/internal/fsys/fsystest"
	"github.com/treetx/treetx/internal/layout"
	"github.com/treetx/treetx/internal/testenv"
	"github.com/treetx/treetx/internal/treeimage"
	txrecover "github.com/treetx/treetx/recover"
	"github.com/treetx/treetx/txn"
)

// The power-loss tests model the disk as docs/protocol.md and
// ../shared/notes/durability.md describe it. A real transaction runs once
// through a recording fsys.FS. Each recorded mutation stays volatile until
// an fsync or syncfs that covers it: fsync of a file covers the writes and
// metadata changes of that inode; fsync of a directory covers the entries
// made, renamed or removed in it and its own metadata; syncfs covers
// everything before it. A power cut after step k keeps every durable step
// plus any subset of the volatile ones, each step whole (a rename is
// atomic), replayed in order on a model of the file system; a step that
// cannot apply to what was kept (a link into a directory whose mkdir was
// lost) is lost too. Each such state is written to a real directory,
// recovered with the real recovery, and checked: the directory must be
// exactly the old tree, or exactly the new one if the journal's commit
// rename was kept, with nothing else left.

// mnode is an inode of the model.
type mnode struct {
	typ          byte // 'd', 'f', 'l' (symlink), 'p' (fifo)
	mode         uint32
	uid, gid     int
	atime, mtime unix.Timespec
	data         []byte
	target       string
	xattrs       map[string]string
	kids         map[string]*mnode
	ino          uint64 // the inode in the recorded run
	subvol       uint64 // a btrfs subvolume's root: its id in the recorded run
}

// fsModel is the tree under the recorded run's parent directory.
type fsModel struct {
	root *mnode
	base string // the parent directory's path in the recorded run
}

func (m *fsModel) clone() *fsModel {
	seen := map[*mnode]*mnode{}
	var cp func(n *mnode) *mnode
	cp = func(n *mnode) *mnode {
		if c, ok := seen[n]; ok {
			return c
		}
		c := *n
		seen[n] = &c
		c.data = bytes.Clone(n.data)
		c.xattrs = maps(n.xattrs)
		if n.kids != nil {
			c.kids = make(map[string]*mnode, len(n.kids))
			for k, v := range n.kids {
				c.kids[k] = cp(v)
			}
		}
		return &c
	}
	return &fsModel{root: cp(m.root), base: m.base}
}

func maps(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// lookup returns the node at path and its parent directory and base name;
// the node is nil if missing, the parent too if it is missing.
func (m *fsModel) lookup(path string) (n, parent *mnode, name string) {
	rel, ok := strings.CutPrefix(path, m.base+"/")
	if !ok {
		if path == m.base {
			return m.root, nil, ""
		}
		return nil, nil, ""
	}
	cur := m.root
	parts := strings.Split(rel, "/")
	for i, p := range parts {
		if cur == nil || cur.typ != 'd' {
			return nil, nil, ""
		}
		if i == len(parts)-1 {
			return cur.kids[p], cur, p
		}
		cur = cur.kids[p]
	}
	return nil, nil, ""
}

// loadModel reads the real tree at base into a model.
func loadModel(t *testing.T, base string) *fsModel {
	t.Helper()
	byIno := map[[2]uint64]*mnode{} // by device and inode: subvolumes number theirs apart
	var load func(p string) *mnode
	load = func(p string) *mnode {
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		if n, ok := byIno[[2]uint64{st.Dev, st.Ino}]; ok && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return n
		}
		n := &mnode{mode: st.Mode & 07777, uid: int(st.Uid), gid: int(st.Gid), atime: st.Atim, mtime: st.Mtim, ino: st.Ino, subvol: subvolRoot(t, p)}
		byIno[[2]uint64{st.Dev, st.Ino}] = n
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			n.typ, n.kids = 'd', map[string]*mnode{}
			ents, err := os.ReadDir(p)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				n.kids[e.Name()] = load(filepath.Join(p, e.Name()))
			}
		case unix.S_IFREG:
			n.typ = 'f'
			var err error
			if n.data, err = os.ReadFile(p); err != nil {
				t.Fatal(err)
			}
		case unix.S_IFLNK:
			n.typ = 'l'
			var err error
			if n.target, err = os.Readlink(p); err != nil {
				t.Fatal(err)
			}
		case unix.S_IFIFO:
			n.typ = 'p'
		default:
			t.Fatalf("%s: unsupported file type", p)
		}
		return n
	}
	return &fsModel{root: load(base), base: base}
}

// opTime is the time the model gives what step i changes.
func opTime(i int) unix.Timespec { return unix.Timespec{Sec: 2_000_000_000 + int64(i)} }

// apply replays op on the model. It reports false when the op cannot apply
// to the model (it is then lost). It returns the nodes whose durability the
// op changes: the inode for inode ops, the parent directories for entry
// ops.
func (m *fsModel) apply(op fsystest.Op) (ok bool, touched []*mnode) {
	now := opTime(op.Step)
	newNode := func(typ byte, mode uint32, parent *mnode) *mnode {
		n := &mnode{typ: typ, mode: mode & 07777 &^ 0o022, atime: now, mtime: now, ino: op.Ino}
		if parent.mode&unix.S_ISGID != 0 {
			n.gid = parent.gid
			if typ == 'd' {
				n.mode |= unix.S_ISGID
			}
		}
		if typ == 'd' {
			n.kids = map[string]*mnode{}
		}
		return n
	}
	switch op.Kind {
	case "mkdirat", "create", "symlinkat":
		n, parent, name := m.lookup(op.Path)
		if parent == nil || n != nil {
			return false, nil
		}
		typ := map[string]byte{"mkdirat": 'd', "create": 'f', "symlinkat": 'l'}[op.Kind]
		c := newNode(typ, op.Mode, parent)
		if typ == 'l' {
			c.mode, c.target = 0o777, string(op.Data)
		}
		parent.kids[name] = c
		parent.mtime = now
		return true, []*mnode{parent}
	case "linkat":
		src, _, _ := m.lookup(op.Path)
		dst, parent, name := m.lookup(op.Path2)
		if src == nil || src.typ == 'd' || parent == nil || dst != nil {
			return false, nil
		}
		parent.kids[name] = src
		parent.mtime = now
		return true, []*mnode{parent}
	case "write":
		n, _, _ := m.lookup(op.Path)
		if n == nil || n.typ != 'f' {
			return false, nil
		}
		if end := int(op.Off) + len(op.Data); end > len(n.data) {
			n.data = append(n.data, make([]byte, end-len(n.data))...)
		}
		copy(n.data[op.Off:], op.Data)
		n.mtime = now
		return true, []*mnode{n}
	case "renameat2":
		src, sp, sname := m.lookup(op.Path)
		dst, dp, dname := m.lookup(op.Path2)
		if src == nil || dp == nil {
			return false, nil
		}
		switch {
		case op.Flags&unix.RENAME_EXCHANGE != 0:
			if dst == nil {
				return false, nil
			}
			sp.kids[sname], dp.kids[dname] = dst, src
		case dst != nil && (op.Flags&unix.RENAME_NOREPLACE != 0 || dst.typ == 'd' && len(dst.kids) > 0 || (dst.typ == 'd') != (src.typ == 'd')):
			return false, nil
		default:
			delete(sp.kids, sname)
			dp.kids[dname] = src
		}
		sp.mtime, dp.mtime = now, now
		return true, []*mnode{sp, dp}
	case "unlinkat":
		n, parent, name := m.lookup(op.Path)
		if n == nil || (op.Flags&unix.AT_REMOVEDIR != 0) != (n.typ == 'd') || n.typ == 'd' && len(n.kids) > 0 {
			return false, nil
		}
		delete(parent.kids, name)
		parent.mtime = now
		return true, []*mnode{parent}
	case "fchmodat", "lchownat", "lutimesat", "setxattrat", "removexattrat":
		n, _, _ := m.lookup(op.Path)
		if n == nil {
			return false, nil
		}
		switch op.Kind {
		case "fchmodat":
			n.mode = op.Mode & 07777
		case "lchownat":
			n.uid, n.gid = op.UID, op.GID
			if n.typ == 'f' {
				n.mode &^= unix.S_ISUID
				if n.mode&0o010 != 0 {
					n.mode &^= unix.S_ISGID
				}
			}
		case "lutimesat":
			n.atime, n.mtime = op.Atime, op.Mtime
		case "setxattrat":
			if n.xattrs == nil {
				n.xattrs = map[string]string{}
			}
			n.xattrs[op.Attr] = string(op.Data)
		case "removexattrat":
			delete(n.xattrs, op.Attr)
		}
		return true, []*mnode{n}
	case "fsync", "syncfs":
		return true, nil
	case "snapshot", "deletesubvolume":
		return m.applySubvolume(op)
	}
	panic("unknown op " + op.Kind)
}

// history is a recorded run with what each step touched and which later
// sync made it durable.
type history struct {
	initial  *fsModel
	trees    []string // the trees in the parent, for a group; nil: "repo"
	parent   string   // where a group was recorded: its journals name it
	ops      []fsystest.Op
	durable  []int // durable[i]: index of the first sync covering op i, or len(ops)
	commitAt int   // index of the rename that made the journal say commit, or -1
	final    *fsModel
}

func analyze(t *testing.T, initial *fsModel, ops []fsystest.Op) *history {
	t.Helper()
	h := &history{initial: initial, ops: ops, durable: make([]int, len(ops)), commitAt: -1}
	m := initial.clone()
	touched := make([][]*mnode, len(ops))
	var lastJournal []byte
	for i, op := range ops {
		h.durable[i] = len(ops)
		if op.Kind == "write" && strings.HasSuffix(op.Path, ".journal.tmp") {
			lastJournal = op.Data
		}
		if op.Kind == "renameat2" && strings.HasSuffix(op.Path2, ".journal") && bytes.Contains(lastJournal, []byte(`"phase": "commit"`)) {
			if h.commitAt < 0 {
				// The first: the record's, in a group.
				h.commitAt = i
			}
		}
		switch op.Kind {
		case "syncfs":
			for j := range i {
				h.durable[j] = min(h.durable[j], i)
			}
		case "fsync":
			n, _, _ := m.lookup(op.Path)
			for j := range i {
				if slices.Contains(touched[j], n) {
					h.durable[j] = min(h.durable[j], i)
				}
			}
		}
		ok, tn := m.apply(op)
		if !ok {
			t.Fatalf("step %s does not apply to the model of its own run", op)
		}
		touched[i] = tn
	}
	h.final = m
	return h
}

// state replays the ops up to and including k that keep says are kept. It
// reports whether the rename that made the journal say commit was kept and
// applied.
func (h *history) state(k int, keep func(i int) bool) (m *fsModel, committed bool) {
	m = h.initial.clone()
	for i := 0; i <= k; i++ {
		if h.durable[i] <= k || keep(i) {
			if ok, _ := m.apply(h.ops[i]); ok && i == h.commitAt {
				committed = true
			}
		}
	}
	return m, committed
}

// volatile lists the mutations up to k that no sync up to k covers.
func (h *history) volatile(k int) []int {
	var v []int
	for i := 0; i <= k; i++ {
		if h.durable[i] > k && h.ops[i].Kind != "fsync" && h.ops[i].Kind != "syncfs" {
			v = append(v, i)
		}
	}
	return v
}

// key is a canonical description of a model state, to skip duplicates.
func (m *fsModel) key() string {
	var b strings.Builder
	ids := map[*mnode]int{}
	var walk func(p string, n *mnode)
	walk = func(p string, n *mnode) {
		id, seen := ids[n]
		if !seen {
			id = len(ids)
			ids[n] = id
		}
		fmt.Fprintf(&b, "%s %d %c %o %d %d %v %v %q %q %v\n", p, id, n.typ, n.mode, n.uid, n.gid, n.atime, n.mtime, n.data, n.target, n.xattrs)
		if seen {
			return
		}
		for _, k := range slices.Sorted(mapKeys(n.kids)) {
			walk(p+"/"+k, n.kids[k])
		}
	}
	walk("", m.root)
	return b.String()
}

func mapKeys(m map[string]*mnode) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// materialize writes the model under dst (which must not exist) and makes
// the journal and the manifest name the new inodes.
func (m *fsModel) materialize(t *testing.T, dst string) {
	t.Helper()
	made := map[*mnode]string{}
	inoMap := map[uint64]uint64{}
	subMap := map[uint64]uint64{}
	var dev uint64
	var write func(p string, n *mnode)
	write = func(p string, n *mnode) {
		if first, ok := made[n]; ok && n.typ != 'd' {
			if err := os.Link(first, p); err != nil {
				t.Fatal(err)
			}
			return
		}
		made[n] = p
		var err error
		switch n.typ {
		case 'd':
			err = mkdirModel(p, n, subMap)
		case 'f':
			err = os.WriteFile(p, n.data, 0o600)
		case 'l':
			err = os.Symlink(n.target, p)
		case 'p':
			err = unix.Mkfifo(p, 0o600)
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range slices.Sorted(mapKeys(n.kids)) {
			write(filepath.Join(p, k), n.kids[k])
		}
		for k, v := range n.xattrs {
			if err := unix.Lsetxattr(p, k, []byte(v), 0); err != nil {
				t.Fatalf("setxattr %s %s: %v", p, k, err)
			}
		}
		if err := os.Lchown(p, n.uid, n.gid); err != nil {
			t.Fatal(err)
		}
		if n.typ != 'l' {
			if err := unix.Chmod(p, n.mode); err != nil {
				t.Fatal(err)
			}
		}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{n.atime, n.mtime}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Fatal(err)
		}
		inoMap[n.ino], dev = st.Ino, st.Dev
	}
	write(dst, m.root)
	for _, tree := range []string{"repo", "repo2"} {
		patchJournal(t, filepath.Join(dst, ".#treetx."+tree+".journal"), inoMap, dev)
		patchManifest(t, filepath.Join(dst, ".#treetx."+tree+".meta"), inoMap)
		patchSubvols(t, filepath.Join(dst, ".#treetx."+tree+".journal"), subMap)
	}
}

// unmapped is an inode number no real file has: the journal names an inode
// that this state lost.
const unmapped = 1 << 62

func patchJournal(t *testing.T, path string, inoMap map[uint64]uint64, dev uint64) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	var j layout.Journal
	if json.Unmarshal(data, &j) != nil {
		return
	}
	for _, id := range []*layout.FileID{&j.Dir, &j.Shadow} {
		if ino, ok := inoMap[id.Ino]; ok {
			id.Ino, id.Dev = ino, dev
		} else {
			id.Ino = unmapped + id.Ino
		}
	}
	out, err := json.MarshalIndent(&j, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	rewrite(t, path, out)
}

func patchManifest(t *testing.T, path string, inoMap map[uint64]uint64) {
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	lines := strings.SplitAfter(string(data), "\n")
	for i, l := range lines {
		f, rest, ok := strings.Cut(l, " ")
		if !ok || strings.HasPrefix(l, "#") {
			continue
		}
		if ino, err := strconv.ParseUint(f, 10, 64); err == nil {
			if n, ok := inoMap[ino]; ok {
				lines[i] = strconv.FormatUint(n, 10) + " " + rest
			}
		}
	}
	rewrite(t, path, []byte(strings.Join(lines, "")))
}

// rewrite replaces a file's content, keeping its metadata.
func rewrite(t *testing.T, path string, data []byte) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	unix.Chmod(path, st.Mode&07777)
	unix.UtimesNanoAt(unix.AT_FDCWD, path, []unix.Timespec{st.Atim, st.Mtim}, 0)
}

// mutateFS changes the tree through fs, as a command would: replace by
// rename, delete, create, chmod through a shared inode, remove a directory.
func mutateFS(dir string, fs fsys.FS) error {
	pfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	at := func(rel string) string { return filepath.Join(dir, rel) }
	ts := unix.NsecToTimespec(fixedTime.UnixNano())
	create := func(rel, content string) error {
		fd, err := fs.Create(unix.AT_FDCWD, at(rel), 0o644)
		if err != nil {
			return err
		}
		err = fs.Write(fd, []byte(content))
		unix.Close(fd)
		if err != nil {
			return err
		}
		return fs.Lutimesat(unix.AT_FDCWD, at(rel), ts, ts)
	}
	steps := []func() error{
		func() error { return create("mod/d1/,f1.c,", "new revision\n") },
		func() error {
			return fs.Renameat2(unix.AT_FDCWD, at("mod/d1/,f1.c,"), unix.AT_FDCWD, at("mod/d1/f1.c,v"), 0)
		},
		func() error { return fs.Unlinkat(unix.AT_FDCWD, at("a/b/notes.txt"), 0) },
		func() error { return fs.Mkdirat(unix.AT_FDCWD, at("mod/d3"), 0o775) },
		func() error { return create("mod/d3/f3.c,v", "added\n") },
		func() error { return fs.Fchmodat(unix.AT_FDCWD, at("a/run.sh"), 0o700) },
		func() error { return fs.Unlinkat(unix.AT_FDCWD, at("empty"), unix.AT_REMOVEDIR) },
	}
	for i, s := range steps {
		if err := s(); err != nil {
			return fmt.Errorf("mutate step %d: %w", i, err)
		}
	}
	return nil
}

// smallTree builds a tree of a few entries, for exhaustive enumeration.
func smallTree(dir string) error {
	if err := os.MkdirAll(filepath.Join(dir, "mod/d1"), 0o755); err != nil {
		return err
	}
	for _, p := range []string{"mod/d1/f1.c,v", "a/b/notes.txt", "a/run.sh"} {
		os.MkdirAll(filepath.Dir(filepath.Join(dir, p)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, p), []byte(p+"\n"), 0o444); err != nil {
			return err
		}
	}
	return os.Mkdir(filepath.Join(dir, "empty"), 0o755)
}

// record runs a transaction on a fresh tree under /dev/shm through a
// recording FS and returns its history.
func record(t *testing.T, build func(string) error, path string, skipSync int) *history {
	t.Helper()
	parent := shmDir(t)
	dir := filepath.Join(parent, "repo")
	if err := build(dir); err != nil {
		t.Fatal(err)
	}
	if path == "unchanged" {
		// Let the file system's clock tick past the tree's making, as
		// it has for any tree older than a moment.
		time.Sleep(20 * time.Millisecond)
	}
	initial := loadModel(t, parent)
	rec := &fsystest.FS{Record: true, SkipSync: skipSync}
	tx, err := txn.Begin(dir, txn.Options{FS: rec})
	if err != nil {
		t.Fatal(err)
	}
	switch path {
	case "unchanged":
		// A failed command that only changed the mode of a linked file:
		// the rollback restores it in place, without an exchange.
		err = rec.Fchmodat(unix.AT_FDCWD, filepath.Join(dir, "a/run.sh"), 0o700)
	default:
		err = mutateFS(dir, rec)
	}
	if err != nil {
		t.Fatal(err)
	}
	if path == "commit" {
		_, err = tx.Commit()
	} else {
		var res *txn.Result
		res, err = tx.Rollback()
		if err == nil && path == "unchanged" && !res.Unchanged {
			t.Fatal("the rollback of an unchanged tree put the shadow back")
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	var ops []fsystest.Op
	for _, op := range rec.Ops() {
		if op.Err == nil {
			ops = append(ops, op)
		}
	}
	return analyze(t, initial, ops)
}

// shmDir is a new temporary directory on tmpfs, where states are written
// and recovered quickly (the model, not the disk, decides what survives).
func shmDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("/dev/shm", "treetx-powerloss-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// checker recovers states and counts violations.
type checker struct {
	// trees are the trees of the transaction, in the parent: "repo", and
	// "repo2" for a group.
	trees      []string
	t          *testing.T
	h          *history
	old, new   map[string]treeimage.Image // by tree
	seen       map[string]bool
	checked    int
	violations []string
	scratch    string
	n          int
	from, to   int // the crash points run checks: after ops[from] to ops[to-1]
}

func newChecker(t *testing.T, h *history) *checker {
	c := &checker{t: t, h: h, seen: map[string]bool{}, scratch: shmDir(t), to: len(h.ops), trees: h.trees}
	if len(c.trees) == 0 {
		c.trees = []string{"repo"}
	}
	c.old = c.images(h.initial, treeimage.Options{})
	c.new = c.images(h.final, treeimage.Options{IgnoreDirMtime: true})
	return c
}

// images materializes a model and captures each tree of it.
func (c *checker) images(m *fsModel, opts treeimage.Options) map[string]treeimage.Image {
	p := c.next()
	m.materialize(c.t, p)
	out := map[string]treeimage.Image{}
	for _, tree := range c.trees {
		out[tree] = treeimage.MustCapture(c.t, filepath.Join(p, tree), opts)
	}
	return out
}

func (c *checker) next() string {
	c.n++
	return filepath.Join(c.scratch, strconv.Itoa(c.n))
}

// check recovers the state after step k keeping the volatile steps keep
// says, unless an identical state was checked already.
func (c *checker) check(k int, keep func(int) bool) {
	m, committed := c.h.state(k, keep)
	key := fmt.Sprint(committed) + m.key()
	if c.seen[key] {
		return
	}
	c.seen[key] = true
	c.checked++
	p := c.next()
	m.materialize(c.t, p)
	defer os.RemoveAll(p)
	c.relocate(p)
	want, opts, label := c.old, treeimage.Options{}, "old"
	if committed {
		want, opts, label = c.new, treeimage.Options{IgnoreDirMtime: true}, "new"
	}
	var lost []string
	for _, i := range c.h.volatile(k) {
		if !keep(i) {
			lost = append(lost, strconv.Itoa(c.h.ops[i].Step))
		}
	}
	fail := func(format string, args ...any) {
		c.violations = append(c.violations, fmt.Sprintf("power cut after step %s, steps lost [%s]: want the %s tree: %s",
			c.h.ops[k], strings.Join(lost, " "), label, fmt.Sprintf(format, args...)))
	}
	// A group: recover one of its trees, in turn; each must then be the
	// wanted tree; then recover them all, and nothing may be left.
	first := filepath.Join(p, c.trees[k%len(c.trees)])
	if _, err := txrecover.Recover(first, txrecover.Options{}); err != nil {
		fail("recover: %v", err)
		return
	}
	same := func() bool {
		for _, tree := range c.trees {
			got, err := treeimage.Capture(filepath.Join(p, tree), opts)
			if err != nil {
				fail("capture: %v", err)
				return false
			}
			if d := want[tree].Diff(got); d != nil {
				fail("%s: %s", tree, strings.Join(d[:min(len(d), 4)], "; "))
				return false
			}
		}
		return true
	}
	if !same() {
		return
	}
	if len(c.trees) > 1 {
		for _, tree := range c.trees {
			if _, err := txrecover.Recover(filepath.Join(p, tree), txrecover.Options{}); err != nil {
				fail("recover %s after %s: %v", tree, first, err)
				return
			}
		}
		if !same() {
			return
		}
	}
	ents, _ := os.ReadDir(p)
	for _, e := range ents {
		keep := false
		for _, tree := range c.trees {
			keep = keep || e.Name() == tree || e.Name() == ".#treetx."+tree+".lock" || e.Name() == ".#treetx."+tree+".gate"
		}
		if !keep {
			fail("left behind: %s", e.Name())
			return
		}
	}
}

// run checks crash points: for each step (from c.from to c.to), every
// subset of the volatile steps when there are at most exhaustive of them,
// else samples random subsets (each step kept with probability 1/2) plus
// the two extremes.
func (c *checker) run(exhaustive, samples int, rng *rand.Rand) {
	for k := c.from; k < c.to; k++ {
		v := c.h.volatile(k)
		if len(v) <= exhaustive {
			for mask := 0; mask < 1<<len(v); mask++ {
				kept := map[int]bool{}
				for b, i := range v {
					kept[i] = mask&(1<<b) != 0
				}
				c.check(k, func(i int) bool { return kept[i] })
			}
			continue
		}
		c.check(k, func(int) bool { return false })
		c.check(k, func(int) bool { return true })
		for range samples {
			kept := map[int]bool{}
			for _, i := range v {
				kept[i] = rng.IntN(2) == 0
			}
			c.check(k, func(i int) bool { return kept[i] })
		}
	}
}

func (c *checker) report(name string) {
	c.t.Helper()
	for _, v := range c.violations[:min(len(c.violations), 10)] {
		c.t.Error(v)
	}
	fmt.Printf("%s: power-loss states: %d checked, %d violations\n", name, c.checked, len(c.violations))
}

// powerLossSeed is the seed of the power-loss samples:
// TREETX_POWERLOSS_SEED, else TREETX_TEST_SEED, else from the clock.
func powerLossSeed(t *testing.T) uint64 {
	t.Helper()
	return testenv.Seed(t, "TREETX_POWERLOSS_SEED")
}

// TestPowerLossSmallExhaustive enumerates every crash state of a
// transaction on a small tree wherever a crash point has at most 10
// volatile steps (12 with TREETX_EXHAUSTIVE=1, 8 with -short), and samples
// the others.
func TestPowerLossSmallExhaustive(t *testing.T) {
	seed := powerLossSeed(t)
	for i, path := range []string{"commit", "rollback", "unchanged"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, uint64(10+i)))
			c := newChecker(t, record(t, smallTree, path, 0))
			exhaustive := 10
			switch {
			case testenv.Exhaustive():
				exhaustive = 12
			case testing.Short():
				exhaustive = 8
			}
			c.run(exhaustive, 64, rng)
			c.report("small/" + path)
		})
	}
}

// TestPowerLossSampled samples distinct crash states of a transaction on
// the 35-entry sample tree: at every crash point, the two extremes and 8
// random subsets of the volatile steps (56, and at least 10,000 states in
// all, with TREETX_EXHAUSTIVE=1; 4 with -short).
func TestPowerLossSampled(t *testing.T) {
	seed := powerLossSeed(t)
	var total, violations atomic.Int64
	samples, want := 8, 2000
	switch {
	case testenv.Exhaustive():
		samples, want = 56, 10000
	case testing.Short():
		samples, want = 4, 0
	}
	t.Run("paths", func(t *testing.T) {
		for i, path := range []string{"commit", "rollback", "unchanged"} {
			t.Run(path, func(t *testing.T) {
				t.Parallel()
				rng := rand.New(rand.NewPCG(seed, uint64(20+i)))
				c := newChecker(t, record(t, treeimage.BuildSample, path, 0))
				c.run(4, samples, rng)
				c.report("sample/" + path)
				total.Add(int64(c.checked))
				violations.Add(int64(len(c.violations)))
			})
		}
	})
	fmt.Printf("power-loss states: %d checked, %d violations\n", total.Load(), violations.Load())
	if total.Load() < int64(want) {
		t.Errorf("only %d distinct states checked, want at least %d", total.Load(), want)
	}
}

// TestPowerLossCheckerFindsMissingSync proves the checker can fail: with
// one sync of the protocol removed, it must find violations. It tries each
// sync of the small commit and rollback runs in turn and prints which ones
// the invariant needs; the shadow's syncfs (before it is named complete)
// and the command's syncfs (before the commit point) must be among them.
//
// Without a sync, only the crash points from where it was to the next
// syncfs can differ from those of the whole protocol (after that syncfs,
// every earlier step is durable either way), which the tests above check:
// a default run checks that window, TREETX_EXHAUSTIVE=1 every crash point.
func TestPowerLossCheckerFindsMissingSync(t *testing.T) {
	seed := powerLossSeed(t)
	for pi, path := range []string{"commit", "rollback", "unchanged"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, uint64(30+pi)))
			base := record(t, smallTree, path, 0)
			var syncs []fsystest.Op
			for _, op := range base.ops {
				if op.Kind == "fsync" || op.Kind == "syncfs" {
					syncs = append(syncs, op)
				}
			}
			needed := map[string]bool{}
			for i, op := range syncs {
				c := newChecker(t, record(t, smallTree, path, i+1))
				if !testenv.Exhaustive() {
					c.from, c.to = syncWindow(c.h, slices.IndexFunc(base.ops, func(o fsystest.Op) bool { return o.Step == op.Step }))
				}
				c.run(8, 16, rng)
				what := fmt.Sprintf("sync %d (step %s)", i+1, strings.TrimPrefix(op.String(), strconv.Itoa(op.Step)+" "))
				fmt.Printf("%s without %s: %d states (crash points %d to %d of %d), %d violations\n", path, what, c.checked, c.from, c.to-1, len(c.h.ops), len(c.violations))
				if len(c.violations) > 0 {
					needed[op.Kind+" "+strconv.Itoa(op.Step)] = true
				}
			}
			// The shadow's syncfs is the first syncfs of Begin; the
			// command's is the first of Commit.
			first := -1
			for _, op := range syncs {
				if op.Kind == "syncfs" {
					first = op.Step
					break
				}
			}
			if !needed["syncfs "+strconv.Itoa(first)] {
				t.Errorf("without the shadow's syncfs (step %d) the checker found nothing", first)
			}
			if path == "commit" {
				var second int
				for _, op := range syncs {
					if op.Kind == "syncfs" && op.Step > first {
						second = op.Step
						break
					}
				}
				if !needed["syncfs "+strconv.Itoa(second)] {
					t.Errorf("without the command's syncfs (step %d) the checker found nothing", second)
				}
			}
		})
	}
}

// syncWindow returns the crash points of h, a run with the sync at index b
// of the whole run removed, whose states may differ from the whole run's:
// from b (ops before it are the same, made durable by the same syncs) to
// the first syncfs from there (after which every earlier step is durable
// in both runs, and the later ones are the same).
func syncWindow(h *history, b int) (from, to int) {
	to = len(h.ops)
	for k := b; k < len(h.ops); k++ {
		if h.ops[k].Kind == "syncfs" {
			to = k
			break
		}
	}
	return b, to
}

// recordGroup is record for one transaction over two trees, repo and repo2,
// in the same parent (so one model holds both).
func recordGroup(t *testing.T, build func(string) error, path string, skipSync int) *history {
	t.Helper()
	parent := shmDir(t)
	dirs := []string{filepath.Join(parent, "repo"), filepath.Join(parent, "repo2")}
	for _, d := range dirs {
		if err := build(d); err != nil {
			t.Fatal(err)
		}
	}
	initial := loadModel(t, parent)
	rec := &fsystest.FS{Record: true, SkipSync: skipSync}
	g, err := txn.BeginGroup(context.Background(), dirs, txn.Options{FS: rec})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs {
		if err := mutateFS(d, rec); err != nil {
			t.Fatal(err)
		}
	}
	if path == "commit" {
		_, err = g.Commit()
	} else {
		_, err = g.Rollback()
	}
	if err != nil {
		t.Fatal(err)
	}
	var ops []fsystest.Op
	for _, op := range rec.Ops() {
		if op.Err == nil {
			ops = append(ops, op)
		}
	}
	h := analyze(t, initial, ops)
	h.trees, h.parent = []string{"repo", "repo2"}, parent
	return h
}

// TestPowerLossGroup checks the power-loss states of a transaction over two
// trees, commit and rollback, on the small tree: every subset of the
// volatile steps where there are at most 8 of them (10 with
// TREETX_EXHAUSTIVE=1), samples elsewhere; and, with each of the group's
// syncs removed in turn, that the checker finds violations for the
// record's commit-point write.
func TestPowerLossGroup(t *testing.T) {
	seed := powerLossSeed(t)
	var total atomic.Int64
	t.Cleanup(func() { fmt.Printf("group power-loss states: %d checked\n", total.Load()) })
	for i, path := range []string{"commit", "rollback"} {
		t.Run(path, func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, uint64(40+i)))
			c := newChecker(t, recordGroup(t, smallTree, path, 0))
			exhaustive := 8
			if testenv.Exhaustive() {
				exhaustive = 10
			}
			samples := 16
			if testenv.Exhaustive() {
				samples = 160
			}
			c.run(exhaustive, samples, rng)
			c.report("group/" + path)
			total.Add(int64(c.checked))
		})
	}
	// The checker can fail: with each sync of the group's commit removed
	// in turn, it must find violations for some.
	t.Run("missing sync", func(t *testing.T) {
		t.Parallel()
		rng := rand.New(rand.NewPCG(seed, 50))
		base := recordGroup(t, smallTree, "commit", 0)
		var syncs []fsystest.Op
		for _, op := range base.ops {
			if op.Kind == "fsync" || op.Kind == "syncfs" {
				syncs = append(syncs, op)
			}
		}
		// By default the 3 syncs before the commit point, and 3 others
		// drawn; every one with TREETX_EXHAUSTIVE=1.
		var pick []int
		for i, op := range syncs {
			if testenv.Exhaustive() || op.Step <= base.ops[base.commitAt].Step && op.Step > base.ops[base.commitAt].Step-12 {
				pick = append(pick, i)
			}
		}
		for range 3 {
			pick = append(pick, rng.IntN(len(syncs)))
		}
		slices.Sort(pick)
		pick = slices.Compact(pick)
		caught := 0
		for _, i := range pick {
			op := syncs[i]
			c := newChecker(t, recordGroup(t, smallTree, "commit", i+1))
			c.from, c.to = syncWindow(c.h, slices.IndexFunc(base.ops, func(o fsystest.Op) bool { return o.Step == op.Step }))
			c.run(4, 4, rng)
			if len(c.violations) > 0 {
				caught++
			}
		}
		fmt.Printf("group commit: %d of %d syncs (of %d) removed one at a time are caught by the checker\n", caught, len(pick), len(syncs))
		if caught == 0 {
			t.Errorf("no sync of the group's commit is needed, says the checker: it cannot fail")
		}
	})
}

// relocate makes the journals and markers of a group materialized in p name
// its trees there, not where the group was recorded.
func (c *checker) relocate(p string) {
	if c.h.parent == "" {
		return
	}
	ents, _ := os.ReadDir(p)
	for _, e := range ents {
		if n := e.Name(); strings.HasPrefix(n, ".#treetx.") && (strings.HasSuffix(n, ".journal") || strings.HasSuffix(n, ".group")) {
			path := filepath.Join(p, n)
			data, err := os.ReadFile(path)
			if err != nil {
				continue
			}
			fi, err := os.Lstat(path)
			if err != nil {
				continue
			}
			data = bytes.ReplaceAll(data, []byte(c.h.parent+"/"), []byte(p+"/"))
			os.WriteFile(path, data, fi.Mode().Perm())
		}
	}
}
