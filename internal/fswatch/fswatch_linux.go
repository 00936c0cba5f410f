// Package fswatch learns which inodes of one file system were opened, read,
// written or had their attributes changed over a span of time, at a cost
// that grows with what was touched, not with the file system's size.
//
// It listens with fanotify on the whole file system (FAN_MARK_FILESYSTEM,
// reporting file handles), which needs CAP_SYS_ADMIN; Start fails without it
// and the caller falls back to looking at every file. Every process's
// changes are seen, whatever path or descriptor they go through, with one
// exception the kernel has no event for: a write through a shared memory
// mapping made before the watch started. Start therefore also counts as
// touched every file on the file system that this process holds open or
// mapped (a child it starts inherits those).
package fswatch

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrLost reports that the kernel dropped events (its queue overflowed) or
// that more distinct files were touched than a Watch keeps: the caller must
// look at every file.
var ErrLost = errors.New("fswatch: events were lost")

// MaxFiles bounds the distinct files a Watch keeps; past it, Stop returns
// ErrLost.
const MaxFiles = 1 << 18

// Content is what Start watches: opens, reads and writes of files.
const Content = unix.FAN_OPEN | unix.FAN_ACCESS | unix.FAN_MODIFY

// Attributes adds changes of mode, owner, times, extended attributes and
// link count.
const Attributes = unix.FAN_ATTRIB

// Watch records the files of one file system that were touched.
type Watch struct {
	fan  int // the fanotify group
	mnt  int // a directory on the file system, for open_by_handle_at
	dev  uint64
	wake [2]int // a pipe that ends the reader

	held  []uint64 // inodes this process held open or mapped at Start
	limit int      // the most distinct files kept

	// Written by the reader goroutine until done is closed.
	handles map[string]struct{}
	lost    bool
	err     error

	done    chan struct{}
	stopped bool
}

// Start watches the file system of the directory dirfd for mask (Content,
// optionally with Attributes) and returns at once; the events are read in
// the background until Stop. dirfd stays the caller's.
func Start(dirfd int, mask uint64) (*Watch, error) {
	var st unix.Stat_t
	if err := unix.Fstat(dirfd, &st); err != nil {
		return nil, fmt.Errorf("fswatch: stat: %w", err)
	}
	fan, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK|unix.FAN_REPORT_FID|unix.FAN_UNLIMITED_QUEUE, unix.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("fswatch: fanotify_init: %w", err)
	}
	w := &Watch{fan: fan, mnt: -1, limit: MaxFiles, wake: [2]int{-1, -1}, dev: st.Dev, handles: map[string]struct{}{}, done: make(chan struct{})}
	if err := unix.FanotifyMark(fan, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, mask, dirfd, ""); err != nil {
		w.closeFds()
		return nil, fmt.Errorf("fswatch: fanotify_mark: %w", err)
	}
	if w.mnt, err = unix.FcntlInt(uintptr(dirfd), unix.F_DUPFD_CLOEXEC, 0); err != nil {
		w.closeFds()
		return nil, fmt.Errorf("fswatch: dup: %w", err)
	}
	if err := unix.Pipe2(w.wake[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		w.closeFds()
		return nil, fmt.Errorf("fswatch: pipe: %w", err)
	}
	if w.held, err = heldInodes(w.dev); err != nil {
		w.closeFds()
		return nil, err
	}
	go w.read()
	return w, nil
}

// Add watches for more events from now on.
func (w *Watch) Add(mask uint64) error {
	if err := unix.FanotifyMark(w.fan, unix.FAN_MARK_ADD|unix.FAN_MARK_FILESYSTEM, mask, w.mnt, ""); err != nil {
		return fmt.Errorf("fswatch: fanotify_mark: %w", err)
	}
	return nil
}

// Stop reads the events still queued, stops watching and returns the
// inodes touched since Start that still exist, sorted, with those held at
// Start. Events for a change are queued before the system call making it
// returns, so Stop sees every change made by a process that has exited. On
// ErrLost or any other error the list is not to be trusted.
func (w *Watch) Stop() ([]uint64, error) {
	if w.stopped {
		return nil, errors.New("fswatch: already stopped")
	}
	w.stopped = true
	defer w.closeFds()
	unix.Write(w.wake[1], []byte{0})
	<-w.done
	if w.err != nil {
		return nil, w.err
	}
	if w.lost {
		return nil, ErrLost
	}
	inos := slices.Clone(w.held)
	for h := range w.handles {
		ino, ok, err := w.resolve(h)
		if err != nil {
			return nil, err
		}
		if ok {
			inos = append(inos, ino)
		}
	}
	slices.Sort(inos)
	return slices.Compact(inos), nil
}

// Close stops watching without reading what was touched. It may follow
// Stop.
func (w *Watch) Close() {
	if w.stopped {
		return
	}
	w.stopped = true
	unix.Write(w.wake[1], []byte{0})
	<-w.done
	w.closeFds()
}

func (w *Watch) closeFds() {
	for _, fd := range []int{w.fan, w.mnt, w.wake[0], w.wake[1]} {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	w.fan, w.mnt, w.wake = -1, -1, [2]int{-1, -1}
}

// read collects the handles of the files events name until woken through
// the pipe, then reads what is left in the queue and returns.
func (w *Watch) read() {
	defer close(w.done)
	buf := make([]byte, 64<<10)
	fds := []unix.PollFd{{Fd: int32(w.fan), Events: unix.POLLIN}, {Fd: int32(w.wake[0]), Events: unix.POLLIN}}
	for {
		if _, err := unix.Poll(fds, -1); err != nil && err != unix.EINTR {
			w.err = fmt.Errorf("fswatch: poll: %w", err)
			return
		}
		stop := fds[1].Revents != 0
		if err := w.drain(buf); err != nil {
			w.err = err
			return
		}
		if stop {
			return
		}
	}
}

// drain reads events until the queue is empty.
func (w *Watch) drain(buf []byte) error {
	for {
		n, err := unix.Read(w.fan, buf)
		switch {
		case err == unix.EAGAIN:
			return nil
		case err == unix.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("fswatch: read events: %w", err)
		}
		if err := w.parse(buf[:n]); err != nil {
			return err
		}
	}
}

// The layout of struct fanotify_event_metadata and of the file identifier
// record that follows it with FAN_REPORT_FID.
const (
	metaLen     = 24 // event_len u32, vers u8, reserved u8, metadata_len u16, mask u64, fd s32, pid s32
	infoHdrLen  = 4  // info_type u8, pad u8, len u16
	fsidLen     = 8
	handleHdr   = 8 // handle_bytes u32, handle_type s32
	metaVersion = 3
)

// parse records the file handle of each event in b.
func (w *Watch) parse(b []byte) error {
	le := binary.NativeEndian
	for len(b) >= metaLen {
		evLen := int(le.Uint32(b))
		if evLen < metaLen || evLen > len(b) {
			return fmt.Errorf("fswatch: event of %d bytes in %d", evLen, len(b))
		}
		ev := b[:evLen]
		b = b[evLen:]
		if ev[4] != metaVersion {
			return fmt.Errorf("fswatch: event version %d, want %d", ev[4], metaVersion)
		}
		if le.Uint64(ev[8:])&unix.FAN_Q_OVERFLOW != 0 {
			w.lost = true
			continue
		}
		ml := int(le.Uint16(ev[6:]))
		if ml < metaLen || ml > evLen {
			return fmt.Errorf("fswatch: event metadata of %d bytes in %d", ml, evLen)
		}
		info := ev[ml:]
		for len(info) >= infoHdrLen {
			typ, l := info[0], int(le.Uint16(info[2:]))
			if l < infoHdrLen || l > len(info) {
				return fmt.Errorf("fswatch: info record of %d bytes in %d", l, len(info))
			}
			rec := info[:l]
			info = info[l:]
			if typ != unix.FAN_EVENT_INFO_TYPE_FID || l < infoHdrLen+fsidLen+handleHdr {
				continue
			}
			h := rec[infoHdrLen+fsidLen:]
			size := int(le.Uint32(h))
			if handleHdr+size > len(h) {
				return fmt.Errorf("fswatch: file handle of %d bytes in %d", size, len(h)-handleHdr)
			}
			// The key: handle_type and the handle's bytes.
			key := h[4 : handleHdr+size]
			if _, ok := w.handles[string(key)]; !ok {
				if len(w.handles) >= w.limit {
					w.lost = true
				} else {
					w.handles[string(key)] = struct{}{}
				}
			}
		}
	}
	return nil
}

// resolve returns the inode a handle key names, if it still exists on the
// watched device.
func (w *Watch) resolve(key string) (uint64, bool, error) {
	typ := int32(binary.NativeEndian.Uint32([]byte(key[:4])))
	fd, err := unix.OpenByHandleAt(w.mnt, unix.NewFileHandle(typ, []byte(key[4:])), unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		if errors.Is(err, unix.ESTALE) || errors.Is(err, unix.ENOENT) {
			return 0, false, nil // deleted: nothing refers to it
		}
		return 0, false, fmt.Errorf("fswatch: open_by_handle_at: %w", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, false, fmt.Errorf("fswatch: stat: %w", err)
	}
	return st.Ino, st.Dev == w.dev, nil
}

// heldInodes lists the files on dev this process has open or mapped.
func heldInodes(dev uint64) ([]uint64, error) {
	var inos []uint64
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil, fmt.Errorf("fswatch: list open files: %w", err)
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Dev == dev && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			inos = append(inos, st.Ino)
		}
	}
	f, err := os.Open("/proc/self/maps")
	if err != nil {
		return nil, fmt.Errorf("fswatch: list mapped files: %w", err)
	}
	defer f.Close()
	want := fmt.Sprintf("%02x:%02x", unix.Major(dev), unix.Minor(dev))
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// address perms offset dev inode path
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 || fields[3] != want {
			continue
		}
		if ino, err := strconv.ParseUint(fields[4], 10, 64); err == nil && ino != 0 {
			inos = append(inos, ino)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("fswatch: list mapped files: %w", err)
	}
	return inos, nil
}
