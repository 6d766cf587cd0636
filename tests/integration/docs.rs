//! `docs/configuration.md` documents every key of the config schema, no key the schema
//! lacks, each with the schema's type and default.
//!
//! The reference's tables are marked for this test: `<!-- keys: PREFIX -->` right before a
//! table names the path its rows are under (`providers.<name>.timeouts`), and each row's
//! first cell is a key (or a nested path, `tunnel.connect`) relative to it. The schema
//! is the one `llm-sidecar schema` prints, generated from the config types.

use serde_json::Value;
use std::collections::BTreeMap;

/// One key of the schema: its coarse type and default (when it has one).
#[derive(Debug)]
struct SchemaKey {
    kind: String,
    default: Option<Value>,
    /// An object with keys of its own (a section): its default is documented per key.
    section: bool,
}

fn def<'a>(root: &'a Value, s: &'a Value) -> (&'a Value, Option<&'a str>) {
    let mut s = s;
    let mut name = None;
    while let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let n = r.rsplit('/').next().unwrap();
        name = Some(n);
        s = &root["$defs"][n];
    }
    (s, name)
}

/// The type word the reference must use for a schema node.
fn kind(root: &Value, s: &Value) -> String {
    let (s, name) = def(root, s);
    match name {
        Some("Duration") => return "duration".into(),
        Some("ByteSize") => return "size".into(),
        Some("SecretTemplate") => return "secret".into(),
        Some("Template") => return "template".into(),
        _ => {}
    }
    for k in ["anyOf", "oneOf"] {
        if let Some(vs) = s.get(k).and_then(Value::as_array) {
            let vs: Vec<&Value> = vs
                .iter()
                .filter(|v| v.get("type").and_then(Value::as_str) != Some("null"))
                .collect();
            if vs
                .iter()
                .all(|v| v.get("const").is_some() || v.get("enum").is_some())
            {
                return "enum".into();
            }
            if vs.len() == 1 {
                return kind(root, vs[0]);
            }
            if vs
                .iter()
                .all(|v| def(root, v).0.get("properties").is_some())
            {
                return "object".into();
            }
            return "enum".into();
        }
    }
    if s.get("enum").is_some() || s.get("const").is_some() {
        return "enum".into();
    }
    let t = match s.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("?")
            .to_string(),
        _ if s.get("properties").is_some() => "object".into(),
        _ => "?".into(),
    };
    match t.as_str() {
        "boolean" => "bool".into(),
        "array" => "list".into(),
        "object" if s.get("properties").is_none() => "map".into(),
        _ => t,
    }
}

fn walk(
    root: &Value,
    s: &Value,
    path: &str,
    seen: &[String],
    out: &mut BTreeMap<String, SchemaKey>,
) {
    let (s, name) = def(root, s);
    let mut seen = seen.to_vec();
    if let Some(n) = name {
        if seen.iter().any(|x| x == n) {
            return;
        }
        seen.push(n.to_string());
    }
    for k in ["anyOf", "oneOf", "allOf"] {
        for v in s.get(k).and_then(Value::as_array).into_iter().flatten() {
            walk(root, v, path, &seen, out);
        }
    }
    if let Some(props) = s.get("properties").and_then(Value::as_object) {
        for (p, ps) in props {
            let full = if path.is_empty() {
                p.clone()
            } else {
                format!("{path}.{p}")
            };
            let (inner, _) = def(root, ps);
            let section = inner.get("properties").is_some()
                || inner
                    .get("anyOf")
                    .or(inner.get("oneOf"))
                    .and_then(Value::as_array)
                    .is_some_and(|vs| {
                        vs.iter()
                            .any(|v| def(root, v).0.get("properties").is_some())
                    });
            out.entry(full.clone()).or_insert(SchemaKey {
                kind: kind(root, ps),
                default: ps.get("default").cloned().filter(|d| !d.is_null()),
                section,
            });
            walk(root, ps, &full, &seen, out);
        }
    }
    if let Some(ap) = s.get("additionalProperties").filter(|v| v.is_object()) {
        walk(root, ap, &format!("{path}.<name>"), &seen, out);
    }
    if let Some(items) = s.get("items").filter(|v| v.is_object()) {
        walk(root, items, &format!("{path}[]"), &seen, out);
    }
}

fn schema_keys() -> BTreeMap<String, SchemaKey> {
    let root = llm_sidecar::config::schema::json_schema();
    let mut out = BTreeMap::new();
    walk(&root, &root, "", &[], &mut out);
    out
}

/// One documented key: its type and default cells, and where it is.
#[derive(Debug)]
struct DocRow {
    line: usize,
    kind: String,
    default: String,
}

fn doc_rows(text: &str) -> Vec<(String, DocRow)> {
    let mut rows = Vec::new();
    let mut prefix: Option<String> = None;
    let mut in_table = false;
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if let Some(p) = t
            .strip_prefix("<!-- keys:")
            .and_then(|r| r.strip_suffix("-->"))
        {
            prefix = Some(p.trim().to_string());
            in_table = false;
            continue;
        }
        let Some(pre) = &prefix else { continue };
        if !t.starts_with('|') {
            if in_table {
                prefix = None;
                in_table = false;
            }
            continue;
        }
        in_table = true;
        let cells: Vec<&str> = t.trim_matches('|').split('|').map(str::trim).collect();
        if cells[0] == "key" || cells[0].starts_with("---") {
            if cells[0] == "key" {
                assert_eq!(
                    &cells[..3],
                    &["key", "type", "default"],
                    "line {}: a keys table has the columns key | type | default | meaning",
                    i + 1
                );
            }
            continue;
        }
        let key = cells[0].trim_matches('`');
        assert!(
            !cells[0].contains(',') && cells[0].starts_with('`'),
            "line {}: one key per row, in backticks: {}",
            i + 1,
            cells[0]
        );
        let full = if pre.is_empty() {
            key.to_string()
        } else {
            format!("{pre}.{key}")
        };
        rows.push((
            full,
            DocRow {
                line: i + 1,
                kind: cells.get(1).unwrap_or(&"").to_string(),
                default: cells.get(2).unwrap_or(&"").to_string(),
            },
        ));
    }
    rows
}

/// The first `code span` of a cell.
fn code_span(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let len = cell[start..].find('`')?;
    Some(&cell[start..start + len])
}

/// Whether the documented default says the same as the schema's.
fn same_default(doc: &str, schema: &Value) -> bool {
    use llm_sidecar::config::units::{parse_duration, ByteSize};
    let Some(code) = code_span(doc) else {
        return false;
    };
    if let Value::String(s) = schema {
        if s == code {
            return true;
        }
        if let (Ok(a), Ok(b)) = (parse_duration(s), parse_duration(code)) {
            return a == b;
        }
        let size = |x: &str| serde_yaml::from_str::<ByteSize>(x).ok().map(|b| b.0);
        if let (Some(a), Some(b)) = (size(s), size(code)) {
            return a == b;
        }
        return false;
    }
    match serde_yaml::from_str::<Value>(code) {
        Ok(v) => &v == schema,
        Err(_) => false,
    }
}

#[test]
fn the_configuration_reference_documents_every_schema_key_with_its_type_and_default() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let schema = schema_keys();
    let rows = doc_rows(&text);
    assert!(
        rows.len() > 100,
        "the reference's key tables were not found"
    );

    let mut problems = Vec::new();
    let mut documented = BTreeMap::new();
    for (key, row) in &rows {
        if let Some(prev) = documented.insert(key.clone(), row.line) {
            problems.push(format!(
                "line {}: {key} is documented twice (also line {prev})",
                row.line
            ));
        }
        let Some(s) = schema.get(key) else {
            problems.push(format!("line {}: {key} is not in the schema", row.line));
            continue;
        };
        let kind = row.kind.trim_matches('`').to_lowercase();
        if !kind.starts_with(&s.kind) {
            problems.push(format!(
                "line {}: {key} has type \"{}\"; the schema says {}",
                row.line, row.kind, s.kind
            ));
        }
        if row.default.is_empty() {
            problems.push(format!("line {}: {key} has no default cell", row.line));
        }
        if let Some(d) = &s.default {
            if !s.section && !same_default(&row.default, d) {
                problems.push(format!(
                    "line {}: {key} default \"{}\"; the schema's is `{d}`",
                    row.line, row.default
                ));
            }
        }
    }
    for key in schema.keys() {
        if !documented.contains_key(key) {
            problems.push(format!("{key} ({}) is not documented", schema[key].kind));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/configuration.md and the schema differ:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_schema_command_prints_the_generated_schema() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_llm-sidecar"))
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed, llm_sidecar::config::schema::json_schema());
    assert_eq!(printed["required"], serde_json::json!(["version"]));
    // Every top-level key the parser knows is in the schema, and no other.
    let props: Vec<&str> = printed["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut known = llm_sidecar::config::schema::TOP_LEVEL_KEYS.to_vec();
    known.sort();
    let mut props = props;
    props.sort();
    assert_eq!(props, known);
}

/// The schema path of a key found at `parent` in an example (`providers.openai.auth` is
/// `providers.<name>.auth`), or None when the schema has no such key.
fn schema_path(schema: &BTreeMap<String, SchemaKey>, parent: &str, key: &str) -> Option<String> {
    let join = |p: &str, k: &str| {
        if p.is_empty() {
            k.to_string()
        } else {
            format!("{p}.{k}")
        }
    };
    let direct = join(parent, key);
    if schema.contains_key(&direct) {
        return Some(direct);
    }
    let named = join(parent, "<name>");
    let prefix = format!("{named}.");
    schema
        .keys()
        .any(|k| k.starts_with(&prefix))
        .then_some(named)
}

fn check_example(
    schema: &BTreeMap<String, SchemaKey>,
    v: &serde_yaml::Value,
    path: &str,
    problems: &mut Vec<String>,
    line: usize,
) {
    match v {
        serde_yaml::Value::Mapping(m) => {
            if schema
                .get(path)
                .is_some_and(|s| s.kind == "map" && !s.section)
                && !schema
                    .keys()
                    .any(|k| k.starts_with(&format!("{path}.<name>.")))
            {
                return; // a map of plain values: any key
            }
            for (k, v) in m {
                let Some(k) = k.as_str() else { continue };
                match schema_path(schema, path, k) {
                    Some(p) => check_example(schema, v, &p, problems, line),
                    None => problems.push(format!(
                        "example at line {line}: `{k}` is not a key of `{}`",
                        if path.is_empty() {
                            "the top level"
                        } else {
                            path
                        }
                    )),
                }
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for i in items {
                check_example(schema, i, &format!("{path}[]"), problems, line);
            }
        }
        _ => {}
    }
}

#[test]
fn every_yaml_example_in_the_reference_uses_keys_the_schema_has() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/configuration.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let schema = schema_keys();
    let mut problems = Vec::new();
    let mut blocks = 0;
    let mut lines = text.lines().enumerate();
    while let Some((i, l)) = lines.next() {
        if l.trim() != "```yaml" {
            continue;
        }
        let body: Vec<&str> = lines
            .by_ref()
            .map(|(_, l)| l)
            .take_while(|l| l.trim() != "```")
            .collect();
        blocks += 1;
        // A block may show alternatives (`auth: ...` twice): check each top-level entry
        // on its own.
        let mut chunks: Vec<String> = Vec::new();
        for l in body {
            let starts = !l.starts_with([' ', '#', '-']) && !l.is_empty();
            match chunks.last_mut() {
                Some(c) if !starts => {
                    c.push_str(l);
                    c.push('\n');
                }
                _ => chunks.push(format!("{l}\n")),
            }
        }
        for c in chunks {
            let v: serde_yaml::Value = match serde_yaml::from_str(&c) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("example at line {}: not YAML: {e}", i + 1));
                    continue;
                }
            };
            // Fragments of a provider (`auth:`, `timeouts:`) are checked where they go.
            let first = v
                .as_mapping()
                .and_then(|m| m.keys().next())
                .and_then(|k| k.as_str())
                .unwrap_or("");
            let root = if schema.contains_key(first) || first.is_empty() {
                ""
            } else {
                "providers.<name>"
            };
            check_example(&schema, &v, root, &mut problems, i + 1);
        }
    }
    assert!(blocks >= 15, "only {blocks} yaml examples found");
    assert!(
        problems.is_empty(),
        "docs/configuration.md examples use unknown keys:\n  {}",
        problems.join("\n  ")
    );
}
