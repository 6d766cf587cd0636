#!/usr/bin/env bash
# Installs what llm-sidecar needs on a Debian/Ubuntu machine. Idempotent: it only
# installs what is missing.
#
#   scripts/setup.sh           build tools (cmake, a C compiler)
#   scripts/setup.sh --test    + curl, openssl, redis-server (shared limits),
#                                promtool (package prometheus: /metrics lint),
#                                python3 with the official openai/anthropic SDKs and
#                                httpx, pytest, the Helm engine (helm-python-sdk) and the
#                                Kubernetes API schemas (kubernetes-validate)
#                                for tests/deploy, binutils (objdump), cargo-nextest,
#                                wrk (tests/soak.sh)
#   scripts/setup.sh --bench   + nginx, wrk (the load benchmark's yardsticks)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0 want_bench=0
for a in "$@"; do
  case "$a" in
    --test) want_test=1 ;;
    --bench) want_bench=1 ;;
    *) echo "usage: $0 [--test] [--bench]" >&2; exit 2 ;;
  esac
done

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else echo "need root for: $*" >&2; exit 1; fi; }

pkgs=()
need() { command -v "$1" >/dev/null 2>&1 || pkgs+=("$2"); }
need cmake cmake
need cc build-essential
need c++ build-essential
if [ $want_test -eq 1 ]; then
  need curl curl
  need openssl openssl
  need redis-server redis-server
  need promtool prometheus
  need objdump binutils
  need chroot coreutils
  need wrk wrk
  need python3 python3
  python3 -m pip --version >/dev/null 2>&1 || pkgs+=(python3-pip)
fi
if [ $want_bench -eq 1 ]; then
  need nginx nginx-light
  need wrk wrk
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  echo "setup: installing ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi

if [ $want_test -eq 1 ]; then
  if ! python3 -c 'import openai, anthropic, botocore, httpx' >/dev/null 2>&1; then
    echo "setup: installing the Python packages the tests use (openai, anthropic, botocore, httpx)"
    python3 -m pip install -q --disable-pip-version-check -r tests/integration/clients/requirements.txt \
      || python3 -m pip install -q --disable-pip-version-check --break-system-packages -r tests/integration/clients/requirements.txt
  fi
  if ! python3 -c 'import pytest, yaml, jsonschema, helm_python, kubernetes_validate' >/dev/null 2>&1; then
    echo "setup: installing the Python packages the deployment tests use (pytest, PyYAML, jsonschema, helm-python-sdk, kubernetes-validate)"
    python3 -m pip install -q --disable-pip-version-check -r tests/deploy/requirements.txt \
      || python3 -m pip install -q --disable-pip-version-check --break-system-packages -r tests/deploy/requirements.txt
  fi
  if ! cargo nextest --version >/dev/null 2>&1; then
    echo "setup: installing cargo-nextest"
    cargo install cargo-nextest --locked
  fi
fi
echo "setup: ok"
