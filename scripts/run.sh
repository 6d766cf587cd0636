#!/usr/bin/env bash
# Sets up the machine, builds llm-sidecar and runs it. With no arguments it runs on
# conf/sidecar.yaml (or $LLM_SIDECAR_CONFIG); pass `-c FILE` for another config.
# Provider keys come from the environment: see conf/sidecar.yaml.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --release --locked --bins
# The HTTPS_PROXY mode's CA is created by the first `run` (forward.ca.create_if_missing)
# and kept afterwards, so apps keep trusting it.
exec target/release/llm-sidecar run "$@"
