//! Secret references and the `Secret` type.
//!
//! A config string may embed references that are resolved when the config is loaded:
//!
//! - `${env:NAME}`: the value of environment variable `NAME`;
//! - `${file:/path}`: the contents of a file, with one trailing newline removed (so files
//!   written with `echo` work), re-read on every reload (Kubernetes Secret rotation).
//!
//! `$$` writes a literal `$`. Errors name the reference (`${env:OPENAI_API_KEY}`), never a
//! value. A resolved credential is held in a [`Secret`], whose `Debug`/`Display` print
//! `[redacted]` so it cannot leak through a log line by accident.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// What every secret prints as.
pub const REDACTED: &str = "[redacted]";

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Lit(String),
    Env(String),
    File(PathBuf),
}

/// A string with `${env:...}` / `${file:...}` references, parsed (not resolved) at
/// deserialization so syntax errors are reported with the field's path.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    raw: String,
    parts: Vec<Part>,
}

/// Why a reference could not be resolved. Messages name the reference only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("${{env:{0}}} is not set")]
    EnvMissing(String),
    #[error("${{env:{0}}} is set but empty")]
    EnvEmpty(String),
    #[error("${{file:{path}}} cannot be read: {reason}")]
    FileUnreadable { path: String, reason: String },
    #[error("${{file:{0}}} is empty")]
    FileEmpty(String),
}

/// The result of resolving a template: the value plus the files it was read from (the
/// watcher also watches their directories so rotated secrets reload).
pub struct Resolved {
    pub value: String,
    pub files: Vec<PathBuf>,
}

/// Where environment variables come from; tests inject their own.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Template {
    /// A template with no references (`$` is taken literally).
    pub fn literal(value: &str) -> Template {
        Template {
            raw: value.replace('$', "$$"),
            parts: if value.is_empty() {
                Vec::new()
            } else {
                vec![Part::Lit(value.to_string())]
            },
        }
    }

    pub fn parse(raw: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = raw;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(r) = after.strip_prefix('$') {
                lit.push('$');
                rest = r;
                continue;
            }
            let Some(body_start) = after.strip_prefix('{') else {
                // a lone `$` followed by anything else is literal
                lit.push('$');
                rest = after;
                continue;
            };
            let Some(end) = body_start.find('}') else {
                return Err(format!(
                    "unterminated reference in \"{}\": expected `}}`",
                    redact_refs_free(raw)
                ));
            };
            let body = &body_start[..end];
            let part = if let Some(name) = body.strip_prefix("env:") {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    return Err(format!(
                        "invalid reference ${{{body}}}: environment variable names use A-Z, a-z, 0-9 and _"
                    ));
                }
                Part::Env(name.to_string())
            } else if let Some(path) = body.strip_prefix("file:") {
                if !path.starts_with('/') {
                    return Err(format!(
                        "invalid reference ${{{body}}}: file references need an absolute path"
                    ));
                }
                Part::File(PathBuf::from(path))
            } else {
                return Err(format!(
                    "unknown reference ${{{body}}}: use ${{env:NAME}} or ${{file:/path}} (write $$ for a literal $)"
                ));
            };
            if !lit.is_empty() {
                parts.push(Part::Lit(std::mem::take(&mut lit)));
            }
            parts.push(part);
            rest = &body_start[end + 1..];
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Lit(lit));
        }
        Ok(Template {
            raw: raw.to_string(),
            parts,
        })
    }

    /// The template as written (references unresolved).
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// True when the template contains at least one reference.
    pub fn has_refs(&self) -> bool {
        self.parts.iter().any(|p| !matches!(p, Part::Lit(_)))
    }

    /// The template with every reference replaced by `placeholder` (for checks of what is
    /// written around references, without resolving them).
    pub fn fill(&self, placeholder: &str) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Lit(s) => s.as_str(),
                Part::Env(_) | Part::File(_) => placeholder,
            })
            .collect()
    }

    /// The references this template names, as written (for messages).
    pub fn references(&self) -> Vec<String> {
        self.parts
            .iter()
            .filter_map(|p| match p {
                Part::Env(n) => Some(format!("${{env:{n}}}")),
                Part::File(p) => Some(format!("${{file:{}}}", p.display())),
                Part::Lit(_) => None,
            })
            .collect()
    }

    /// The files this template reads, whether or not they exist.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.parts.iter().filter_map(|p| match p {
            Part::File(p) => Some(p.as_path()),
            _ => None,
        })
    }

    pub fn resolve(&self, env: EnvLookup<'_>) -> Result<Resolved, SecretError> {
        let mut value = String::new();
        let mut files = Vec::new();
        for part in &self.parts {
            match part {
                Part::Lit(s) => value.push_str(s),
                Part::Env(name) => match env(name) {
                    None => return Err(SecretError::EnvMissing(name.clone())),
                    Some(v) if v.is_empty() => return Err(SecretError::EnvEmpty(name.clone())),
                    Some(v) => value.push_str(&v),
                },
                Part::File(path) => {
                    files.push(path.clone());
                    value.push_str(&read_secret_file(path)?);
                }
            }
        }
        Ok(Resolved { value, files })
    }
}

fn read_secret_file(path: &Path) -> Result<String, SecretError> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| SecretError::FileUnreadable {
        path: shown.clone(),
        reason: e.kind().to_string(),
    })?;
    let mut s = String::from_utf8(bytes).map_err(|_| SecretError::FileUnreadable {
        path: shown.clone(),
        reason: "not valid UTF-8".into(),
    })?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    if s.is_empty() {
        return Err(SecretError::FileEmpty(shown));
    }
    Ok(s)
}

/// Used only in syntax errors: the raw template might hold a literal key, so show its
/// references alone.
fn redact_refs_free(raw: &str) -> String {
    if raw.len() > 12 {
        format!(
            "{}…",
            &raw[..raw.char_indices().nth(12).map_or(raw.len(), |(i, _)| i)]
        )
    } else {
        raw.to_string()
    }
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        // The raw text may hold a literal credential; print only what it references.
        write!(f, "Template(refs={:?})", self.references())
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Template::parse(&s).map_err(de::Error::custom)
    }
}

/// A template whose resolved value is a credential. It serializes as `[redacted]`, so the
/// effective config shown by `/config` never carries it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretTemplate(pub Template);

impl Serialize for SecretTemplate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// A template that is not secret (a base URL, say); it serializes as written.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct PlainTemplate(pub Template);

impl Serialize for PlainTemplate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0.raw())
    }
}

/// A resolved credential. Cloning is cheap; printing it shows `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Secret {
        Secret(value.into())
    }
    /// The only way to read the value; call it where the value is put on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl schemars::JsonSchema for SecretTemplate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SecretTemplate".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A credential: \"${env:NAME}\", \"${file:/absolute/path}\" or a literal (not recommended). Shown as [redacted] by /config."
        })
    }
}

impl schemars::JsonSchema for PlainTemplate {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Template".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "Text that may contain \"${env:NAME}\" or \"${file:/absolute/path}\" references."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY" => Some("sk-123".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn resolves_env_and_literals() {
        let t = Template::parse("Bearer ${env:KEY}").unwrap();
        assert!(t.has_refs());
        assert_eq!(t.resolve(&env).unwrap().value, "Bearer sk-123");
        let t = Template::parse("cost: $$5").unwrap();
        assert_eq!(t.resolve(&env).unwrap().value, "cost: $5");
        assert!(!t.has_refs());
    }

    #[test]
    fn missing_and_empty_name_the_reference() {
        let t = Template::parse("${env:NOPE}").unwrap();
        let e = t.resolve(&env).err().unwrap();
        assert_eq!(e.to_string(), "${env:NOPE} is not set");
        let e = Template::parse("${env:EMPTY}")
            .unwrap()
            .resolve(&env)
            .err()
            .unwrap();
        assert_eq!(e.to_string(), "${env:EMPTY} is set but empty");
    }

    #[test]
    fn syntax_errors() {
        assert!(Template::parse("${vault:x}")
            .unwrap_err()
            .contains("unknown reference"));
        assert!(Template::parse("${env:A-B}")
            .unwrap_err()
            .contains("environment variable"));
        assert!(Template::parse("${file:relative}")
            .unwrap_err()
            .contains("absolute"));
        assert!(Template::parse("${env:X")
            .unwrap_err()
            .contains("unterminated"));
    }

    #[test]
    fn files_lose_one_trailing_newline_and_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "abc\n").unwrap();
        let t = Template::parse(&format!("${{file:{}}}", p.display())).unwrap();
        let r = t.resolve(&env).unwrap();
        assert_eq!(r.value, "abc");
        assert_eq!(r.files, vec![p.clone()]);
        std::fs::write(&p, "\n").unwrap();
        assert!(matches!(t.resolve(&env), Err(SecretError::FileEmpty(_))));
        std::fs::remove_file(&p).unwrap();
        let e = t.resolve(&env).err().unwrap().to_string();
        assert!(e.contains("cannot be read"), "{e}");
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("sk-live-canary");
        assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
        let t = SecretTemplate(Template::parse("literal-key-canary").unwrap());
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"[redacted]\"");
        assert!(!format!("{t:?}").contains("canary"));
    }
}
