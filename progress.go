package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/treetx/treetx/txn"
)

// progressLine shows how a long phase is going on one line of a terminal,
//
//	treetx: building the shadow: 120,000 entries, 31,250/s
//
// redrawn in place, and erases it when the phase is over, so that nothing
// of it stays among the command's output. Where stderr is not a terminal,
// or with --quiet, newProgressLine returns nil, whose methods do nothing.
// Its methods may be called from several goroutines.
type progressLine struct {
	w   io.Writer
	fd  int // w's
	now func() time.Time

	mu    sync.Mutex
	shown bool
	phase string    // the phase shown
	n0    int64     // entries done at the phase's first update
	t0    time.Time // and when
}

// newProgressLine returns a progressLine on w, or nil if w is not a
// terminal or quiet is set.
func newProgressLine(w io.Writer, quiet bool) *progressLine {
	f, ok := w.(*os.File)
	if quiet || !ok {
		return nil
	}
	if _, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS); err != nil {
		return nil
	}
	return &progressLine{w: w, fd: int(f.Fd()), now: time.Now}
}

// entries shows that done entries of phase are done, of total when total is
// above 0, and how many a second since the phase's first update.
func (p *progressLine) entries(phase string, done, total int64) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if phase != p.phase {
		p.phase, p.n0, p.t0 = phase, done, now
	}
	line := fmt.Sprintf("treetx: %s: %s", phase, thousands(done))
	if total > 0 {
		line += fmt.Sprintf(" of %s entries (%d%%)", thousands(total), done*100/total)
	} else {
		line += " entries"
	}
	if dt := now.Sub(p.t0); dt >= 500*time.Millisecond && done > p.n0 {
		line += fmt.Sprintf(", %s/s", thousands(int64(float64(done-p.n0)/dt.Seconds())))
	}
	p.draw(line)
}

// report returns p.entries as a txn.Progress, or nil when p is nil (no
// terminal), so that the library counts nothing for nothing.
func (p *progressLine) report() txn.Progress {
	if p == nil {
		return nil
	}
	return p.entries
}

// status shows line as it is.
func (p *progressLine) status(line string) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.phase = ""
	p.draw(line)
}

// draw shows line in place of the one shown, cut to the terminal's width:
// a line that wrapped could not be erased.
func (p *progressLine) draw(line string) {
	if ws, err := unix.IoctlGetWinsize(p.fd, unix.TIOCGWINSZ); err == nil && ws.Col > 1 {
		if r := []rune(line); len(r) >= int(ws.Col) {
			line = string(r[:ws.Col-1])
		}
	}
	p.shown = true
	fmt.Fprintf(p.w, "\r%s\x1b[K", line)
}

// clear erases the line, if one is shown.
func (p *progressLine) clear() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
	p.shown, p.phase = false, ""
}

// thousands writes n (not negative) with commas between groups of three
// digits.
func thousands(n int64) string {
	s := strconv.FormatInt(n, 10)
	b := make([]byte, 0, len(s)+len(s)/3)
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			b = append(b, ',')
		}
		b = append(b, s[i])
	}
	return string(b)
}
