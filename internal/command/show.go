package command

import (
	"strconv"
	"strings"
)

// Show writes argv on one line, as treetx shows a command, a host or a user
// that a journal or a lock file recorded: an argument holding anything but
// letters, digits and -_./=:,+@% (or empty) is quoted as strconv.Quote
// does, so that control characters are escaped and a recorded command
// cannot write escape sequences to the terminal of whoever reads it.
// scripts/treetx-recover.sh shows them the same way (showarg).
func Show(argv []string) string {
	var b strings.Builder
	for i, a := range argv {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,+@%") == "" {
			b.WriteString(a)
		} else {
			b.WriteString(strconv.Quote(a))
		}
	}
	return b.String()
}
