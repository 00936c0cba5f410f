package snapshot

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// dirent is one directory entry with the type its d_type gave.
type dirent struct {
	name string
	typ  os.FileMode // os.ModeDir, os.ModeSymlink, 0 for regular, other type bits
}

// readDir lists the entries of fd, a directory just opened, without "." and
// "..", with their types from getdents64 (lstat only where the file system
// gives no type). scratch is reused between calls. Reading through the
// descriptor the caller already holds spares an open, a stat and a close per
// directory.
func readDir(fd int, scratch []byte) ([]dirent, error) {
	var out []dirent
	for {
		n, err := unix.Getdents(fd, scratch)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return out, nil
		}
		for b := scratch[:n]; len(b) > 0; {
			// struct linux_dirent64: d_ino u64, d_off s64, d_reclen u16, d_type u8, d_name.
			const nameOff = int(unsafe.Offsetof(unix.Dirent{}.Name))
			reclen := int(binary.NativeEndian.Uint16(b[16:]))
			if reclen < nameOff || reclen > len(b) {
				return nil, fmt.Errorf("getdents: record of %d bytes in %d", reclen, len(b))
			}
			typ, name := b[18], b[nameOff:reclen]
			b = b[reclen:]
			for i, c := range name {
				if c == 0 {
					name = name[:i]
					break
				}
			}
			if string(name) == "." || string(name) == ".." {
				continue
			}
			e := dirent{name: string(name)}
			switch typ {
			case unix.DT_REG:
			case unix.DT_DIR:
				e.typ = os.ModeDir
			case unix.DT_LNK:
				e.typ = os.ModeSymlink
			case unix.DT_FIFO:
				e.typ = os.ModeNamedPipe
			case unix.DT_SOCK:
				e.typ = os.ModeSocket
			case unix.DT_CHR:
				e.typ = os.ModeDevice | os.ModeCharDevice
			case unix.DT_BLK:
				e.typ = os.ModeDevice
			default: // DT_UNKNOWN: the file system does not say
				var st unix.Stat_t
				if err := lstatAt(fd, e.name, &st); err != nil {
					if err == unix.ENOENT {
						continue
					}
					return nil, err
				}
				e.typ = modeType(st.Mode)
			}
			out = append(out, e)
		}
	}
}

// modeType is the os.FileMode type bits of a stat mode.
func modeType(m uint32) os.FileMode {
	switch m & unix.S_IFMT {
	case unix.S_IFDIR:
		return os.ModeDir
	case unix.S_IFLNK:
		return os.ModeSymlink
	case unix.S_IFIFO:
		return os.ModeNamedPipe
	case unix.S_IFSOCK:
		return os.ModeSocket
	case unix.S_IFCHR:
		return os.ModeDevice | os.ModeCharDevice
	case unix.S_IFBLK:
		return os.ModeDevice
	}
	return 0
}

// newScratch returns a buffer for readDir.
func newScratch() []byte { return make([]byte, 64<<10) }
