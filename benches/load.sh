#!/usr/bin/env bash
# Load benchmark: the same small JSON chat completion served
#   1. direct from the upstream (nginx returning a static body: the ceiling),
#   2. through nginx proxy_pass with upstream keepalive (a C proxy doing the least work),
#   3. through llm-sidecar (route match, credential and tenant injection, metrics),
#   4. the same with limits on (a request rate, a reserved-and-reconciled token budget
#      and a concurrency cap, all generous enough never to refuse),
# measured in one run on this machine with wrk, and reported as requests/s, latency
# p50/p99, and the sidecar's ratios to the other two.
#
#   benches/load.sh                 # 10 s per measurement, 64 connections
#   DURATION=30s CONNS=128 benches/load.sh
#
# CPU pinning (when taskset exists): the proxy under test gets CPU 0; the upstream and
# wrk share CPU 1 in every scenario, direct included, so the numbers compare. nginx
# runs one worker and the sidecar one worker thread. Results are also written to
# benches/results/load-<time>.md.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
WARMUP=${WARMUP:-3s}

scripts/setup.sh --bench >/dev/null
cargo build --release --locked --bins >/dev/null 2>&1 || cargo build --release --locked --bins

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/up.pid" ] && kill "$(cat "$work/up.pid")" 2>/dev/null || true
  [ -f "$work/px.pid" ] && kill "$(cat "$work/px.pid")" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Pinning prefixes; taskset execs its command, so `$!` of a backgrounded one is the
# pinned process itself.
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then CPU0=(taskset -c 0); CPU1=(taskset -c 1); else CPU0=(); CPU1=(); fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UP=$(free_port); NGX=$(free_port); SC=$(free_port); ADMIN=$(free_port); SCL=$(free_port); ADMINL=$(free_port); SCA=$(free_port); ADMINA=$(free_port)

body='{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}'

mkdir -p "$work/logs"
cat > "$work/up.conf" <<EOF
worker_processes 1;
daemon on;
pid $work/up.pid;
error_log $work/logs/up.err warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/cb; proxy_temp_path $work/pt; fastcgi_temp_path $work/ft; uwsgi_temp_path $work/ut; scgi_temp_path $work/st;
  server {
    listen 127.0.0.1:$UP;
    location / { default_type application/json; return 200 '$body'; }
  }
}
EOF
cat > "$work/px.conf" <<EOF
worker_processes 1;
daemon on;
pid $work/px.pid;
error_log $work/logs/px.err warn;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $work/cb; proxy_temp_path $work/pt; fastcgi_temp_path $work/ft; uwsgi_temp_path $work/ut; scgi_temp_path $work/st;
  upstream llm { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NGX;
    location /openai/v1/ {
      proxy_pass http://llm/v1/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer sk-bench";
      proxy_set_header x-llm-sidecar-tenant "bench";
    }
  }
}
EOF
cat > "$work/sidecar.yaml" <<EOF
version: 1
listeners: { reverse: "127.0.0.1:$SC", admin: "127.0.0.1:$ADMIN" }
server: { threads: 1, upstream_pool_size: 256 }
log: { level: warn }
tenant: { id: bench, headers: { x-llm-sidecar-tenant: "{tenant}" } }
providers:
  upstream:
    kind: openai
    base_url: http://127.0.0.1:$UP/v1
    auth: { type: bearer, token: sk-bench }
routes:
  - match: { path_prefix: /openai/v1 }
    provider: upstream
EOF
sed -e "s/127.0.0.1:$SC\"/127.0.0.1:$SCL\"/" -e "s/127.0.0.1:$ADMIN\"/127.0.0.1:$ADMINL\"/" "$work/sidecar.yaml" > "$work/sidecar-limits.yaml"
cat >> "$work/sidecar-limits.yaml" <<EOF
limits:
  rules:
    - { name: rate, scope: [tenant], requests: { rate: 10000000/s, burst: 10000000 } }
    - { name: budget, scope: [tenant, route], tokens: { limit: 100000000000, per: 1h } }
    - { name: slots, concurrency: { max: 100000 } }
EOF
# audit log on: every request written (redacted, hash-chained) with both bodies
sed -e "s/127.0.0.1:$SC\"/127.0.0.1:$SCA\"/" -e "s/127.0.0.1:$ADMIN\"/127.0.0.1:$ADMINA\"/" \
  -e "s|^    provider: upstream$|    provider: upstream\n    audit_bodies: { max_bytes: 16KiB }|" "$work/sidecar.yaml" > "$work/sidecar-audit.yaml"
cat >> "$work/sidecar-audit.yaml" <<EOF
audit: { output: file, path: $work/audit.jsonl, queue: 65536, max_size: 64MiB, max_files: 2 }
EOF
cat > "$work/post.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer sk-app-placeholder"
wrk.body = '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Hello there, how are you today?"}]}'
EOF

"${CPU1[@]}" nginx -c "$work/up.conf"
"${CPU0[@]}" nginx -c "$work/px.conf"
"${CPU0[@]}" target/release/llm-sidecar run -c "$work/sidecar.yaml" 2>"$work/logs/sidecar.err" &
pids+=($!)
"${CPU0[@]}" target/release/llm-sidecar run -c "$work/sidecar-limits.yaml" 2>"$work/logs/sidecar-limits.err" &
pids+=($!)
"${CPU0[@]}" target/release/llm-sidecar run -c "$work/sidecar-audit.yaml" 2>"$work/logs/sidecar-audit.err" &
pids+=($!)
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$ADMIN/readyz" && curl -sf -o /dev/null "http://127.0.0.1:$ADMINL/readyz" && curl -sf -o /dev/null "http://127.0.0.1:$ADMINA/readyz" && curl -sf -o /dev/null "http://127.0.0.1:$UP/v1/x" && break
  sleep 0.1
done
for url in "http://127.0.0.1:$UP/v1/chat/completions" "http://127.0.0.1:$NGX/openai/v1/chat/completions" "http://127.0.0.1:$SC/openai/v1/chat/completions" "http://127.0.0.1:$SCL/openai/v1/chat/completions" "http://127.0.0.1:$SCA/openai/v1/chat/completions"; do
  out=$(curl -sS -X POST -H 'content-type: application/json' -d '{}' "$url")
  [ "$out" = "$body" ] || { echo "bad response from $url: $out" >&2; exit 1; }
done

# run NAME URL -> "rps p50_ms p99_ms"
run() {
  local url=$1 out
  "${CPU1[@]}" wrk -t1 -c"$CONNS" -d"$WARMUP" -s "$work/post.lua" "$url" >/dev/null
  out=$("${CPU1[@]}" wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$work/post.lua" "$url")
  if echo "$out" | grep -q "Non-2xx"; then echo "$out" >&2; echo "non-2xx responses from $url" >&2; exit 1; fi
  local rps p50 p99
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  echo "$rps $(to_ms "$p50") $(to_ms "$p99")"
}
to_ms() { # wrk prints 812.00us / 1.21ms / 1.02s
  python3 -c 'import sys,re; v=sys.argv[1]; m=re.match(r"([\d.]+)(us|ms|s)",v); n=float(m.group(1)); print(round(n/1000 if m.group(2)=="us" else n*1000 if m.group(2)=="s" else n, 3))' "$1"
}

read -r d_rps d_p50 d_p99 < <(run "http://127.0.0.1:$UP/v1/chat/completions")
read -r n_rps n_p50 n_p99 < <(run "http://127.0.0.1:$NGX/openai/v1/chat/completions")
read -r s_rps s_p50 s_p99 < <(run "http://127.0.0.1:$SC/openai/v1/chat/completions")
read -r l_rps l_p50 l_p99 < <(run "http://127.0.0.1:$SCL/openai/v1/chat/completions")
read -r a_rps a_p50 a_p99 < <(run "http://127.0.0.1:$SCA/openai/v1/chat/completions")
a_metrics=$(curl -sf "http://127.0.0.1:$ADMINA/metrics")
a_dropped=$(echo "$a_metrics" | awk '/^llm_sidecar_audit_dropped_total\{reason="queue_full"\}/ {print $2}')
a_written=$(echo "$a_metrics" | awk '/^llm_sidecar_audit_records_total/ {print $2}')

ratio() { python3 -c "print(f'{float($1)/float($2):.2f}')"; }
cpu=$(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs)
mkdir -p benches/results
report="benches/results/load-$(date -u +%Y%m%dT%H%M%SZ).md"
{
  echo "llm-sidecar load benchmark, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) CPUs ($cpu); wrk -t1 -c$CONNS -d$DURATION; POST chat completion, 243 B response"
  echo
  echo "| target | requests/s | p50 ms | p99 ms |"
  echo "|---|---:|---:|---:|"
  echo "| direct (nginx static) | $d_rps | $d_p50 | $d_p99 |"
  echo "| nginx proxy_pass, keepalive | $n_rps | $n_p50 | $n_p99 |"
  echo "| llm-sidecar | $s_rps | $s_p50 | $s_p99 |"
  echo "| llm-sidecar + limits (rate, token budget, concurrency) | $l_rps | $l_p50 | $l_p99 |"
  echo "| llm-sidecar + audit log (file, redaction, both bodies) | $a_rps | $a_p50 | $a_p99 |"
  echo
  echo "llm-sidecar / nginx: $(ratio "$s_rps" "$n_rps")x requests/s; llm-sidecar / direct: $(ratio "$s_rps" "$d_rps")x"
  echo "limits cost: $(ratio "$l_rps" "$s_rps")x the sidecar's requests/s without them"
  echo "audit log: $(ratio "$a_rps" "$s_rps")x the sidecar's requests/s without it; $a_written records written, $a_dropped dropped (queue full)"
  echo "added p50 over direct: $(python3 -c "print(round($s_p50-$d_p50,3))") ms (nginx: $(python3 -c "print(round($n_p50-$d_p50,3))") ms)"
} | tee "$report"
echo "(written to $report)"
