#!/usr/bin/env bash
# Soak: one million requests through the release sidecar, mixing JSON answers, SSE
# streams, provider errors passed through and the sidecar's own refusals, with limits,
# metrics and the audit log on. Passes when every answer has the status its kind calls
# for (no 5xx, no socket error), as the load generator saw it (each answer checked by
# kind, every SSE stream whole, with its usage and [DONE]) and as the sidecar counted it,
# the two agree, and the sidecar's RSS at the end is within 10% (or 6 MiB) of its RSS
# after warm-up.
#
#   tests/soak.sh                 # 1,000,000 requests
#   SOAK_REQUESTS=200000 tests/soak.sh
#
# Uses target/release/{llm-sidecar,llm-sidecar-mock} (built if missing) and wrk.
set -euo pipefail
cd "$(dirname "$0")/.."

TOTAL=${SOAK_REQUESTS:-1000000}
WARMUP=${SOAK_WARMUP:-200000}
CONNS=${SOAK_CONNS:-32}

command -v wrk >/dev/null || { echo "soak: wrk is missing (scripts/setup.sh --test installs it)" >&2; exit 1; }
[ -x target/release/llm-sidecar ] && [ -x target/release/llm-sidecar-mock ] \
  || cargo build --release --locked --bins

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); SC=$(free_port); ADMIN=$(free_port)

target/release/llm-sidecar-mock --listen "127.0.0.1:$UP" --interval 0ms --chunks 4 >"$work/mock.log" 2>&1 &
pids+=($!)
cat > "$work/sidecar.yaml" <<YAML
version: 1
listeners: { reverse: "127.0.0.1:$SC", admin: "127.0.0.1:$ADMIN" }
server: { threads: 1 }
log: { level: warn }
tenant: { id: soak, headers: { x-tenant: "{tenant}" } }
providers:
  mock:
    kind: openai
    base_url: http://127.0.0.1:$UP/v1
    auth: { type: bearer, token: sk-soak-canary-0123456789 }
routes:
  - match: { path_prefix: /openai/v1 }
    provider: mock
    audit_bodies: { max_bytes: 4KiB }
limits:
  rules:
    - { name: rate, scope: [tenant], requests: { rate: 10000000/s, burst: 10000000 } }
    - { name: budget, scope: [tenant, route], tokens: { limit: 100000000000, per: 1h } }
audit: { output: file, path: $work/audit.jsonl, queue: 65536, max_size: 16MiB, max_files: 2 }
YAML
target/release/llm-sidecar run -c "$work/sidecar.yaml" 2>"$work/sidecar.log" &
SPID=$!
pids+=($SPID)
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/readyz" || { cat "$work/sidecar.log" >&2; exit 1; }

# Four kinds of request, in turn: a JSON answer (200), an SSE stream (200), a provider
# error passed through (400) and a path no route matches (the sidecar's 404).
cat > "$work/mix.lua" <<'LUA'
local n = 0
local body_json = '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}'
local body_sse = '{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}'
local reqs = {}
function init(args)
  local h = { ["Content-Type"] = "application/json", ["Authorization"] = "Bearer sk-app" }
  local e = { ["Content-Type"] = "application/json", ["x-mock-status"] = "400" }
  reqs[1] = wrk.format("POST", "/openai/v1/chat/completions", h, body_json)
  reqs[2] = wrk.format("POST", "/openai/v1/chat/completions", h, body_sse)
  reqs[3] = wrk.format("POST", "/openai/v1/chat/completions", e, body_json)
  reqs[4] = wrk.format("GET", "/nowhere", nil, nil)
end
function request()
  n = n + 1
  return reqs[(n % 4) + 1]
end

-- What the client saw, by kind, from each answer itself (not the sidecar's counters):
-- a JSON completion, an SSE stream that ended with its usage and [DONE], the provider's
-- 400 error JSON, the sidecar's own 404 (no_route), and anything else.
json_ok, sse_ok, sse_cut, provider_400, sidecar_404, other = 0, 0, 0, 0, 0, 0
function response(status, headers, body)
  local h = {}
  for k, v in pairs(headers) do h[string.lower(k)] = v end
  local ct = h["content-type"] or ""
  if status == 200 and ct:find("text/event-stream", 1, true) then
    if body:sub(-14) == "data: [DONE]\n\n" and body:find('"usage":{', 1, true) then
      sse_ok = sse_ok + 1
    else
      sse_cut = sse_cut + 1
    end
  elseif status == 200 and body:find('"object":"chat.completion"', 1, true) then
    json_ok = json_ok + 1
  elseif status == 400 and body:find('"error"', 1, true) and not h["x-llm-sidecar-error"] then
    provider_400 = provider_400 + 1
  elseif status == 404 and h["x-llm-sidecar-error"] == "no_route" then
    sidecar_404 = sidecar_404 + 1
  else
    other = other + 1
  end
end

local threads = {}
function setup(thread) table.insert(threads, thread) end
function done(summary, latency, requests)
  local keys = { "json_ok", "sse_ok", "sse_cut", "provider_400", "sidecar_404", "other" }
  local line = {}
  for _, k in ipairs(keys) do
    local n = 0
    for _, t in ipairs(threads) do n = n + t:get(k) end
    table.insert(line, tostring(n))
  end
  local e = summary.errors
  table.insert(line, tostring(e.connect + e.read + e.write + e.timeout))
  local f = assert(io.open(os.getenv("SOAK_TALLY"), "a"))
  f:write(table.concat(line, " ") .. "\n")
  f:close()
end
LUA
export SOAK_TALLY=$work/tally
: > "$SOAK_TALLY"

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$SPID/status"; }
served() { curl -sf "http://127.0.0.1:$ADMIN/metrics" | awk '/^llm_sidecar_requests_total/ {s+=$2} END {printf "%d", s}'; }
run_until() { # keeps the load on until the sidecar has answered $1 requests
  local want=$1
  while [ "$(served)" -lt "$want" ]; do
    wrk -t1 -c"$CONNS" -d10s -s "$work/mix.lua" "http://127.0.0.1:$SC" >"$work/wrk.out" 2>&1
    if grep -q "Socket errors" "$work/wrk.out"; then cat "$work/wrk.out" >&2; echo "soak: socket errors" >&2; exit 1; fi
    echo "soak: $(served) requests, RSS $(rss_kib) KiB" >&2
  done
}

start=$(date +%s)
run_until "$WARMUP"
sleep 1
rss_warm=$(rss_kib)
run_until "$TOTAL"
sleep 2
rss_end=$(rss_kib)
took=$(( $(date +%s) - start ))

metrics=$(curl -sf "http://127.0.0.1:$ADMIN/metrics")
count() { echo "$metrics" | awk -v pat="$1" 'index($0, pat) == 1 {s+=$2} END {printf "%d", s}'; }
total=$(count 'llm_sidecar_requests_total{')
ok=$(count 'llm_sidecar_requests_total{provider="mock",route="mock",status="200"}')
client_err=$(count 'llm_sidecar_requests_total{provider="mock",route="mock",status="400"}')
unrouted=$(echo "$metrics" | awk '/^llm_sidecar_requests_total/ && /status="404"/ {s+=$2} END {printf "%d", s}')
fivexx=$(echo "$metrics" | awk '/^llm_sidecar_requests_total/ && /status="5/ {s+=$2} END {printf "%d", s}')
in_flight=$(count 'llm_sidecar_requests_in_flight')
dropped=$(count 'llm_sidecar_audit_dropped_total')

# The load generator's own view, summed over its runs.
read -r c_json c_sse c_cut c_400 c_404 c_other c_errors < <(awk '{for (i = 1; i <= NF; i++) s[i] += $i}
  END {printf "%d %d %d %d %d %d %d\n", s[1], s[2], s[3], s[4], s[5], s[6], s[7]}' "$SOAK_TALLY")
runs=$(wc -l < "$SOAK_TALLY")
c_total=$((c_json + c_sse + c_cut + c_400 + c_404 + c_other))

echo "soak: $total requests in ${took}s: $ok ok (JSON and SSE), $client_err provider 400s, $unrouted sidecar 404s, $fivexx 5xx"
echo "soak: the client saw $c_total answers in $runs runs: $c_json JSON, $c_sse whole SSE streams, $c_cut cut streams, $c_400 provider 400s, $c_404 sidecar 404s, $c_other other; $c_errors socket errors"
echo "soak: RSS after ${WARMUP} requests ${rss_warm} KiB, after ${total}: ${rss_end} KiB"
echo "soak: audit records dropped: $dropped; in flight at the end: $in_flight"
fail=0
[ "$total" -ge "$TOTAL" ] || { echo "soak: only $total requests" >&2; fail=1; }
[ "$fivexx" -eq 0 ] || { echo "soak: 5xx answers" >&2; fail=1; }
# Each kind is a quarter of the load (wrk's connections end mid-cycle, so allow 1%).
for v in "$ok:2" "$client_err:1" "$unrouted:1"; do
  n=${v%%:*}; parts=${v##*:}
  python3 -c "import sys; n,t,p=$n,$total,$parts; sys.exit(0 if abs(n - t*p/4) <= t*0.01 else 1)" \
    || { echo "soak: the mix is off ($n of $total for $parts/4)" >&2; fail=1; }
done
[ "$in_flight" -eq 0 ] || { echo "soak: $in_flight requests still in flight" >&2; fail=1; }
# What the client saw: every answer of its kind, every stream whole, no socket error.
[ "$c_cut" -eq 0 ] || { echo "soak: $c_cut SSE streams did not end with their usage and [DONE]" >&2; fail=1; }
[ "$c_other" -eq 0 ] || { echo "soak: $c_other answers of no expected kind" >&2; fail=1; }
[ "$c_errors" -eq 0 ] || { echo "soak: $c_errors socket errors" >&2; fail=1; }
for v in "$c_json:1" "$c_sse:1" "$c_400:1" "$c_404:1"; do
  n=${v%%:*}
  python3 -c "import sys; n,t=$n,$c_total; sys.exit(0 if abs(n - t/4) <= t*0.01 else 1)" \
    || { echo "soak: the client's mix is off ($n of $c_total for 1/4)" >&2; fail=1; }
done
# The client and the sidecar agree: the sidecar counted each answer the client saw, plus
# at most the requests in flight when each run of the load generator stopped.
[ "$c_total" -le "$total" ] && [ $((total - c_total)) -le $((runs * CONNS)) ] \
  || { echo "soak: the client saw $c_total answers, the sidecar counted $total ($runs runs of $CONNS connections)" >&2; fail=1; }
# RSS may grow by 10% or by 6 MiB, whichever is more. On this 2-core machine mimalloc's
# RSS (base ~33 MiB) takes a step of about 2 MiB somewhere in the run and then creeps by
# about 3 bytes per request, with the binary from before issue 16 (2c6c916: +2.2 MiB
# over 1M) as with today's (+3.2 to +4.3 MiB in four runs), so 10% alone failed on where
# the step fell. Whether the creep is the allocator or a small leak older than issue 16
# is open (heaptrack, with issue 18's rebuild of the data path). A leak of 8 bytes per
# request or more still fails (6.1 MiB over the 800k requests after warm-up).
python3 -c "import sys; sys.exit(0 if $rss_end <= max($rss_warm * 1.10, $rss_warm + 6144) else 1)" \
  || { echo "soak: RSS grew more than max(10%, 6 MiB) ($rss_warm -> $rss_end KiB)" >&2; fail=1; }
if grep -q "sk-soak-canary" "$work/sidecar.log" "$work/audit.jsonl"* 2>/dev/null; then
  echo "soak: the provider key appears in the log or the audit log" >&2; fail=1
fi
[ $fail -eq 0 ] && echo "soak: ok"
exit $fail
