package snapshot

import (
	"fmt"
	"path"
	"strings"
)

// DefaultExcludes are the lock and temporary names of CVS and RCS, which a
// shadow always leaves out: a lock copied into the shadow would come back on
// rollback and block the repository. They are outside the transaction.
func DefaultExcludes() []string {
	return []string{
		"#cvs.lock", "#cvs.rfl.*", "#cvs.wfl.*", "#cvs.pfl.*",
		"#cvs.history.lock", "#cvs.val-tags.lock",
		",*,", // RCS and CVS ",NAME," temporaries
	}
}

// CVSCopies are the files CVS writes in place rather than replacing by
// rename; in a CVS repository the shadow holds real copies of them, since a
// hard link would share their changes.
func CVSCopies() []string {
	return []string{"CVSROOT/history", "CVSROOT/val-tags", "**/CVS/fileattr"}
}

// Matcher matches slash-separated paths relative to the tree's root against
// glob patterns (path.Match syntax). A pattern without a slash matches an
// entry's base name at any depth; a pattern with a slash matches the whole
// relative path; a pattern starting with "**/" matches the rest of the pattern
// against the relative path and every trailing part of it.
type Matcher struct {
	patterns []string
	// literal is each pattern's part before its first wildcard (after
	// "**/"): a name without it as a prefix cannot match, which rules out
	// nearly every name without calling path.Match.
	literal []string
}

// NewMatcher checks the patterns and returns a Matcher for them.
func NewMatcher(patterns ...string) (*Matcher, error) {
	m := &Matcher{patterns: patterns}
	for _, p := range patterns {
		if p == "" {
			return nil, fmt.Errorf("empty glob pattern")
		}
		p = strings.TrimPrefix(p, "**/")
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("glob pattern %q: %w", p, err)
		}
		if i := strings.IndexAny(p, `*?[\`); i >= 0 {
			p = p[:i]
		}
		m.literal = append(m.literal, p)
	}
	return m, nil
}

// Match reports whether rel (a slash-separated relative path) matches one of
// the patterns. A nil Matcher matches nothing.
func (m *Matcher) Match(rel string) bool {
	if m == nil {
		return false
	}
	base := path.Base(rel)
	for i, p := range m.patterns {
		lit := m.literal[i]
		switch {
		case strings.HasPrefix(p, "**/"):
			p = p[3:]
			for s := rel; ; {
				if strings.HasPrefix(s, lit) {
					if ok, _ := path.Match(p, s); ok {
						return true
					}
				}
				i := strings.IndexByte(s, '/')
				if i < 0 {
					break
				}
				s = s[i+1:]
			}
		case strings.Contains(p, "/"):
			if !strings.HasPrefix(rel, lit) {
				continue
			}
			if ok, _ := path.Match(p, rel); ok {
				return true
			}
		default:
			if !strings.HasPrefix(base, lit) {
				continue
			}
			if ok, _ := path.Match(p, base); ok {
				return true
			}
		}
	}
	return false
}
