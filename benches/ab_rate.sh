#!/usr/bin/env bash
# Two llm-sidecar builds at one fixed offered rate, alternating, on the mock provider:
# a before/after for latency at a rate, where benches/load.sh's single 10-second sample
# per target is at the host's mercy.
#
#   benches/ab_rate.sh BASE_BINARY [NEW_BINARY] [RATE] [ROUNDS]
#
# Pinning as in load.sh: both proxies on CPU 0 (only one is loaded at a time), the mock
# and oha on CPU 1.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_BIN=$(realpath "${1:?usage: $0 BASE_BINARY [NEW_BINARY] [RATE] [ROUNDS]}")
NEW_BIN=$(realpath "${2:-target/release/llm-sidecar}")
RATE=${3:-5000}
ROUNDS=${4:-3}
M=$(pwd)/target/release
[ -x "$M/llm-sidecar-mock" ] || cargo build --release --locked --bins
work=$(mktemp -d)
cd "$work"
taskset -c 1 "$M/llm-sidecar-mock" --listen 127.0.0.1:19101 >/dev/null 2>&1 & MP=$!
. "$OLDPWD/benches/sidecar_conf.sh"
# load.sh's pass-through config, with the mock as both upstreams.
conf() { sidecar_conf "$1" "$2" 19101 19101; cat <<Y
  - { match: { path_prefix: /openai/v1 }, provider: upstream }
  - { match: { path_prefix: /sse/v1 }, provider: mock }
Y
}
conf 19102 19103 > new.yaml; conf 19104 19105 > base.yaml
taskset -c 0 "$NEW_BIN" run -c new.yaml >new.log 2>&1 & NP=$!
taskset -c 0 "$BASE_BIN" run -c base.yaml >base.log 2>&1 & BP=$!
trap 'kill $MP $NP $BP 2>/dev/null; rm -rf "$work"' EXIT
sleep 2
BODY='{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
for round in $(seq "$ROUNDS"); do
  for t in new:19102 base:19104; do
    name=${t%%:*}; port=${t##*:}
    taskset -c 1 oha --no-tui --output-format json --latency-correction -z 8s -c 64 -q "$RATE" -m POST -H 'content-type: application/json' -d "$BODY" "http://127.0.0.1:$port/openai/v1/chat/completions" > out.json
    python3 -c "import json;d=json.load(open('out.json'));p=d['latencyPercentiles'];print('$name round $round', 'p50 %.3f p99 %.3f p99.9 %.3f ms'%(p['p50']*1e3,p['p99']*1e3,p['p99.9']*1e3), 'rps %.0f'%d['summary']['requestsPerSec'], 'ok', d['statusCodeDistribution'])"
  done
done
