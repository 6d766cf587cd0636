#!/usr/bin/env python3
"""Writes helm/llm-sidecar/dashboards/llm-sidecar.json (run from the repository root).

The test observability::every_metric_the_dashboard_queries_exists checks that every metric
queried here is exported by the sidecar."""
import json
panels=[]
y=0
DS={"type":"prometheus","uid":"${datasource}"}
J='job=~"$job"'
def q(e):
    # {S} = the job selector; {S,x} = job selector plus x
    import re
    e=e.replace("{S}","{"+J+"}")
    return re.sub(r"\{S,([^}]*)\}", lambda m: "{"+J+","+m.group(1)+"}", e)
def row(title):
    global y
    panels.append({"type":"row","title":title,"collapsed":False,"gridPos":{"h":1,"w":24,"x":0,"y":y},"id":len(panels)+1,"panels":[]})
    y+=1
def ts(title, exprs, unit, w, x):
    panels.append({
        "type":"timeseries","title":title,"id":len(panels)+1,"datasource":DS,
        "gridPos":{"h":8,"w":w,"x":x,"y":y},
        "fieldConfig":{"defaults":{"unit":unit},"overrides":[]},
        "options":{"legend":{"displayMode":"list","placement":"bottom"},"tooltip":{"mode":"multi"}},
        "targets":[{"refId":chr(65+i),"expr":q(e),"legendFormat":l,"datasource":DS} for i,(e,l) in enumerate(exprs)],
    })
def stat(title, expr, unit, w, x):
    panels.append({
        "type":"stat","title":title,"id":len(panels)+1,"datasource":DS,
        "gridPos":{"h":4,"w":w,"x":x,"y":y},
        "fieldConfig":{"defaults":{"unit":unit},"overrides":[]},
        "targets":[{"refId":"A","expr":q(expr),"datasource":DS}],
    })
R="[$__rate_interval]"
row("Overview")
stat("Requests/s", "sum(rate(llm_sidecar_llm_requests_total{S}"+R+"))", "reqps", 6, 0)
stat("Error ratio (5xx)", 'sum(rate(llm_sidecar_llm_requests_total{S,status_class="5xx"}'+R+')) / sum(rate(llm_sidecar_llm_requests_total{S}'+R+'))', "percentunit", 6, 6)
stat("Tokens/s", "sum(rate(llm_sidecar_tenant_tokens_total{S}"+R+"))", "short", 6, 12)
stat("In flight", "sum(llm_sidecar_requests_in_flight{S})", "short", 6, 18)
y+=4
row("Requests")
ts("Requests by route and status class", [("sum by (route, status_class) (rate(llm_sidecar_llm_requests_total{S}"+R+"))", "{{route}} {{status_class}}")], "reqps", 12, 0)
ts("Request duration p50 / p99", [
    ("histogram_quantile(0.5, sum by (le, route) (rate(llm_sidecar_request_duration_seconds_bucket{S}"+R+")))", "p50 {{route}}"),
    ("histogram_quantile(0.99, sum by (le, route) (rate(llm_sidecar_request_duration_seconds_bucket{S}"+R+")))", "p99 {{route}}"),
], "s", 12, 12)
y+=8
ts("Time to first token p50 / p95 (streams)", [
    ("histogram_quantile(0.5, sum by (le, model) (rate(llm_sidecar_time_to_first_token_seconds_bucket{S}"+R+")))", "p50 {{model}}"),
    ("histogram_quantile(0.95, sum by (le, model) (rate(llm_sidecar_time_to_first_token_seconds_bucket{S}"+R+")))", "p95 {{model}}"),
], "s", 12, 0)
ts("Time per output token p50 (streams)", [
    ("histogram_quantile(0.5, sum by (le, model) (rate(llm_sidecar_time_per_output_token_seconds_bucket{S}"+R+")))", "{{model}}"),
], "s", 12, 12)
y+=8
ts("GenAI operation duration p95 by provider and model", [
    ("histogram_quantile(0.95, sum by (le, gen_ai_provider_name, gen_ai_request_model) (rate(gen_ai_client_operation_duration_seconds_bucket{S}"+R+")))", "{{gen_ai_provider_name}} {{gen_ai_request_model}}"),
], "s", 12, 0)
ts("Errors by type", [
    ('sum by (error_type) (rate(gen_ai_client_operation_duration_seconds_count{S,error_type!=""}'+R+'))', "{{error_type}}"),
], "reqps", 12, 12)
y+=8
row("Tokens")
ts("Tokens by tenant and type", [("sum by (tenant, type) (rate(llm_sidecar_tenant_tokens_total{S}"+R+"))", "{{tenant}} {{type}}")], "short", 12, 0)
ts("Tokens per call p95 (gen_ai_client_token_usage)", [
    ("histogram_quantile(0.95, sum by (le, gen_ai_token_type) (rate(gen_ai_client_token_usage_bucket{S}"+R+")))", "{{gen_ai_token_type}}"),
], "short", 12, 12)
y+=8
row("Upstream")
ts("Keep-alive reuse ratio", [
    ('sum by (provider) (rate(llm_sidecar_upstream_connections_total{S,reused="true"}'+R+')) / sum by (provider) (rate(llm_sidecar_upstream_connections_total{S}'+R+'))', "{{provider}}"),
], "percentunit", 8, 0)
ts("New connections: setup and TLS handshake p95", [
    ("histogram_quantile(0.95, sum by (le, provider) (rate(llm_sidecar_upstream_connect_seconds_bucket{S}"+R+")))", "setup {{provider}}"),
    ("histogram_quantile(0.95, sum by (le, provider) (rate(llm_sidecar_upstream_tls_handshake_seconds_bucket{S}"+R+")))", "TLS {{provider}}"),
], "s", 8, 8)
ts("TLS handshakes/s and pool wait p99", [
    ("sum by (provider) (rate(llm_sidecar_upstream_tls_handshakes_total{S}"+R+"))", "handshakes/s {{provider}}"),
    ("histogram_quantile(0.99, sum by (le, provider) (rate(llm_sidecar_upstream_pool_wait_seconds_bucket{S}"+R+")))", "pool wait p99 {{provider}}"),
], "short", 8, 16)
y+=8
row("Limits and resilience")
ts("Limit decisions by rule", [
    ("sum by (rule) (rate(llm_sidecar_limit_admitted_total{S}"+R+"))", "admitted {{rule}}"),
    ("sum by (rule, kind) (rate(llm_sidecar_limited_total{S}"+R+"))", "refused {{rule}} {{kind}}"),
], "reqps", 8, 0)
ts("Retries by reason; fallbacks", [
    ("sum by (route, reason) (rate(llm_sidecar_retries_total{S}"+R+"))", "retry {{route}} {{reason}}"),
    ("sum by (route, provider) (rate(llm_sidecar_fallbacks_total{S}"+R+"))", "fallback {{route}} to {{provider}}"),
], "reqps", 8, 8)
ts("Circuit breakers (0 closed, 1 open, 2 half-open)", [
    ("max by (provider) (llm_sidecar_breaker_state{S})", "{{provider}}"),
], "short", 8, 16)
y+=8
row("Config, audit, export, process")
ts("Config reloads by result; active config", [
    ("sum by (result) (increase(llm_sidecar_config_reloads_total{S}"+R+"))", "{{result}}"),
    ("count by (hash) (llm_sidecar_config_info{S} == 1)", "active {{hash}}"),
], "short", 8, 0)
ts("Audit records and drops; exported spans", [
    ("sum(rate(llm_sidecar_audit_records_total{S}"+R+"))", "audit written"),
    ("sum by (reason) (rate(llm_sidecar_audit_dropped_total{S}"+R+"))", "audit dropped {{reason}}"),
    ("sum by (result) (rate(llm_sidecar_otlp_spans_total{S}"+R+"))", "spans {{result}}"),
], "short", 8, 8)
ts("Process: RSS, open fds, uptime", [
    ("process_resident_memory_bytes{S}", "RSS {{instance}}"),
    ("process_open_fds{S}", "fds {{instance}}"),
    ("llm_sidecar_uptime_seconds{S}", "uptime {{instance}}"),
], "short", 8, 16)
dash={
 "title":"llm-sidecar","uid":"llm-sidecar","schemaVersion":39,"version":1,"editable":True,
 "tags":["llm-sidecar","genai"],"time":{"from":"now-1h","to":"now"},"refresh":"30s",
 "templating":{"list":[
   {"name":"datasource","type":"datasource","query":"prometheus","label":"Data source"},
   {"name":"job","type":"query","datasource":DS,"query":"label_values(llm_sidecar_uptime_seconds, job)","refresh":2,"includeAll":True,"multi":True,"allValue":".*","label":"Job"}
 ]},
 "panels":panels,
}
open('helm/llm-sidecar/dashboards/llm-sidecar.json','w').write(json.dumps(dash,indent=2)+"\n")
print(len(panels))
