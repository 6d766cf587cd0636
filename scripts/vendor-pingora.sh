#!/usr/bin/env bash
# Rebuilds vendor/pingora-core from the released crate and our patch series, or checks
# that the committed copy is exactly that.
#
#   scripts/vendor-pingora.sh           re-create vendor/pingora-core
#   scripts/vendor-pingora.sh --check   exit 1 if vendor/pingora-core differs from
#                                       the release with vendor/patches/pingora-core/*.patch
#                                       applied in order
#
# The release comes from cargo's cache when it is there, else from crates.io; either way
# its SHA-256 must be the one crates.io publishes for it (the checksum Cargo.lock had
# before the crate was vendored). To move to a new release: change VERSION and SHA256,
# run this script, and rebase any patch that no longer applies (`git apply` says which).
set -euo pipefail
cd "$(dirname "$0")/.."

CRATE=pingora-core
VERSION=0.9.1
SHA256=a535f47f65fdcb003f9e1df04cd18e614c128dfe9388acce3f211ae38ac14d68
DEST=vendor/$CRATE
PATCHES=vendor/patches/$CRATE

check=0
case "${1:-}" in
  --check) check=1 ;;
  "") ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

archive=""
for f in "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$CRATE-$VERSION.crate"; do
  [ -f "$f" ] && archive=$f && break
done
if [ -z "$archive" ] || ! echo "$SHA256  $archive" | sha256sum -c --status; then
  archive=$tmp/$CRATE-$VERSION.crate
  curl -sSfL --retry 3 -o "$archive" "https://static.crates.io/crates/$CRATE/$CRATE-$VERSION.crate"
fi
if ! echo "$SHA256  $archive" | sha256sum -c --status; then
  echo "vendor-pingora: $archive does not have the published SHA-256 $SHA256" >&2
  exit 1
fi

tar -xzf "$archive" -C "$tmp"
src=$tmp/$CRATE-$VERSION
root=$PWD
for p in "$PATCHES"/*.patch; do
  # GIT_CEILING_DIRECTORIES: $src is not in a repository, and git must not look for one
  # above it (a TMPDIR inside a checkout would make git apply paths relative to that).
  if ! (cd "$src" && GIT_CEILING_DIRECTORIES=$tmp git apply -p1 --whitespace=nowarn "$root/$p"); then
    echo "vendor-pingora: $p does not apply to $CRATE $VERSION" >&2
    exit 1
  fi
done

if [ $check -eq 1 ]; then
  if ! diff -r "$src" "$DEST" >"$tmp/diff"; then
    echo "vendor-pingora: $DEST is not $CRATE $VERSION with $PATCHES applied:" >&2
    head -50 "$tmp/diff" >&2
    echo "(edit the patches, not $DEST, then run $0)" >&2
    exit 1
  fi
  echo "vendor-pingora: $DEST is $CRATE $VERSION + $(ls "$PATCHES"/*.patch | wc -l) patches"
else
  rm -rf "$DEST"
  mkdir -p "$(dirname "$DEST")"
  cp -r "$src" "$DEST"
  echo "vendor-pingora: wrote $DEST ($CRATE $VERSION + $(ls "$PATCHES"/*.patch | wc -l) patches)"
fi
