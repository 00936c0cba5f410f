package treeimage

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// sampleNode is one entry of the tree built by BuildSample.
type sampleNode struct {
	path string      // slash path relative to the root; parents come first
	kind string      // "dir", "file", "symlink" or "fifo"
	mode fs.FileMode // final mode; unused for symlinks
	data string      // file content or symlink target
}

func sampleNodes() []sampleNode {
	const rcs = "head\t1.1;\naccess;\nsymbols;\nlocks; strict;\ncomment\t@ * @;\n\n\n1.1\ndate\t2001.02.03.04.05.06;\tauthor sample;\tstate Exp;\nbranches;\nnext\t;\n\n\ndesc\n@@\n\n\n1.1\nlog\n@initial@\ntext\n@int main(void) { return 0; }\n@\n"
	return []sampleNode{
		{".", "dir", 0o755, ""},
		{"a", "dir", 0o755, ""},
		{"a/b", "dir", 0o755, ""},
		{"a/b/c", "dir", 0o755, ""},
		{"a/b/c/deep.txt", "file", 0o644, "three levels down\n"},
		{"a/b/notes.txt", "file", 0o600, "private notes\n"},
		{"a/run.sh", "file", 0o755, "#!/bin/sh\necho hello\n"},
		{"a/readonly.txt", "file", 0o444, "do not edit\n"},
		{"empty", "dir", 0o755, ""},
		{"private", "dir", 0o750, ""},
		{"private/secret.txt", "file", 0o600, "s3cr3t\n"},
		{"shared", "dir", fs.ModeSetgid | 0o775, ""},
		{"shared/data.bin", "file", 0o644, "\x00\x01\x02\xfe\xff binary\n"},
		{"sticky", "dir", fs.ModeSticky | 0o777, ""},
		{"links", "dir", 0o755, ""},
		{"links/to-file", "symlink", 0, "../a/run.sh"},
		{"links/dangling", "symlink", 0, "does-not-exist"},
		{"links/to-dir", "symlink", 0, "../a/b"},
		{"links/absolute", "symlink", 0, "/nonexistent/treeimage/absolute-target"},
		{"fifo", "fifo", 0o644, ""},
		{"with space.txt", "file", 0o644, "name with a space\n"},
		{"new\nline.txt", "file", 0o644, "name with a newline\n"},
		{"CVSROOT", "dir", 0o775, ""},
		{"CVSROOT/history", "file", 0o664, "O67a1b2c3|sample|~/mod|mod||mod\n"},
		{"CVSROOT/val-tags", "file", 0o664, ""},
		{"CVSROOT/modules", "file", 0o444, "mod mod\n"},
		{"mod", "dir", 0o775, ""},
		{"mod/d1", "dir", 0o775, ""},
		{"mod/d1/CVS", "dir", 0o775, ""},
		{"mod/d1/CVS/fileattr", "file", 0o664, "Ff1.c\t_watched=\n"},
		{"mod/d1/f1.c,v", "file", 0o444, rcs},
		{"mod/d2", "dir", 0o775, ""},
		{"mod/d2/f2.c,v", "file", 0o444, rcs},
		{"ro", "dir", 0o555, ""},
		{"ro/inside.txt", "file", 0o644, "inside a read-only directory\n"},
	}
}

// BuildSample creates under root, which must not exist yet although its
// parent must, a deterministic sample tree of 35 entries: directories
// nested three levels deep, an empty directory, directories with modes
// 0750, 0555 ("ro"), setgid 2775 ("shared") and sticky 1777; files with
// modes 0644, 0600, 0755, 0444 and 0664; symlinks to a file, to a
// directory, to a missing name and to an absolute path; a fifo; names
// containing a space and a newline; and a CVS-like layout (CVSROOT/history,
// CVSROOT/val-tags, CVSROOT/modules, mod/d1/f1.c,v, mod/d2/f2.c,v,
// mod/d1/CVS/fileattr).
//
// Every entry, root included, gets a distinct fixed mtime and atime, set
// after all contents exist and after all modes are applied, so two calls
// produce trees that capture equal (given the same owner). Modes do not
// depend on the umask.
//
// Callers that are not root must make root/ro writable again (chmod 0755)
// before removing the tree. On error a partial tree may be left behind.
func BuildSample(root string) error {
	return buildSampleWith(root, createNode)
}

// buildSampleWith is BuildSample, each entry made by create.
func buildSampleWith(root string, create func(root string, n sampleNode) error) error {
	nodes := sampleNodes()
	for _, n := range nodes {
		if err := create(root, n); err != nil {
			return err
		}
	}
	// Children before parents, so that "ro" loses its write bit last.
	for i := len(nodes) - 1; i >= 0; i-- {
		n := nodes[i]
		if n.kind == "symlink" {
			continue
		}
		if err := os.Chmod(nodePath(root, n), n.mode); err != nil {
			return fmt.Errorf("treeimage: build sample: %w", err)
		}
	}
	// Times last and bottom-up: nothing is created or removed afterwards,
	// so no directory mtime can change again.
	base := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC).UnixNano()
	for i := len(nodes) - 1; i >= 0; i-- {
		mtime := base + int64(i)*int64(time.Hour) + int64(i)*1001
		atime := mtime + int64(30*time.Minute)
		ts := []unix.Timespec{unix.NsecToTimespec(atime), unix.NsecToTimespec(mtime)}
		p := nodePath(root, nodes[i])
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return fmt.Errorf("treeimage: build sample: set times of %s: %w", p, err)
		}
	}
	return nil
}

func nodePath(root string, n sampleNode) string {
	return filepath.Join(root, filepath.FromSlash(n.path))
}

// createNode creates n with owner-only permissions; the final mode is
// applied later by BuildSample.
func createNode(root string, n sampleNode) error {
	p := nodePath(root, n)
	var err error
	switch n.kind {
	case "dir":
		err = os.Mkdir(p, 0o700)
	case "file":
		err = os.WriteFile(p, []byte(n.data), 0o600)
	case "symlink":
		err = os.Symlink(n.data, p)
	case "fifo":
		if err = unix.Mkfifo(p, 0o600); err != nil {
			err = &fs.PathError{Op: "mkfifo", Path: p, Err: err}
		}
	default:
		err = fmt.Errorf("%s: unknown kind %q", p, n.kind)
	}
	if err != nil {
		return fmt.Errorf("treeimage: build sample: %w", err)
	}
	return nil
}
