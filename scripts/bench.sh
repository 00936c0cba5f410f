#!/bin/sh
# Benchmarks treetx against cp -al on deterministic CVS-like trees.
#
#   scripts/bench.sh [-r RUNS] [-s "1000 100000 1000000"] [-x] [-e] [WORKDIR]
#   scripts/bench.sh -b [-r RUNS] [-s SIZES] [WORKDIR]
#
# -r: runs per measurement (median is reported; default 5)
# -s: tree sizes in files (default "1000 100000")
# -x: also run every measurement on a loop-mounted XFS image (needs root)
# -e: also on a loop-mounted ext4 image, made by mkfs.ext4 with its
#     defaults (a journal), for a file system that WORKDIR's may not be
# -b: instead, on a loop-mounted btrfs image (needs root and btrfs-progs),
#     the cost of a shadow made of hard links against a snapshot: cp -al and
#     rm -rf of the corpus, against btrfs subvolume snapshot and delete of
#     it as a subvolume, and against treetx's own Snapshot, syncfs,
#     DeleteSubvolume and syncfs (scripts/snapbench); treetx run in
#     snapshot mode on the subvolume, a one-file change committed and rolled
#     back, end to end (the detached deletion left out, and waited for with
#     --wait-cleanup) and from the command's exit; and treetx convert of the
#     corpus into that subvolume, once per size
# WORKDIR (default /var/tmp/treetx-bench) keeps the corpora between runs; it
# must be on the file system to measure. Commands are alternated within each
# run so that a noisy machine affects them alike. Prints a Markdown table.
set -eu
runs=5
sizes="1000 100000"
images=
btrfs=
while getopts r:s:xeb opt; do
  case $opt in
    r) runs=$OPTARG ;;
    s) sizes=$OPTARG ;;
    x) images="$images xfs" ;;
    e) images="$images ext4" ;;
    b) btrfs=1 ;;
    *) echo "usage: $0 [-r RUNS] [-s SIZES] [-x] [-e] [WORKDIR]; $0 -b [-r RUNS] [-s SIZES] [WORKDIR]" >&2; exit 64 ;;
  esac
done
shift $((OPTIND - 1))
work=${1:-/var/tmp/treetx-bench}
top=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$work"
work=$(cd "$work" && pwd)
tx=$work/treetx
(cd "$top" && go build -o "$tx" .)

now() { date +%s%N; }
ms() { awk -v ns="$1" 'BEGIN { printf "%.1f", ns / 1e6 }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.0f\n", v[(NR + 1) / 2]; else printf "%.0f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

# measure DIR LABEL: appends "label ns" lines to $results for one run.
measure() {
  d=$1 label=$2 x=$(dirname "$1")/x.$$
  rm -rf "$x"
  # Each timed command starts with nothing left to write back.
  sync
  t0=$(now); cp -al "$d" "$x"; t1=$(now)
  echo "$label cpal $((t1 - t0))" >>"$results"
  sync
  t0=$(now); rm -rf "$x"; t1=$(now)
  echo "$label rmrf $((t1 - t0))" >>"$results"
  # treetx's own deletion, as the detached cleaner runs it.
  g=$(dirname "$d")/.#treetx.$(basename "$d").removing.0123456789abcdef
  cp -al "$d" "$g"
  sync
  t0=$(now); "$tx" _cleanup "$g"; t1=$(now)
  echo "$label cleanup $((t1 - t0))" >>"$results"
  sync
  t0=$(now); cp -al "$d" "$x"; sync -f "$x"; t1=$(now)
  echo "$label cpalsync $((t1 - t0))" >>"$results"
  rm -rf "$x"
  sync
  t0=$(now); cp -al "$d" "$x"; rm -rf "$x"; t1=$(now)
  echo "$label cpalrm $((t1 - t0))" >>"$results"
  sync
  # A whole transaction; the command notes when it starts and ends.
  t0=$(now)
  "$tx" run -v "$d" -- sh -c 'date +%s%N >"$0"; date +%s%N >"$1"' "$work/start" "$work/end" 2>"$work/log"
  t1=$(now)
  echo "$label run $((t1 - t0))" >>"$results"
  echo "$label shadow $(($(cat "$work/start") - t0))" >>"$results"
  echo "$label commit $((t1 - $(cat "$work/end")))" >>"$results"
  awk -v label="$label" '
    function sec(s) { sub(/.*T/, "", s); sub(/Z$/, "", s); split(s, a, ":"); return a[1] * 3600 + a[2] * 60 + a[3] }
    /do="build shadow"/ { b = sec($1) }
    /do=syncfs/ && !s { s = sec($1) }
    /do=rename/ && s && !r { r = sec($1) }
    END { printf "%s build %.0f\n%s syncfs %.0f\n", label, (s - b) * 1e9, label, (r - s) * 1e9 }' "$work/log" >>"$results"
  wait_cleanup "$d"
  t0=$(now)
  "$tx" run --wait-cleanup "$d" -- true
  t1=$(now)
  echo "$label runwait $((t1 - t0))" >>"$results"
  t0=$(now)
  "$tx" run "$d" -- sh -c 'date +%s%N >"$0"; exit 1' "$work/end" 2>/dev/null || true
  t1=$(now)
  echo "$label rollback $((t1 - $(cat "$work/end")))" >>"$results"
  # The same two with every linked file checked, as without root.
  wait_cleanup "$d"
  "$tx" run --full-check "$d" -- sh -c 'date +%s%N >"$0"' "$work/end"
  t1=$(now)
  echo "$label commitfull $((t1 - $(cat "$work/end")))" >>"$results"
  wait_cleanup "$d"
  "$tx" run --full-check "$d" -- sh -c 'date +%s%N >"$0"; exit 1' "$work/end" 2>/dev/null || true
  t1=$(now)
  echo "$label rollbackfull $((t1 - $(cat "$work/end")))" >>"$results"
  wait_cleanup "$d"
  /usr/bin/time -f "%M" -o "$work/rss" "$tx" run "$d" -- true
  echo "$label rsskb $(cat "$work/rss")" >>"$results"
  wait_cleanup "$d"
}

# wait_cleanup DIR: waits for the detached deletion of old trees.
wait_cleanup() {
  while :; do
    set -- "$1" "$(dirname "$1")/.#treetx.$(basename "$1").removing."*
    [ -e "$2" ] || return 0
    sleep 0.05
  done
}

corpus() {
  c=$1/c$2
  [ -d "$c" ] || (cd "$top" && go run ./scripts/mkcorpus "$c" "$2")
  echo "$c"
}

report() {
  echo "| files | fs | cp -al | cp -al + sync -f | shadow (durable) | shadow/cp -al | build | syncfs | durable/build | run -- true | cp -al + rm -rf | run/(cp+rm) | run --wait-cleanup | rm -rf | deletion by treetx (ratio to rm -rf) | commit latency | rollback latency | commit, --full-check | rollback, --full-check | peak RSS |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for label in $(awk '{ print $1 }' "$results" | sort -t/ -k2n -k1 | uniq); do
    get() { awk -v l="$label" -v k="$1" '$1 == l && $2 == k { print $3 }' "$results" | median; }
    cpal=$(get cpal) cpals=$(get cpalsync) sh=$(get shadow) b=$(get build) sf=$(get syncfs)
    run=$(get run) cprm=$(get cpalrm) rw=$(get runwait) rm=$(get rmrf) cl=$(get cleanup) c=$(get commit) rb=$(get rollback) cf=$(get commitfull) rbf=$(get rollbackfull) rss=$(get rsskb)
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
    echo "| ${label#*/} | ${label%%/*} | $(ms "$cpal") ms | $(ms "$cpals") ms | $(ms "$sh") ms | $(ratio "$sh" "$cpal") | $(ms "$b") ms | $(ms "$sf") ms | $(ratio "$((b + sf))" "$b") | $(ms "$run") ms | $(ms "$cprm") ms | $(ratio "$run" "$cprm") | $(ms "$rw") ms | $(ms "$rm") ms | $(ms "$cl") ms ($(ratio "$cl" "$rm")) | $(ms "$c") ms | $(ms "$rb") ms | $(ms "$cf") ms | $(ms "$rbf") ms | $((rss / 1024)) MiB |"
  done
}

# measure_btrfs PLAIN SUBVOL LABEL: appends one run of the -b measurements
# of the corpus PLAIN (a directory) and SUBVOL (the same tree, a subvolume).
measure_btrfs() {
  c=$1 v=$2 label=$3 x=$(dirname "$1")/x.$$ s=$(dirname "$2")/s.$$
  # Each timed command starts with nothing to write back, and with the
  # cleaner done with the subvolumes deleted before.
  settle() { sync; btrfs subvolume sync "$(dirname "$c")" >/dev/null 2>&1 || true; }
  settle
  t0=$(now); cp -al "$c" "$x"; t1=$(now)
  echo "$label cpal $((t1 - t0))" >>"$results"
  settle
  t0=$(now); rm -rf "$x"; t1=$(now)
  echo "$label rmrf $((t1 - t0))" >>"$results"
  settle
  t0=$(now); cp -al "$c" "$x"; sync -f "$x"; t1=$(now)
  echo "$label cpalsync $((t1 - t0))" >>"$results"
  rm -rf "$x"
  settle
  t0=$(now); btrfs subvolume snapshot "$v" "$s" >/dev/null; t1=$(now)
  echo "$label clisnap $((t1 - t0))" >>"$results"
  t0=$(now); btrfs subvolume delete "$s" >/dev/null; t1=$(now)
  echo "$label clidel $((t1 - t0))" >>"$results"
  settle
  "$work/snapbench" "$v" | sed "s#^#$label #" >>"$results"
  # treetx run in snapshot mode: a one-file change, committed, then rolled
  # back; the command notes when it ends.
  one='echo "$2" >"$0/one"; date +%s%N >"$1"; exit "$3"'
  settle
  t0=$(now); "$tx" run "$v" -- sh -c "$one" "$v" "$work/end" "$t0" 0; t1=$(now)
  echo "$label runcommit $((t1 - t0))" >>"$results"
  echo "$label commitlat $((t1 - $(cat "$work/end")))" >>"$results"
  wait_cleanup "$v"
  settle
  t0=$(now); "$tx" run "$v" -- sh -c "$one" "$v" "$work/end" "$t0" 1 || true; t1=$(now)
  echo "$label runrollback $((t1 - t0))" >>"$results"
  echo "$label rollbacklat $((t1 - $(cat "$work/end")))" >>"$results"
  wait_cleanup "$v"
  settle
  t0=$(now); "$tx" run --wait-cleanup "$v" -- sh -c "$one" "$v" "$work/end" "$t0" 0; t1=$(now)
  echo "$label runcommitwait $((t1 - t0))" >>"$results"
  settle
  t0=$(now); "$tx" run --wait-cleanup "$v" -- sh -c "$one" "$v" "$work/end" "$t0" 1 || true; t1=$(now)
  echo "$label runrollbackwait $((t1 - t0))" >>"$results"
}

report_btrfs() {
  echo "| files | cp -al | cp -al + sync -f | rm -rf | btrfs subvolume snapshot | btrfs subvolume delete | (cp -al + rm -rf) / (snapshot + delete) | Snapshot | syncfs after it | DeleteSubvolume | syncfs after it | (cp -al + rm -rf) / (the four) | treetx convert (once) |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  for label in $(awk '{ print $1 }' "$results" | sort -t/ -k2n | uniq); do
    get() { awk -v l="$label" -v k="$1" '$1 == l && $2 == k { print $3 }' "$results" | median; }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", a / b }'; }
    cpal=$(get cpal) cpals=$(get cpalsync) rm=$(get rmrf) cs=$(get clisnap) cd=$(get clidel)
    sn=$(get snapshot) ss=$(get snapsync) de=$(get delete) ds=$(get delsync) cv=$(get convert)
    echo "| ${label#*/} | $(ms "$cpal") ms | $(ms "$cpals") ms | $(ms "$rm") ms | $(ms "$cs") ms | $(ms "$cd") ms | $(ratio "$((cpal + rm))" "$((cs + cd))") | $(ms "$sn") ms | $(ms "$ss") ms | $(ms "$de") ms | $(ms "$ds") ms | $(ratio "$((cpal + rm))" "$((sn + ss + de + ds))") | $(ms "${cv:-0}") ms |"
  done
  echo
  echo "| files | treetx run, one-file commit | the same, --wait-cleanup | commit latency | treetx run, one-file rollback | the same, --wait-cleanup | rollback latency | btrfs subvolume snapshot + delete | commit, --wait-cleanup / (snapshot + delete) | rollback, --wait-cleanup / (snapshot + delete) |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  for label in $(awk '{ print $1 }' "$results" | sort -t/ -k2n | uniq); do
    get() { awk -v l="$label" -v k="$1" '$1 == l && $2 == k { print $3 }' "$results" | median; }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
    rc=$(get runcommit) rcw=$(get runcommitwait) cl=$(get commitlat) rr=$(get runrollback) rrw=$(get runrollbackwait) rl=$(get rollbacklat)
    bare=$(($(get clisnap) + $(get clidel)))
    echo "| ${label#*/} | $(ms "$rc") ms | $(ms "$rcw") ms | $(ms "$cl") ms | $(ms "$rr") ms | $(ms "$rrw") ms | $(ms "$rl") ms | $(ms "$bare") ms | $(ratio "$rcw" "$bare") | $(ratio "$rrw" "$bare") |"
  done
}

results=$work/results.$$
: >"$results"
if [ -n "$btrfs" ]; then
  m=$work/btrfs-image
  mkdir -p "$m"
  if ! mountpoint -q "$m"; then
    truncate -s 40G "$m.img"
    mkfs.btrfs -q -f "$m.img" >/dev/null
    mount -o loop "$m.img" "$m"
  fi
  (cd "$top" && go build -o "$work/snapbench" ./scripts/snapbench)
  specs=
  for n in $sizes; do
    t0=$(now)
    c=$(corpus "$m" "$n") v=$m/v$n
    echo "the corpus of $n files: ready in $(ms "$(($(now) - t0))") ms" >&2
    # The subvolume: a fresh corpus converted by treetx, timed.
    if [ -d "$v" ]; then
      btrfs subvolume delete "$v" >/dev/null 2>&1 || rm -rf "$v"
    fi
    t0=$(now)
    (cd "$top" && go run ./scripts/mkcorpus "$v" "$n")
    sync
    echo "its copy to convert: made in $(ms "$(($(now) - t0))") ms" >&2
    t0=$(now); "$tx" convert "$v" >/dev/null; t1=$(now)
    echo "btrfs/$n convert $((t1 - t0))" >>"$results"
    specs="$specs $c:$v:btrfs/$n"
  done
  for r in $(seq "$runs"); do
    for spec in $specs; do
      c=${spec%%:*} rest=${spec#*:} v=${rest%%:*} label=${rest#*:}
      measure_btrfs "$c" "$v" "$label"
    done
    echo "run $r of $runs done" >&2
  done
  echo "$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo) GiB, $(uname -r), btrfs image, median of $runs runs"
  report_btrfs
  rm -f "$results"
  exit 0
fi
dirs=
for n in $sizes; do dirs="$dirs ext:$n:$(corpus "$work" "$n")"; done
for fs in $images; do
  m=$work/$fs-image
  mkdir -p "$m"
  if ! mountpoint -q "$m"; then
    truncate -s 40G "$m.img"
    case $fs in
      xfs) mkfs.xfs -q -f "$m.img" ;;
      ext4) mkfs.ext4 -q -F "$m.img" ;;
    esac
    mount -o loop "$m.img" "$m"
  fi
  for n in $sizes; do dirs="$dirs $fs-image:$n:$(corpus "$m" "$n")"; done
done
for r in $(seq "$runs"); do
  for spec in $dirs; do
    fs=${spec%%:*} rest=${spec#*:} n=${rest%%:*} d=${rest#*:}
    [ "$fs" = ext ] && fs=$(stat -f -c %T "$d" | sed 's#ext2/ext3#ext4#')
    measure "$d" "$fs/$n"
  done
  echo "run $r of $runs done" >&2
done
echo "$(nproc) cores, $(awk '/MemTotal/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo) GiB, $(uname -r), median of $runs runs"
report
rm -f "$results"
