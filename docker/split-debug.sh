#!/bin/sh
# Ships stripped binaries and keeps their symbols apart: for each BIN, BIN.debug gets the
# symbol table and the line tables (objcopy --only-keep-debug), and BIN is stripped of
# both with a GNU debuglink to BIN.debug, so gdb, perf and addr2line find them when the
# .debug file sits next to it (or under /usr/lib/debug). The release build's 100 MB
# binary ships at about 20 MB.
#
#   docker/split-debug.sh target/release/llm-sidecar target/release/llm-sidecar-mock
set -eu
for bin in "$@"; do
  objcopy --only-keep-debug "$bin" "$bin.debug"
  chmod 0644 "$bin.debug"
  objcopy --strip-all --add-gnu-debuglink="$bin.debug" "$bin"
done
