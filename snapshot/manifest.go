package snapshot

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/internal/safeopen"
)

// The manifest records, for every file the shadow hard-links, the metadata
// that goes through the shared inode (mode, owner, times) and what shows an
// in-place write (size, mtime), so that a rollback can restore the one and
// detect the other. It is text, one record a line, so that a shell script can
// read it:
//
//	# treetx manifest 1
//	INO MODE UID GID SIZE ATIME MTIME XATTRS PATH
//	...
//	# end COUNT
//
// The records of the files of one directory are contiguous. MODE is octal (permission, setuid, setgid and sticky bits), ATIME and MTIME
// are SECONDS.NANOSECONDS, and PATH is relative to the tree's root with every
// byte outside '!'..'~' and every backslash written as \0NNN (octal), the form
// printf(1)'s %b reads. XATTRS is "-" for a file without extended attributes,
// else NAME=HEXVALUE pairs joined by commas, NAME escaped as PATH is and ','
// and '=' escaped too. A manifest without its end line is incomplete.

const manifestHeader = "# treetx manifest 1"

// Record is one hard-linked file as the snapshot found it.
type Record struct {
	Path         string // slash-separated, relative to the tree's root
	Ino          uint64
	Mode         uint32 // permission, setuid, setgid and sticky bits
	UID, GID     uint32
	Size         int64
	Atime, Mtime unix.Timespec
	Xattrs       []Xattr // sorted by name
}

func recordOf(rel string, st *unix.Stat_t) Record {
	return Record{
		Path: rel, Ino: st.Ino, Mode: st.Mode & 07777, UID: st.Uid, GID: st.Gid,
		Size: st.Size, Atime: st.Atim, Mtime: st.Mtim,
	}
}

// contentChanged reports whether st no longer matches r's size and mtime: the
// file was written in place.
func (r *Record) contentChanged(st *unix.Stat_t) bool {
	return st.Size != r.Size || st.Mtim != r.Mtime
}

// ManifestWriter writes manifest records to an underlying writer.
type ManifestWriter struct {
	w     *bufio.Writer
	buf   []byte
	count int64
	off   int64 // bytes written
	index *Index
	err   error
}

// NewManifestWriter writes the manifest header to w and returns a writer for
// the records.
func NewManifestWriter(w io.Writer) *ManifestWriter {
	m := &ManifestWriter{w: bufio.NewWriterSize(w, 256<<10)}
	m.write([]byte(manifestHeader + "\n"))
	return m
}

// KeepIndex makes the writer index the records it writes from now on, by
// inode (12 bytes a record): see Index.
func (m *ManifestWriter) KeepIndex() { m.index = &Index{} }

// Index returns the index of the records written, or nil without KeepIndex
// or for a manifest too big to index (4 GiB). Call it after Close.
func (m *ManifestWriter) Index() *Index {
	if m.index == nil || m.index.tooBig {
		return nil
	}
	if !m.index.sorted {
		for _, c := range m.index.chunks {
			sort.Sort(c)
		}
		m.index.sorted = true
	}
	return m.index
}

func (m *ManifestWriter) write(b []byte) {
	if m.err == nil {
		var n int
		n, m.err = m.w.Write(b)
		m.off += int64(n)
	}
}

// Add appends one record.
func (m *ManifestWriter) Add(r Record) error {
	if m.err != nil {
		return m.err
	}
	b := m.buf[:0]
	b = strconv.AppendUint(b, r.Ino, 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(r.Mode), 8)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(r.UID), 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, uint64(r.GID), 10)
	b = append(b, ' ')
	b = strconv.AppendInt(b, r.Size, 10)
	b = append(b, ' ')
	b = appendTime(b, r.Atime)
	b = append(b, ' ')
	b = appendTime(b, r.Mtime)
	b = append(b, ' ')
	b = appendXattrs(b, r.Xattrs)
	b = append(b, ' ')
	b = appendEscaped(b, r.Path, "")
	b = append(b, '\n')
	m.buf = b
	if m.index != nil {
		m.index.add(r.Ino, m.off)
	}
	m.write(b)
	m.count++
	return m.err
}

// Close writes the end line and flushes. It does not sync.
func (m *ManifestWriter) Close() error {
	if m.err != nil {
		return m.err
	}
	if _, err := fmt.Fprintf(m.w, "# end %d\n", m.count); err != nil {
		return err
	}
	return m.w.Flush()
}

func appendTime(b []byte, t unix.Timespec) []byte {
	b = strconv.AppendInt(b, t.Sec, 10)
	b = append(b, '.')
	ns := strconv.FormatInt(t.Nsec, 10)
	for i := len(ns); i < 9; i++ {
		b = append(b, '0')
	}
	return append(b, ns...)
}

func appendXattrs(b []byte, xs []Xattr) []byte {
	if len(xs) == 0 {
		return append(b, '-')
	}
	for i, x := range xs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendEscaped(b, x.Name, ",=")
		b = append(b, '=')
		b = hex.AppendEncode(b, x.Value)
	}
	return b
}

func parseXattrs(s string) ([]Xattr, error) {
	if s == "-" {
		return nil, nil
	}
	var xs []Xattr
	for part := range strings.SplitSeq(s, ",") {
		name, value, ok := strings.Cut(part, "=")
		if !ok {
			return nil, fmt.Errorf("extended attribute %q: no '='", part)
		}
		n, err := unescape(name)
		if err != nil {
			return nil, err
		}
		v, err := hex.DecodeString(value)
		if err != nil {
			return nil, fmt.Errorf("extended attribute %q: %w", n, err)
		}
		xs = append(xs, Xattr{Name: n, Value: v})
	}
	return xs, nil
}

// appendEscaped appends s with every byte outside '!'..'~', every backslash
// and every byte of extra written as \0NNN.
func appendEscaped(b []byte, s, extra string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c > ' ' && c < 0x7f && c != '\\' && strings.IndexByte(extra, c) < 0 {
			b = append(b, c)
			continue
		}
		b = append(b, '\\', '0', '0'+c>>6, '0'+(c>>3)&7, '0'+c&7)
	}
	return b
}

// Index locates the records of a manifest by inode, so that the records of
// a few files can be read without reading the whole manifest. It holds 12
// bytes a record, in fixed-size chunks each sorted by inode: no chunk is
// ever copied to grow, so memory stays at what the records need.
type Index struct {
	chunks []*indexChunk
	sorted bool
	tooBig bool // an offset past 4 GiB: not kept
}

const indexChunkLen = 1 << 16

// indexChunk holds up to indexChunkLen records' inodes and offsets.
type indexChunk struct {
	inos []uint64
	offs []uint32
}

func (c *indexChunk) Len() int           { return len(c.inos) }
func (c *indexChunk) Less(i, j int) bool { return c.inos[i] < c.inos[j] }
func (c *indexChunk) Swap(i, j int) {
	c.inos[i], c.inos[j] = c.inos[j], c.inos[i]
	c.offs[i], c.offs[j] = c.offs[j], c.offs[i]
}

func (x *Index) add(ino uint64, off int64) {
	if off > math.MaxUint32 {
		x.tooBig, x.chunks = true, nil
	}
	if x.tooBig {
		return
	}
	if len(x.chunks) == 0 || len(x.chunks[len(x.chunks)-1].inos) == indexChunkLen {
		x.chunks = append(x.chunks, &indexChunk{make([]uint64, 0, indexChunkLen), make([]uint32, 0, indexChunkLen)})
	}
	c := x.chunks[len(x.chunks)-1]
	c.inos = append(c.inos, ino)
	c.offs = append(c.offs, uint32(off))
}

// find appends the offsets of ino's records to offs.
func (x *Index) find(ino uint64, offs []int64) []int64 {
	for _, c := range x.chunks {
		for i, _ := slices.BinarySearch(c.inos, ino); i < len(c.inos) && c.inos[i] == ino; i++ {
			offs = append(offs, int64(c.offs[i]))
		}
	}
	return offs
}

// Records yields manifest records, in some order, to fn; it stops at fn's
// first error and returns it.
type Records func(fn func(Record) error) error

// AllRecords yields every record of the manifest in r, in order (see
// ReadManifest).
func AllRecords(r io.Reader) Records {
	return func(fn func(Record) error) error { return ReadManifest(r, fn) }
}

// RecordsOf yields the records of the inodes inos (sorted) that idx, the
// index of the manifest in r, has; inodes it does not have are not the
// manifest's. The records come in the manifest's order, so that those of one
// directory come together.
func RecordsOf(r io.ReaderAt, idx *Index, inos []uint64) Records {
	return func(fn func(Record) error) error {
		var offs []int64
		for _, ino := range inos {
			offs = idx.find(ino, offs)
		}
		slices.Sort(offs)
		var line []byte
		for _, off := range offs {
			var err error
			if line, err = readLine(r, off, line); err != nil {
				return fmt.Errorf("read manifest at byte %d: %w", off, err)
			}
			rec, err := parseRecord(string(line))
			if _, ok := slices.BinarySearch(inos, rec.Ino); err == nil && !ok {
				err = fmt.Errorf("inode %d is not one of those asked for", rec.Ino)
			}
			if err != nil {
				return fmt.Errorf("%w: byte %d: %v", ErrManifestCorrupt, off, err)
			}
			if err := fn(rec); err != nil {
				return err
			}
		}
		return nil
	}
}

// readLine reads the line at off in r, without its newline, into buf.
func readLine(r io.ReaderAt, off int64, buf []byte) ([]byte, error) {
	size := 512
	for {
		if cap(buf) < size {
			buf = make([]byte, size)
		}
		buf = buf[:size]
		n, err := r.ReadAt(buf, off)
		if i := bytes.IndexByte(buf[:n], '\n'); i >= 0 {
			return buf[:i], nil
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if size >= 1<<20 {
			return nil, errors.New("line longer than 1 MiB")
		}
		size *= 4
	}
}

// ErrManifestCorrupt reports a manifest that cannot be trusted.
var ErrManifestCorrupt = errors.New("manifest is corrupt or incomplete")

// ReadManifest calls fn for each record of the manifest in r, in order. It
// fails with ErrManifestCorrupt on a malformed line or a missing end line; fn
// may have been called for some records by then.
func ReadManifest(r io.Reader, fn func(Record) error) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	var count int64
	ended := false
	for sc.Scan() {
		line++
		text := sc.Text()
		if line == 1 {
			if text != manifestHeader {
				return fmt.Errorf("%w: line 1 is %q, want %q", ErrManifestCorrupt, text, manifestHeader)
			}
			continue
		}
		if ended {
			return fmt.Errorf("%w: line %d after the end line", ErrManifestCorrupt, line)
		}
		if n, ok := strings.CutPrefix(text, "# end "); ok {
			want, err := strconv.ParseInt(n, 10, 64)
			if err != nil || want != count {
				return fmt.Errorf("%w: end line says %q records, read %d", ErrManifestCorrupt, n, count)
			}
			ended = true
			continue
		}
		rec, err := parseRecord(text)
		if err != nil {
			return fmt.Errorf("%w: line %d: %v", ErrManifestCorrupt, line, err)
		}
		count++
		if err := fn(rec); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if !ended {
		return fmt.Errorf("%w: no end line after %d records", ErrManifestCorrupt, count)
	}
	return nil
}

func parseRecord(text string) (Record, error) {
	f := strings.SplitN(text, " ", 9)
	if len(f) != 9 {
		return Record{}, fmt.Errorf("%d fields, want 9", len(f))
	}
	var r Record
	var err error
	var v uint64
	if r.Ino, err = strconv.ParseUint(f[0], 10, 64); err != nil {
		return r, err
	}
	if v, err = strconv.ParseUint(f[1], 8, 32); err != nil {
		return r, err
	}
	r.Mode = uint32(v)
	if v, err = strconv.ParseUint(f[2], 10, 32); err != nil {
		return r, err
	}
	r.UID = uint32(v)
	if v, err = strconv.ParseUint(f[3], 10, 32); err != nil {
		return r, err
	}
	r.GID = uint32(v)
	if r.Size, err = strconv.ParseInt(f[4], 10, 64); err != nil {
		return r, err
	}
	if r.Atime, err = parseTime(f[5]); err != nil {
		return r, err
	}
	if r.Mtime, err = parseTime(f[6]); err != nil {
		return r, err
	}
	if r.Xattrs, err = parseXattrs(f[7]); err != nil {
		return r, err
	}
	if r.Path, err = unescape(f[8]); err != nil {
		return r, err
	}
	return r, r.check()
}

// check refuses a record that treetx could not have written: a path that
// is not relative or leaves the tree by its form, a mode beyond the
// permission, set-id and sticky bits, an owner of -1 (which chown reads as
// "unchanged"), a negative size, nanoseconds out of range, an unnamed
// extended attribute.
func (r *Record) check() error {
	if err := safeopen.CheckRel(r.Path, false); err != nil {
		return err
	}
	switch {
	case r.Mode > 0o7777:
		return fmt.Errorf("mode %#o beyond 07777", r.Mode)
	case r.UID == math.MaxUint32 || r.GID == math.MaxUint32:
		return fmt.Errorf("owner %d:%d: -1 is no owner", r.UID, r.GID)
	case r.Size < 0:
		return fmt.Errorf("negative size %d", r.Size)
	case r.Atime.Nsec < 0 || r.Atime.Nsec >= 1e9 || r.Mtime.Nsec < 0 || r.Mtime.Nsec >= 1e9:
		return errors.New("nanoseconds out of range")
	}
	for _, x := range r.Xattrs {
		if x.Name == "" || strings.IndexByte(x.Name, 0) >= 0 {
			return fmt.Errorf("extended attribute name %q", x.Name)
		}
	}
	return nil
}

func parseTime(s string) (unix.Timespec, error) {
	sec, ns, ok := strings.Cut(s, ".")
	if !ok || len(ns) != 9 {
		return unix.Timespec{}, fmt.Errorf("time %q: want SECONDS.NANOSECONDS", s)
	}
	a, err := strconv.ParseInt(sec, 10, 64)
	if err != nil {
		return unix.Timespec{}, err
	}
	b, err := strconv.ParseInt(ns, 10, 64)
	if err != nil {
		return unix.Timespec{}, err
	}
	return unix.Timespec{Sec: a, Nsec: b}, nil
}

func unescape(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b = append(b, s[i])
			continue
		}
		if i+5 > len(s) {
			return "", fmt.Errorf("path %q: short escape", s)
		}
		v, err := strconv.ParseUint(s[i+2:i+5], 8, 8)
		if err != nil || s[i+1] != '0' {
			return "", fmt.Errorf("path %q: bad escape at byte %d", s, i)
		}
		b = append(b, byte(v))
		i += 4
	}
	return string(b), nil
}
