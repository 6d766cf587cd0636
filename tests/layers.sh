#!/usr/bin/env bash
# scripts/layers.py can fail: on copies of src/ with an upward import, an import cycle
# between two leaves, and an upward path written inline, it must exit 1 and name the
# problem; an import inside #[cfg(test)] must not count.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

expect_fail() { # $1 case name, $2 text the report must hold
  if LAYERS_SRC="$tmp/$1/src" python3 scripts/layers.py >"$tmp/$1.out"; then
    echo "layers.sh: $1: the check passed; it must fail" >&2; exit 1
  fi
  grep -qF "$2" "$tmp/$1.out" || { echo "layers.sh: $1: report lacks \"$2\":" >&2; cat "$tmp/$1.out" >&2; exit 1; }
  echo "layers.sh: $1: fails as it must"
}
copy() { mkdir -p "$tmp/$1"; cp -r src "$tmp/$1/src"; }

python3 scripts/layers.py >/dev/null

copy upward
echo 'use crate::server::Options;' >>"$tmp/upward/src/routing.rs"
expect_fail upward "upward import: routing (layer 1) uses server (layer 4)"

copy cycle
echo 'use crate::routing::HostPattern;' >>"$tmp/cycle/src/observability/metrics.rs"
expect_fail cycle "import cycle between 2 parts: observability, routing"

copy inline
printf 'fn _f() -> usize {\n    crate::proxy::serve::KEEPALIVE_TIMEOUT.as_secs() as usize\n}\n' >>"$tmp/inline/src/usage/mod.rs"
expect_fail inline "upward import: usage (layer 1) uses proxy (layer 3)"

copy test_only
printf '#[cfg(test)]\nmod layers_probe {\n    use crate::server::Options;\n}\n' >>"$tmp/test_only/src/routing.rs"
LAYERS_SRC="$tmp/test_only/src" python3 scripts/layers.py >/dev/null \
  || { echo "layers.sh: an import in #[cfg(test)] code was counted" >&2; exit 1; }
echo "layers.sh: test_only: passes as it must"
