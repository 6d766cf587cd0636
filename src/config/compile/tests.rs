use super::*;
use crate::upstream::dns::DnsRegistry;

fn env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-test-canary".into()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Snapshot, ConfigErrors> {
    let dns = DnsRegistry::default();
    let metrics = Metrics::new();
    let breakers = crate::resilience::breaker::BreakerRegistry::default();
    let ctx = LoadContext {
        env: &env,
        mode: Default::default(),
        dns: &dns,
        breakers: &breakers,
        limits: &crate::limits::LimitRegistry::default(),
        metrics: &metrics,
    };
    compile(text, &ctx)
}

fn errors(text: &str) -> String {
    load(text).unwrap_err().to_string()
}

const GOOD: &str = r#"
version: 1
tenant:
  id: team-a
  headers: { x-tenant: "{tenant}" }
providers:
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
    auth: { type: bearer, token: "${env:OPENAI_API_KEY}" }
  anthropic:
    kind: anthropic
    base_url: https://api.anthropic.com
    optional: true
    auth: { type: header, name: x-api-key, value: "${env:ANTHROPIC_API_KEY}" }
routes:
  - match: { path_prefix: /openai/v1 }
    provider: openai
  - match: { path_prefix: /anthropic }
    provider: anthropic
"#;

#[test]
fn compiles_and_redacts() {
    let s = load(GOOD).unwrap();
    assert_eq!(s.routes.len(), 2);
    let Target::Ready(p) = &s.providers["openai"] else {
        panic!("openai should be ready")
    };
    assert_eq!(p.authority, "api.openai.com");
    assert_eq!(p.base_path, "/v1");
    assert!(p.tls);
    assert!(p.strip.iter().any(|h| h == "authorization"));
    assert!(
        s.tenants.list[0].strip.iter().any(|h| h == "x-tenant"),
        "tenant headers are stripped from clients"
    );
    assert_eq!(&*s.tenants.list[0].id, "team-a");
    assert!(matches!(s.providers["anthropic"], Target::Disabled { .. }));
    assert!(s
        .warnings
        .iter()
        .any(|w| w.contains("${env:ANTHROPIC_API_KEY} is not set")));
    let effective = String::from_utf8(s.effective.to_vec()).unwrap();
    assert!(!effective.contains("sk-test-canary"));
    assert!(effective.contains("[redacted]"));
    assert_eq!(s.startup.reverse.to_string(), "127.0.0.1:8080");
}

#[test]
fn missing_required_secret_names_the_reference() {
    let e = errors(&GOOD.replace("OPENAI_API_KEY", "NOPE_KEY"));
    assert!(
        e.contains("providers.openai.auth.token: ${env:NOPE_KEY} is not set"),
        "{e}"
    );
    assert!(e.contains("optional: true"), "{e}");
}

#[test]
fn unknown_provider_with_suggestion_and_many_errors() {
    let e = errors(
        r#"
version: 1
listeners: { reverse: "localhost:80" }
providers:
  openai: { kind: openai, base_url: "ftp://x" }
routes:
  - match: { path_prefix: /a }
    provider: openai
  - match: { path_prefix: b }
    provider: openai
    name: two
  - match: { path_prefix: /c }
    provider: opnai
"#,
    );
    assert!(
        e.contains("listeners.reverse: invalid address \"localhost:80\""),
        "{e}"
    );
    assert!(
        e.contains("providers.openai.base_url: scheme \"ftp\" is not supported"),
        "{e}"
    );
    assert!(
        e.contains("routes[1].match.path_prefix: path prefix \"b\" must start with /"),
        "{e}"
    );
    assert!(
        e.contains("routes[2].provider: unknown provider \"opnai\"; did you mean \"openai\"?"),
        "{e}"
    );
}

#[test]
fn shadowed_and_duplicate_routes() {
    let e = errors(
        r#"
version: 1
providers:
  p: { kind: ollama, base_url: "http://127.0.0.1:11434" }
routes:
  - match: { path_prefix: /ollama }
    provider: p
  - match: { path_prefix: /ollama/api }
    provider: p
"#,
    );
    assert!(
        e.contains("routes[1].name: another route is also named \"p\""),
        "{e}"
    );
    assert!(
        e.contains("routes[1]: can never match: route \"p\" comes first"),
        "{e}"
    );
}

#[test]
fn url_and_tls_rules() {
    let base = "version: 1\nproviders:\n  p:\n    kind: openai_compatible\n";
    let e = errors(&format!(
        "{base}    base_url: https://user:pw@example.com\n"
    ));
    assert!(e.contains("credentials in base_url"), "{e}");
    assert!(
        !e.contains("pw"),
        "the message must not echo credentials: {e}"
    );
    for bad in [
        "https://example.com:notaport",
        "https://example.com:0",
        "http://[::1]:99999",
    ] {
        let e = errors(&format!("{base}    base_url: \"{bad}\"\n"));
        assert!(e.contains("is not a port number"), "{bad}: {e}");
    }
    let snap = load(&format!(
        "{base}    base_url: \"http://[::1]:8081/v1\"\nroutes:\n  - {{ match: {{ path_prefix: /a }}, provider: p }}\n"
    ))
    .expect("an IPv6 host with a port");
    match &snap.routes.get(0).unwrap().action.target {
        Target::Ready(p) => assert_eq!(p.endpoint.port(), 8081),
        _ => panic!("ready"),
    }
    let e = errors(&format!(
        "{base}    base_url: http://example.com\n    tls: {{ sni: x.example.com }}\n"
    ));
    assert!(
        e.contains("providers.p.tls: TLS settings need an https:// base_url"),
        "{e}"
    );
    let e = errors(&format!(
        "{base}    base_url: https://example.com\n    tls: {{ ca_file: /nonexistent/ca.pem }}\n"
    ));
    assert!(
        e.contains("providers.p.tls.ca_file: cannot read /nonexistent/ca.pem"),
        "{e}"
    );
    let e = errors(&format!(
        "{base}    base_url: https://example.com\n    timeouts: {{ first_byte: 10m, total: 1m }}\n"
    ));
    assert!(
        e.contains("timeouts.first_byte: 10m is longer than timeouts.total (1m)"),
        "{e}"
    );
    let ok = load(&format!("{base}    base_url: http://127.0.0.1:8081/base/\nroutes:\n  - match: {{ host: \"*.example.com\" }}\n    provider: p\n")).unwrap();
    let Target::Ready(p) = &ok.providers["p"] else {
        panic!()
    };
    assert_eq!(p.authority, "127.0.0.1:8081");
    assert_eq!(p.base_path, "/base");
    assert!(!p.tls);
}

#[test]
fn forward_listener_needs_a_ca() {
    let e = errors("version: 1\nlisteners: { forward: 127.0.0.1:3128 }\n");
    assert!(
        e.contains("forward.ca: listeners.forward needs a CA") && e.contains("ca init"),
        "{e}"
    );
    let e = errors(
        "version: 1\nlisteners: { forward: 127.0.0.1:3128 }\nforward: { ca: { dir: /nonexistent/ca } }\n",
    );
    assert!(
        e.contains("/nonexistent/ca/intermediate.pem: cannot read"),
        "{e}"
    );
    let e = errors("version: 1\nlisteners: { reverse: 127.0.0.1:9000, forward: 127.0.0.1:9000 }\n");
    assert!(
        e.contains("listeners.forward: same address as listeners.reverse"),
        "{e}"
    );
}

fn forward_config(ca_dir: &std::path::Path, extra: &str) -> String {
    format!(
        r#"
version: 1
listeners: {{ forward: 127.0.0.1:0 }}
dns:
  overrides:
    api.openai.com: 127.0.0.1:9443
forward:
  ca: {{ dir: {dir} }}
  passthrough: ["*.github.com", "pypi.org:8443"]
{extra}
providers:
  openai:
    kind: openai
    base_url: https://api.openai.com/v1
  other:
    kind: openai_compatible
    base_url: https://llm.example.net/v1
routes:
  - match: {{ host: api.openai.com }}
    provider: openai
  - match: {{ host: "*.corp.example" }}
    provider: other
  - match: {{ path_prefix: /openai/v1 }}
    name: openai-base
    provider: openai
"#,
        dir = ca_dir.display()
    )
}

#[test]
fn forward_mode_compiles_routes_hosts_and_overrides() {
    let dir = tempfile::tempdir().unwrap();
    crate::forward::ca::init_dir(dir.path(), &["api.openai.com"]).unwrap();
    let snap = load(&forward_config(dir.path(), "")).unwrap();
    let f = &snap.forward;
    assert!(f.authority.is_some());
    assert_eq!(f.intercept.len(), 2);
    assert_eq!(
        f.decide("api.openai.com", 443),
        Ok(crate::forward::Decision::Intercept)
    );
    assert_eq!(
        f.decide("x.github.com", 443),
        Ok(crate::forward::Decision::Passthrough)
    );
    // The host route for the provider's own host keeps the app's path; the prefix route
    // maps as before.
    let r = snap
        .routes
        .find_intercepted("api.openai.com", "/v1/chat/completions")
        .unwrap();
    assert_eq!(
        r.upstream_path("/v1/chat/completions", None),
        "/v1/chat/completions"
    );
    let r = snap.routes.find(None, "/openai/v1/models").unwrap();
    assert_eq!(r.upstream_path("/openai/v1/models", None), "/v1/models");
    assert!(snap
        .routes
        .find_intercepted("api.openai.com", "/x")
        .is_some());
    assert!(snap
        .routes
        .find_intercepted("127.0.0.1", "/openai/v1/models")
        .is_none());
    // A route for another host than its provider's keeps the base path.
    let r = snap
        .routes
        .find_intercepted("a.corp.example", "/chat")
        .unwrap();
    assert_eq!(r.upstream_path("/chat", None), "/v1/chat");
    // dns.overrides: the provider dials the override, SNI and Host stay the real name.
    let Target::Ready(p) = &snap.providers["openai"] else {
        panic!("openai disabled")
    };
    assert_eq!(p.sni, "api.openai.com");
    assert_eq!(p.authority, "api.openai.com");
    assert_eq!(
        snap.dns_overrides.lookup("api.openai.com", 443),
        Some("127.0.0.1:9443".parse().unwrap())
    );
    // The CA only covers api.openai.com: the wildcard route gets a warning.
    assert!(
        snap.warnings
            .iter()
            .any(|w| w.contains("do not cover *.corp.example")),
        "{:?}",
        snap.warnings
    );
    assert!(
        !snap.warnings.iter().any(|w| w.contains("api.openai.com")),
        "{:?}",
        snap.warnings
    );
}

#[test]
fn forward_errors_are_collected_with_paths() {
    let dir = tempfile::tempdir().unwrap();
    crate::forward::ca::init_dir(dir.path(), &["api.openai.com"]).unwrap();
    let extra = r#"  ports: [443, 0]
  allow_private: ["10.0.0.0/40"]
  leaf_validity: 1m
  tunnel: { idle: 0s }
  proxy_auth:
    users:
      - { user: "a:b", password: pw, tenant: nobody }
"#;
    let text = forward_config(dir.path(), extra)
        .replace("pypi.org:8443", "pypi.org:http")
        .replace("127.0.0.1:9443", "localhost");
    let e = errors(&text);
    for want in [
        "forward.ports: 0 is not a port",
        "forward.allow_private[0]:",
        "forward.leaf_validity: must be between",
        "forward.tunnel.idle: must be greater than 0",
        "forward.proxy_auth.users[0].user: must be non-empty and must not contain ':'",
        "forward.proxy_auth.users[0].tenant: unknown tenant \"nobody\"",
        "forward.passthrough[1]:",
        "dns.overrides.api.openai.com: \"localhost\" is not an IP address",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    let e = errors(
        "version: 1\nproviders: { o: { kind: openai, base_url: https://api.openai.com/v1 } }\nroutes:\n  - { match: { host: api.openai.com }, provider: o, keep_path: true, rewrite_prefix: /x }\n",
    );
    assert!(
        e.contains("routes[0].keep_path: cannot be combined with rewrite_prefix"),
        "{e}"
    );
}

#[test]
fn fingerprint_tracks_secret_files() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "one\n").unwrap();
    let text = format!(
        "version: 1\nproviders:\n  p:\n    kind: openai\n    base_url: https://api.openai.com\n    auth: {{ type: bearer, token: \"${{file:{}}}\" }}\nroutes:\n  - match: {{ path_prefix: / }}\n    provider: p\n",
        key.display()
    );
    let a = load(&text).unwrap();
    let b = load(&text).unwrap();
    assert_eq!(a.fingerprint, b.fingerprint);
    assert_eq!(a.files, vec![key.clone()]);
    std::fs::write(&key, "two\n").unwrap();
    let c = load(&text).unwrap();
    assert_ne!(a.fingerprint, c.fingerprint, "a rotated secret is a change");
    assert_eq!(a.hash, c.hash, "the public hash covers the file only");
}

fn provider_errors(auth: &str) -> String {
    errors(&format!(
        "version: 1\nproviders:\n  p:\n    kind: openai\n    base_url: https://api.example.com\n    auth: {auth}\nroutes:\n  - match: {{ path_prefix: / }}\n    provider: p\n"
    ))
}

#[test]
fn key_pool_and_signer_mistakes() {
    let e = provider_errors("{ type: bearer, token: a, keys: [{ name: k, key: b }] }");
    assert!(
        e.contains("providers.p.auth: give either `token` or `keys`, not both"),
        "{e}"
    );
    let e = provider_errors("{ type: bearer }");
    assert!(
        e.contains("providers.p.auth: needs `token` (one key) or `keys` (a pool)"),
        "{e}"
    );
    let e = provider_errors("{ type: header, name: x-api-key, keys: [] }");
    assert!(
        e.contains("providers.p.auth.keys: must list at least one key"),
        "{e}"
    );
    let e = provider_errors(
        "{ type: bearer, keys: [{ name: k, key: a }, { name: k, key: b, weight: 0 }] }",
    );
    assert!(
        e.contains("providers.p.auth.keys[1].name: duplicate key name \"k\""),
        "{e}"
    );
    assert!(
        e.contains("providers.p.auth.keys[1].weight: must be at least 1"),
        "{e}"
    );
    let e = provider_errors("{ type: bearer, keys: [{ name: k, key: \"${env:NOPE_KEY}\" }] }");
    assert!(
        e.contains("providers.p.auth.keys[0].key: ${env:NOPE_KEY} is not set"),
        "{e}"
    );
    let e = provider_errors("{ type: hmac, secret: s }");
    assert!(
        e.contains("providers.p.auth.key_id: needed with a single `secret`"),
        "{e}"
    );
    let e =
        provider_errors("{ type: hmac, key_id: a, secret: s, headers: { nonce: \"bad header\" } }");
    assert!(e.contains("providers.p.auth.headers.nonce"), "{e}");
    let e = provider_errors("{ type: aws_sigv4, region: \"us east\" }");
    assert!(e.contains("providers.p.auth.region"), "{e}");
    let e = provider_errors("{ type: aws_sigv4, region: us-east-1, credentials: { from: env } }");
    assert!(
        e.contains("providers.p.auth.credentials: ${env:AWS_ACCESS_KEY_ID} is not set"),
        "{e}"
    );
    let e = provider_errors("{ type: oauth2, flow: client_credentials }");
    assert!(
        e.contains("providers.p.auth.token_url: needed for the client_credentials flow"),
        "{e}"
    );
    let e = provider_errors("{ type: oauth2, flow: client_credentials, token_url: \"ftp://x\" }");
    assert!(
        e.contains("providers.p.auth.token_url: \"ftp://x\" is not an http(s) URL"),
        "{e}"
    );
    let e = provider_errors("{ type: oauth2, flow: client_credentials, token_url: \"https://u:pw-canary@idp.example.com/t\" }");
    assert!(
        e.contains("credentials in the URL are not allowed") && !e.contains("pw-canary"),
        "{e}"
    );
    let e = provider_errors("{ type: oauth2, flow: google_service_account }");
    assert!(
        e.contains("providers.p.auth.service_account: needed"),
        "{e}"
    );
    let e = provider_errors("{ type: oauth2, flow: google_service_account, service_account: \"{\\\"private_key\\\": \\\"x\\\"}\" }");
    assert!(
        e.contains("providers.p.auth.service_account: not a service-account key file"),
        "{e}"
    );
}

#[test]
fn tenancy_mistakes() {
    let base = "providers:\n  p: { kind: openai, base_url: \"https://x.example.com\", auth: { type: bearer, token: t } }\nroutes:\n  - match: { path_prefix: / }\n    provider: p\n";
    let e = errors(&format!("version: 1\ntenant: {{ source: header }}\n{base}"));
    assert!(
        e.contains("tenant.header: `tenant.source: header` needs the header"),
        "{e}"
    );
    assert!(
        e.contains("tenants: `tenant.source: header` accepts only the tenants listed here"),
        "{e}"
    );
    let e = errors(&format!("version: 1\ntenant: {{ source: header, header: x-t, trusted_sources: [\"10.0.0.0/40\"] }}\ntenants: {{ a: {{}} }}\n{base}"));
    assert!(e.contains("tenant.trusted_sources[0]"), "{e}");
    let e = errors(&format!(
        "version: 1\ntenant: {{ source: virtual_key }}\n{base}"
    ));
    assert!(
        e.contains("virtual_keys: `tenant.source: virtual_key` needs at least one virtual key"),
        "{e}"
    );
    let e = errors(&format!(
        "version: 1\ntenant: {{ source: virtual_key }}\nvirtual_keys:\n  - {{ key: short, tenant: a }}\n  - {{ key: long-enough-key-123, tenant: a }}\n  - {{ key: long-enough-key-123, tenant: b }}\n{base}"
    ));
    assert!(
        e.contains("virtual_keys[0].key: virtual keys must be at least 16 characters"),
        "{e}"
    );
    assert!(
        e.contains("virtual_keys[2].key: the same key is listed twice"),
        "{e}"
    );
    assert!(
        !e.contains("long-enough-key"),
        "errors never quote keys: {e}"
    );
    let e = errors(&format!(
        "version: 1\ntenant: {{ id: a, headers: {{ x-cc: \"{{tenant.cost_center}}\" }} }}\ntenants: {{ a: {{ provider_keys: {{ nope: k }} }} }}\n{base}"
    ));
    assert!(
        e.contains("tenant.headers.x-cc: {tenant.cost_center} is not an attribute of tenant \"a\""),
        "{e}"
    );
    assert!(
        e.contains("tenants.a.provider_keys.nope: unknown provider \"nope\""),
        "{e}"
    );
    let e = errors(&format!(
        "version: 1\nvirtual_keys:\n  - {{ key: long-enough-key-123, tenant: a }}\n{base}"
    ));
    assert!(
        e.contains("virtual_keys: used only with `tenant.source: virtual_key`"),
        "{e}"
    );
}

#[test]
fn tenant_keys_need_key_based_auth() {
    let e = errors(
        "version: 1\ntenant: { id: a }\ntenants: { a: { provider_keys: { p: k } } }\nproviders:\n  p: { kind: openai, base_url: \"https://x.example.com\" }\nroutes:\n  - match: { path_prefix: / }\n    provider: p\n",
    );
    assert!(e.contains("tenants.a.provider_keys.p: a tenant key needs the provider's auth to be bearer, header or hmac"), "{e}");
}

#[test]
fn limit_rules_are_checked_with_paths() {
    let e = errors(
        r#"version: 1
providers: { o: { kind: openai, base_url: "https://api.openai.com/v1" } }
routes: [ { match: { path_prefix: /o }, provider: o } ]
limits:
  rules:
    - { name: a, requests: { rate: "10" } }
    - { name: a, match: { routes: [oo] }, tokens: { limit: 0, per: 1h } }
    - { name: c }
    - { name: d, concurrency: { max: 0 } }
"#,
    );
    for want in [
        "limits.rules[0].requests.rate: \"10\": write a rate like",
        "limits.rules[1].name: duplicate rule \"a\"",
        "limits.rules[1].match.routes: unknown name \"oo\"; did you mean \"o\"?",
        "limits.rules[1].tokens: limit and per must be greater than 0",
        "limits.rules[2]: a rule needs at least one of",
        "limits.rules[3].concurrency.max: must be at least 1",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

#[test]
fn shared_limit_backend_mistakes() {
    let base = r#"version: 1
providers: { o: { kind: openai, base_url: "https://api.openai.com/v1" } }
routes: [ { match: { path_prefix: /o }, provider: o } ]
"#;
    let e = errors(&format!(
        "{base}limits:\n  backend: \"rediss://:pw-canary@cache:6380\"\n  lease: 1.5\n  backend_timeout: 0s\n"
    ));
    for want in [
        "limits.backend: a rediss:// URL: write `local` or redis://",
        "limits.lease: 1.5 is not a share",
        "limits.backend_timeout: must be greater than 0",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    assert!(
        !e.contains("pw-canary"),
        "the URL's password is echoed: {e}"
    );
    let e = errors(&format!(
        "{base}limits: {{ backend: \"redis://:pw-canary@[::1\" }}\n"
    ));
    assert!(e.contains("limits.backend: not a usable Redis URL"), "{e}");
    assert!(!e.contains("pw-canary"), "{e}");
    let e = errors(&format!(
        "{base}limits: {{ backend: redis, on_backend_failure: maybe }}\n"
    ));
    assert!(e.contains("on_backend_failure"), "{e}");
    // `local` and a Redis URL compile; no connection is made at load
    assert!(load(&format!("{base}limits: {{ backend: local }}\n")).is_ok());
    assert!(load(&format!(
        "{base}limits:\n  backend: redis://127.0.0.1:1/0\n  rules: [ {{ name: r, requests: {{ rate: 1/s }} }} ]\n"
    ))
    .is_ok());
}

#[test]
fn audit_and_telemetry_mistakes() {
    let base = r#"version: 1
providers: { o: { kind: openai, base_url: "https://api.openai.com/v1" } }
"#;
    let e = errors(&format!(
        r#"{base}routes: [ {{ match: {{ path_prefix: /o }}, provider: o, audit_bodies: {{ max_bytes: 0 }} }} ]
audit:
  output: file
  queue: 0
  redact:
    builtins: [email, ssn]
    rules:
      - {{ name: "bad name", pattern: "(" }}
      - {{ name: empty, pattern: "x*" }}
      - {{ name: card, mask: full, keep_prefix: 2 }}
      - {{ name: nothing }}
    json_paths:
      - {{ path: "user" }}
telemetry:
  otlp_endpoint: "grpc://collector:4317"
  queue: 4
  batch: 8
"#
    ));
    for want in [
        "audit.path: `output: file` needs a path",
        "audit.queue: must be between 1 and 1048576",
        "audit.redact.rules[0].name: use letters",
        "audit.redact.rules[2]: keep_prefix and keep_suffix need `mask: partial`",
        "audit.redact.json_paths[0].path: a JSON path starts with `$`",
        "audit.redact.builtins[1]: ssn: unknown built-in rule; the built-ins are api_key, bearer, email",
        "audit.redact.rules[0]: bad name: regex parse error",
        "audit.redact.rules[1]: empty: the pattern matches the empty string",
        "audit.redact.rules[3]: nothing: a rule without `pattern` changes a built-in's mask",
        "routes[0].audit_bodies.max_bytes: must be between 1 byte and 16MiB",
        "telemetry.otlp_endpoint: must be an http:// URL",
        "telemetry.batch: must be between 1 and telemetry.queue (4)",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
    // a good one compiles
    let snap = load(&format!(
        r#"{base}routes: [ {{ match: {{ path_prefix: /o }}, provider: o, audit_bodies: {{}} }} ]
audit: {{ output: stdout, redact: {{ rules: [ {{ name: phone, mask: partial, keep_prefix: 4 }} ] }} }}
telemetry: {{ otlp_endpoint: "http://127.0.0.1:4318/v1/traces" }}
"#
    ))
    .expect("valid");
    assert!(snap.redactor.is_some());
    assert_eq!(
        snap.routes
            .get(0)
            .unwrap()
            .action
            .plan
            .audit_bodies
            .map(|b| b.max_bytes),
        Some(16 * 1024)
    );
    assert!(snap.startup.telemetry.is_some());
}

#[test]
fn translating_routes_reach_every_provider_kind_at_its_own_endpoint() {
    use crate::config::compile::Endpoint;
    use crate::translate::Api;
    let s = load(
        r#"version: 1
providers:
  a: { kind: anthropic, base_url: https://api.anthropic.com }
  b: { kind: bedrock, base_url: https://bedrock-runtime.us-east-1.amazonaws.com/ }
  g: { kind: vertex_ai, base_url: https://us-central1-aiplatform.googleapis.com/v1/projects/p/locations/us-central1 }
  z: { kind: azure_openai, base_url: https://r.openai.azure.com/openai/v1 }
  o: { kind: ollama, base_url: http://127.0.0.1:11434 }
routes:
  - match: { path_prefix: /x }
    api: openai
    provider: a
    fallback: [{ provider: b }, { provider: g }, { provider: z }, { provider: o }]
"#,
    )
    .unwrap();
    let r = &s.routes.get(0).unwrap().action;
    let mut got = vec![r.translation.as_ref().unwrap()];
    got.extend(
        r.plan
            .fallbacks
            .iter()
            .map(|f| f.translation.as_ref().unwrap()),
    );
    let shown: Vec<(Api, String)> = got
        .iter()
        .map(|t| {
            let e = match &t.endpoint {
                Endpoint::Fixed(u) => u.to_string(),
                Endpoint::PerModel { base } => format!("{base} + model"),
            };
            (t.target, e)
        })
        .collect();
    assert_eq!(
        shown,
        [
            (Api::AnthropicMessages, "/v1/messages".to_string()),
            (Api::BedrockConverse, " + model".to_string()),
            (
                Api::Gemini,
                "/v1/projects/p/locations/us-central1 + model".to_string()
            ),
            (Api::OpenAiChat, "/openai/v1/chat/completions".to_string()),
            (Api::OpenAiChat, "/v1/chat/completions".to_string()),
        ]
    );
    // Vertex AI without a project and location cannot take Gemini requests
    let e = errors(
        "version: 1\nproviders: { g: { kind: vertex_ai, base_url: https://us-central1-aiplatform.googleapis.com/v1 } }\nroutes:\n  - { match: { path_prefix: /x }, api: openai, provider: g }\n",
    );
    assert!(
        e.contains("routes[0].provider") && e.contains("names the project and location"),
        "{e}"
    );
}

#[test]
fn target_model_maps_and_timeouts_are_checked() {
    let e = errors(
        "version: 1\nproviders: { a: { kind: anthropic, base_url: \"http://127.0.0.1:1\" } }\nroutes:\n  - { match: { path_prefix: /x }, provider: a, model: m, models: { a: b }, timeouts: { first_byte: 0s } }\n  - { match: { path_prefix: /y }, provider: a, fallback: [{ provider: a, models: { \"\": b }, timeouts: { first_byte: 9s, total: 2s } }] }\n",
    );
    for want in [
        "routes[0].models: cannot be combined with `model`",
        "routes[0].timeouts.first_byte: must be greater than 0",
        "routes[1].fallback[0].models: model names must not be empty",
        "routes[1].fallback[0].timeouts.first_byte: 9s is longer than timeouts.total (2s)",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}
