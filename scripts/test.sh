#!/usr/bin/env bash
# Sets up the machine and runs every test: unit, integration (real servers on 127.0.0.1,
# the official Python SDKs, curl), doc tests, formatting and lints, then the deployment
# tests (tests/deploy: the Helm chart with the real Helm engine, the pod run on loopback
# with the kubelet's updates simulated, docs/kubernetes.md, and the container image's
# binaries built with the Dockerfile's command and run from an empty root), then the
# soak (tests/soak.sh: a million requests, RSS within 10% or 6 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
# vendor/pingora-core is the release plus vendor/patches, nothing else.
scripts/vendor-pingora.sh --check
cargo fmt --all -- --check
# The crate's layers: no import cycle between its parts, none pointing up
# (docs/architecture.md); tests/layers.sh shows that the check fails on either.
python3 scripts/layers.py
tests/layers.sh
cargo clippy --locked --all-targets -- -D warnings
cargo nextest run --locked --no-fail-fast
cargo test --locked --doc
# Uses the debug binaries nextest just built; builds the release ones itself.
python3 -m pytest -q tests/deploy
# One million mixed requests through the release binary; RSS must stay flat.
tests/soak.sh
