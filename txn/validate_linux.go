package txn

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// resolveDir turns the directory argument into the directory treetx works
// on, or says why it cannot. A symlink is resolved once, here: the
// transaction, its lock and its shadow are those of the directory it points
// to, so every path to one directory shares one lock.
func resolveDir(arg string) (Names, error) {
	if arg == "" {
		return Names{}, errors.New("no directory given")
	}
	abs, err := filepath.Abs(arg)
	if err != nil {
		return Names{}, fmt.Errorf("%s: %w", arg, err)
	}
	real, err := filepath.EvalSymlinks(abs)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Names{}, fmt.Errorf("%s: no such directory", arg)
		}
		return Names{}, fmt.Errorf("%s: %w", arg, err)
	}
	var st, pst unix.Stat_t
	if err := unix.Stat(real, &st); err != nil {
		return Names{}, fmt.Errorf("%s: %w", real, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return Names{}, fmt.Errorf("%s: not a directory", arg)
	}
	if real == "/" {
		return Names{}, errors.New("/: the root directory has no parent to keep a shadow in")
	}
	n, err := NamesFor(real)
	if err != nil {
		return Names{}, err
	}
	if err := unix.Stat(n.Parent, &pst); err != nil {
		return Names{}, fmt.Errorf("%s: %w", n.Parent, err)
	}
	if st.Dev != pst.Dev || isMountPoint(real) {
		return Names{}, fmt.Errorf("%s: a mount point: its shadow must live on its own file system, beside it; use a directory inside the mount", real)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(n.Parent, &sfs); err != nil {
		return Names{}, fmt.Errorf("%s: %w", n.Parent, err)
	}
	if sfs.Flags&unix.ST_RDONLY != 0 {
		return Names{}, fmt.Errorf("%s: on a read-only file system", real)
	}
	if err := unix.Access(n.Parent, unix.W_OK|unix.X_OK); err != nil {
		return Names{}, fmt.Errorf("%s: parent directory not writable (%v): treetx keeps its lock, journal and shadow there", n.Parent, err)
	}
	return n, nil
}

// isMountPoint reports whether dir is a mount point in this mount namespace
// (a bind mount of a directory of the same file system included).
func isMountPoint(dir string) bool {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && unescapeMount(fields[4]) == dir {
			return true
		}
	}
	return false
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			ok := true
			for _, c := range s[i+1 : i+4] {
				if c < '0' || c > '7' {
					ok = false
					break
				}
				v = v*8 + byte(c-'0')
			}
			if ok {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
