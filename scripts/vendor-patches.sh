#!/usr/bin/env bash
# The vendored crates as patch series over the published crates.
#
# vendor/<crate> is <crate> as published on crates.io, at the version below,
# with the numbered patches of vendor/<crate>-patches/ applied in order
# (vendor/<crate>/PATCHES.md says what each one does and which depend on
# which). PATCHES.md itself is the series' documentation, not the output of a
# patch: it is the one file of vendor/<crate> that the series does not
# produce.
#
# Usage: scripts/vendor-patches.sh <crate> <command>
#   crate          engineioxide or hyper
#   check          apply the series to the published crate in a temporary
#                  directory and compare the result with vendor/<crate>;
#                  exits non-zero, showing the difference, when they differ
#   rebuild        regenerate vendor/<crate> from the published crate and
#                  the series (PATCHES.md is kept)
#   unpack DIR     make DIR a git repository holding the published crate as its
#                  first commit and one commit per patch, for editing the series
#                  with git (amend, rebase -i, add a commit for a new patch)
#   refresh DIR    write the series back from DIR's commits after the first
#                  (one patch per commit, named by its "Patch:" trailer or else
#                  by its subject), then rebuild vendor/<crate> and check
#
# The published crate comes from Cargo's download cache when it holds it, else
# from static.crates.io, and is verified against the checksum of the crates.io
# index pinned below. Needs curl (when not cached), tar, sha256sum or shasum,
# git (to apply the patches, as `git apply`; GNU `patch -p1` applies them too)
# and diff.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
}

CRATE="${1:-}"
# Each crate's version, and its "cksum" in the crates.io index
# (https://index.crates.io/<prefix>/<crate>), which Cargo.lock records too.
case "$CRATE" in
  engineioxide)
    VERSION=0.17.9
    SHA256=0615980857185ecc33fed6ec417ec64fe3e427bf1de0471bb3594132f453bdbe
    ;;
  hyper)
    VERSION=1.12.0
    SHA256=2c3e324da4c95177d6291d4c8730197c0d1822f8a9766814a4a44fa5ab797c9c
    ;;
  -h | --help | help | "")
    usage
    [ -n "$CRATE" ] || exit 2
    exit 0
    ;;
  *)
    printf 'vendor-patches: unknown crate %s (engineioxide or hyper)\n' "$CRATE" >&2
    exit 2
    ;;
esac
shift
URL="https://static.crates.io/crates/$CRATE/$CRATE-$VERSION.crate"

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENDOR="$ROOT/vendor/$CRATE"
SERIES="$ROOT/vendor/$CRATE-patches"
# Files of vendor/<crate> that the series does not produce.
NOT_PATCHED=(PATCHES.md)

say() { printf '%s-patches: %s\n' "$CRATE" "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

work=""
cleanup() { if [ -n "$work" ]; then rm -rf "$work"; fi; }
trap cleanup EXIT
make_work() { work="$(mktemp -d "${TMPDIR:-/tmp}/$CRATE-patches.XXXXXX")"; }

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

patches() {
  local p found=0
  for p in "$SERIES"/[0-9][0-9][0-9][0-9]-*.patch; do
    [ -e "$p" ] || continue
    found=1
    printf '%s\n' "$p"
  done
  [ "$found" = 1 ] || die "no patches in ${SERIES#"$ROOT"/}"
}

# Puts the verified published crate's sources in $work/pristine.
fetch_pristine() {
  local crate="" c
  for c in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$CRATE-$VERSION.crate"; do
    if [ -f "$c" ] && [ "$(sha256_of "$c")" = "$SHA256" ]; then
      crate="$c"
      say "published crate: $c"
      break
    fi
  done
  if [ -z "$crate" ]; then
    crate="$work/$CRATE-$VERSION.crate"
    say "published crate: downloading $URL"
    curl -sSfL --retry 3 -o "$crate" "$URL" || die "cannot download $URL"
    local got
    got="$(sha256_of "$crate")"
    [ "$got" = "$SHA256" ] || die "checksum mismatch for $URL: got $got, want $SHA256"
  fi
  mkdir -p "$work/unpacked"
  tar -xzf "$crate" -C "$work/unpacked"
  mv "$work/unpacked/$CRATE-$VERSION" "$work/pristine"
}

# Applies the series to a copy of the pristine tree at $work/patched.
apply_series() {
  cp -a "$work/pristine" "$work/patched"
  local p
  while IFS= read -r p; do
    # Outside any repository (the ceiling stops git from finding one that
    # encloses $TMPDIR), git apply works on the files like patch -p1.
    if ! (cd "$work/patched" && GIT_CEILING_DIRECTORIES="$work" git apply --whitespace=nowarn "$p") 2>"$work/apply.err"; then
      cat "$work/apply.err" >&2
      die "${p#"$ROOT"/} does not apply (patches are applied in name order to $CRATE $VERSION as published)"
    fi
  done < <(patches)
}

diff_excludes() {
  local f
  for f in "${NOT_PATCHED[@]}"; do printf -- '--exclude=%s\n' "$f"; done
}

cmd_check() {
  [ -d "$VENDOR" ] || die "no ${VENDOR#"$ROOT"/}"
  make_work
  fetch_pristine
  apply_series
  local f
  for f in "${NOT_PATCHED[@]}"; do
    [ -f "$VENDOR/$f" ] || die "${VENDOR#"$ROOT"/}/$f is missing"
  done
  # Every patch of the series is listed in PATCHES.md.
  local p missing=0
  while IFS= read -r p; do
    if ! grep -qF "$(basename "$p")" "$VENDOR/PATCHES.md"; then
      say "$(basename "$p") is not listed in vendor/$CRATE/PATCHES.md"
      missing=1
    fi
  done < <(patches)
  local -a excludes
  mapfile -t excludes < <(diff_excludes)
  if ! (cd "$work" && diff -ruN "${excludes[@]}" patched "$VENDOR") >"$work/diff.txt"; then
    cat "$work/diff.txt"
    say "vendor/$CRATE differs from $CRATE $VERSION + vendor/$CRATE-patches (diff above: '-' is what the series gives, '+' what is in vendor/$CRATE)."
    say "Record a change to vendor/$CRATE in the series: $0 $CRATE unpack DIR, edit the commits there, then $0 $CRATE refresh DIR."
    exit 1
  fi
  [ "$missing" = 0 ] || die "list every patch in vendor/$CRATE/PATCHES.md"
  say "ok: vendor/$CRATE = $CRATE $VERSION + $(patches | wc -l | tr -d ' ') patches"
}

cmd_rebuild() {
  make_work
  fetch_pristine
  apply_series
  mkdir -p "$work/keep"
  local f
  for f in "${NOT_PATCHED[@]}"; do
    if [ -f "$VENDOR/$f" ]; then cp -a "$VENDOR/$f" "$work/keep/$f"; fi
  done
  rm -rf "$VENDOR"
  cp -a "$work/patched" "$VENDOR"
  cp -a "$work/keep/." "$VENDOR/"
  say "rebuilt ${VENDOR#"$ROOT"/} from $CRATE $VERSION + $(patches | wc -l | tr -d ' ') patches"
}

# A git invocation for the unpacked repository, independent of the user's
# configuration (hooks, signing, diff drivers, colours).
ugit() {
  git -C "$dir" -c core.hooksPath=/dev/null -c commit.gpgSign=false -c color.ui=false \
    -c user.name="$CRATE-patches" -c user.email="$CRATE-patches@localhost" "$@"
}

cmd_unpack() {
  dir="${1:-}"
  [ -n "$dir" ] || die "usage: $0 $CRATE unpack DIR"
  [ ! -e "$dir" ] || die "$dir already exists"
  make_work
  fetch_pristine
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  cp -a "$work/pristine/." "$dir/"
  ugit init -q .
  ugit add -A
  ugit commit -q -m "$CRATE $VERSION as published on crates.io"
  ugit tag pristine
  local p
  while IFS= read -r p; do
    ugit apply --index --whitespace=nowarn "$p" || die "$(basename "$p") does not apply"
    # The commit message is the patch's header (up to the "---" line).
    awk '/^---$/ { exit } { print }' "$p" >"$work/msg"
    ugit commit -q --allow-empty -F "$work/msg"
  done < <(patches)
  say "unpacked into $dir: tag 'pristine' is the published crate, one commit per patch after it."
  say "Edit the commits (git commit --amend, git rebase -i pristine), then: $0 $CRATE refresh $dir"
}

cmd_refresh() {
  dir="${1:-}"
  [ -n "$dir" ] || die "usage: $0 $CRATE refresh DIR (a directory made by '$0 $CRATE unpack DIR')"
  [ -d "$dir" ] || die "no directory $dir"
  dir="$(cd "$dir" && pwd)"
  ugit rev-parse -q --verify pristine >/dev/null || die "$dir has no tag 'pristine' (make it with '$0 $CRATE unpack $dir')"
  [ -z "$(ugit status --porcelain)" ] || die "$dir has uncommitted changes; commit them first"
  make_work
  mkdir -p "$work/series"
  # The same patch text whatever the user's git configuration says.
  local -a diff_opts=(--no-color --no-ext-diff --no-textconv --no-renames
    --diff-algorithm=myers --src-prefix=a/ --dst-prefix=b/ --no-relative)
  local n=0 c name subject
  while IFS= read -r c; do
    name="$(ugit log -1 --format='%(trailers:key=Patch,valueonly)' "$c" | sed '/^$/d' | head -n1)"
    if [ -z "$name" ]; then
      subject="$(ugit log -1 --format=%s "$c")"
      name="$(printf '%04d-%s.patch' "$n" "$(printf '%s' "$subject" | tr '[:upper:]' '[:lower:]' | tr -cs 'a-z0-9' '-' | sed 's/^-*//; s/-*$//' | cut -c1-50)")"
    fi
    case "$name" in
      [0-9][0-9][0-9][0-9]-*.patch) ;;
      *) die "commit $c: patch name '$name' does not look like NNNN-name.patch" ;;
    esac
    [ ! -e "$work/series/$name" ] || die "two commits name the patch $name"
    {
      ugit log -1 --format=%B "$c" | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}'
      echo "---"
      ugit diff "${diff_opts[@]}" --stat=80 --summary "$c^" "$c" | sed '/^$/d'
      echo
      ugit diff "${diff_opts[@]}" --full-index "$c^" "$c"
    } >"$work/series/$name"
    n=$((n + 1))
  done < <(ugit rev-list --reverse pristine..HEAD)
  [ "$n" -gt 0 ] || die "no commits after 'pristine' in $dir"
  mkdir -p "$SERIES"
  rm -f "$SERIES"/[0-9][0-9][0-9][0-9]-*.patch
  cp "$work/series/"*.patch "$SERIES/"
  say "wrote $n patches to ${SERIES#"$ROOT"/}"
  rm -rf "$work"
  work=""
  cmd_rebuild
  rm -rf "$work"
  work=""
  cmd_check
}

case "${1:-}" in
  check) cmd_check ;;
  rebuild) cmd_rebuild ;;
  unpack) cmd_unpack "${2:-}" ;;
  refresh) cmd_refresh "${2:-}" ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
