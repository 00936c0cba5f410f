#!/bin/sh
# A real transaction that fails and is rolled back, then one that commits.
# Usage: scripts/demo.sh [path/to/treetx]   (default: ./treetx)
set -eu
treetx=${1:-./treetx}
case $treetx in /*) ;; *) treetx=$(pwd)/$treetx ;; esac
work=$(mktemp -d "${TMPDIR:-/tmp}/treetx-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
site=$work/site

mkdir -p "$site/pages" "$site/assets"
printf 'welcome\n' >"$site/index.html"
printf 'about us\n' >"$site/pages/about.html"
printf 'body{}\n' >"$site/assets/style.css"
chmod 600 "$site/pages/about.html"

show() { (cd "$site" && find . -printf '%M %5s %T+ %p\n' | sort -k4 && cat index.html); }

echo "== the tree before"
show >"$work/before"
cat "$work/before"

echo
echo "== treetx run site -- (a build that changes five things, then fails)"
set +e
"$treetx" run "$site" -- sh -c '
  cd "$1"
  printf "half-built\n" >index.html.new && mv index.html.new index.html
  rm pages/about.html
  chmod -R a+rwX .
  mkdir generated && printf "x\n" >generated/out.html
  echo "build: error: something went wrong" >&2
  exit 2' sh "$site" 2>&1
status=$?
set -e
echo "treetx exited with status $status (the command's own)"

echo
echo "== the tree after the rollback"
show >"$work/after"
cat "$work/after"
if cmp -s "$work/before" "$work/after"; then
  echo "== identical to the tree before: rolled back"
else
  echo "== DIFFERENT from the tree before:" >&2
  diff "$work/before" "$work/after" >&2
  exit 1
fi

echo
echo "== treetx run site -- (a change that succeeds)"
"$treetx" run "$site" -- sh -c 'printf "welcome back\n" >"$1/index.html.new" && mv "$1/index.html.new" "$1/index.html"' sh "$site"
echo "index.html now says: $(cat "$site/index.html")"
"$treetx" status "$site"
