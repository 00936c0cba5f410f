#!/bin/sh
# treetx-recover.sh: `treetx recover DIR...` without the treetx binary.
#
# Usage: treetx-recover.sh [-n] DIR...
#
# For each DIR, finishes or undoes what a crash of treetx left beside it,
# exactly as `treetx recover` does: the crash-state table of
# docs/protocol.md, the same steps in the same order, the same fsyncs. It is
# for machines without the binary and for early boot, and needs only a POSIX
# sh, GNU coreutils 8.24 or later (mv, rm, stat, sync, touch, chmod, chown,
# realpath, od, dd), sed, awk, util-linux flock(1), and, run as root,
# util-linux setpriv(1); Linux with /proc mounted. Extended attributes (POSIX
# ACLs among them) are restored only when getfattr and setfattr (the attr
# package) are present; without them they are not, and the output says so
# when the manifest records any.
#
#   -n   dry run: say what would be done, change nothing (shared lock)
#
# It trusts nothing it finds beside DIR (the trust rules of docs/protocol.md;
# it may run as root over a parent other users can write):
# - T1: each of DIR's names is looked at with stat, never followed, before it
#   is opened, and read only through dd iflag=nofollow,nonblock, bounded (the
#   journal to 1 MiB, the lock's holder record to 64 KiB): a symlink, FIFO or
#   socket never hangs it nor leads it elsewhere. The lock and the gate must
#   be regular files with one link (the lock is written only through the
#   descriptor it holds, after checking it is that file); the journal and the
#   manifest regular files with one link, not writable by group or others,
#   the manifest owned by the journal's owner; the shadow a directory owned
#   by the journal's owner (any owner when that is root).
# - T2: with no journal, a stale .journal.tmp or .meta that is not a
#   directory is unlinked (only its name goes); a directory under any of
#   DIR's names is renamed to a removal name and deleted, by root with the
#   identity of the tree's owner when that is not root.
# - T3: run as root on a journal another user owns, it takes the lock, then
#   does all the rest under setpriv with that user's uid, gid and groups and
#   no capabilities (the lock held by the descriptor it inherits): a state
#   someone planted can do no more than that someone could.
# - T4: every manifest record is checked before any is acted on: a relative
#   path of at most 4096 bytes without NUL, empty, "." or ".." components,
#   MODE at most 07777, UID and GID below 4294967295. Each record's path is
#   followed only through directories (a symlink on the way is refused), and
#   a record whose entry is a directory or a symlink is not that record's
#   file; set-id bits are restored on regular files only.
# - T5: whatever breaks these is "needs a person": one line naming the path
#   and what was expected, exit 125, nothing changed.
# Where sh must look at a name and then open or act on it in two steps,
# someone who can rename entries in the parent (or, for a rollback of
# root's own transaction, in the shadow) at that instant could still swap
# it; the lock file is then caught by inode before it is written, and
# opened read-write so that a FIFO cannot block it. The treetx binary has no
# such window (openat2, O_NOFOLLOW, fchmodat).
#
# It takes DIR's lock (flock on PARENT/.#treetx.NAME.lock) without waiting:
# a live transaction is left alone. It never installs a tree whose root is
# not the inode the journal records, and does nothing destructive when the
# journal is unreadable, truncated, newer than version 2, or not laid out
# as treetx writes it (one field a line: a hand-edited journal is refused).
# It deletes a tree only under a removal name (.#treetx.NAME.removing.ID)
# after a durable rename, or, as treetx does when a full file system refuses
# that rename, a shadow the journal already says is garbage. The script and
# the binary can each finish what the other left when killed at any point
# (recover/script_test.go checks that they agree at every crash point).
# A transaction over several trees (a version 2 journal; a marker
# .#treetx.NAME.group beside each tree) is recovered whole, as treetx does:
# the other trees' locks taken without waiting, every tree finished or
# undone as the group's record decides, the record last (rows 29 to 31;
# recover/script_group_test.go).
#
# One line per DIR on standard output: "DIR: STATE: FOUND; did: ACTION".
# Exit status: 0 every DIR is consistent now; 75 some DIR is busy; 125 some
# DIR needs a person (or recovery failed); 64 bad command line.

set -u
LC_ALL=C
export LC_ALL
umask 022
PATH=${PATH:+$PATH:}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
prog=treetx-recover.sh

# ---------------------------------------------------------------------------
# awk programs. lib_awk is prepended to the others: JSON strings (checked and
# decoded as Go's encoding/json does) and commands shown as Go's
# command.Show (internal/command) shows them.
# shellcheck disable=SC2016 # awk programs, not shell expansions
lib_awk='
function init(   k) { for (k = 1; k < 256; k++) { CHR[k] = sprintf("%c", k); ORD[CHR[k]] = k } }
BEGIN { init() }
function isstr(s,   t) {
	if (length(s) < 2 || substr(s, 1, 1) != "\"" || substr(s, length(s)) != "\"") return 0
	t = substr(s, 2, length(s) - 2)
	if (t ~ /[\001-\037]/) return 0
	gsub(/\\["\\\/bfnrt]/, "", t)
	gsub(/\\u[0-9a-fA-F][0-9a-fA-F][0-9a-fA-F][0-9a-fA-F]/, "", t)
	return t !~ /["\\]/
}
function hexval(h,   k, v) {
	v = 0
	for (k = 1; k <= length(h); k++) v = v * 16 + index("0123456789abcdef", tolower(substr(h, k, 1))) - 1
	return v
}
function utf8(v) {
	if (v == 0) return ""
	if (v < 128) return CHR[v]
	if (v < 2048) return CHR[192 + int(v / 64)] CHR[128 + v % 64]
	if (v >= 55296 && v < 57344) v = 65533
	return CHR[224 + int(v / 4096)] CHR[128 + int(v / 64) % 64] CHR[128 + v % 64]
}
# jdec decodes a checked JSON string.
function jdec(s,   out, k, c) {
	s = substr(s, 2, length(s) - 2)
	out = ""
	for (k = 1; k <= length(s); k++) {
		c = substr(s, k, 1)
		if (c != "\\") { out = out c; continue }
		c = substr(s, ++k, 1)
		if (c == "u") { c = utf8(hexval(substr(s, k + 1, 4))); k += 4 }
		else if (c == "b") c = "\b"
		else if (c == "f") c = "\f"
		else if (c == "n") c = "\n"
		else if (c == "r") c = "\r"
		else if (c == "t") c = "\t"
		out = out c
	}
	return out
}
# showarg shows one argument as command.Show does: as it is when it holds
# only letters, digits and -_./=:,+@%, else quoted as strconv.Quote does.
function showarg(a,   out, k, c, v) {
	if (a ~ /^[-A-Za-z0-9_.\/=:,+@%][-A-Za-z0-9_.\/=:,+@%]*$/) return a
	out = "\""
	for (k = 1; k <= length(a); k++) {
		c = substr(a, k, 1); v = ORD[c]
		if (c == "\"" || c == "\\") out = out "\\" c
		else if (v == 7) out = out "\\a"
		else if (v == 8) out = out "\\b"
		else if (v == 12) out = out "\\f"
		else if (v == 10) out = out "\\n"
		else if (v == 13) out = out "\\r"
		else if (v == 9) out = out "\\t"
		else if (v == 11) out = out "\\v"
		else if (v < 32 || v == 127) out = out sprintf("\\x%02x", v)
		else out = out c
	}
	return out "\""
}
# rfc3339 shows a checked JSON time as time.RFC3339 does (no fraction; Z
# for UTC).
function rfc3339(s,   t, z) {
	t = substr(s, 2, length(s) - 2)
	z = (t ~ /Z$/) ? "Z" : substr(t, length(t) - 5)
	if (z ~ /^[+-]00:00$/) z = "Z"
	return substr(t, 1, 19) z
}
function oneline(s) { gsub(/[\001-\037]/, "?", s); return s }
'

# What the journal and the marker of a transaction over several trees hold:
# its group, an id and the trees (layout.Group), checked as Group.check
# does. Prepended, after lib_awk, to journal_awk and marker_awk.
# shellcheck disable=SC2016 # awk programs, not shell expansions
group_lib='
function isgid(s) { return length(s) == 18 && s ~ /^"[0-9a-f]*"$/ }
# hasnul tells a checked JSON string that holds a NUL (\u0000).
function hasnul(s,   k, c) {
	for (k = 2; k < length(s); k++) {
		if (substr(s, k, 1) != "\\") continue
		c = substr(s, ++k, 1)
		if (c == "u" && substr(s, k + 1, 4) == "0000") return 1
	}
	return 0
}
# mesc writes a string in the escaping of the manifest (every byte outside
# !..~, and backslash, as \0NNN): one word, for the shell (decode).
function mesc(s,   out, k, c, v) {
	out = ""
	for (k = 1; k <= length(s); k++) {
		c = substr(s, k, 1); v = ORD[c]
		if (v > 32 && v < 127 && v != 92) out = out c
		else out = out sprintf("\\0%03o", v)
	}
	return out
}
# badgroup says why the trees G[1..ng] (checked JSON strings) are not a
# group treetx writes ("" if they are one): 2 to 64 trees, each absolute
# and clean, not "/", at most 4096 bytes, no NUL, none twice.
function badgroup(ng,   k, t, seen) {
	if (ng < 2 || ng > 64) return ng " trees"
	for (k = 1; k <= ng; k++) {
		t = jdec(G[k])
		if (hasnul(G[k]) || t == "/" || substr(t, 1, 1) != "/" || substr(t, length(t)) == "/" || index(t, "//") || t ~ /\/\.\.?(\/|$)/ || length(t) > 4096) return "bad tree " G[k]
		if (t in seen) return "tree " G[k] " twice"
		seen[t] = 1
	}
	return ""
}
'

# The journal, as Go's json.MarshalIndent(j, "", "  ") writes it: one field a
# line, in the order of layout.Journal (internal/layout). The layout is checked line by line, and
# every value as the Go reader checks it; anything else is refused. mode=parse
# prints "ok", the id, the phase, the shadow's device and inode, the number
# of lost files, a description, the mode (hardlink or snapshot) and the
# id of the shadow's btrfs subvolume ("-" without subvols), then the group's
# id ("-" without one), the number of its trees and each tree
# (manifest-escaped), one a line; or "corrupt REASON" or "future VERSION".
# mode=rewrite prints the journal with phase rollback and the lost list read
# after it (manifest-escaped paths, one a line, from the second operand), as
# Go would write it; mode=commit the journal with phase commit (row 29's
# C3). Version 1 has no group, version 2 must have one.
# shellcheck disable=SC2016
journal_awk=$lib_awk$group_lib'
function fail(m) { print "corrupt " m; exit 1 }
function isuint(s) { return s ~ /^(0|[1-9][0-9]*)$/ }
function isint(s) { return s ~ /^-?(0|[1-9][0-9]*)$/ }
# istime checks an RFC 3339 time as Go reads it.
function istime(s,   t, y, mo, d, dim) {
	if (!isstr(s)) return 0
	t = substr(s, 2, length(s) - 2)
	if (t !~ /^[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9](\.[0-9][0-9]*)?(Z|[+-][0-9][0-9]:[0-9][0-9])$/) return 0
	y = substr(t, 1, 4) + 0; mo = substr(t, 6, 2) + 0; d = substr(t, 9, 2) + 0
	if (mo < 1 || mo > 12 || d < 1) return 0
	dim = substr("312831303130313130313031", 2 * mo - 1, 2) + 0
	if (mo == 2 && (y % 4 == 0 && y % 100 != 0 || y % 400 == 0)) dim = 29
	if (d > dim || substr(t, 12, 2) + 0 > 23 || substr(t, 15, 2) + 0 > 59 || substr(t, 18, 2) + 0 > 59) return 0
	if (t !~ /Z$/ && (substr(t, length(t) - 4, 2) + 0 > 23 || substr(t, length(t) - 1, 2) + 0 > 59)) return 0
	return 1
}
# field reads line i as IND"KEY": VALUE and a comma unless last.
function field(ind, key, last,   p, v) {
	if (i > n) fail("truncated before \"" key "\"")
	p = ind "\"" key "\": "
	v = L[i]
	if (substr(v, 1, length(p)) != p) fail("line " i ": want \"" key "\"")
	v = substr(v, length(p) + 1)
	if (!last) {
		if (substr(v, length(v)) != ",") fail("line " i ": no comma after \"" key "\"")
		v = substr(v, 1, length(v) - 1)
	}
	i++
	return v
}
function line(want) {
	if (i > n) fail("truncated: want " want)
	if (L[i] != want) fail("line " i ": want " want)
	i++
}
# tfield reads line i as IND"KEY": VALUE, with a comma (then more is 1) or
# without (more 0).
function tfield(ind, key,   p, v) {
	p = ind "\"" key "\": "
	v = L[i]
	if (substr(v, 1, length(p)) != p) fail("line " i ": want \"" key "\"")
	v = substr(v, length(p) + 1)
	more = (substr(v, length(v)) == ",")
	if (more) v = substr(v, 1, length(v) - 1)
	i++
	return v
}
# lastof tells whether the list that starts at line i ends with a (0) or
# b (1), a list item being a line that starts with four spaces.
function lastof(a, b,   k) {
	for (k = i; k <= n && substr(L[k], 1, 4) == "    "; k++) ;
	return k <= n && L[k] == b
}
# subvol reads the "id" and "uuid" lines of a subvolume and returns the id.
function subvol(ind,   v, u) {
	v = field(ind, "id"); if (!isuint(v) || v == "0") fail("bad subvolume id " v)
	u = field(ind, "uuid", 1)
	if (u !~ /^"[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]"$/) fail("bad subvolume uuid " u)
	return v
}
# strlist reads the items of a string array opened on the line before, up
# to its closing line cl; it returns their count and keeps them in S.
function strlist(cl,   k, v) {
	k = 0
	for (;;) {
		if (i > n) fail("truncated in a list")
		v = L[i]
		if (v == cl) { i++; return k }
		if (substr(v, 1, 4) != "    ") fail("line " i ": bad list item")
		v = substr(v, 5)
		if (substr(v, length(v)) == ",") {
			v = substr(v, 1, length(v) - 1)
			if (i + 1 <= n && L[i + 1] == cl) fail("line " i ": comma before the end of a list")
		} else if (i + 1 > n || L[i + 1] != cl) fail("line " i ": no comma in a list")
		if (!isstr(v)) fail("line " i ": bad string")
		S[++k] = v
		i++
	}
}
# jsonstr writes a manifest-escaped path as Go writes a JSON string.
function jsonstr(e,   out, k, c, v) {
	out = "\""
	for (k = 1; k <= length(e); k++) {
		c = substr(e, k, 1)
		if (c == "\\") { v = (substr(e, k + 2, 1) * 64) + (substr(e, k + 3, 1) * 8) + substr(e, k + 4, 1); k += 4 }
		else v = ORD[c]
		if (v == 34) out = out "\\\""
		else if (v == 92) out = out "\\\\"
		else if (v == 10) out = out "\\n"
		else if (v == 13) out = out "\\r"
		else if (v == 9) out = out "\\t"
		else if (v < 32 || v == 60 || v == 62 || v == 38) out = out sprintf("\\u%04x", v)
		else out = out CHR[v]
	}
	return out "\""
}
# listx reads the items of a string array opened on the line before, each
# indented by ind, up to its closing line cl or alt (if not ""); it returns
# their count, keeps them in S and the closing line in closed.
function listx(ind, cl, alt,   k, v) {
	k = 0
	for (;;) {
		if (i > n) fail("truncated in a list")
		v = L[i]
		if (v == cl || alt != "" && v == alt) { closed = v; i++; return k }
		if (substr(v, 1, length(ind)) != ind) fail("line " i ": bad list item")
		v = substr(v, length(ind) + 1)
		if (substr(v, length(v)) == ",") {
			v = substr(v, 1, length(v) - 1)
			if (i + 1 <= n && (L[i + 1] == cl || alt != "" && L[i + 1] == alt)) fail("line " i ": comma before the end of a list")
		} else if (i + 1 > n || L[i + 1] != cl && (alt == "" || L[i + 1] != alt)) fail("line " i ": no comma in a list")
		if (!isstr(v)) fail("line " i ": bad string")
		S[++k] = v
		i++
	}
}
NR == FNR { L[++n] = $0; next }
$0 != "" { Q[++nq] = $0 }
END {
	if (n >= 2 && L[2] ~ /^  "version": [0-9][0-9]*,$/) {
		v = substr(L[2], 14); v = substr(v, 1, length(v) - 1)
		if (v + 0 > 2) { print "future " v; exit 1 }
	}
	while (n > 0 && L[n] == "") n--
	i = 1
	line("{")
	version = field("  ", "version"); if (version != "1" && version != "2") fail("version " version)
	id = field("  ", "id"); if (id !~ /^"[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]"$/) fail("bad id " id)
	pid = field("  ", "pid"); if (!isint(pid)) fail("bad pid")
	host = field("  ", "host"); if (!isstr(host)) fail("bad host")
	user = field("  ", "user"); if (!isstr(user)) fail("bad user")
	if (i <= n && L[i] == "  \"command\": [") { i++; nc = strlist("  ],") }
	else { v = field("  ", "command"); if (v != "null" && v != "[]") fail("bad command"); nc = 0 }
	cmd = ""
	for (k = 1; k <= nc; k++) cmd = cmd (k > 1 ? " " : "") showarg(jdec(S[k]))
	start = field("  ", "start"); if (!istime(start)) fail("bad start time " start)
	iphase = i
	phase = field("  ", "phase")
	if (phase !~ /^"(snapshot|running|commit|rollback)"$/) fail("unknown phase " phase)
	line("  \"dir\": {")
	v = field("    ", "dev"); if (!isuint(v)) fail("bad dir dev")
	dino = field("    ", "ino", 1); if (!isuint(dino)) fail("bad dir ino")
	line("  },")
	line("  \"shadow\": {")
	sdev = field("    ", "dev"); if (!isuint(sdev)) fail("bad shadow dev")
	isino = i
	sino = field("    ", "ino", 1); if (!isuint(sino)) fail("bad shadow ino")
	if (sino == "0") fail("no shadow inode")
	# Then, each optional and each followed by a comma but the last:
	# "lost", "group" (several trees), "mode" (snapshot), "subvols" (btrfs).
	nl = 0; jmode = "hardlink"; ssub = "-"; ng = 0; gid = ""
	more = 0
	if (i <= n && L[i] == "  },") { more = 1; i++ } else line("  }")
	if (more && i <= n && L[i] == "  \"lost\": [") {
		i++
		more = (i <= n && lastof("  ]", "  ],"))
		nl = strlist(more ? "  ]," : "  ]")
		for (k = 1; k <= nl; k++) LS[k] = S[k]
	} else if (more && i <= n && L[i] ~ /^  "lost": /) {
		v = tfield("  ", "lost"); if (v != "null" && v != "[]") fail("bad lost")
	}
	itail = i
	if (more && i <= n && L[i] == "  \"group\": {") {
		i++
		gid = field("    ", "id"); if (!isgid(gid)) fail("group: bad id " gid)
		if (i <= n && L[i] == "    \"trees\": [") { i++; ng = listx("      ", "    ]", "") }
		else { v = field("    ", "trees", 1); fail("group: bad trees " v) }
		for (k = 1; k <= ng; k++) G[k] = S[k]
		if ((v = badgroup(ng)) != "") fail("group: " v)
		if (i <= n && L[i] == "  },") { more = 1; i++ } else { line("  }"); more = 0 }
	}
	if (more && i <= n && L[i] ~ /^  "mode": /) {
		v = tfield("  ", "mode"); if (v != "\"snapshot\"") fail("unknown mode " v)
		jmode = "snapshot"
	}
	if (more && i <= n && L[i] == "  \"subvols\": {") {
		i++
		line("    \"dir\": {")
		did = subvol("      "); line("    },")
		line("    \"shadow\": {")
		ssub = subvol("      "); line("    }")
		line("  }")
		more = 0
	}
	if (more) fail("line " i ": a field expected after the comma")
	iend = i
	line("}")
	if (i <= n) fail("line " i ": after the end")
	if (version == "1" && gid != "" || version == "2" && gid == "") fail("version " version)
	if (jmode == "snapshot") {
		if (ssub == "-") fail("a snapshot without its subvolumes")
		if (sino != "256" || dino != "256") fail("a snapshot whose roots are not subvolume roots (inode 256)")
		if (did == ssub) fail("a snapshot in the subvolume of the directory itself")
	}
	if (mode == "rewrite" || mode == "commit") {
		for (k = 1; k <= isino; k++) print (k == iphase ? "  \"phase\": \"" (mode == "commit" ? "commit" : "rollback") "\"," : L[k])
		if (mode == "rewrite") { nl = nq; for (k = 1; k <= nq; k++) LS[k] = jsonstr(Q[k]) }
		tail = (itail < iend)
		if (nl == 0 && !tail) print "  }"
		else {
			print "  },"
			if (nl > 0) {
				print "  \"lost\": ["
				for (k = 1; k <= nl; k++) print "    " LS[k] (k < nl ? "," : "")
				print (tail ? "  ]," : "  ]")
			}
			for (k = itail; k < iend; k++) print L[k]
		}
		print "}"
		exit 0
	}
	print "ok"
	print substr(id, 2, 16)
	print substr(phase, 2, length(phase) - 2)
	print sdev
	print sino
	print nl
	print oneline("transaction " substr(id, 2, 16) " (pid " pid " on " jdec(host) ", " cmd ", since " rfc3339(start) ")")
	print jmode
	print ssub
	print (gid == "" ? "-" : substr(gid, 2, 16))
	print ng
	for (k = 1; k <= ng; k++) print mesc(jdec(G[k]))
}'

# The holder record in a lock file, as lock.Acquire writes it (compact JSON
# of lock.Holder). Prints "none" for an empty file; else "ok", the pid, the
# host, the user, the command shown and the time, one a line; or "bad".
# shellcheck disable=SC2016
holder_awk=$lib_awk'
function bad() { print "bad"; exit 1 }
function lit(t) { if (substr(s, pos, length(t)) != t) bad(); pos += length(t) }
function str(   r) {
	r = substr(s, pos)
	if (!match(r, /^"([^"\\]|\\.)*"/)) bad()
	r = substr(r, 1, RLENGTH); pos += RLENGTH
	if (!isstr(r)) bad()
	return r
}
{ s = s $0 }
END {
	gsub(/^[ \t\r\n]+|[ \t\r\n]+$/, "", s)
	if (s == "") { print "none"; exit 0 }
	pos = 1
	lit("{\"pid\":")
	if (!match(substr(s, pos), /^-?[0-9][0-9]*/)) bad()
	pid = substr(s, pos, RLENGTH); pos += RLENGTH
	lit(",\"host\":"); host = jdec(str())
	lit(",\"user\":"); user = jdec(str())
	lit(",\"command\":")
	cmd = ""
	if (substr(s, pos, 4) == "null") pos += 4
	else {
		lit("[")
		for (k = 0; substr(s, pos, 1) != "]"; k++) {
			if (k > 0) lit(",")
			cmd = cmd (k > 0 ? " " : "") showarg(jdec(str()))
		}
		lit("]")
	}
	lit(",\"since\":"); since = str()
	lit("}")
	if (pos != length(s) + 1) bad()
	print "ok"; print pid; print oneline(host); print oneline(user); print oneline(cmd); print rfc3339(since)
}'

# A group's marker (.#treetx.NAME.group), as layout.WriteMarker writes it:
# json.Marshal of the group, on one line. Prints "ok", the id, the number of
# trees and each tree (manifest-escaped), one a line; or "corrupt REASON".
# A marker in any other form counts as unreadable (as a corrupt one does
# for treetx: garbage).
# shellcheck disable=SC2016
marker_awk=$lib_awk$group_lib'
function bad(m) { print "corrupt " m; exit 1 }
function lit(t) { if (substr(s, pos, length(t)) != t) bad("want " t); pos += length(t) }
function str(   r) {
	r = substr(s, pos)
	if (!match(r, /^"([^"\\]|\\.)*"/)) bad("bad string")
	r = substr(r, 1, RLENGTH); pos += RLENGTH
	if (!isstr(r)) bad("bad string")
	return r
}
{ s = s (NR > 1 ? "\n" : "") $0 }
END {
	gsub(/^[ \t\r\n]+|[ \t\r\n]+$/, "", s)
	pos = 1
	lit("{\"id\":"); id = str(); if (!isgid(id)) bad("bad id " id)
	lit(",\"trees\":[")
	ng = 0
	while (substr(s, pos, 1) != "]" && ng <= 64) { if (ng > 0) lit(","); G[++ng] = str() }
	lit("]}")
	if (pos != length(s) + 1) bad("after the end")
	if ((why = badgroup(ng)) != "") bad(why)
	print "ok"; print substr(id, 2, 16); print ng
	for (k = 1; k <= ng; k++) print mesc(jdec(G[k]))
}'

# The manifest: checked whole before any record is acted on (a manifest
# without its end line is incomplete), each record confined to the shadow
# (rule T4: a relative PATH of at most 4096 bytes, decoded, with no NUL and
# no empty, "." or ".." component; MODE at most 07777; UID and GID below
# 4294967295). Prints "ok COUNT XATTRS" (XATTRS 1 if a record has extended
# attributes) or "bad REASON". With -v filter=1 it prints each record line
# once it is checked instead, and "bad REASON" where one is not: the passes
# that act on the records read them through it.
# shellcheck disable=SC2016
manifest_awk='
function bad(m) { print "bad " m; failed = 1; exit 1 }
function escaped(s, extra,   t) {
	t = s
	gsub(/\\0[0-3][0-7][0-7]/, "", t)
	if (t !~ /^[!-~]*$/ || index(t, "\\")) return 0
	if (extra && (index(t, ",") || index(t, "="))) return 0
	return 1
}
function oct(s,   k, v) {
	v = 0
	for (k = 1; k <= length(s); k++) v = v * 8 + substr(s, k, 1)
	return v
}
# confined tells why an escaped path is not a relative path of at most 4096
# bytes without NUL, empty, "." or ".." components ("" if it is one). It is
# checked decoded: an escaped "/" or "." counts as one.
function confined(e,   t, v, n, k, c) {
	t = ""
	while (match(e, /\\0[0-3][0-7][0-7]/)) {
		v = oct(substr(e, RSTART + 2, 3))
		if (v == 0) return "a NUL byte"
		t = t substr(e, 1, RSTART - 1) (v == 46 ? "." : v == 47 ? "/" : "x")
		e = substr(e, RSTART + RLENGTH)
	}
	t = t e
	if (length(t) > 4096) return "a longer one"
	if (substr(t, 1, 1) == "/") return "an absolute one"
	n = split(t, c, "/")
	for (k = 1; k <= n; k++) {
		if (c[k] == "") return "an empty component"
		if (c[k] == "." || c[k] == "..") return "a \"" c[k] "\" component"
	}
	return ""
}
NR == 1 { if ($0 != "# treetx manifest 1") bad("line 1 is not \"# treetx manifest 1\""); next }
ended { bad("line " NR " after the end line") }
substr($0, 1, 6) == "# end " {
	v = substr($0, 7)
	if (v !~ /^[0-9][0-9]*$/ || v + 0 != count) bad("the end line says " v " records, read " count)
	ended = 1
	next
}
{
	if (index($0, "  ") || substr($0, 1, 1) == " " || substr($0, length($0)) == " " || index($0, "\t")) bad("line " NR ": bad spacing")
	if (split($0, f, " ") != 9) bad("line " NR ": want 9 fields")
	if (f[1] !~ /^[0-9][0-9]*$/ || f[2] !~ /^[0-7][0-7]*$/ || f[3] !~ /^[0-9][0-9]*$/ || f[4] !~ /^[0-9][0-9]*$/ || f[5] !~ /^[0-9][0-9]*$/) bad("line " NR ": bad number")
	if (oct(f[2]) > 4095) bad("line " NR ": mode " f[2] ": expected at most 07777")
	if (f[3] + 0 >= 4294967295 || f[4] + 0 >= 4294967295) bad("line " NR ": owner " f[3] ":" f[4] ": expected a uid and a gid below 4294967295")
	for (k = 6; k <= 7; k++) if (f[k] !~ /^-?[0-9][0-9]*\.[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]$/) bad("line " NR ": bad time")
	if (f[8] != "-") {
		xa = 1
		m = split(f[8], x, ",")
		for (k = 1; k <= m; k++) {
			e = index(x[k], "=")
			if (e < 2 || !escaped(substr(x[k], 1, e - 1), 1) || substr(x[k], e + 1) !~ /^([0-9a-f][0-9a-f])*$/) bad("line " NR ": bad extended attribute")
		}
	}
	if (!escaped(f[9], 0) || f[9] == "") bad("line " NR ": bad path")
	if ((why = confined(f[9])) != "") bad("line " NR ": path " f[9] ": expected a relative path of at most 4096 bytes, with no NUL and no empty, \".\" or \"..\" component, found " why)
	count++
	if (filter) print
}
END {
	if (failed) exit 1
	if (NR == 0) bad("empty")
	if (!ended) bad("no end line after " count " records")
	if (!filter) print "ok " count " " (xa ? 1 : 0)
}'

# Functions of the planning programs below.
# shellcheck disable=SC2016
plan_lib='
# canon writes bytes (getfattr output, where \NNN is a byte) in the
# escaping of the manifest (every byte outside !..~, and backslash, as \0NNN;
# also , and = when names is set).
function canon(g, names,   out, k, c, v) {
	out = ""
	for (k = 1; k <= length(g); k++) {
		c = substr(g, k, 1)
		if (c == "\\" && substr(g, k + 1, 3) ~ /^[0-7][0-7][0-7]$/) {
			v = substr(g, k + 1, 1) * 64 + substr(g, k + 2, 1) * 8 + substr(g, k + 3, 1); k += 3
		} else v = ORD[c]
		if (v > 32 && v < 127 && v != 92 && (!names || v != 44 && v != 61)) out = out CHR[v]
		else out = out sprintf("\\0%03o", v)
	}
	return out
}
# unesc decodes the manifest escaping.
function unesc(m,   out, k, c) {
	out = ""
	for (k = 1; k <= length(m); k++) {
		c = substr(m, k, 1)
		if (c == "\\") { c = CHR[substr(m, k + 2, 1) * 64 + substr(m, k + 3, 1) * 8 + substr(m, k + 4, 1)]; k += 4 }
		out = out c
	}
	return out
}
# forset writes a manifest-escaped name as setfattr -n reads it (\NNN).
function forset(m,   out, k, c) {
	out = ""
	for (k = 1; k <= length(m); k++) {
		c = substr(m, k, 1)
		if (c == "\\") { out = out "\\"; k++ } else out = out c
	}
	return out
}
function oct(s,   k, v) {
	v = 0
	for (k = 1; k <= length(s); k++) v = v * 8 + substr(s, k, 1)
	return v
}
function frac(tod) { return (tod ~ /\./) ? substr(tod, index(tod, ".") + 1) : "000000000" }
# realtime writes a manifest time (the SEC.NSEC of a timespec: -2.500000000
# is -1.5 s) as the number touch -d @ reads.
function realtime(m,   sec, ns) {
	sec = substr(m, 1, index(m, ".") - 1); ns = substr(m, index(m, ".") + 1)
	if (sec !~ /^-/ || ns == "000000000") return m
	return "-" (-(sec + 1)) "." sprintf("%09d", 1000000000 - ns)
}
# have records one line of getfattr -e hex output for the file key.
function have(key, l,   e, name, val, c) {
	if (l == "" || substr(l, 1, 8) == "# file: ") return
	e = index(l, "=")
	if (e == 0) { name = l; val = "" } else { name = substr(l, 1, e - 1); val = tolower(substr(l, e + 1)) }
	sub(/^0x/, "", val)
	c = canon(name, 1)
	HN[key, ++HC[key]] = c; HV[key, c] = val; HS[key, c] = 1
}
# xplan prints the operations that give the file key the attributes want
# (the manifest field) and returns how many.
function xplan(key, want, set, del, sfx,   w, k, e, name, val, ops, W) {
	ops = 0
	if (want != "-") {
		w = split(want, W, ",")
		for (k = 1; k <= w; k++) {
			e = index(W[k], "=")
			name = substr(W[k], 1, e - 1); val = substr(W[k], e + 1)
			WANT[key, name] = 1
			if (!((key, name) in HS) || HV[key, name] != val) { print set "0x" val " " forset(name) sfx; ops++ }
		}
	}
	for (k = 1; k <= HC[key]; k++)
		if (!((key, HN[key, k]) in WANT)) { print del forset(HN[key, k]) sfx; ops++ }
	return ops
}
'

# What to do to one file's extended attributes: getfattr -d -e hex output
# on standard input, ENVIRON["TREETX_WANT"] the manifest's field. Prints
# "set 0xHEX NAME" and "del - NAME" lines (NAME as setfattr reads it), sets
# first, in the manifest's order, as snapshot.syncXattrs does.
# shellcheck disable=SC2016
xattr_awk=$lib_awk$plan_lib'
{ have(0, $0) }
END {
	xplan(0, ENVIRON["TREETX_WANT"], "set ", "del - ", "")
}'

# Restoring a batch of records (snapshot.Restore): ENVIRON["TREETX_RECS"]
# holds the manifest lines, ENVIRON["TREETX_STATS"] stat's line for each of
# their paths under ENVIRON["TREETX_ROOT"] (ending in the raw mode, %f), in
# order, and standard input
# getfattr -d -e hex --absolute-names of them all when TREETX_XON is 1. For
# each record, in order and in Go's order within it, prints "chown UID:GID
# ESC", "xset ESC 0xHEX NAME", "xdel ESC - NAME", "chmod MODE ESC" and
# "touch TIME ESC" (ESC the manifest-escaped path); or "fallback" when the
# lines do not pair up. An entry that is a directory or a symlink is not the
# record's file, whatever its inode; set-id bits are given to regular files
# only.
# shellcheck disable=SC2016
restore_awk=$lib_awk$plan_lib'
/^# file: / { key = canon(substr($0, 9), 0); next }
{ if (key != "") have(key, $0) }
END {
	nr = split(ENVIRON["TREETX_RECS"], R, "\n")
	ns = split(ENVIRON["TREETX_STATS"], T, "\n")
	while (nr > 0 && R[nr] == "") nr--
	while (ns > 0 && T[ns] == "") ns--
	if (nr != ns) { print "fallback"; exit 0 }
	root = canon(ENVIRON["TREETX_ROOT"], 0)
	for (i = 1; i <= nr; i++) {
		if (split(R[i], r, " ") != 9 || split(T[i], t, " ") != 14) { print "fallback"; exit 0 }
		if (t[1] != r[1]) continue # another inode: not the shadow
		ft = int(hexval(t[14]) / 4096)
		if (ft == 4 || ft == 10) continue # a directory or a symlink: not a linked file
		e = r[9]
		cm = oct(t[2])
		if (t[3] != r[3] || t[4] != r[4]) {
			print "chown " r[3] ":" r[4] " " e
			cm -= (int(cm / 2048) % 2) * 2048 + (int(cm / 1024) % 2) * 1024
		}
		want = oct(r[2])
		if (ft != 8) want -= (int(want / 2048) % 2) * 2048 + (int(want / 1024) % 2) * 1024
		x = 0
		if (ENVIRON["TREETX_XON"] == 1) x = xplan(root "/" e, r[8], "xset " e " ", "xdel " e " - ", "")
		if (x || cm != want) print "chmod " sprintf("%o", want) " " e
		if (t[5] == r[5] && t[10] "." frac(t[12]) == r[7] && t[6] "." frac(t[8]) != r[6]) print "touch " realtime(r[6]) " " e
	}
}'

# Checking a batch of records (snapshot.Changed): TREETX_RECS and
# TREETX_STATS as for restore_awk, stat giving "%i %s %Y %y %f". Prints
# "lost ESC" for each file whose size or mtime differ from the record,
# "error MESSAGE" for one that is another inode, a directory or a symlink,
# or "fallback".
# shellcheck disable=SC2016
changed_awk=$lib_awk$plan_lib'
END {
	nr = split(ENVIRON["TREETX_RECS"], R, "\n")
	ns = split(ENVIRON["TREETX_STATS"], T, "\n")
	while (nr > 0 && R[nr] == "") nr--
	while (ns > 0 && T[ns] == "") ns--
	if (nr != ns) { print "fallback"; exit 0 }
	for (i = 1; i <= nr; i++) {
		if (split(R[i], r, " ") != 9 || split(T[i], t, " ") != 7) { print "fallback"; exit 0 }
		if (t[1] != r[1]) {
			print oneline("error check " ENVIRON["TREETX_ROOT"] "/" unesc(r[9]) ": inode " t[1] ", the manifest says " r[1] ": the shadow was changed by name")
			exit 0
		}
		ft = int(hexval(t[7]) / 4096)
		if (ft == 4 || ft == 10) {
			print oneline("error check " ENVIRON["TREETX_ROOT"] "/" unesc(r[9]) ": inode " t[1] " is " (ft == 4 ? "a directory" : "a symbolic link") ", the manifest records a linked file: the shadow was changed by name")
			exit 0
		}
		if (t[2] != r[5] || t[3] "." frac(t[5]) != r[7]) print "lost " r[9]
	}
}'

# Verifying a batch of records (rule T4): TREETX_RECS and TREETX_STATS as
# for restore_awk, stat giving "%i %f". Prints "error MESSAGE" for a record
# whose inode is there as a directory or a symlink, or "fallback".
# shellcheck disable=SC2016
verify_awk=$lib_awk$plan_lib'
END {
	nr = split(ENVIRON["TREETX_RECS"], R, "\n")
	ns = split(ENVIRON["TREETX_STATS"], T, "\n")
	while (nr > 0 && R[nr] == "") nr--
	while (ns > 0 && T[ns] == "") ns--
	if (nr != ns) { print "fallback"; exit 0 }
	for (i = 1; i <= nr; i++) {
		if (split(R[i], r, " ") != 9 || split(T[i], t, " ") != 2) { print "fallback"; exit 0 }
		if (t[1] != r[1]) continue
		ft = int(hexval(t[2]) / 4096)
		if (ft == 4 || ft == 10) {
			print oneline("error " ENVIRON["TREETX_ROOT"] "/" unesc(r[9]) ": expected the linked file the manifest records (inode " r[1] "), found " (ft == 4 ? "a directory" : "a symbolic link"))
			exit 0
		}
	}
}'

usage() {
	printf 'usage: %s [-n] DIR...\n' "$prog" >&2
	exit 64
}

# Two internal forms, run through setpriv with another user's identity:
#   --as-owner UID DIR   recover DIR, whose lock is held on descriptor 9 and
#                        whose journal UID owns (rule T3)
#   --remove-tree PATH   delete the tree at PATH (rule T2)
#   --group-tree UID DIR MODE   finish DIR's transaction, one of a group's,
#                        whose lock a parent holds (group_tree_as_owner)
dry=0 as_owner='' remove_only=0
group_tree=0
while [ $# -gt 0 ]; do
	case $1 in
	-n | --dry-run) dry=1; shift ;;
	--group-tree)
		[ $# -eq 4 ] || usage
		group_tree=1 as_owner=$2
		shift 2
		break ;;
	--as-owner)
		[ $# -eq 3 ] || usage
		as_owner=$2
		shift 2
		break ;;
	--remove-tree)
		[ $# -eq 2 ] || usage
		remove_only=1
		shift
		break ;;
	-h | --help)
		sed -n '2,/^$/s/^# \{0,1\}//p' "$0"
		exit 0 ;;
	--) shift; break ;;
	-?*) printf '%s: unknown option %s\n' "$prog" "$1" >&2; usage ;;
	*) break ;;
	esac
done
[ $# -gt 0 ] || usage

am_root=0
[ "$(id -u 2>/dev/null)" = 0 ] && am_root=1
tools="flock mv rm stat sync touch chmod chown realpath od tr wc id date uname awk sed grep dd cat"
[ "$am_root" = 1 ] && tools="$tools setpriv"
for tool in $tools; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		printf '%s: %s not found: it is needed (coreutils, sed, awk, util-linux flock and, as root, setpriv)\n' "$prog" "$tool" >&2
		exit 125
	fi
done
if ! [ -d /proc/self/fd ]; then
	printf '%s: /proc is not mounted: it is needed to check what a descriptor holds\n' "$prog" >&2
	exit 125
fi
if ! sync --help 2>/dev/null | grep -q -e '--file-system'; then
	printf '%s: this sync has no --file-system (syncfs): coreutils 8.24 or later is needed\n' "$prog" >&2
	exit 125
fi
have_xattr=0
if getfattr --version >/dev/null 2>&1 && setfattr --version >/dev/null 2>&1; then
	have_xattr=1
fi
have_exchange=0
if mv --help 2>/dev/null | grep -q -e '--exchange'; then
	have_exchange=1
fi

nl='
'
soh=$(printf '\001')

# ---------------------------------------------------------------------------
# Helpers. Functions that can fail set why and return 1.

exists() { [ -e "$1" ] || [ -L "$1" ]; }

# look PATH looks at a name without following it (lstat) and sets lk_type
# (reg, dir, lnk, fifo, sock, chr, blk, other; none when it cannot), lk_mode
# (the raw mode, hex), lk_links, lk_uid, lk_perm (octal), lk_id ("DEV
# INO"), lk_size and lk_ctime.
look() {
	lk_type=none lk_mode='' lk_links=0 lk_uid='' lk_perm=0 lk_id='' lk_size=0 lk_ctime=''
	lk_out=$(stat -c '%f %h %u %a %d %i %s %z' -- "$1" 2>/dev/null </dev/null) || return 1
	IFS=' ' read -r lk_mode lk_links lk_uid lk_perm lk_dev lk_ino lk_size lk_ctime <<EOF
$lk_out
EOF
	lk_id="$lk_dev $lk_ino"
	typeof "$lk_mode"
	lk_type=$ty
}

# typeof sets ty to the type word of a raw mode (stat %f).
typeof() {
	case $1 in
	'' | *[!0-9a-f]*) ty=other; return ;;
	esac
	case $((0x$1 & 61440)) in
	32768) ty=reg ;;
	16384) ty=dir ;;
	40960) ty=lnk ;;
	4096) ty=fifo ;;
	49152) ty=sock ;;
	8192) ty=chr ;;
	24576) ty=blk ;;
	*) ty=other ;;
	esac
}

# kind sets kd to a type word in words.
kind() {
	case $1 in
	reg) kd="a regular file" ;;
	dir) kd="a directory" ;;
	lnk) kd="a symbolic link" ;;
	fifo) kd="a FIFO" ;;
	sock) kd="a socket" ;;
	chr) kd="a character device" ;;
	blk) kd="a block device" ;;
	*) kd="a file of unknown type" ;;
	esac
}

# check_file PATH [private [OWNER]] applies rule T1 to one of DIR's files:
# it must be a regular file with one link; private: not writable by group
# or others; OWNER: owned by that uid. If it is not, bad names PATH, what
# was expected and what is there, and it returns 1. It leaves look's
# variables set.
check_file() {
	cf_want="a regular file with one link"
	[ "${2-}" = private ] && cf_want="$cf_want, not writable by group or others"
	[ -n "${3-}" ] && cf_want="$cf_want, owned by uid $3 (the journal's owner)"
	if ! look "$1"; then
		bad="$1: expected $cf_want, found nothing that can be looked at"
		return 1
	fi
	if [ "$lk_type" != reg ]; then
		kind "$lk_type"
		bad="$1: expected $cf_want, found $kd"
		return 1
	fi
	if [ "$lk_links" != 1 ]; then
		bad="$1: expected $cf_want, found a regular file with $lk_links links"
		return 1
	fi
	if [ "${2-}" = private ] && [ $((0$lk_perm & 18)) -ne 0 ]; then
		bad="$1: expected $cf_want, found mode $lk_perm"
		return 1
	fi
	if [ -n "${3-}" ] && [ "$lk_uid" != "$3" ]; then
		bad="$1: expected $cf_want, found one owned by uid $lk_uid"
		return 1
	fi
}

# safe_read PATH [MAX] copies a file (at most MAX bytes) to standard output,
# opening it with O_NOFOLLOW|O_NONBLOCK: a symlink gives nothing, nor does a
# FIFO, without waiting.
safe_read() {
	if [ $# -gt 1 ]; then
		dd if="$1" iflag=nofollow,nonblock,fullblock bs="$2" count=1 status=none 2>/dev/null </dev/null
	else
		dd if="$1" iflag=nofollow,nonblock bs=65536 status=none 2>/dev/null </dev/null
	fi
}

# fd9_is PATH tells whether descriptor 9 holds the file at PATH, a regular
# file with one link; fd9_looked the same, of the file look last looked at.
fd9_is() {
	look "$1" && fd9_looked
}

fd9_looked() {
	[ "$lk_type" = reg ] && [ "$lk_links" = 1 ] &&
		[ "$(stat -L -c '%f %h %d %i' /proc/self/fd/9 2>/dev/null)" = "$lk_mode 1 $lk_id" ]
}

# as_user UID CMD... runs CMD with the identity of UID (rule T3): that uid,
# its primary gid and groups from the passwd database (else gid UID and no
# groups), no capabilities, no new privileges. Descriptors are inherited.
as_user() {
	au=$1
	shift
	ent=$(getent passwd "$au" 2>/dev/null) ||
		ent=$(awk -F: -v u="$au" '$3 == u { print; exit }' /etc/passwd 2>/dev/null)
	ag='' grp=--clear-groups
	case $ent in
	*:*:*:*)
		ag=${ent#*:*:*:}
		ag=${ag%%:*}
		grp=--init-groups ;;
	esac
	case $ag in '' | *[!0-9]*) ag=$au grp=--clear-groups ;; esac
	setpriv --reuid="$au" --regid="$ag" "$grp" --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"
}

# self_body sets body to this script's text, to run it as another user with
# sh -c (who may not be able to read the file).
self_body() {
	body=$(cat -- "$0" 2>/dev/null)
	case $body in
	*"prog=treetx-recover.sh"*) return 0 ;;
	esac
	why="cannot read this script ($0) to run it as another user"
	return 1
}

# fileid prints the identity of a path, not following a symlink, as the
# journal read records its shadow's (sid): "DEV INO"; where the journal
# names btrfs subvolumes, "subvol ID INO" with the id of the subvolume
# that holds it (btrfs inspect-internal rootid: device numbers change
# across a remount; docs/protocol.md, "The journal"). Only a directory has
# a subvolume identity.
fileid() {
	if [ "${ssub:--}" = - ]; then
		stat -c '%d %i' -- "$1" 2>/dev/null
		return
	fi
	fi_out=$(stat -c '%f %i' -- "$1" 2>/dev/null) || return 1
	typeof "${fi_out% *}"
	[ "$ty" = dir ] || { echo "$ty ${fi_out#* }"; return 0; }
	fi_sub=$(btrfs inspect-internal rootid -- "$1" 2>/dev/null </dev/null) || { echo "unknown ${fi_out#* }"; return 0; }
	echo "subvol $fi_sub ${fi_out#* }"
}

# is_snapshot tells whether the journal read is in snapshot mode.
is_snapshot() { [ "${jmode-}" = snapshot ]; }

is_id() {
	case $1 in '' | *[!0-9a-f]*) return 1 ;; esac
	[ ${#1} -eq 16 ]
}

new_id() {
	nid=$(od -An -N8 -tx1 /dev/urandom 2>/dev/null | tr -d ' \n')
	is_id "$nid" || nid=$(printf '%08x%08x' "$$" "$(date +%s)")
}

# decode sets dp to a manifest-escaped path, decoded (printf %b reads \0NNN).
decode() {
	case $1 in
	*\\*) dp=$(printf '%bx' "$1"); dp=${dp%x} ;;
	*) dp=$1 ;;
	esac
}

# realtime sets rt to a manifest time (SEC.NSEC of a timespec: -2.500000000
# is -1.5 s) as the real number touch -d @ reads.
realtime() {
	rs=${1%%.*}
	rn=${1#*.}
	rt=$1
	case $rs in
	-*)
		if [ "$rn" != 000000000 ]; then
			rs=$((rs + 1))
			rn=$((2000000000 - 1$rn))
			while [ ${#rn} -lt 9 ]; do rn=0$rn; done
			rt=-${rs#-}.$rn
		fi ;;
	esac
}

# frac sets fr to the nanoseconds of a stat %x/%y time of day.
frac() {
	case $1 in
	*.*) fr=${1#*.} ;;
	*) fr=000000000 ;;
	esac
}

run() { # run CMD...: runs it, keeping its messages in out
	out=$("$@" 2>&1 </dev/null)
}

fsync_parent() {
	run sync -- "$P" || { why="fsync $P: $out"; return 1; }
}

syncfs_parent() {
	run sync -f -- "$P" || { why="syncfs $P: $out"; return 1; }
}

# rename_noreplace FROM TO: a rename that never replaces an existing name.
# mv -T tries renameat2(RENAME_NOREPLACE) first, but then renames over an
# empty directory: hence the check, under the lock.
rename_noreplace() {
	if exists "$2"; then
		why="rename $1 to $2: $2 exists"
		return 1
	fi
	run mv -T -- "$1" "$2" || { why="rename $1 to $2: $out"; return 1; }
}

# expect_shadow_at PATH checks that PATH is the journal's shadow.
expect_shadow_at() {
	run stat -c '%d %i' -- "$1" || { why="shadow $1: $out"; return 1; }
	if [ "$ssub" = - ] && [ "$out" != "$sid" ]; then
		why="$1 is not the shadow the journal records (inode ${out#* } on device ${out% *}; journal: inode $sino on device $sdev)"
		return 1
	fi
	[ "$ssub" = - ] && return 0
	out=$(fileid "$1")
	[ "$out" = "$sid" ] && return 0
	case $out in
	"subvol "*) es_where="in subvolume ${out#subvol }"; es_where=${es_where% *} ;;
	*) es_where="not in a subvolume treetx can name" ;;
	esac
	why="$1 is not the shadow the journal records (inode ${out##* } $es_where; journal: inode $sino in subvolume $ssub)"
	return 1
}

# make_removable gives every directory of a tree its owner's write and
# search permission (as snapshot.Remove does), for a user who is not root.
make_removable() (
	if ! [ -w "$1" ] || ! [ -x "$1" ]; then chmod u+wx -- "$1" || exit 1; fi
	for e in "$1"/* "$1"/.[!.]* "$1"/..?*; do
		if [ -d "$e" ] && ! [ -L "$e" ]; then make_removable "$e" || exit 1; fi
	done
)

# remove_here deletes a tree under a removal name, never following symlinks
# nor crossing into another file system. A btrfs subvolume (a snapshot
# shadow, or the tree it replaced) goes with btrfs subvolume delete where
# this user may (root; or a file system mounted user_subvol_rm_allowed);
# otherwise, or without btrfs-progs, rm deletes what is in it, then the
# emptied subvolume (rmdir, Linux 4.18), as treetx does.
remove_here() {
	if [ -d "$1" ] && ! [ -L "$1" ] && [ "$(stat -c %i -- "$1" 2>/dev/null)" = 256 ] &&
		[ "$(stat -f -c %T -- "$1" 2>/dev/null)" = btrfs ] && command -v btrfs >/dev/null 2>&1 &&
		run btrfs subvolume delete -- "$1"; then
		return 0
	fi
	if [ "$am_root" = 0 ] && [ -d "$1" ] && ! [ -L "$1" ]; then
		make_removable "$1" 2>/dev/null
	fi
	run rm -rf --one-file-system -- "$1" || { why="remove $1: $out"; return 1; }
}

# remove_tree PATH [owner] deletes a tree under a removal name. With owner,
# run as root, a directory whose owner is neither root nor DIR's owner (to
# whom the shadows of root's transactions belong) is deleted with that
# owner's identity (rule T2: a tree someone else made is deleted with no
# more rights than theirs), as treetx's layout.Names.RemoveTree does.
remove_tree() {
	if [ "${2-}" = owner ] && [ "$am_root" = 1 ] && look "$1" && [ "$lk_type" = dir ] && [ "$lk_uid" != 0 ] &&
		{ rt_uid=$lk_uid; ! look "$D" || [ "$lk_uid" != "$rt_uid" ]; }; then
		[ -n "${body-}" ] || self_body || return 1
		out=$(as_user "$rt_uid" sh -c "$body" "$0" --remove-tree "$1" 2>&1 </dev/null) ||
			{ why="remove $1 as uid $rt_uid, its owner: $out"; return 1; }
		return 0
	fi
	remove_here "$1"
}

# steps C7, G3: delete every tree named for removal (protocol's
# removeGarbage), as for remove_tree with owner: but the journal's own
# (removing.ID of the transaction being finished), which is deleted with the
# identity recovery has (root for root's journal, its owner's under rule T3).
step_C7_remove_garbage() {
	for f in "$pp"/.[#]treetx.*; do
		b=${f##*/}
		case $b in
		"$pre"removing.*) is_id "${b#"$pre"removing.}" || continue ;;
		*) continue ;;
		esac
		if [ -n "$jid" ] && [ "$b" = "${pre}removing.$jid" ]; then
			remove_tree "$f" || return 1
		else
			remove_tree "$f" owner || return 1
		fi
	done
}

# step C5: the journal goes, durably: the transaction is over.
step_C5_unlink_journal() {
	run rm -f -- "$J" || { why="remove $J: $out"; return 1; }
	fsync_parent
}

# step C6: the manifest goes, and a stale temporary journal.
step_C6_unlink_manifest() {
	run rm -f -- "$M" || { why="remove $M: $out"; return 1; }
	run rm -f -- "$JT" || { why="remove $JT: $out"; return 1; }
}

# step R7: end the transaction as C5..C7 do (protocol's finish); C8, the
# lock, is released by the caller (step_C8_unlock).
step_R7_finish() {
	step_C5_unlink_journal || return 1
	step_C6_unlink_manifest || return 1
	step_C7_remove_garbage
}

# step C4: drop the shadow of a transaction that never touched DIR (phase
# snapshot: rows 5, 6, 7) or whose commit is durable (phase commit: rows 14,
# 15): rename whichever of its names holds the journal's inode to the
# removal name, fsync, then C5..C7. If the rename fails (a full btrfs
# refuses renames), the shadow is deleted in place before the journal goes,
# as protocol's discard does: the journal's phase already says it is
# garbage.
step_C4_discard() {
	for s in "$INC" "$CPL"; do
		exists "$s" || continue
		expect_shadow_at "$s" || { why="$why: left alone"; return 1; }
	done
	for s in "$INC" "$CPL"; do
		exists "$s" || continue
		if ! rename_noreplace "$s" "$pp/${pre}removing.$jid"; then
			rwhy=$why
			remove_tree "$s" || { why="$rwhy; $why"; return 1; }
			continue
		fi
		fsync_parent || return 1
	done
	step_R7_finish
}

# check_manifest reads the manifest through (once a run: the passes that
# act on it check each record again as they read it).
check_manifest() {
	[ "$manifest_ok" = 1 ] && return 0
	mres=$(safe_read "$M" | awk "$manifest_awk" 2>&1) || { why="manifest $M: ${mres#bad }"; return 1; }
	case $mres in
	"ok "*) manifest_ok=1 ;;
	*) why="manifest $M: ${mres#bad }"; return 1 ;;
	esac
}

# for_batches WHAT ROOT calls WHAT_batch for the manifest's records in
# batches, with recs holding their lines and the positional parameters their
# paths under ROOT (decoded: printf %b reads the \0NNN escapes). The
# manifest is read with safe_read, each record checked again (manifest_awk
# -v filter=1) before it is passed on. The batches run in a subshell at the
# end of a pipe (read_batches): what they report is printed, one line each,
# then "ok"; or "fail" and why.
for_batches() {
	fn=$1 root=$2
	safe_read "$M" | awk -v filter=1 "$manifest_awk" 2>&1 | read_batches
}

read_batches() {
	recs='' cnt=0
	set --
	while IFS= read -r rline; do
		case $rline in
		'#'*) continue ;;
		"bad "*) printf 'fail\n%s\n' "manifest $M: ${rline#bad }"; return 1 ;;
		esac
		recs=$recs$rline$nl
		decode "${rline##* }"
		set -- "$@" "$root/$dp"
		cnt=$((cnt + 1))
		if [ "$cnt" -ge 256 ] || [ ${#recs} -ge 32768 ]; then
			batch "$@" || { printf 'fail\n%s\n' "$why"; return 1; }
			recs='' cnt=0
			set --
		fi
	done
	if [ "$cnt" -gt 0 ]; then
		batch "$@" || { printf 'fail\n%s\n' "$why"; return 1; }
	fi
	echo ok
}

# batches WHAT ROOT runs for_batches and sets bres to what the batches
# printed; it returns 1, with why set, if they failed.
batches() {
	bres=$(for_batches "$1" "$2")
	case $nl$bres in
	*"${nl}fail${nl}"*)
		why=${bres#*"${nl}fail${nl}"}
		case $bres in fail"$nl"*) why=${bres#fail"$nl"} ;; esac
		return 1 ;;
	*"${nl}ok")
		bres=${bres%ok}
		return 0 ;;
	esac
	why="$1 $2: the manifest $M could not be read through"
	return 1
}

batch() {
	case $fn in
	verify) verify_batch "$@" ;;
	changed) changed_batch "$@" ;;
	restore) restore_batch "$@" ;;
	esac
}

# prefix_check checks (rule T4) that what is on the way to each of the
# batch's records, below root, is a directory where it exists: not a
# symlink, nor anything else. It sets why and returns 1 if it is not.
prefix_check() {
	pl=$(printf '%s' "$recs" | awk '{
		n = split($9, c, "/"); s = ""
		for (k = 1; k < n; k++) { s = s (k > 1 ? "/" : "") c[k]; if (!(s in seen)) { seen[s] = 1; print s } }
	}')
	[ -n "$pl" ] || return 0
	set --
	while IFS= read -r e; do
		decode "$e"
		set -- "$@" "$root/$dp"
	done <<EOF
$pl
EOF
	if pst=$(stat -c '%f' -- "$@" 2>/dev/null </dev/null); then
		pdirs=1
		while IFS= read -r e; do
			case $e in 4[0-9a-f][0-9a-f][0-9a-f]) ;; *) pdirs=0 ;; esac
		done <<EOF
$pst
EOF
		[ "$pdirs" = 1 ] && return 0
	fi
	for e; do
		pst=$(stat -c '%f' -- "$e" 2>/dev/null </dev/null) || continue # missing
		typeof "$pst"
		[ "$ty" = dir ] && continue
		kind "$ty"
		why="$e: expected a directory on the way to the files of the manifest, found $kd"
		return 1
	done
}

# verify checks, before anything is done (rule T4), that no record of the
# manifest is reached through anything but directories below the shadow at
# $1, and that no record's inode is there as a directory or a symlink.
verify() {
	batches verify "$1"
}

verify_batch() {
	prefix_check || return 1
	if st=$(stat -c '%i %f' -- "$@" 2>/dev/null </dev/null); then
		res=$(TREETX_ROOT=$root TREETX_RECS=$recs TREETX_STATS=$st awk "$verify_awk" </dev/null) || { why="verify: awk failed"; return 1; }
		case $res in
		fallback*) ;;
		error*) why=${res#error }; return 1 ;;
		*) return 0 ;;
		esac
	fi
	while IFS=' ' read -r r_ino r_mode r_uid r_gid r_size r_at r_mt r_xa r_path; do
		[ -n "$r_ino" ] || continue
		decode "$r_path"
		p=$root/$dp
		out=$(stat -c '%i %f' -- "$p" 2>/dev/null </dev/null) || continue # missing
		[ "${out% *}" = "$r_ino" ] || continue
		typeof "${out#* }"
		case $ty in
		dir | lnk)
			kind "$ty"
			why="$p: expected the linked file the manifest records (inode $r_ino), found $kd"
			return 1 ;;
		esac
	done <<EOF
$recs
EOF
}

# step R1: set lost to the manifest-escaped paths (one a line) of the
# linked files of the shadow at $1 whose size or mtime differ from the
# record: they were written in place (snapshot.Changed). A recorded path
# that is missing, another inode, a directory or a symlink is an error.
step_R1_changed() {
	lost='' nlost=0
	batches changed "$1" || return 1
	while IFS=' ' read -r op e; do
		[ "$op" = lost ] || continue
		lost=$lost$e$nl
		nlost=$((nlost + 1))
	done <<EOF
$bres
EOF
}

changed_batch() {
	if st=$(stat -c '%i %s %Y %y %f' -- "$@" 2>/dev/null </dev/null); then
		res=$(TREETX_ROOT=$root TREETX_RECS=$recs TREETX_STATS=$st awk "$changed_awk" </dev/null) || { why="check: awk failed"; return 1; }
		case $res in
		fallback*) ;;
		error*) why=${res#error }; return 1 ;;
		*)
			printf '%s\n' "$res"
			return 0 ;;
		esac
	fi
	changed_slow
}

# changed_slow checks the batch's records one by one, to say which failed.
changed_slow() {
	while IFS=' ' read -r r_ino r_mode r_uid r_gid r_size r_at r_mt r_xa r_path; do
		[ -n "$r_ino" ] || continue
		decode "$r_path"
		p=$root/$dp
		run stat -c '%i %s %Y %y %f' -- "$p" || { why="check $p: $out"; return 1; }
		set -f
		# shellcheck disable=SC2086 # split stat's fields
		set -- $out
		set +f
		if [ "$1" != "$r_ino" ]; then
			why="check $p: inode $1, the manifest says $r_ino: the shadow was changed by name"
			return 1
		fi
		typeof "$7"
		case $ty in
		dir | lnk)
			kind "$ty"
			why="check $p: inode $1 is $kd, the manifest records a linked file: the shadow was changed by name"
			return 1 ;;
		esac
		frac "$5"
		if [ "$2" != "$r_size" ] || [ "$3.$fr" != "$r_mt" ]; then
			printf 'lost %s\n' "$r_path"
		fi
	done <<EOF
$recs
EOF
}

# step R3: give the linked files under $1 the owner, extended attributes,
# mode and times the manifest recorded, where they differ, and not the times
# of files written in place (snapshot.Restore). Idempotent. A record whose
# path is missing or is another inode is skipped.
step_R3_restore() {
	batches restore "$1"
}

restore_batch() {
	prefix_check || return 1
	if st=$(stat -c '%i %a %u %g %s %X %x %Y %y %f' -- "$@" 2>/dev/null </dev/null); then
		xa=''
		if [ "$have_xattr" = 0 ] || xa=$(getfattr -h -d -m - -e hex --absolute-names -- "$@" 2>/dev/null </dev/null); then
			res=$(printf '%s\n' "$xa" | TREETX_ROOT=$root TREETX_RECS=$recs TREETX_STATS=$st TREETX_XON=$have_xattr awk "$restore_awk") || { why="restore: awk failed"; return 1; }
			case $res in
			fallback*) ;;
			*)
				apply "$res"
				return ;;
			esac
		fi
	fi
	restore_slow
}

# apply carries out restore_awk's operations.
apply() {
	while IFS=' ' read -r op a1 a2 a3; do
		case $op in
		chown | chmod | touch) decode "$a2" ;;
		xset | xdel) decode "$a1" ;;
		*) continue ;;
		esac
		p=$root/$dp
		case $op in
		chown) run chown -h "+${a1%:*}:+${a1#*:}" -- "$p" || { why="restore owner of $p: $out"; return 1; } ;;
		chmod) run chmod -- "$a1" "$p" || { why="restore mode of $p: $out"; return 1; } ;;
		touch) run touch -h -c -a -d "@$a1" -- "$p" || { why="restore times of $p: $out"; return 1; } ;;
		xset) setxattr set "$a2" "$a3" || return 1 ;;
		xdel) setxattr del - "$a3" || return 1 ;;
		esac
	done <<EOF
$1
EOF
}

# setxattr OP VALUE NAME sets or removes one attribute of $p; like
# snapshot.syncXattrs, one this process may not set is skipped.
setxattr() {
	if [ "$1" = set ]; then
		run setfattr -h -n "$3" -v "$2" -- "$p"
	else
		run setfattr -h -x "$3" -- "$p"
	fi && return 0
	case $out in
	*"Operation not permitted"*) return 0 ;;
	*"No such attribute"*) [ "$1" = del ] && return 0 ;;
	esac
	why="restore extended attributes of $p: $out"
	return 1
}

# sync_xattrs makes the extended attributes of $p those of the record; sets
# xdid=1 if it changed any.
sync_xattrs() {
	xdid=0
	if ! have=$(getfattr -h -d -m - -e hex --absolute-names -- "$p" 2>/dev/null </dev/null); then
		have=$(getfattr -h -d -m - -e hex --absolute-names -- "$p" 2>&1 >/dev/null </dev/null)
		case $have in
		*"Operation not supported"*) have='' ;;
		*) why="restore extended attributes of $p: $have"; return 1 ;;
		esac
	fi
	[ -z "$have" ] && [ "$r_xa" = - ] && return 0
	plan=$(printf '%s\n' "$have" | TREETX_WANT=$r_xa awk "$xattr_awk") || { why="restore extended attributes of $p: $plan"; return 1; }
	[ -n "$plan" ] || return 0
	while IFS=' ' read -r op val name; do
		setxattr "$op" "$val" "$name" || return 1
	done <<EOF
$plan
EOF
	xdid=1
}

# restore_slow restores the batch's records one by one: some path is
# missing, or is not what stat can pair up.
restore_slow() {
	while IFS=' ' read -r r_ino r_mode r_uid r_gid r_size r_at r_mt r_xa r_path; do
		[ -n "$r_ino" ] || continue
		decode "$r_path"
		p=$root/$dp
		if ! run stat -c '%i %a %u %g %s %X %x %Y %y %f' -- "$p"; then
			case $out in *"No such file or directory"*) continue ;; esac
			why="restore $p: $out"
			return 1
		fi
		set -f
		# shellcheck disable=SC2086 # split stat's fields
		set -- $out
		set +f
		# $1 ino $2 mode $3 uid $4 gid $5 size $6 atime $8 its time of day
		# $10 mtime $12 its time of day, $14 the raw mode
		[ "$1" = "$r_ino" ] || continue
		typeof "${14}"
		case $ty in dir | lnk) continue ;; esac # not a linked file
		want=$((0$r_mode))
		[ "$ty" = reg ] || want=$((want & ~06000)) # set-id bits: regular files only
		cm=$((0$2))
		if [ "$3" != "$r_uid" ] || [ "$4" != "$r_gid" ]; then
			run chown -h "+$r_uid:+$r_gid" -- "$p" || { why="restore owner of $p: $out"; return 1; }
			cm=$((cm & ~06000)) # chown may have cleared them
		fi
		xdid=0
		if [ "$have_xattr" = 1 ]; then
			sync_xattrs || return 1
		fi
		if [ "$xdid" = 1 ] || [ "$cm" -ne "$want" ]; then
			run chmod -- "$(printf '%o' "$want")" "$p" || { why="restore mode of $p: $out"; return 1; }
		fi
		frac "$8"
		at=$6.$fr
		frac "${12}"
		if [ "$5" = "$r_size" ] && [ "${10}.$fr" = "$r_mt" ] && [ "$at" != "$r_at" ]; then
			realtime "$r_at"
			run touch -h -c -a -d "@$rt" -- "$p" || { why="restore times of $p: $out"; return 1; }
		fi
	done <<EOF
$recs
EOF
}

# step R4: put the shadow (at .complete) in place of DIR: one exchange
# where mv has --exchange and the file system has it; else rename DIR to the
# failed tree's name, fsync, rename the shadow to DIR. If DIR is gone (row
# 13), the shadow is renamed into its place.
step_R4_swap() {
	if ! exists "$D"; then
		rename_noreplace "$CPL" "$D"
		return
	fi
	if [ "$have_exchange" = 1 ]; then
		run mv --exchange -T -- "$CPL" "$D" && return 0
		if [ "$(fileid "$D")" = "$sid" ]; then return 0; fi
		case $out in
		*"Invalid argument"* | *"not supported"*) ;;
		*"No such file"*)
			if ! exists "$D"; then
				rename_noreplace "$CPL" "$D"
				return
			fi
			why="exchange $CPL and $D: $out"
			return 1 ;;
		*) why="exchange $CPL and $D: $out"; return 1 ;;
		esac
	fi
	rename_noreplace "$D" "$failed" || return 1
	fsync_parent || return 1
	rename_noreplace "$CPL" "$D"
}

# put_back finishes a rollback whose journal is durable (protocol's
# putBack; rows 10 to 13): R3, R4, R5, R6, R7. Each step finds the shadow by
# its inode, so it resumes wherever a crash left it.
put_back() {
	swapped=0
	if exists "$D" && [ "$(fileid "$D")" = "$sid" ]; then
		swapped=1
	else
		expect_shadow_at "$CPL" || return 1
	fi
	failed=$pp/${pre}removing.$jid
	[ "$nlost" -gt 0 ] && failed=$pp/${pre}failed.$jid
	is_snapshot || check_manifest || return 1
	if [ "$swapped" = 0 ]; then
		is_snapshot || step_R3_restore "$CPL" || return 1
		step_R4_swap || return 1
	else
		is_snapshot || step_R3_restore "$D" || return 1
	fi
	step_R5_syncfs || return 1
	step_R6_put_away || return 1
	step_R7_finish
}

# step R5: the restored metadata and the exchange are durable.
step_R5_syncfs() {
	syncfs_parent
}

# step R6: after the exchange, .complete holds the failed tree: rename it to
# its removal name (or, when content was lost, to .failed.ID), durably.
step_R6_put_away() {
	exists "$CPL" || return 0
	run stat -c '%d %i' -- "$CPL" || { why="stat $CPL: $out"; return 1; }
	if [ "$(fileid "$CPL")" = "$sid" ]; then
		why="$CPL still holds the shadow after the exchange"
		return 1
	fi
	rename_noreplace "$CPL" "$failed" || return 1
	fsync_parent
}

# write_journal replaces the journal atomically and durably: unlink a stale
# temporary, write it, fsync it, rename it over the journal, fsync P.
write_journal() {
	run rm -f -- "$JT" || { why="journal: remove stale $JT: $out"; return 1; }
	# dd conv=excl: O_CREAT|O_EXCL, which never follows a symlink nor opens
	# what another process put there meanwhile.
	if ! printf '%s\n' "$1" | dd of="$JT" conv=excl status=none 2>/dev/null; then
		why="journal: create $JT failed"
		return 1
	fi
	run sync -- "$JT" || { why="journal: write $JT: $out"; return 1; }
	run mv -f -T -- "$JT" "$J" || { why="journal: rename $J: $out"; return 1; }
	fsync_parent || { why="journal: $why"; return 1; }
}

# rewrite_journal prints the journal read (jtext) with phase rollback and
# the lost list.
rewrite_journal() {
	printf '%s' "$lost" | awk -v mode=rewrite "$journal_awk" /dev/fd/3 - 3<<EOF
$jtext
EOF
}

# step R2: roll back a transaction whose command had not finished (row 8):
# list the linked files written in place (R1), record them with phase
# rollback, put the shadow back (R3..R7).
step_R2_rollback() {
	expect_shadow_at "$CPL" || return 1
	lost='' nlost=0
	if ! is_snapshot; then
		check_manifest || return 1
		step_R1_changed "$CPL" || return 1
	fi
	newj=$(rewrite_journal 2>&1) || { why="journal $J: $newj"; return 1; }
	write_journal "$newj" || return 1
	put_back
}

# ---------------------------------------------------------------------------
# The lock.

# lock_record writes a holder record into the lock file (as lock.Acquire
# does, right after lock checked what descriptor 9 holds), or clears it
# (once it is checked again to be a regular file with one link): only
# through the descriptor that holds the lock (/proc/self/fd/9 reopens that
# very inode).
lock_record() {
	if [ "$1" = clear ]; then
		case $(stat -L -c '%f %h' /proc/self/fd/9 2>/dev/null) in
		8???" 1") printf '' 2>/dev/null >/proc/self/fd/9 ;;
		esac
		return 0
	fi
	cmd="\"$prog\""
	case $D in *[![:print:]]* | *'"'* | *\\*) ;; *) cmd="$cmd,\"$D\"" ;; esac
	host=$(uname -n 2>/dev/null)
	case $host in *[![:print:]]* | *'"'* | *\\*) host= ;; esac
	user=$(id -un 2>/dev/null || id -u)
	case $user in *[![:print:]]* | *'"'* | *\\*) user= ;; esac
	printf '{"pid":%s,"host":"%s","user":"%s","command":[%s],"since":"%s"}\n' \
		"$$" "$host" "$user" "$cmd" "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)" 2>/dev/null >/proc/self/fd/9
}

# lock takes DIR's lock without waiting: returns 0 had, 1 held by another,
# 2 error (why set), 3 refused (bad set). The lock file must be a regular
# file with one link (rule T1). A missing one is made with O_EXCL, which
# never follows a symlink. It is opened read-write where it can be (an
# exclusive flock over NFS needs that, and such an open of a FIFO does not
# wait), and what was opened is checked by inode before it is locked.
lock() {
	if ! exists "$L"; then
		dd of="$L" conv=excl status=none </dev/null 2>/dev/null
		if ! exists "$L"; then
			why="lock $L: cannot create it"
			return 2
		fi
	fi
	check_file "$L" || return 3
	if { command exec 9<>"$L"; } 2>/dev/null; then
		:
	elif { command exec 9<"$L"; } 2>/dev/null; then
		: # a user who may read it but not write it
	else
		why="lock $L: cannot open it"
		return 2
	fi
	if ! fd9_looked; then
		exec 9<&-
		check_file "$L" || return 3
		bad="$L: expected a regular file with one link, and it was replaced while it was opened"
		return 3
	fi
	mode=-x
	[ "$dry" = 1 ] && mode=-s
	flock -n -E 200 $mode 9
	case $? in
	0) ;;
	200) exec 9<&-; return 1 ;;
	*) exec 9<&-; why="lock $L: flock failed"; return 2 ;;
	esac
	[ "$dry" = 1 ] || lock_record write
	return 0
}

# step C8: release the lock (and clear the holder record).
step_C8_unlock() {
	[ "$dry" = 1 ] || lock_record clear
	exec 9<&-
}

# ---------------------------------------------------------------------------
# One directory.

# report prints the line for one DIR; $1 is did, would or not.
report() {
	line="$D: $state: $found"
	if [ -n "$action" ]; then
		case $1 in
		did) line="$line; did: $action" ;;
		would) line="$line; would: $action" ;;
		*) line="$line; $action" ;;
		esac
	fi
	if [ "$nlost" -gt 0 ] && [ -n "$failed" ]; then
		line="$line; the old content of $nlost file(s) is lost, failed tree kept at $failed"
	fi
	[ -n "$note" ] && line="$line; $note"
	printf '%s\n' "$line"
}

person() { # the action failed or may not be done
	printf '%s: %s: needs a person: %s\n' "$prog" "$D" "$1" >&2
}

# refuse WHAT reports a state recovery may not act on (rule T5): needs a
# person, nothing done; the caller returns 125.
refuse() {
	state="needs a person"
	found="$1; nothing done: inspect it, and the names $pre* beside it"
	report not
	person "$found"
}

# resolve sets D to DIR made absolute with symlinks resolved, like treetx:
# a missing DIR is fine when its parent exists.
resolve() {
	if r=$(realpath -e -- "$1" 2>/dev/null && echo x); then
		r=${r%?x}
	else
		b=${1%"${1##*[!/]}"}
		b=${b##*/}
		case $1 in */*) pd=${1%"${1##*[!/]}"}; pd=${pd%/*}; pd=${pd:-/} ;; *) pd=. ;; esac
		r=$(realpath -e -- "$pd" 2>/dev/null && echo x) || return 1
		r=${r%?x}
		[ -d "$r" ] || return 1
		case $b in '' | . | ..) return 1 ;; esac
		r=${r%/}/$b
	fi
	D=$r
}

# has_names tells whether the parent holds any of DIR's names (the lock,
# the gate, the journal, a shadow, a tree being removed or kept...), as
# recover's hasNamesOf does (layout.Names.Classify).
has_names() {
	for f in "$pp"/.[#]treetx.*; do
		b=${f##*/}
		case $b in
		"$pre"lock | "$pre"gate | "$pre"journal | "$pre"journal.tmp | "$pre"meta | "$pre"incomplete | "$pre"complete | "$pre"group) return 0 ;;
		"$pre"removing.*) is_id "${b#"$pre"removing.}" && return 0 ;;
		"$pre"failed.*) is_id "${b#"$pre"failed.}" && return 0 ;;
		esac
	done
	return 1
}

# read_journal checks the journal as rule T1 says (a regular file with one
# link, not writable by group or others, at most 1 MiB), reads it with
# safe_read, and checks that it is the same file after. It sets jowner and
# jtext, then what parse_journal sets. Returns 1 with jerr set when the
# journal is unreadable or corrupt, 2 with bad set when it is not a file
# recovery may read.
read_journal() {
	check_file "$J" private || return 2
	jowner=$lk_uid
	jlook="$lk_id $lk_size $lk_ctime"
	if [ "$lk_size" -gt 1048576 ]; then
		bad="$J: expected a journal of at most 1 MiB, found $lk_size bytes"
		return 2
	fi
	jtext=$(safe_read "$J" 1048577 | tr '\000' '\001'; echo x)
	jtext=${jtext%x}
	look "$J"
	if [ "$lk_type $lk_id $lk_size $lk_ctime" != "reg $jlook" ]; then
		bad="$J: expected a regular file, and it changed while it was read"
		return 2
	fi
	parse_journal
}

# parse_journal sets jres to what journal_awk says of jtext, and from it
# jid, phase, sdev, sino, nlost, who, jmode, ssub, and sid: the shadow's
# identity as fileid prints it (and, by journal_group, the group).
parse_journal() {
	case $jtext in
	*"$soh"*) jres="corrupt a NUL or control byte" ;;
	*) jres=$(printf '%s' "$jtext" | awk -v mode=parse "$journal_awk" 2>&1) ;;
	esac
	case $jres in
	ok"$nl"*)
		set -f
		oifs=$IFS
		IFS=$nl
		# shellcheck disable=SC2086 # one field a line
		set -- $jres
		IFS=$oifs
		set +f
		jid=$2 phase=$3 sdev=$4 sino=$5 nlost=$6 who=$7 jmode=$8 ssub=$9
		sid="$sdev $sino"
		[ "$ssub" = - ] || sid="subvol $ssub $sino"
		shift 9
		journal_group "$@"
		return 0 ;;
	future*) jerr="$J: journal is from a newer version of treetx (version ${jres#future }; this script reads version 2)" ;;
	*) jerr="$J: journal is unreadable or corrupt: ${jres#corrupt }" ;;
	esac
	return 1
}

# busy_found describes a directory whose lock another process holds, as
# recover's busyReport does.
busy_found() {
	hres=''
	if check_file "$L" && [ "$lk_size" -le 65536 ]; then
		hres=$(safe_read "$L" 65536 | awk "$holder_awk" 2>/dev/null)
	fi
	case $hres in
	ok"$nl"*)
		set -f
		oifs=$IFS
		IFS=$nl
		# shellcheck disable=SC2086 # one field a line
		set -- $hres
		IFS=$oifs
		set +f
		running=1
		if [ "$3" = "$(uname -n 2>/dev/null)" ]; then
			if [ -d /proc/self ]; then
				[ -d "/proc/$2" ] || running=0
			else
				kill -0 "$2" 2>/dev/null || running=0
			fi
		fi
		if [ $running = 1 ]; then
			bwho="its lock is held by pid $2 ($5) on $3 as $4 since $6"
		else
			bwho="its lock is held, not by pid $2 ($5) recorded in the lock file, which has exited: by a process that inherited the lock from it, or by a reader"
		fi ;;
	*) bwho="its lock is held by another process (a reader under treetx lock --shared, or a holder that has not recorded itself)" ;;
	esac
	if ! exists "$J"; then
		found="no transaction journal; $bwho"
	else
		read_journal
		case $? in
		0) found="transaction $jid is in phase $phase; $bwho" ;;
		1) found="$jerr; $bwho" ;;
		*) found="$bad; $bwho" ;;
		esac
	fi
}

# at sets at_there (the name exists) and at_ok (it is the shadow).
# at_type and at_uid are its type and owner.
at() {
	at_there=0 at_ok=0 at_type=none at_uid=''
	if look "$1"; then
		at_there=1 at_type=$lk_type at_uid=$lk_uid
		if [ "$ssub" = - ]; then
			[ "$lk_id" = "$sid" ] && at_ok=1
		elif [ "$lk_ino" = "$sino" ] && [ "$(fileid "$1")" = "$sid" ]; then
			at_ok=1
		fi
	fi
}

# check_shadow sets problem to what keeps recovery from acting on the
# journal (recover's checkShadow, and rule T1 for the names beside it): a
# stale temporary journal must be a regular file, the manifest a private
# regular file of the journal's owner; the shadow, found by inode, must be
# where the phase allows, a directory owned by the journal's owner (any
# owner when that is root); the manifest there, whole, and its records
# confined to the shadow (rule T4) when a rollback needs it.
check_shadow() {
	problem='' sroot=''
	if [ "$ssub" != - ] && ! command -v btrfs >/dev/null 2>&1; then
		problem="the journal names btrfs subvolumes, and btrfs (btrfs-progs) is not found: it is needed to tell its trees"
		return
	fi
	if exists "$JT"; then
		# A stale temporary journal is removed by name before the next
		# journal write (rm never follows it), whatever it is, as treetx
		# does; only a directory cannot be.
		look "$JT"
		if [ "$lk_type" = dir ]; then
			problem="$JT: expected a regular file (a stale temporary journal), found a directory"
			return
		fi
	fi
	if exists "$M" && ! check_file "$M" private "$jowner"; then
		problem=$bad
		return
	fi
	at "$CPL"
	c_ok=$at_ok c_there=$at_there c_type=$at_type c_uid=$at_uid
	case $phase in
	snapshot | commit)
		if [ $c_there = 1 ] && [ $c_ok = 0 ]; then
			problem="$CPL is not the shadow the journal records (inode $sino)"
			return
		fi
		[ $c_ok = 1 ] && ! shadow_dir "$CPL" "$c_type" "$c_uid" && return
		at "$INC"
		if [ $at_there = 1 ] && [ $at_ok = 0 ]; then
			problem="$INC is not the shadow the journal records (inode $sino)"
		elif [ $at_ok = 1 ]; then
			shadow_dir "$INC" "$at_type" "$at_uid"
		fi ;;
	running | rollback)
		at "$D"
		if [ $c_ok = 1 ]; then
			sroot=$CPL
			shadow_dir "$CPL" "$c_type" "$c_uid" || return
		elif [ "$phase" = rollback ] && [ $at_ok = 1 ]; then
			sroot=$D
			shadow_dir "$D" "$at_type" "$at_uid" || return
		elif [ $c_there = 1 ]; then
			problem="$CPL is not the shadow the journal records (inode $sino)"
		else
			problem="the shadow (inode $sino) is neither at $CPL nor at $D"
		fi
		if [ -n "$problem" ] || is_snapshot; then
			:
		elif ! exists "$M"; then
			problem="its manifest $M is missing"
		elif ! check_manifest; then
			problem="its manifest is unusable: manifest is corrupt or incomplete: ${mres#bad }"
		elif ! verify "$sroot"; then
			problem="its manifest is unusable: $why"
		fi ;;
	esac
}

# shadow_dir PATH TYPE UID checks (rule T1) that PATH, which holds the
# shadow's inode and is of TYPE, owned by UID, is a directory owned by the
# journal's owner (any owner when that is root: root gives the shadow DIR's
# owner); else it sets problem.
shadow_dir() {
	if [ "$2" != dir ]; then
		kind "$2"
		problem="$1: expected a directory (the shadow, inode $sino), found $kd"
		return 1
	fi
	if [ "$jowner" != 0 ] && [ "$3" != "$jowner" ]; then
		problem="$1: expected a directory owned by uid $jowner (the journal's owner), found one owned by uid $3"
		return 1
	fi
}

# names sets D and DIR's names from an absolute, resolved path.
names() {
	N=${D##*/}
	pp=${D%/*} # the parent, "" for /
	P=${pp:-/}
	pre=.#treetx.$N.
	L=$pp/${pre}lock G=$pp/${pre}gate J=$pp/${pre}journal JT=$pp/${pre}journal.tmp
	M=$pp/${pre}meta INC=$pp/${pre}incomplete CPL=$pp/${pre}complete
}

recover_one() {
	state='' found='' action='' note='' nlost=0 failed='' jid='' phase='' manifest_ok=0 jmode=hardlink ssub=- sid=''
	if ! resolve "$1"; then
		printf '%s: %s: no such directory, nor a parent holding treetx'"'"'s names for it\n' "$prog" "$1" >&2
		return 125
	fi
	if [ "$D" = / ]; then
		printf '%s: /: the root directory has no parent, so treetx keeps nothing for it\n' "$prog" >&2
		return 125
	fi
	names
	if [ ${#N} -gt 220 ]; then
		printf '%s: %s: name is %s bytes long; treetx'"'"'s names beside it would exceed the 255-byte limit of a file name (at most 220 bytes)\n' "$prog" "$D" "${#N}" >&2
		return 125
	fi
	if ! exists "$L" && ! has_names; then
		# A transaction creates the lock file first: without one, and with
		# none of treetx's names beside DIR, there is nothing to do. Do not
		# create the lock file then (for a mistyped name, or with another
		# owner than the users of the directory).
		if ! exists "$D"; then
			printf '%s: %s: no such directory\n' "$prog" "$D" >&2
			return 125
		fi
		state=idle found="no transaction"
		report not
		return 0
	fi
	if group_redirect; then
		# One of the trees of a transaction over several, final: the
		# record's recovery recovers it (row 30).
		redirected=1
		recover_one "$mk_record"
		rc=$?
		redirected=''
		return $rc
	fi
	# Rule T1: the gate is a regular file with one link (the lock file
	# too: lock checks it), or nothing is done (not even making a missing
	# lock file).
	if exists "$G" && ! check_file "$G"; then
		refuse "$bad"
		return 125
	fi
	if [ "$dry" = 1 ] && ! exists "$L"; then
		recover_locked # a dry run creates no lock file
		return
	fi
	lock
	case $? in
	0) ;;
	1)
		state="in progress" action="left alone"
		busy_found
		report not
		return 75 ;;
	3)
		refuse "$bad"
		return 125 ;;
	*)
		printf '%s: %s: %s\n' "$prog" "$D" "$why" >&2
		return 125 ;;
	esac
	recover_locked
	rc=$?
	step_C8_unlock
	return $rc
}

# recover_as_owner DIR is the recovery of DIR run by recover_as (rule T3):
# with the identity of the journal's owner, the lock held on descriptor 9.
recover_as_owner() {
	state='' found='' action='' note='' nlost=0 failed='' jid='' phase='' manifest_ok=0 jmode=hardlink ssub=- sid=''
	case $1 in /?*) ;; *) usage ;; esac
	D=$1
	names
	if [ "$(id -u)" != "$as_owner" ] || ! fd9_is "$L" || ! flock -n -x 9; then
		printf '%s: %s: --as-owner is run by this script as uid %s, holding the lock on descriptor 9\n' "$prog" "$D" "$as_owner" >&2
		return 125
	fi
	recover_locked
}

# recover_as runs recover_locked again with the identity of the journal's
# owner (rule T3), as root. The lock stays held by descriptor 9, which the
# child inherits; the lock file's holder record stays root's.
recover_as() {
	if ! self_body; then
		refuse "$why; the journal's owner is uid $jowner, as whom it would be recovered"
		return 125
	fi
	as_user "$jowner" sh -c "$body" "$0" --as-owner "$jowner" "$D"
	rc=$?
	case $rc in 0 | 75 | 125) return $rc ;; esac
	state="needs a person"
	found="the recovery as uid $jowner, the journal's owner, exited $rc (setpriv could not run it, or it was killed)"
	report not
	person "$found"
	return 125
}

# recover_locked classifies what is beside DIR (recover's classify: the
# rows of the crash-state table) and acts on it, under the lock.
recover_locked() {
	if exists "$J"; then
		read_journal
		case $? in
		0) ;;
		1)
			state="needs a person"
			found="$jerr; nothing done: inspect it, and the names $pre* beside it"
			report not
			person "$found"
			return 125 ;;
		*)
			refuse "$bad"
			return 125 ;;
		esac
		if [ -n "$as_owner" ] && [ "$jowner" != "$as_owner" ]; then
			refuse "$J: expected a journal owned by uid $as_owner, found one owned by uid $jowner (it was replaced)"
			return 125
		fi
		if [ "$jgn" -gt 0 ]; then # rows 29, 30, 31
			recover_group_locked
			return
		fi
		if [ "$am_root" = 1 ] && [ "$jowner" != 0 ] && [ "$dry" = 0 ]; then
			recover_as
			return
		fi
		check_shadow
		if [ -n "$problem" ]; then
			state="needs a person"
			found="an interrupted $who in phase $phase, but $problem; nothing done: inspect it, and the names $pre* beside it"
			report not
			person "$found"
			return 125
		fi
		state="needs recovery"
		case $phase in
		snapshot) found="an interrupted $who that was still building its shadow" action="drop the shadow (the directory was never touched)" ;;
		running) found="an interrupted $who whose command had not finished" action="roll back to the tree from before the transaction" ;;
		rollback) found="an interrupted rollback of $who" action="finish the rollback" ;;
		commit) found="an interrupted commit of $who" action="finish the commit (the new tree is durable)" ;;
		esac
		is_snapshot && found="$found; its shadow is a btrfs snapshot (subvolume $ssub)"
		if [ "$dry" = 1 ]; then
			nlost=0
			report would
			return 0
		fi
		if [ "$phase" != commit ] && [ "$phase" != snapshot ] && [ "$have_xattr" = 0 ] &&
			check_manifest 2>/dev/null && [ "${mres##* }" = 1 ]; then
			note="extended attributes recorded in the manifest were not restored (getfattr/setfattr not found)"
		fi
		case $phase in
		snapshot | commit) step_C4_discard ;;
		running) step_R2_rollback ;;
		rollback) put_back ;;
		esac || {
			report not
			person "$why"
			return 125
		}
		report did
		if [ "$nlost" -gt 0 ]; then
			printf '%s: %s: rolled back, but the old content of %s file(s) written in place is lost (the failed tree is kept at %s)\n' "$prog" "$D" "$nlost" "$failed" >&2
			return 125
		fi
		return 0
	fi
	if [ -n "$as_owner" ]; then
		refuse "$J: expected the journal owned by uid $as_owner, found nothing (it was removed)"
		return 125
	fi
	mk_garbage=''
	if exists "$pp/${pre}group"; then
		marker_here || return "$mk_rc"
		mk_garbage=${pre}group
	fi
	if exists "$CPL"; then
		state="needs a person"
		found="$CPL exists but no journal claims it, so it was not made by treetx and is never installed; move it away"
		report not
		person "$found"
		return 125
	fi
	garbage=$mk_garbage kept='' old=''
	for f in "$INC" "$JT" "$M"; do
		exists "$f" && garbage=$garbage${garbage:+, }${f##*/}
	done
	for f in "$pp"/.[#]treetx.*; do
		b=${f##*/}
		case $b in
		"$pre"removing.*) is_id "${b#"$pre"removing.}" && old=$old${old:+, }$b ;;
		"$pre"failed.*) is_id "${b#"$pre"failed.}" && kept=$kept${kept:+, }$b ;;
		esac
	done
	if [ -z "$garbage" ]; then
		# Trees named for removal alone are no unfinished business (treetx
		# run leaves their deletion to a detached process): still deleted,
		# in case that process died.
		if [ -z "$old" ] && ! exists "$D"; then
			printf '%s: %s: no such directory\n' "$prog" "$D" >&2
			return 125
		fi
		state=idle found="no transaction"
		[ -n "$kept" ] && found="$found; failed tree(s) kept for inspection: $kept"
		if [ -z "$old" ]; then
			report not
			return 0
		fi
		found="$found; old trees being deleted: $old"
		action="delete them (they belong to no transaction)"
	else
		state="needs recovery"
		found="leftovers of finished or abandoned transactions: $garbage${old:+, }$old"
		action="remove them (the directory is not involved)"
	fi
	if [ "$dry" = 1 ]; then
		report would
		return 0
	fi
	if ! remove_leftovers; then
		report not
		person "remove leftovers: $why"
		return 125
	fi
	report did
	return 0
}

# remove_leftovers deletes what no journal claims (rows 2, 3, 3a; recover's
# apply, with layout.Names.DropTree): a directory not already under a
# removal name is first renamed to one and the rename made durable, so that
# a tree is only ever deleted under such a name (G2); files are simply
# unlinked (G1); trees under removal names are deleted (G3).
remove_leftovers() {
	if [ -n "${mk_garbage-}" ]; then
		drop_marker || return 1
	fi
	for f in "$INC" "$JT" "$M"; do
		exists "$f" || continue
		if [ -d "$f" ] && ! [ -L "$f" ]; then
			step_G2_drop_tree "$f" || return 1
		else
			step_G1_unlink "$f" || return 1
		fi
	done
	step_C7_remove_garbage
}

# step G1: unlink a leftover that is not a directory: only the name goes
# (unlink never follows a symlink).
step_G1_unlink() {
	run rm -f -- "$1" || { why="remove $1: $out"; return 1; }
}

# step G2: rename a leftover tree to a new removal name, make the rename
# durable, then delete the tree (as G3 does).
step_G2_drop_tree() {
	new_id
	rename_noreplace "$1" "$pp/${pre}removing.$nid" || return 1
	fsync_parent || return 1
	remove_tree "$pp/${pre}removing.$nid" owner
}

# ---------------------------------------------------------------------------
# Transactions over several trees (docs/protocol.md, "One transaction over
# several trees": rows 29, 30, 31; recover's classifyGroup and
# recoverGroup). Every journal of one is version 2 and names its group: an
# id and the trees, the record's first, whose journal decides for all;
# beside every tree a marker, T.group, holds the same until the group is
# over, leading a tree whose journal is gone to the record.
#
# The other trees' locks. POSIX sh opens descriptors 0 to 9 only, and a
# group has up to 64 trees: no one shell can hold all their locks. So each
# is taken, without waiting (lock, as DIR's is), by a subshell of its own
# on descriptor 9, nested in the subshell that holds the tree before it
# (group_lock); DIR's stays with the script. The innermost, when every lock
# is held by it or a parent, recovers the trees (group_work) and removes
# the markers; then each subshell releases its lock as they unwind. A lock
# held, or refused, anywhere: nothing is done. As root, each tree's steps
# are taken as its journal's owner (rule T3) by this script run again under
# setpriv (--group-tree), which cannot be handed the open file that holds
# that tree's lock: it checks instead that the lock is held (by a parent).

# journal_group sets, from journal_awk's lines after the description, jgid
# (the group's id, "-" for none), jgn (its number of trees, 0 for none) and
# jtrees (the trees, manifest-escaped, in one word each, the record's
# first).
journal_group() {
	jgid=${1:--} jgn=${2:-0} jtrees=''
	[ $# -ge 2 ] && shift 2
	for e; do jtrees=$jtrees${jtrees:+ }$e; done
}

# group_words sets g_first to the first tree of jtrees (the record's) and
# g_list to the trees as Go's %v shows them ("[/a /b]"); in_group to 1 if D
# is one of them.
group_words() {
	g_first='' g_list='' in_group=0
	set -f
	for e in $jtrees; do
		decode "$e"
		[ -n "$g_first" ] || g_first=$dp
		[ "$dp" = "$D" ] && in_group=1
		g_list=$g_list${g_list:+ }$dp
	done
	set +f
	g_list="[$g_list]"
}

# read_marker PATH reads a group's marker as layout.ReadMarker does (rule
# T1, as for a journal: a regular file with one link, not writable by group
# or others, at most 1 MiB) and sets mk_owner, mk_id, mk_n, mk_trees (as
# jtrees) and mk_record; it returns 1 when the marker cannot be read.
read_marker() {
	check_file "$1" private || return 1
	mk_owner=$lk_uid
	[ "$lk_size" -le 1048576 ] || return 1
	mk_res=$(safe_read "$1" 1048577 | tr '\000' '\001' | awk "$marker_awk" 2>/dev/null) || return 1
	case $mk_res in ok"$nl"*) ;; *) return 1 ;; esac
	set -f
	oifs=$IFS
	IFS=$nl
	# shellcheck disable=SC2086 # one field a line
	set -- $mk_res
	IFS=$oifs
	set +f
	mk_id=$2 mk_n=$3
	shift 3
	mk_trees=''
	for e; do mk_trees=$mk_trees${mk_trees:+ }$e; done
	decode "$1"
	mk_record=$dp
}

# peek_journal DIR reads DIR's journal (read_journal, in a subshell: the
# journal being recovered stays read) and sets pk_owner, pk_phase and
# pk_gid; or, returning 1, pk_err to why it cannot be read, as Go says it.
peek_journal() {
	pk_res=$(
		D=$1
		names
		if [ ${#N} -gt 220 ]; then
			printf 'err\n%s: name is %s bytes long; treetx'"'"'s names beside it would exceed the 255-byte limit of a file name (at most 220 bytes)\n' "$D" "${#N}"
			exit 0
		fi
		if ! exists "$P"; then
			printf 'err\nopen %s: no such file or directory\n' "$P"
			exit 0
		fi
		if ! exists "$J"; then
			printf 'err\nopen %s: no such file or directory\n' "$J"
			exit 0
		fi
		read_journal
		case $? in
		0) printf 'ok\n%s\n%s\n%s\n' "$jowner" "$phase" "$jgid" ;;
		1) printf 'err\n%s\n' "$jerr" ;;
		*) printf 'err\n%s\n' "$bad" ;;
		esac
	)
	case $pk_res in
	ok"$nl"*)
		set -f
		oifs=$IFS
		IFS=$nl
		# shellcheck disable=SC2086 # one field a line
		set -- $pk_res
		IFS=$oifs
		set +f
		pk_owner=$2 pk_phase=$3 pk_gid=$4
		return 0 ;;
	esac
	pk_err=${pk_res#err"$nl"}
	return 1
}

# marker_unfinished tells whether the group of the marker read_marker read
# is not over (layout.Group.Unfinished): its record still has its journal,
# of that group and of the marker's owner. Else the marker is garbage.
marker_unfinished() {
	peek_journal "$mk_record" && [ "$pk_gid" = "$mk_id" ] && [ "$pk_owner" = "$mk_owner" ]
}

# group_redirect tells whether DIR, with no journal, is one of the trees of
# a transaction over several that is not over, whose record is another
# tree (mk_record): recovering the record recovers DIR (recover's
# recoverDir, row 30). Only once for a DIR: a marker whose record resolves
# back to it leads nowhere.
group_redirect() {
	[ -z "${redirected-}" ] && ! exists "$J" && exists "$pp/${pre}group" &&
		read_marker "$pp/${pre}group" && [ "$mk_record" != "$D" ] && marker_unfinished
}

# marker_here looks at DIR's marker, DIR having no journal, under its lock:
# it returns 0 when the marker is garbage (row 3: its group is over, or it
# cannot be read); else (row 30: the group's record still has its journal,
# which group_redirect saw a moment ago) it reports that, leaving it for
# the record's recovery, and returns 1 with mk_rc the exit status.
marker_here() {
	read_marker "$pp/${pre}group" && marker_unfinished || return 0
	state="needs recovery"
	found="one of the $mk_n trees of transaction $mk_id, which is not over"
	action="recover the transaction from its record, $mk_record"
	mk_rc=0
	if [ "$dry" = 1 ]; then
		report would
	else
		report not
		printf '%s: %s: its group'"'"'s record, %s, changed meanwhile: run it again\n' "$prog" "$D" "$mk_record" >&2
		mk_rc=75
	fi
	return 1
}

# drop_marker removes a marker that is garbage, as any leftover (G1; G2 for
# a directory).
drop_marker() {
	f=$pp/${pre}group
	exists "$f" || return 0
	if [ -d "$f" ] && ! [ -L "$f" ]; then
		step_G2_drop_tree "$f"
	else
		step_G1_unlink "$f"
	fi
}

# phase_words sets found and action for the journal's phase, as recover's
# classify words them.
phase_words() {
	case $phase in
	snapshot) found="an interrupted $who that was still building its shadow" action="drop the shadow (the directory was never touched)" ;;
	running) found="an interrupted $who whose command had not finished" action="roll back to the tree from before the transaction" ;;
	rollback) found="an interrupted rollback of $who" action="finish the rollback" ;;
	commit) found="an interrupted commit of $who" action="finish the commit (the new tree is durable)" ;;
	esac
}

# group_decide completes the classification of D, whose journal (checked by
# check_shadow) belongs to a group (recover's classifyGroup): it reads the
# group's record and sets g_decision (commit or rollback), g_record, and
# g_row29 to 1 when D's journal says running and the record commit (row
# 29). Row 31: D is not one of the group's trees, or the record cannot be
# read (or is another transaction's, or another owner's) while D's journal
# has not decided itself: found says so, and it returns 1.
group_decide() {
	g_decision='' g_row29=0
	group_words
	g_record=$g_first
	if [ "$in_group" = 0 ]; then
		found="its journal names a group of trees ($g_list) that $D is not one of; nothing done"
		return 1
	fi
	if [ "$g_record" = "$D" ]; then
		g_decision=rollback
		[ "$phase" = commit ] && g_decision=commit
		return 0
	fi
	if peek_journal "$g_record"; then
		rj=${g_record%/*}/.#treetx.${g_record##*/}.journal
		if [ "$pk_gid" != "$jgid" ]; then
			pk_err="$rj is another transaction's journal: file does not exist"
		elif [ "$pk_owner" != "$jowner" ]; then
			pk_err="$rj belongs to uid $pk_owner, this journal to uid $jowner"
		else
			g_decision=rollback
			[ "$pk_phase" = commit ] && g_decision=commit
		fi
	fi
	if [ -z "$g_decision" ]; then
		case $phase in
		commit | rollback)
			# D's own journal has decided (it could only have after
			# the record did).
			g_decision=$phase
			return 0 ;;
		esac
		found="$J, in phase $phase, belongs to transaction $jgid over $g_list, but the journal of $g_record, which records whether it committed, cannot be read ($pk_err); nothing done: inspect the names .#treetx.* beside each tree"
		return 1
	fi
	[ "$g_decision" = commit ] && [ "$phase" = running ] && g_row29=1
	return 0
}

# recover_group_locked recovers DIR, whose journal (read) belongs to a
# group, under DIR's lock: rows 29, 30, 31. It classifies DIR as root (the
# other trees too, later), then takes the other trees' locks and recovers
# every tree of the group (group_lock, group_work).
recover_group_locked() {
	check_shadow
	if [ -n "$problem" ]; then
		state="needs a person"
		found="an interrupted $who in phase $phase, but $problem; nothing done: inspect it, and the names $pre* beside it"
		report not
		person "$found"
		return 125
	fi
	state="needs recovery"
	phase_words
	found="$found, one of the $jgn trees of transaction $jgid"
	if ! group_decide; then # row 31
		state="needs a person" action=''
		report not
		person "$found"
		return 125
	fi
	g_mode=own
	if [ "$g_row29" = 1 ]; then # row 29
		g_mode=commit
		action="finish the commit (the group's record, $g_record, says commit)"
	fi
	if [ "$dry" = 1 ]; then
		nlost=0
		report would
		return 0
	fi
	if [ "$have_xattr" = 0 ] && [ "$phase" != commit ] && [ "$phase" != snapshot ] && [ "$g_mode" = own ] &&
		check_manifest 2>/dev/null && [ "${mres##* }" = 1 ]; then
		note="extended attributes recorded in the manifest were not restored (getfattr/setfattr not found)"
	fi
	g_id=$jgid g_D=$D g_trees=$jtrees
	group_save
	set -f
	set --
	for e in $jtrees; do
		decode "$e"
		[ "$dp" = "$D" ] || set -- "$@" "$dp"
	done
	set +f
	group_lock "$@"
}

# group_save keeps what DIR's recovery found, for when its turn comes and
# for its line; group_restore brings it back.
group_save() {
	s_jtext=$jtext s_jid=$jid s_phase=$phase s_sdev=$sdev s_sino=$sino s_nlost=$nlost
	s_jowner=$jowner s_who=$who s_jgid=$jgid s_jgn=$jgn s_jtrees=$jtrees
	s_jmode=$jmode s_ssub=$ssub s_sid=$sid
	s_state=$state s_found=$found s_action=$action s_note=$note
}

group_restore() {
	D=$g_D
	names
	jtext=$s_jtext jid=$s_jid phase=$s_phase sdev=$s_sdev sino=$s_sino nlost=$s_nlost
	jowner=$s_jowner who=$s_who jgid=$s_jgid jgn=$s_jgn jtrees=$s_jtrees
	jmode=$s_jmode ssub=$s_ssub sid=$s_sid
	state=$s_state found=$s_found action=$s_action note=$s_note
	manifest_ok=0 failed=''
}

# group_lock TREE... takes the lock of each TREE without waiting, each in a
# subshell nested in the one before, then runs group_work in the innermost
# and releases them as it returns. A lock held by another process: DIR's
# line says so, nothing is done, 75; a lock file treetx does not make
# there, or one that cannot be taken: 125.
group_lock() {
	if [ $# -eq 0 ]; then
		group_work
		return
	fi
	(
		D=$1
		shift
		names
		lock
		case $? in
		0) ;;
		1)
			busy_found
			group_left "in progress" "$found"
			exit 75 ;;
		3)
			group_left "needs a person" "$bad"
			exit 125 ;;
		*)
			group_left error "$why"
			exit 125 ;;
		esac
		group_lock "$@"
		rc=$?
		step_C8_unlock
		exit $rc
	)
}

# group_left STATE WHAT prints DIR's line when the lock of the tree D could
# not be taken (STATE, WHAT it found there): the group is left alone.
group_left() {
	found="transaction $g_id over $g_list: $D: $2"
	state=$1 action="left alone" nlost=0 note=''
	D=$g_D
	report not
	[ "$1" = "in progress" ] || person "$found"
}

# group_work recovers every tree of the group, every lock held: each other
# tree by its own row, in the group's order, then the record; DIR in its
# turn. Once every tree is final, with no content lost, it removes the
# markers. It prints DIR's line.
group_work() {
	g_why='' g_lost='' n_done=0 n_nlost=0 n_failed=''
	set -f
	set --
	for e in $g_trees; do
		decode "$e"
		set -- "$@" "$dp"
	done
	set +f
	g_all=$g_trees
	t=$1
	shift
	set -- "$@" "$t"
	for t; do
		if [ "$t" = "$g_D" ]; then
			group_this
		else
			group_other "$t"
		fi
		case $? in
		0) ;;
		3) g_lost="$g_lost${g_lost:+; }$D: rolled back, but the old content of $nlost file(s) written in place is lost (the failed tree is kept at $failed)" ;;
		*)
			g_why="$D: $why"
			break ;;
		esac
	done
	group_restore
	nlost=$n_nlost failed=$n_failed
	did=not
	[ "$n_done" = 1 ] && did=did
	if [ -n "$g_why" ]; then
		report $did
		person "$g_why"
		return 125
	fi
	if [ -n "$g_lost" ]; then
		# As treetx: the markers stay (garbage now, for a later
		# recovery), and the status says content was lost.
		report did
		printf '%s: %s\n' "$prog" "$g_lost" >&2
		return 125
	fi
	# The group is over: every tree final, every journal gone.
	set -f
	for e in $g_all; do
		decode "$e"
		D=$dp
		names
		run rm -f -- "$pp/${pre}group" || g_why="$g_why${g_why:+; }remove $pp/${pre}group: $out"
	done
	set +f
	D=$g_D
	names
	report did
	if [ -n "$g_why" ]; then
		person "$g_why"
		return 125
	fi
	return 0
}

# group_this recovers DIR in its turn: as classified before the other
# trees' locks were taken. Returns as group_other does.
group_this() {
	group_restore
	group_act "$g_mode" || return 1
	n_done=1 n_nlost=$nlost n_failed=$failed
	[ "$nlost" -gt 0 ] && return 3
	return 0
}

# group_other TREE recovers one of the group's trees but DIR, as recover's
# recoverGroup does (classify, plan, apply), silently. Its journal, if it
# has one of this group, is finished as its record decides; another
# transaction's is left (that tree is done with this one); without one,
# what is left beside it goes, unless it is a marker of this group (row
# 30, removed with the others at the end). Returns 0 (done, or nothing to
# do), 3 (rolled back, content lost) or 1, why set (it needs a person, or
# failed).
group_other() {
	D=$1
	names
	manifest_ok=0 nlost=0 failed='' jid='' phase='' jgid='-' jgn=0 jtrees='' mk_garbage=''
	if exists "$G" && ! check_file "$G"; then # row 17
		why=$bad
		return 1
	fi
	if exists "$J"; then
		read_journal
		case $? in
		0) ;;
		1) why=$jerr; return 1 ;;
		*) why=$bad; return 1 ;;
		esac
		[ "$jgid" = "$g_id" ] || return 0
		check_shadow
		if [ -n "$problem" ]; then
			why="an interrupted $who in phase $phase, but $problem; nothing done: inspect it, and the names $pre* beside it"
			return 1
		fi
		if ! group_decide; then
			why=$found
			return 1
		fi
		mode=own
		[ "$g_row29" = 1 ] && mode=commit
		group_act "$mode" || return 1
		[ "$nlost" -gt 0 ] && return 3
		return 0
	fi
	if exists "$pp/${pre}group"; then
		if read_marker "$pp/${pre}group" && marker_unfinished; then
			return 0 # row 30
		fi
		mk_garbage=${pre}group
	fi
	if exists "$CPL"; then # row 4
		why="$CPL exists but no journal claims it, so it was not made by treetx and is never installed; move it away"
		return 1
	fi
	remove_leftovers || {
		why="remove leftovers: $why"
		return 1
	}
}

# group_act MODE finishes the transaction of the tree D, whose journal is
# read and checked (check_shadow): MODE commit commits a journal still in
# phase running first (row 29), own finishes it as its phase says. As root,
# on a journal another user owns, as that user (rule T3: --group-tree).
# Sets nlost and failed; returns 1 with why set if it failed.
group_act() {
	failed=''
	if [ "$am_root" = 0 ] || [ "$jowner" = 0 ]; then
		group_steps "$1"
		return
	fi
	self_body || return 1
	ga_out=$(as_user "$jowner" sh -c "$body" "$0" --group-tree "$jowner" "$D" "$1" </dev/null)
	ga_rc=$?
	case $ga_rc:$ga_out in
	0:"done "[0-9]*) nlost=${ga_out#done } ;;
	125:?*) why=$ga_out; return 1 ;;
	*)
		why="the recovery as uid $jowner, the journal's owner, exited $ga_rc (setpriv could not run it, or it was killed)"
		return 1 ;;
	esac
	[ "$nlost" -gt 0 ] && failed=$pp/${pre}failed.$jid
	return 0
}

# group_steps MODE takes the steps of group_act, as the identity it runs
# with.
group_steps() {
	failed=''
	if [ "$1" = commit ] && [ "$phase" = running ]; then
		step_C3_commit || return 1
	fi
	case $phase in
	snapshot | commit)
		step_C4_discard || return 1
		nlost=0 ;;
	running) step_R2_rollback ;;
	rollback) put_back ;;
	esac
}

# step C3: row 29: the group's record says commit, so this tree's journal,
# still saying running, is made to say commit too, durably, before its
# shadow goes (protocol's FinishCommitted): a crash after it leaves row 14.
step_C3_commit() {
	newj=$(printf '%s' "$jtext" | awk -v mode=commit "$journal_awk" 2>&1) || {
		why="journal $J: $newj"
		return 1
	}
	write_journal "$newj" || return 1
	phase=commit
}

# group_held tells whether DIR's lock file is held exclusively by another
# open file: the one a parent of this process took (a shared try fails).
group_held() {
	check_file "$L" || return 1
	{ command exec 9<"$L"; } 2>/dev/null || return 1
	if ! fd9_looked; then
		exec 9<&-
		return 1
	fi
	flock -n -s -E 200 9
	gh_rc=$?
	exec 9<&-
	[ "$gh_rc" = 200 ]
}

# group_tree_as_owner DIR MODE is group_act's child (rule T3): with the
# identity of the journal's owner, it reads and checks DIR's journal again
# and takes the steps (group_steps). It prints "done NLOST", or why not
# and exits 125.
group_tree_as_owner() {
	state='' found='' action='' note='' nlost=0 failed='' jid='' phase='' manifest_ok=0
	case $1 in /?*) ;; *) usage ;; esac
	case $2 in own | commit) ;; *) usage ;; esac
	D=$1
	names
	if [ "$(id -u)" != "$as_owner" ] || ! group_held; then
		printf '%s: %s: --group-tree is run by this script as uid %s, a parent holding the lock\n' "$prog" "$D" "$as_owner" >&2
		return 125
	fi
	read_journal
	case $? in
	0) ;;
	1) printf '%s\n' "$jerr"; return 125 ;;
	*) printf '%s\n' "$bad"; return 125 ;;
	esac
	if [ "$jowner" != "$as_owner" ]; then
		printf '%s\n' "$J: expected a journal owned by uid $as_owner, found one owned by uid $jowner (it was replaced)"
		return 125
	fi
	check_shadow
	if [ -n "$problem" ]; then
		printf '%s\n' "an interrupted $who in phase $phase, but $problem; nothing done"
		return 125
	fi
	if ! group_steps "$2"; then
		printf '%s\n' "$why"
		return 125
	fi
	printf 'done %s\n' "$nlost"
}

case $as_owner in
'') ;;
*[!0-9]*) usage ;;
*)
	if [ "$group_tree" = 1 ]; then
		group_tree_as_owner "$1" "$2"
		exit
	fi
	recover_as_owner "$1"
	exit ;;
esac
if [ "$remove_only" = 1 ]; then
	remove_here "$1" || { printf '%s: %s\n' "$prog" "$why" >&2; exit 1; }
	exit 0
fi

status=0
for dir in "$@"; do
	recover_one "$dir"
	rc=$?
	if [ $rc != 0 ] && { [ $status = 0 ] || [ $rc = 125 ]; }; then
		status=$rc
	fi
done
exit $status
