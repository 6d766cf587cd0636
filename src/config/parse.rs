//! YAML text → [`ConfigFile`], collecting every error.
//!
//! serde stops at the first error of a value, so the file is first read as a generic YAML
//! tree and each section, provider and route is deserialized on its own: a typo in one
//! provider does not hide a typo in a route.

use super::errors::{did_you_mean, join, ConfigErrors};
use super::schema::{self, ConfigFile, CONFIG_VERSION, TOP_LEVEL_KEYS};
use indexmap::IndexMap;
use serde::de::DeserializeOwned;
use serde_path_to_error::Segment;
use serde_yaml::Value;

pub fn parse(text: &str) -> Result<ConfigFile, ConfigErrors> {
    let mut errs = ConfigErrors::default();
    let root: Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            errs.push("", format!("not valid YAML: {e}"));
            return Err(errs);
        }
    };
    let mut map = match root {
        Value::Mapping(m) => m,
        Value::Null => {
            errs.push("", "the file is empty; it needs at least `version: 1`");
            return Err(errs);
        }
        _ => {
            errs.push("", "the top level must be a mapping of sections (version, listeners, providers, routes, ...)");
            return Err(errs);
        }
    };

    // Unknown top-level keys first, so a misspelt section is not silently defaulted.
    for key in map.keys() {
        match key.as_str() {
            Some(k) if TOP_LEVEL_KEYS.contains(&k) => {}
            Some(k) => {
                let hint = did_you_mean(k, TOP_LEVEL_KEYS.iter().copied())
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                errs.push(k, format!("unknown section{hint}"));
            }
            None => errs.push("", format!("section names must be strings, found {key:?}")),
        }
    }

    let version = match map.remove("version") {
        None => {
            errs.push(
                "version",
                "missing; write `version: 1` at the top of the file",
            );
            CONFIG_VERSION
        }
        Some(v) => match v.as_u64() {
            Some(n) if n == u64::from(CONFIG_VERSION) => CONFIG_VERSION,
            _ => {
                errs.push(
                    "version",
                    format!(
                        "unsupported version {}; this build reads version {CONFIG_VERSION}",
                        yaml_brief(&v)
                    ),
                );
                CONFIG_VERSION
            }
        },
    };

    let listeners: schema::Listeners = section(&mut map, "listeners", &mut errs);
    let server: schema::Server = section(&mut map, "server", &mut errs);
    let log: schema::Log = section(&mut map, "log", &mut errs);
    let dns: schema::Dns = section(&mut map, "dns", &mut errs);
    let request: schema::RequestGuards = section(&mut map, "request", &mut errs);
    let tenant: schema::Tenant = section(&mut map, "tenant", &mut errs);

    let mut tenants = IndexMap::new();
    match map.remove("tenants") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let Some(name) = k.as_str().map(str::to_string) else {
                    errs.push(
                        "tenants",
                        format!("tenant ids must be strings, found {}", yaml_brief(&k)),
                    );
                    continue;
                };
                let path = join("tenants", &name);
                if let Some(t) = value::<schema::TenantDef>(v, &path, &mut errs) {
                    tenants.insert(name, t);
                }
            }
        }
        Some(other) => errs.push(
            "tenants",
            format!(
                "must be a mapping of tenant id to its settings, found {}",
                yaml_kind(&other)
            ),
        ),
    }
    let mut virtual_keys = Vec::new();
    match map.remove("virtual_keys") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(seq)) => {
            for (i, v) in seq.into_iter().enumerate() {
                if let Some(k) =
                    value::<schema::VirtualKey>(v, &format!("virtual_keys[{i}]"), &mut errs)
                {
                    virtual_keys.push(k);
                }
            }
        }
        Some(other) => errs.push(
            "virtual_keys",
            format!("must be a list, found {}", yaml_kind(&other)),
        ),
    }

    let forward: schema::Forward = section(&mut map, "forward", &mut errs);
    let limits: schema::Limits = section(&mut map, "limits", &mut errs);
    let audit: schema::Audit = section(&mut map, "audit", &mut errs);
    let telemetry: schema::Telemetry = section(&mut map, "telemetry", &mut errs);

    let mut providers = IndexMap::new();
    match map.remove("providers") {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                let Some(name) = k.as_str().map(str::to_string) else {
                    errs.push(
                        "providers",
                        format!("provider names must be strings, found {}", yaml_brief(&k)),
                    );
                    continue;
                };
                let path = join("providers", &name);
                if let Some(p) = value::<schema::Provider>(v, &path, &mut errs) {
                    providers.insert(name, p);
                }
            }
        }
        Some(other) => errs.push(
            "providers",
            format!(
                "must be a mapping of provider name to settings, found {}",
                yaml_kind(&other)
            ),
        ),
    }

    let mut routes = Vec::new();
    match map.remove("routes") {
        None | Some(Value::Null) => {}
        Some(Value::Sequence(seq)) => {
            for (i, v) in seq.into_iter().enumerate() {
                let path = format!("routes[{i}]");
                if let Some(r) = value::<schema::Route>(v, &path, &mut errs) {
                    routes.push((i, r));
                } else {
                    routes.push((i, placeholder_route()));
                }
            }
        }
        Some(other) => errs.push(
            "routes",
            format!("must be a list of routes, found {}", yaml_kind(&other)),
        ),
    }

    errs.into_result(ConfigFile {
        version,
        listeners,
        server,
        log,
        dns,
        request,
        tenant,
        tenants,
        virtual_keys,
        forward,
        limits,
        audit,
        telemetry,
        providers,
        routes: routes.into_iter().map(|(_, r)| r).collect(),
    })
}

/// A route that failed to parse still holds its index, so later errors keep numbering
/// right; the whole load fails anyway.
fn placeholder_route() -> schema::Route {
    schema::Route {
        name: None,
        matcher: schema::RouteMatch::default(),
        provider: String::new(),
        api: None,
        model: None,
        models: Default::default(),
        timeouts: None,
        default_max_tokens: 4096,
        rewrite_prefix: None,
        keep_path: None,
        retry: Default::default(),
        fallback: Vec::new(),
        audit_bodies: None,
    }
}

fn section<T: DeserializeOwned + Default>(
    map: &mut serde_yaml::Mapping,
    key: &str,
    errs: &mut ConfigErrors,
) -> T {
    match map.remove(key) {
        None | Some(Value::Null) => T::default(),
        Some(v) => value(v, key, errs).unwrap_or_default(),
    }
}

/// Errors reported for one value at most: past this, the rest are hidden.
const MAX_ERRORS_PER_VALUE: usize = 32;

/// Deserializes one value, reporting the exact path of every failure inside it.
///
/// serde stops at a value's first error, so after each one the offending key is taken
/// out of the YAML tree and the value is read again: `routes[0]` with a misspelt key and
/// a bad duration reports both. A "missing key" that only that removal caused is not
/// reported. An unknown key or variant gets the nearest valid name as a hint.
fn value<T: DeserializeOwned>(v: Value, path: &str, errs: &mut ConfigErrors) -> Option<T> {
    let mut v = v;
    let mut removed: Vec<String> = Vec::new();
    let mut reported = 0;
    while reported < MAX_ERRORS_PER_VALUE {
        let e = match serde_path_to_error::deserialize::<_, T>(v.clone()) {
            Ok(t) => return (reported == 0).then_some(t),
            Err(e) => e,
        };
        let segments: Vec<Segment> = e.path().iter().cloned().collect();
        let full = display(path, &segments);
        let msg = e.into_inner().to_string();
        if let Some(key) = quoted_after(&msg, "missing field `") {
            if removed.contains(&format!("{full}.{key}")) {
                return None;
            }
        }
        errs.push(full, format!("{}{}", tidy_serde_message(&msg), hint(&msg)));
        reported += 1;
        match remove_offender(&mut v, &segments, &msg) {
            Some((container, key)) => removed.push(format!("{}.{key}", display(path, container))),
            None => return None,
        }
    }
    None
}

/// `path` followed by the segments, as errors show them: `routes[0].retry.backoff`.
fn display(path: &str, segments: &[Segment]) -> String {
    let mut out = path.to_string();
    for s in segments {
        match s {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// The text between `prefix` and the next backtick.
fn quoted_after<'a>(msg: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = &msg[msg.find(prefix)? + prefix.len()..];
    Some(&rest[..rest.find('`')?])
}

/// "did you mean" for serde's "unknown field `x`, expected one of `a`, `b`" and
/// "unknown variant `x`, expected ..." messages.
fn hint(msg: &str) -> String {
    let Some(word) =
        quoted_after(msg, "unknown field `").or_else(|| quoted_after(msg, "unknown variant `"))
    else {
        return String::new();
    };
    let Some(expected) = msg.split_once("expected").map(|(_, e)| e) else {
        return String::new();
    };
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    match did_you_mean(word, candidates.iter().copied()) {
        Some(c) if c != word => format!("; did you mean `{c}`?"),
        _ => String::new(),
    }
}

/// Takes the node an error points at out of the tree, so the next read gets past it:
/// the path of the mapping it was in and its key, or None when nothing could be removed.
fn remove_offender<'s>(
    root: &mut Value,
    segments: &'s [Segment],
    msg: &str,
) -> Option<(&'s [Segment], String)> {
    // An unknown key inside an internally tagged value (`auth: { type: ..., tokn: x }`)
    // is reported at the tagged value, not at the key.
    let unknown = quoted_after(msg, "unknown field `");
    let (container, key) = match (unknown, segments.split_last()) {
        (Some(u), Some((Segment::Map { key }, rest))) if key == u => (rest, key.clone()),
        (Some(u), _) => (segments, u.to_string()),
        (None, Some((Segment::Map { key }, rest))) => (rest, key.clone()),
        (None, _) => return None,
    };
    let mut node = &mut *root;
    for s in container {
        node = match (s, node) {
            (Segment::Map { key }, Value::Mapping(m)) => m.get_mut(key.as_str())?,
            (Segment::Seq { index }, Value::Sequence(q)) => q.get_mut(*index)?,
            _ => return None,
        };
    }
    match node {
        Value::Mapping(m) => m.remove(key.as_str()).map(|_| (container, key)),
        _ => None,
    }
}

/// serde's messages are good but mention Rust-isms; make the common ones read as YAML.
fn tidy_serde_message(msg: &str) -> String {
    let m = msg
        .replace("unknown field `", "unknown key `")
        .replace("missing field `", "missing key `");
    // serde_yaml appends " at line X column Y" for some errors from a Value; none here.
    m
}

fn yaml_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

fn yaml_brief(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{s}\""),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        other => yaml_kind(other).to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        parse(text)
            .unwrap_err()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse("version: 1\n").unwrap();
        assert_eq!(c.listeners.reverse, "127.0.0.1:8080");
        assert_eq!(c.request.max_body_bytes.get(), 32 << 20);
        assert!(c.providers.is_empty());
    }

    #[test]
    fn collects_errors_from_every_section() {
        let e = errors(
            r#"
version: 2
listners: {}
server: { grace_period: 30 }
providers:
  openai:
    kind: openai
    base_url: https://api.openai.com
    auth: { type: bearer, tokn: x }
  other:
    kind: nosuch
    base_url: http://x
routes:
  - match: { path_prefix: /a }
    provider: openai
    extra: 1
"#,
        );
        let joined = e.join("\n");
        assert!(
            joined.contains("listners: unknown section; did you mean `listeners`?"),
            "{joined}"
        );
        assert!(
            joined.contains("version: unsupported version 2"),
            "{joined}"
        );
        assert!(
            joined.contains("server.grace_period: duration 30 has no unit"),
            "{joined}"
        );
        assert!(joined.contains("providers.openai.auth"), "{joined}");
        assert!(joined.contains("tokn"), "{joined}");
        assert!(
            joined.contains("providers.other.kind: unknown variant `nosuch`"),
            "{joined}"
        );
        assert!(
            joined.contains("routes[0].extra: unknown key `extra`"),
            "{joined}"
        );
        assert_eq!(e.len(), 6, "{joined}");
    }

    #[test]
    fn every_error_inside_one_route_or_provider_is_reported_with_a_hint() {
        let e = errors(
            r#"
version: 1
providers:
  openai:
    kind: opnai
    base_url: https://api.openai.com/v1
    auth: { type: bearer, tokn: x, token: y }
    timeouts: { conect: 5s, total: 10 }
routes:
  - match: { path_prefix: /a, hots: x }
    provider: openai
    retyr: {}
    retry: { max_attempts: "three", backof: 1s }
    audit_bodies: { max_bytes: 12XB }
"#,
        );
        let joined = e.join("\n");
        for want in [
            "providers.openai.kind: unknown variant `opnai`",
            "did you mean `openai`?",
            "providers.openai.auth: unknown key `tokn`",
            "did you mean `token`?",
            "providers.openai.timeouts.conect: unknown key `conect`",
            "did you mean `connect`?",
            "providers.openai.timeouts.total: duration 10 has no unit",
            "routes[0].match.hots: unknown key `hots`",
            "did you mean `host`?",
            "routes[0].retyr: unknown key `retyr`",
            "did you mean `retry`?",
            "routes[0].retry.max_attempts: invalid type",
            "routes[0].retry.backof: unknown key `backof`",
            "did you mean `backoff`?",
            "routes[0].audit_bodies.max_bytes: invalid size unit",
        ] {
            assert!(joined.contains(want), "{want} missing:\n{joined}");
        }
        assert_eq!(e.len(), 9, "{joined}");
        // a required key removed to get past its bad value is not also "missing"
        let e = errors("version: 1\nroutes:\n  - { match: { path_prefix: /a }, provider: [1] }\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(
            e[0].starts_with("routes[0].provider: invalid type"),
            "{e:?}"
        );
        // no hint when nothing is near
        let e = errors("version: 1\nserver: { zzzzzzzz: 1 }\n");
        assert!(!e[0].contains("did you mean"), "{e:?}");
    }

    #[test]
    fn syntax_and_shape_errors() {
        assert!(errors("version: [").join("").contains("not valid YAML"));
        assert!(errors("").join("").contains("empty"));
        assert!(errors("- a").join("").contains("top level"));
        assert!(errors("version: 1\nroutes: {}")
            .join("")
            .contains("routes: must be a list"));
    }
}
