#!/bin/sh
# The kill torture (integration/torture_test.go): N rounds of `treetx run`
# SIGKILLed at random instants (treetx, its command, or both), each followed
# by `treetx recover` and a byte-for-byte check of the tree.
# Usage: scripts/torture.sh N
# TREETX_TORTURE_SEED=S replays the plans of a seed; TMPDIR chooses the file
# system the trees are on. Prints "kills: K, violations: V" last; exits
# non-zero if there was any violation.
set -eu
usage() { echo "usage: scripts/torture.sh ROUNDS" >&2; exit 64; }
[ $# -eq 1 ] || usage
n=$1
case $n in '' | *[!0-9]* | 0) usage ;; esac
cd "$(dirname "$0")/.."
log=$(mktemp "${TMPDIR:-/tmp}/treetx-torture.XXXXXX")
trap 'rm -f "$log"' EXIT
start=$(date +%s)
status=0
# A round takes well under half a second; 20 s is the limit of a hung one.
TREETX_TORTURE_ROUNDS=$n go test ./integration -run '^TestKillTorture$' -count=1 -v \
  -timeout "$((n / 2 + 600))s" >"$log" 2>&1 || status=$?
grep -v -e '^kills: ' -e '^=== RUN' "$log" || true
echo "torture: $n rounds in $(($(date +%s) - start))s (go test exit status $status)"
line=$(grep '^kills: [0-9]*, violations: [0-9]*$' "$log" || true)
if [ -z "$line" ]; then
  echo "torture: the test did not finish" >&2
  exit 1
fi
echo "$line"
exit "$status"
