//go:build linux

package lock

// Inheritable needs the descriptor through which gofrs/flock holds the lock,
// and gofrs/flock does not export it (nor a way to close it without
// unlocking). So it is found from the outside: flock's Stat gives the device
// and inode of its open file; the descriptor is the one in /proc/self/fd that
// refers to that file and whose /proc/self/fdinfo entry lists an FLOCK lock,
// which the kernel shows only on descriptors of the open file description
// that owns the lock. Other descriptors of the same file (such as the one the
// holder record is written through) show no lock and are skipped.

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// fileID returns the device and inode numbers fi describes.
func fileID(fi fs.FileInfo) (dev, ino uint64, err error) {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, 0, fmt.Errorf("no device and inode numbers for %s", fi.Name())
	}
	return uint64(st.Dev), st.Ino, nil
}

// isLockFD reports whether descriptor fd refers to the file (dev, ino) and
// belongs to an open file description that holds an flock lock.
func isLockFD(fd int, dev, ino uint64) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, fmt.Errorf("fstat descriptor %d: %w", fd, err)
	}
	if uint64(st.Dev) != dev || st.Ino != ino {
		return false, nil
	}
	info := "/proc/self/fdinfo/" + strconv.Itoa(fd)
	data, err := os.ReadFile(info)
	if err != nil {
		return false, fmt.Errorf("read %s: %w", info, err)
	}
	// A line reads like "lock:\t1: FLOCK  ADVISORY  WRITE 1234 fe:00:5678 0 EOF".
	// POSIX record locks are shown on every descriptor of the file, so
	// only FLOCK lines count.
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "lock:"); ok && strings.Contains(rest, " FLOCK ") {
			return true, nil
		}
	}
	return false, nil
}

// lockFD returns the descriptor through which this process holds the flock
// lock on the file fi describes. If known is not negative, it is the
// descriptor found before, and is only checked.
func lockFD(fi fs.FileInfo, known int) (int, error) {
	dev, ino, err := fileID(fi)
	if err != nil {
		return -1, err
	}
	if known >= 0 {
		ok, err := isLockFD(known, dev, ino)
		if err != nil {
			return -1, err
		}
		if !ok {
			return -1, fmt.Errorf("descriptor %d no longer holds the lock", known)
		}
		return known, nil
	}
	const dir = "/proc/self/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return -1, fmt.Errorf("list %s: %w", dir, err)
	}
	var found []int
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		// An error means the descriptor was closed since it was listed
		// (ReadDir's own is), so it is not the lock's.
		if ok, err := isLockFD(fd, dev, ino); err == nil && ok {
			found = append(found, fd)
		}
	}
	switch len(found) {
	case 0:
		return -1, fmt.Errorf("no descriptor in %s holds an flock lock on the file", dir)
	case 1:
		return found[0], nil
	default:
		return -1, fmt.Errorf("descriptors %v in %s all hold flock locks on the file (several locks on one file in this process?), cannot tell which is this lock's", found, dir)
	}
}

// dupLockFD duplicates descriptor fd, which lockFD returned for fi, with
// close-on-exec set (exec.Cmd.ExtraFiles clears it in the child), and checks
// that the copy still refers to the locked open file description.
func dupLockFD(fd int, fi fs.FileInfo, name string) (*os.File, error) {
	dev, ino, err := fileID(fi)
	if err != nil {
		return nil, err
	}
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate descriptor %d: %w", fd, err)
	}
	ok, err := isLockFD(nfd, dev, ino)
	if err == nil && !ok {
		err = fmt.Errorf("copy %d of descriptor %d does not hold the lock", nfd, fd)
	}
	if err != nil {
		unix.Close(nfd)
		return nil, err
	}
	return os.NewFile(uintptr(nfd), name), nil
}

// startSlack is how much later than a record's Since its pid's process may
// appear to have started and still be taken for the recorder: the start time
// computed from /proc is only good to about a second.
const startSlack = 5 * time.Second

// clockTicks is USER_HZ, the unit of start times in /proc/PID/stat; it is
// 100 on every Linux architecture.
const clockTicks = 100

// processRunning reports whether the process pid, which recorded itself at
// since, still runs on this host. It does not if kill(pid, 0) fails with
// ESRCH, if the process is a zombie (it has exited, and so closed its
// descriptors, but has not been waited for), or if it started after since,
// which means the pid was reused (after a reboot, say). When in doubt it
// reports true.
func processRunning(pid int, since time.Time) bool {
	if pid <= 0 {
		return false
	}
	if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
		return false
	}
	state, start, err := processStat(pid)
	if err != nil {
		return true
	}
	if state == "Z" || state == "X" {
		return false
	}
	return since.IsZero() || !start.After(since.Add(startSlack))
}

// processStat returns the state of process pid and when it started, from
// /proc/PID/stat (where the start time is in clock ticks since boot) and the
// boot time in /proc/stat.
func processStat(pid int) (state string, start time.Time, err error) {
	statPath := "/proc/" + strconv.Itoa(pid) + "/stat"
	data, err := os.ReadFile(statPath)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("read %s: %w", statPath, err)
	}
	// The second field, the command name in parentheses, may hold spaces
	// and parentheses; the fields after the last ')' start with the third.
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return "", time.Time{}, fmt.Errorf("parse %s: no ')'", statPath)
	}
	fields := strings.Fields(string(data[i+1:]))
	const stateField, startField = 3 - 3, 22 - 3
	if len(fields) <= startField {
		return "", time.Time{}, fmt.Errorf("parse %s: %d fields", statPath, len(fields)+2)
	}
	ticks, err := strconv.ParseUint(fields[startField], 10, 64)
	if err != nil {
		return "", time.Time{}, fmt.Errorf("parse %s: start time: %w", statPath, err)
	}
	boot, err := bootTime()
	if err != nil {
		return "", time.Time{}, err
	}
	return fields[stateField], boot.Add(time.Duration(ticks) * time.Second / clockTicks), nil
}

// bootTime returns when the system booted, from the btime line of /proc/stat.
func bootTime() (time.Time, error) {
	const statPath = "/proc/stat"
	data, err := os.ReadFile(statPath)
	if err != nil {
		return time.Time{}, fmt.Errorf("read %s: %w", statPath, err)
	}
	for line := range strings.Lines(string(data)) {
		if rest, ok := strings.CutPrefix(line, "btime "); ok {
			secs, err := strconv.ParseInt(strings.TrimSpace(rest), 10, 64)
			if err != nil {
				return time.Time{}, fmt.Errorf("parse %s: btime: %w", statPath, err)
			}
			return time.Unix(secs, 0), nil
		}
	}
	return time.Time{}, fmt.Errorf("parse %s: no btime line", statPath)
}

// Inherited reports whether descriptor fd, which this process inherited, is
// open on the lock file at path and holds its lock, and in which mode: the
// kernel lists an flock lock in /proc/self/fdinfo only on descriptors of the
// open file description that holds it, so no one can claim a lock by naming
// a descriptor number. The lock file is looked up without following a
// symlink.
func Inherited(fd int, path string) (Mode, bool) {
	var fst unix.Stat_t
	if fd < 0 || unix.Fstat(fd, &fst) != nil || fst.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, false
	}
	var st unix.Stat_t
	if unix.Lstat(path, &st) != nil || st.Dev != fst.Dev || st.Ino != fst.Ino {
		return 0, false
	}
	data, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(fd))
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(data)) {
		rest, ok := strings.CutPrefix(line, "lock:")
		if !ok || !strings.Contains(rest, " FLOCK ") {
			continue
		}
		switch {
		case strings.Contains(rest, " WRITE "):
			return Exclusive, true
		case strings.Contains(rest, " READ "):
			return Shared, true
		}
	}
	return 0, false
}
