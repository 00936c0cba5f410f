package creds

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/testenv"
)

// TestDoActsAsTheUser checks that work done through Do has the user's
// identity and no privilege: files it makes are the user's, and it can
// neither give a file away, nor open root's files, nor set file
// capabilities, while the rest of the process stays root.
func TestDoActsAsTheUser(t *testing.T) {
	testenv.Require(t, testenv.Root)
	dir, err := os.MkdirTemp("", "creds")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(dir, "secret")
	if err := os.WriteFile(secret, []byte("root only"), 0o600); err != nil {
		t.Fatal(err)
	}
	id := Of(65534)
	mine := filepath.Join(dir, "mine")
	err = Do(&id, func() error {
		if err := os.WriteFile(mine, nil, 0o755); err != nil {
			return err
		}
		if err := unix.Lchown(mine, 0, 0); !errors.Is(err, unix.EPERM) {
			t.Errorf("chown to root as the user: %v, want EPERM", err)
		}
		if _, err := os.ReadFile(secret); !errors.Is(err, os.ErrPermission) {
			t.Errorf("read root's 0600 file as the user: %v, want a permission error", err)
		}
		capv := []byte{0, 0, 0, 2, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
		if err := unix.Setxattr(mine, "security.capability", capv, 0); err == nil {
			t.Errorf("set security.capability as the user: allowed")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(mine, &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 65534 {
		t.Errorf("file made as the user is owned by uid %d", st.Uid)
	}
	// This goroutine's thread and the others are still root.
	if _, err := os.ReadFile(secret); err != nil {
		t.Errorf("root after Do: %v", err)
	}
	if For(0) != nil {
		t.Errorf("For(0) is not nil")
	}
	if got := For(65534); got == nil || got.UID != 65534 {
		t.Errorf("For(65534) = %v", got)
	}
}
