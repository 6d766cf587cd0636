#!/usr/bin/env bash
# Sets up the machine and runs every test: unit, integration (real servers on 127.0.0.1,
# the official Python SDKs, curl), doc tests, plus formatting and lints.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo nextest run --locked --no-fail-fast
cargo test --locked --doc
