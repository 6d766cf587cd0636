# The llm-sidecar config head that benches/load.sh and benches/ab_rate.sh run with, up
# to `routes:` (the caller appends its routes). Sourced, not run.
sidecar_conf() { # $1 listen $2 admin $3 upstream port (JSON) $4 mock port (SSE)
  cat <<EOF
version: 1
listeners: { reverse: "127.0.0.1:$1", admin: "127.0.0.1:$2" }
server: { threads: 1, upstream_pool_size: 256 }
log: { level: warn }
tenant: { id: bench, headers: { x-llm-sidecar-tenant: "{tenant}" } }
providers:
  upstream:
    kind: openai
    base_url: http://127.0.0.1:$3/v1
    auth: { type: bearer, token: sk-bench }
  mock:
    kind: openai
    base_url: http://127.0.0.1:$4/v1
    auth: { type: bearer, token: sk-bench }
    timeouts: { total: 10m }
routes:
EOF
}
