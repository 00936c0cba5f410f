package integration

import (
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/treeimage"
)

// The test binary doubles as a setxattr(1) for commands: with these
// variables set, TestMain sets the attribute and exits (see helperMain).
const (
	helperPath  = "TREETX_IT_SETXATTR_PATH"
	helperName  = "TREETX_IT_SETXATTR_NAME"
	helperValue = "TREETX_IT_SETXATTR_VALUE"
)

// helperMain runs instead of the tests when the binary is used as a
// command; it reports whether it did.
func helperMain() (bool, int) {
	p, ok := os.LookupEnv(helperPath)
	if !ok {
		return false, 0
	}
	if err := unix.Setxattr(p, os.Getenv(helperName), []byte(os.Getenv(helperValue)), 0); err != nil {
		os.Stderr.WriteString("setxattr " + p + ": " + err.Error() + "\n")
		return true, 1
	}
	return true, 0
}

// defaultACL is a minimal POSIX default ACL (u::rwx,g::r-x,o::r-x) in the
// kernel's xattr format.
func defaultACL() []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2) // version
	for _, e := range []struct{ tag, perm uint16 }{{0x01, 7}, {0x04, 5}, {0x20, 5}} {
		b = binary.LittleEndian.AppendUint16(b, e.tag)
		b = binary.LittleEndian.AppendUint16(b, e.perm)
		b = binary.LittleEndian.AppendUint32(b, 0xffffffff)
	}
	return b
}

func getxattr(t *testing.T, path, name string) (string, error) {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(path, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func setxattr(t *testing.T, path, name string, value []byte) {
	t.Helper()
	if err := unix.Setxattr(path, name, value, 0); err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			t.Skipf("setxattr %s %s: the file system does not support it: %v", path, name, err)
		}
		t.Fatalf("setxattr %s %s: %v", path, name, err)
	}
}

// TestRollbackKeepsExtendedAttributes: extended attributes are part of the
// tree (a shared repository's default ACL, labels): a rollback must not
// strip them from directories the command never touched, and must undo the
// command's changes to a file's attributes (they reach the shadow through
// the shared inode, as chmod does).
func TestRollbackKeepsExtendedAttributes(t *testing.T) {
	t.Parallel()
	const acl = "system.posix_acl_default"
	tests := []struct {
		name    string
		path    string // relative to the tree
		attr    string
		value   []byte
		changes bool // the command sets the attribute to "new"
	}{
		{"user xattr of the root, command does nothing", ".", "user.treetx-test", []byte("root"), false},
		{"user xattr of a subdirectory, command does nothing", "sub", "user.treetx-test", []byte("sub"), false},
		{"default ACL of a subdirectory, command does nothing", "sub", acl, defaultACL(), false},
		{"user xattr of a file, command does nothing", "sub/f", "user.treetx-test", []byte("file"), false},
		{"user xattr of a file, command changes it", "sub/f", "user.treetx-test", []byte("old"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			parent, tree := newTree(t, map[string]string{"sub/f": "f\n", "g": "g\n"})
			target := filepath.Join(tree, tt.path)
			setxattr(t, target, tt.attr, tt.value)
			before := capture(t, tree)
			inv := invocation{args: runArgs(tree, script("exit 1"))}
			if tt.changes {
				// The command is this test binary, as setxattr.
				inv.args = runArgs(tree, []string{"sh", "-c", `"$0" || exit 99; exit 1`, self(t)})
				inv.env = []string{helperPath + "=" + target, helperName + "=" + tt.attr, helperValue + "=new"}
			}
			r := invoke(t, inv)
			wantCode(t, r, 1)
			treeimage.AssertEqual(t, "before", before, "after rollback", capture(t, tree))
			got, err := getxattr(t, target, tt.attr)
			if err != nil || got != string(tt.value) {
				t.Errorf("%s of %s after rollback = %q, %v; want %q", tt.attr, tt.path, got, err, tt.value)
			}
			noLeftovers(t, parent, "tree")
		})
	}
}

// self is the path of the running test binary.
func self(t *testing.T) string {
	t.Helper()
	p, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return p
}
