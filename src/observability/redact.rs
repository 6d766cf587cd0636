//! Redaction: what the audit log writes has passed through here first.
//!
//! ```text
//! body ──► JSON-path rules (parse, mask fields, re-serialise) ──► text pass ──► record
//!                                                                  │
//!          secrets, exact values (one Aho-Corasick automaton) ─────┤ spans, merged
//!          regex rules (one RegexSet scan says which to run) ──────┘ then masked
//! ```
//!
//! Built once per config snapshot: the secrets are every credential the config
//! resolved, so a rotated key is matched as soon as the new config is live. Matching is
//! by span: every match of every rule is found on the original text, overlapping spans
//! are merged (a merged span is masked in full), and the output is built in one pass,
//! so one rule can never hide part of a secret from another.
//!
//! Rules with a validator (card numbers: Luhn; mainland-China resident ID numbers: the
//! ISO 7064 check digit) mask only matches that validate, so order numbers and
//! timestamps that merely look like them pass through.

use aho_corasick::{AhoCorasick, MatchKind};
use regex::{Regex, RegexSet};
use serde_json::Value;
use std::borrow::Cow;

/// How a match is masked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mask {
    /// Replaced by `[REDACTED:<rule>]`.
    Full,
    /// Keeps this many characters at each end and stars the rest (`138****5678`). A
    /// match too short to keep anything is starred in full.
    Keep { prefix: usize, suffix: usize },
}

impl Mask {
    fn apply(self, rule: &str, matched: &str, out: &mut String) {
        match self {
            Mask::Full => {
                out.push_str("[REDACTED:");
                out.push_str(rule);
                out.push(']');
            }
            Mask::Keep { prefix, suffix } => {
                let n = matched.chars().count();
                if n <= prefix + suffix {
                    out.extend(std::iter::repeat_n('*', n.max(4)));
                    return;
                }
                for (i, c) in matched.chars().enumerate() {
                    if i < prefix || i >= n - suffix {
                        out.push(c);
                    } else {
                        out.push('*');
                    }
                }
            }
        }
    }
}

/// A validator for a regex match (true: it is what the rule looks for).
type Validate = fn(&str) -> bool;

/// A built-in rule: its name, pattern, the capture group it masks, the default mask.
struct Builtin {
    name: &'static str,
    pattern: &'static str,
    group: usize,
    validate: Option<Validate>,
    mask: Mask,
}

/// The built-in rules, in the order they are documented.
///
/// Numbers are bounded by "not a digit" rather than a word boundary, so
/// `tel13912345678` and `4111111111111111exp` are found; the masked part is group 1.
const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "api_key",
        // OpenAI/Anthropic/DeepSeek style keys, AWS access key ids
        pattern: r"\b(?:sk-[A-Za-z0-9_\-]{16,}|(?:AKIA|ASIA)[0-9A-Z]{16})\b",
        group: 0,
        validate: None,
        mask: Mask::Full,
    },
    Builtin {
        name: "bearer",
        pattern: r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{8,}=*)",
        group: 1,
        validate: Some(tokenish),
        mask: Mask::Full,
    },
    Builtin {
        name: "email",
        pattern: r"\b[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b",
        group: 0,
        validate: None,
        mask: Mask::Full,
    },
    Builtin {
        name: "phone",
        // international, E.164 with optional separators: +44 20 7946 0958
        pattern: r"(?:^|[^A-Za-z0-9_+])(\+[1-9](?:[ .\-]?\d){6,14})(?:[^0-9]|$)",
        group: 1,
        validate: None,
        mask: Mask::Keep {
            prefix: 3,
            suffix: 4,
        },
    },
    Builtin {
        name: "cn_mobile",
        pattern: r"(?:^|[^0-9])(1[3-9]\d{9})(?:[^0-9]|$)",
        group: 1,
        validate: None,
        mask: Mask::Keep {
            prefix: 3,
            suffix: 4,
        },
    },
    Builtin {
        name: "cn_id",
        pattern: r"(?:^|[^0-9])([1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[\dXx])(?:[^0-9]|$)",
        group: 1,
        validate: Some(cn_id_checksum),
        mask: Mask::Full,
    },
    Builtin {
        name: "card",
        pattern: r"(?:^|[^0-9])(\d(?:[ \-]?\d){12,18})(?:[^0-9]|$)",
        group: 1,
        validate: Some(luhn),
        mask: Mask::Full,
    },
];

/// The names of the built-in rules.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    BUILTINS.iter().map(|b| b.name)
}

/// A bearer token has a digit or a punctuation mark: "bearer information" is prose.
fn tokenish(s: &str) -> bool {
    s.bytes().any(|b| !b.is_ascii_alphabetic())
}

/// The Luhn check over the digits of `s` (separators ignored), 13 to 19 digits.
pub fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 {
                    d2 - 9
                } else {
                    d2
                }
            } else {
                d
            }
        })
        .sum();
    sum % 10 == 0
}

/// The GB 11643 check digit of an 18-character resident ID number.
pub fn cn_id_checksum(s: &str) -> bool {
    const WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    const CHECK: &[u8; 11] = b"10X98765432";
    let b = s.as_bytes();
    if b.len() != 18 {
        return false;
    }
    let mut sum = 0;
    for (c, w) in b[..17].iter().zip(WEIGHTS) {
        if !c.is_ascii_digit() {
            return false;
        }
        sum += u32::from(c - b'0') * w;
    }
    CHECK[(sum % 11) as usize] == b[17].to_ascii_uppercase()
}

struct Rule {
    name: Box<str>,
    regex: Regex,
    group: usize,
    validate: Option<Validate>,
    mask: Mask,
}

/// A user rule (from `audit.redact.rules`), or an override of a built-in's mask when
/// `pattern` is None and `name` is a built-in's.
#[derive(Clone, Debug)]
pub struct RuleSpec {
    pub name: String,
    pub pattern: Option<String>,
    pub mask: Mask,
}

/// A JSON-path rule: `$.a.b`, `$.a[*].b`, `$.a[0]`, `$..key`, `$.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    Key(String),
    Index(usize),
    /// `[*]` or `.*`: every element or member.
    Any,
    /// `..key`: this key at any depth.
    Descend(String),
}

#[derive(Clone, Debug)]
pub struct JsonPath {
    pub source: String,
    steps: Vec<Step>,
    mask: Mask,
}

impl JsonPath {
    /// Parses `$.messages[*].content`; the error says what was wrong and where.
    pub fn parse(source: &str, mask: Mask) -> Result<JsonPath, String> {
        let rest = source
            .strip_prefix('$')
            .ok_or("a JSON path starts with `$`, e.g. `$.user`")?;
        let b = rest.as_bytes();
        let mut steps = Vec::new();
        let mut i = 0;
        let ident_end = |from: usize| {
            let mut j = from;
            while j < b.len() && b[j] != b'.' && b[j] != b'[' {
                j += 1;
            }
            j
        };
        while i < b.len() {
            match b[i] {
                b'.' if b.get(i + 1) == Some(&b'.') => {
                    let end = ident_end(i + 2);
                    if end == i + 2 {
                        return Err(format!("`..` at offset {} needs a key after it", i + 1));
                    }
                    steps.push(Step::Descend(rest[i + 2..end].to_string()));
                    i = end;
                }
                b'.' => {
                    let end = ident_end(i + 1);
                    match &rest[i + 1..end] {
                        "" => return Err(format!("empty key at offset {}", i + 2)),
                        "*" => steps.push(Step::Any),
                        k => steps.push(Step::Key(k.to_string())),
                    }
                    i = end;
                }
                b'[' => {
                    let close = rest[i..]
                        .find(']')
                        .map(|c| c + i)
                        .ok_or_else(|| format!("`[` at offset {} is not closed", i + 1))?;
                    let inner = rest[i + 1..close].trim();
                    if inner == "*" {
                        steps.push(Step::Any);
                    } else if let Ok(n) = inner.parse::<usize>() {
                        steps.push(Step::Index(n));
                    } else if let Some(k) = inner
                        .strip_prefix('\'')
                        .and_then(|s| s.strip_suffix('\''))
                        .or_else(|| inner.strip_prefix('"').and_then(|s| s.strip_suffix('"')))
                    {
                        steps.push(Step::Key(k.to_string()));
                    } else {
                        return Err(format!("`[{inner}]` is not an index, `*` or a quoted key"));
                    }
                    i = close + 1;
                }
                _ => return Err(format!("expected `.` or `[` at offset {}", i + 1)),
            }
        }
        if steps.is_empty() {
            return Err("the path selects the whole document; name a field".into());
        }
        Ok(JsonPath {
            source: source.to_string(),
            steps,
            mask,
        })
    }

    fn apply(&self, v: &mut Value, redactor: &Redactor) -> usize {
        walk(v, &self.steps, &mut |leaf| {
            mask_value(leaf, self.mask, redactor)
        })
    }
}

/// Calls `f` on every value `steps` selects; returns how many.
fn walk(v: &mut Value, steps: &[Step], f: &mut dyn FnMut(&mut Value)) -> usize {
    let Some((step, rest)) = steps.split_first() else {
        f(v);
        return 1;
    };
    match step {
        Step::Key(k) => v
            .as_object_mut()
            .and_then(|o| o.get_mut(k))
            .map_or(0, |c| walk(c, rest, f)),
        Step::Index(n) => v
            .as_array_mut()
            .and_then(|a| a.get_mut(*n))
            .map_or(0, |c| walk(c, rest, f)),
        Step::Any => match v {
            Value::Array(a) => a.iter_mut().map(|c| walk(c, rest, f)).sum(),
            Value::Object(o) => o.values_mut().map(|c| walk(c, rest, f)).sum(),
            _ => 0,
        },
        Step::Descend(k) => {
            let mut n = 0;
            match v {
                Value::Object(o) => {
                    for (key, c) in o.iter_mut() {
                        if key == k {
                            n += walk(c, rest, f);
                        } else {
                            n += walk(c, steps, f);
                        }
                    }
                }
                Value::Array(a) => {
                    for c in a {
                        n += walk(c, steps, f);
                    }
                }
                _ => {}
            }
            n
        }
    }
}

fn mask_value(v: &mut Value, mask: Mask, redactor: &Redactor) {
    let masked = match (&*v, mask) {
        // A value holding a secret or a rule's match is masked whole: the kept ends
        // could otherwise keep part of it (and once starred, no rule finds it).
        (Value::String(s), Mask::Keep { .. }) if matches!(redactor.text(s), Cow::Borrowed(_)) => {
            let mut out = String::new();
            mask.apply("json_path", s, &mut out);
            out
        }
        (Value::Null, _) => return,
        _ => "[REDACTED:json_path]".to_string(),
    };
    *v = Value::String(masked);
}

/// The compiled redaction rules of one config snapshot.
pub struct Redactor {
    secrets: Option<AhoCorasick>,
    set: Option<RegexSet>,
    rules: Vec<Rule>,
    paths: Vec<JsonPath>,
    /// The longest secret, in bytes: a body cut for the log keeps this much beyond its
    /// cap, so a secret that starts before the cut is seen whole.
    longest_secret: usize,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("secrets", &self.secrets.as_ref().map(|s| s.patterns_len()))
            .field(
                "rules",
                &self.rules.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .field("paths", &self.paths.len())
            .finish()
    }
}

/// Secrets shorter than this are not matched by value: they would mask ordinary words.
pub const MIN_SECRET_LEN: usize = 6;

impl Redactor {
    /// Builds the rules. `builtins` names the built-ins to use; `rules` adds rules or,
    /// without a pattern, changes a built-in's mask. Errors name the rule.
    pub fn new(
        secrets: impl IntoIterator<Item = String>,
        builtins: &[String],
        rules: &[RuleSpec],
        paths: Vec<JsonPath>,
    ) -> Result<Redactor, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let mut secrets: Vec<String> = secrets
            .into_iter()
            .filter(|s| s.len() >= MIN_SECRET_LEN)
            .collect();
        secrets.sort();
        secrets.dedup();
        let longest_secret = secrets.iter().map(String::len).max().unwrap_or(0);
        let secrets = if secrets.is_empty() {
            None
        } else {
            match AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(&secrets)
            {
                Ok(a) => Some(a),
                Err(e) => {
                    errs.push(("secrets".to_string(), e.to_string()));
                    None
                }
            }
        };
        let mut compiled = Vec::new();
        for name in builtins {
            let Some(b) = BUILTINS.iter().find(|b| b.name == name) else {
                errs.push((
                    name.clone(),
                    format!(
                        "unknown built-in rule; the built-ins are {}",
                        builtin_names().collect::<Vec<_>>().join(", ")
                    ),
                ));
                continue;
            };
            let mask = rules
                .iter()
                .find(|r| r.name == b.name && r.pattern.is_none())
                .map_or(b.mask, |r| r.mask);
            // ASCII boundaries and digits: `手机13812345678` has a number in it.
            let pattern = b
                .pattern
                .replace(r"\b", r"(?-u:\b)")
                .replace(r"\d", "[0-9]");
            match Regex::new(&pattern) {
                Ok(regex) => compiled.push(Rule {
                    name: b.name.into(),
                    regex,
                    group: b.group,
                    validate: b.validate,
                    mask,
                }),
                Err(e) => errs.push((b.name.to_string(), e.to_string())),
            }
        }
        for r in rules {
            match &r.pattern {
                None => {
                    if !builtins.contains(&r.name) {
                        errs.push((
                            r.name.clone(),
                            "a rule without `pattern` changes a built-in's mask, and no built-in in use has this name".into(),
                        ));
                    }
                }
                Some(p) => match regex::RegexBuilder::new(p).size_limit(1 << 20).build() {
                    Ok(regex) if regex.is_match("") => errs.push((
                        r.name.clone(),
                        "the pattern matches the empty string".into(),
                    )),
                    Ok(regex) => compiled.push(Rule {
                        name: r.name.as_str().into(),
                        regex,
                        group: 0,
                        validate: None,
                        mask: r.mask,
                    }),
                    Err(e) => errs.push((r.name.clone(), e.to_string())),
                },
            }
        }
        let set = if compiled.is_empty() {
            None
        } else {
            match RegexSet::new(compiled.iter().map(|r| r.regex.as_str())) {
                Ok(s) => Some(s),
                Err(e) => {
                    errs.push(("rules".into(), e.to_string()));
                    None
                }
            }
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(Redactor {
            secrets,
            set,
            rules: compiled,
            paths,
            longest_secret,
        })
    }

    /// Every built-in, no secrets: what a config without `audit.redact` gets.
    pub fn builtins_only() -> Redactor {
        let all: Vec<String> = builtin_names().map(String::from).collect();
        // The built-in patterns are constants covered by the tests.
        #[allow(clippy::expect_used)]
        Redactor::new(Vec::new(), &all, &[], Vec::new()).expect("built-in rules compile")
    }

    pub fn longest_secret(&self) -> usize {
        self.longest_secret
    }

    /// The text with every secret and rule match masked.
    pub fn text<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let spans = self.spans(s);
        if spans.is_empty() {
            return Cow::Borrowed(s);
        }
        Cow::Owned(self.render(s, s, &spans, |i| i))
    }

    /// Every match of every secret and rule in `s`: (start, end, rule), `usize::MAX`
    /// for a secret.
    fn spans(&self, s: &str) -> Vec<(usize, usize, usize)> {
        let mut spans: Vec<(usize, usize, usize)> = Vec::new();
        if let Some(ac) = &self.secrets {
            for m in ac.find_iter(s) {
                spans.push((m.start(), m.end(), usize::MAX));
            }
        }
        if let Some(set) = &self.set {
            for i in set.matches(s).iter() {
                let r = &self.rules[i];
                // The boundary characters a match consumes may start the next one, so
                // the search resumes at the end of the masked group; after a candidate
                // fails validation it resumes one character in, so a valid number
                // inside a longer run (`1234 4111 1111 1111 1111`) is still found.
                let mut at = 0;
                while at <= s.len() {
                    let Some(c) = r.regex.captures_at(s, at) else {
                        break;
                    };
                    let Some(m) = c.get(r.group) else { break };
                    if r.validate.is_some_and(|v| !v(m.as_str())) {
                        at = m.start() + s[m.start()..].chars().next().map_or(1, char::len_utf8);
                        continue;
                    }
                    spans.push((m.start(), m.end(), i));
                    at = if m.end() > m.start() {
                        m.end()
                    } else {
                        m.end() + 1
                    };
                }
            }
        }
        spans.sort_unstable();
        spans
    }

    /// `source` with the `spans` found in `view` masked. `at(i)` maps an offset in
    /// `view` to one in `source` (the identity when they are the same text; the start
    /// of the escape that spelt the character otherwise). Overlapping spans are merged
    /// and a merged span is masked in full.
    fn render(
        &self,
        source: &str,
        view: &str,
        spans: &[(usize, usize, usize)],
        at: impl Fn(usize) -> usize,
    ) -> String {
        let mut out = String::with_capacity(source.len());
        let mut done = 0;
        let mut i = 0;
        while i < spans.len() {
            let (start, mut end, rule) = spans[i];
            let mut merged = false;
            i += 1;
            while i < spans.len() && spans[i].0 < end {
                end = end.max(spans[i].1);
                merged = true;
                i += 1;
            }
            let (from, to) = (at(start), at(end));
            out.push_str(&source[done..from]);
            let (name, mask) = match rule {
                usize::MAX => ("secret", Mask::Full),
                r => (&*self.rules[r].name, self.rules[r].mask),
            };
            let mask = if merged { Mask::Full } else { mask };
            mask.apply(name, &view[start..end], &mut out);
            done = to;
        }
        out.push_str(&source[done..]);
        out
    }

    /// [`Self::text`] for text that may spell characters as escapes (`\u53f7` in JSON,
    /// `%2B` in a URL): the rules run on the decoded text, so an escape next to a number
    /// can neither hide it (`\u780113812345678`) nor be cut in half by a mask. What is
    /// not masked is kept exactly as written.
    pub fn text_escaped<'a>(&self, s: &'a str, escapes: Escapes) -> Cow<'a, str> {
        let marker = match escapes {
            Escapes::Json => b'\\',
            Escapes::Percent => b'%',
        };
        if memchr::memchr(marker, s.as_bytes()).is_none() {
            return self.text(s);
        }
        let (view, starts) = decode(s, escapes);
        let spans = self.spans(&view);
        if spans.is_empty() {
            return Cow::Borrowed(s);
        }
        Cow::Owned(self.render(s, &view, &spans, |i| starts[i]))
    }

    /// Masks every string (and number, and object key) of a JSON value, decoded.
    fn values(&self, v: &mut Value) {
        match v {
            Value::String(s) => {
                if let Cow::Owned(m) = self.text(s) {
                    *s = m;
                }
            }
            Value::Number(n) => {
                let t = n.to_string();
                if let Cow::Owned(m) = self.text(&t) {
                    *v = Value::String(m);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|c| self.values(c)),
            Value::Object(o) => {
                let renamed = o.keys().any(|k| matches!(self.text(k), Cow::Owned(_)));
                if renamed {
                    let old = std::mem::take(o);
                    for (k, mut c) in old {
                        self.values(&mut c);
                        o.insert(self.text(&k).into_owned(), c);
                    }
                } else {
                    o.values_mut().for_each(|c| self.values(c));
                }
            }
            Value::Null | Value::Bool(_) => {}
        }
    }

    /// A body for the log, at most about `cap` bytes, and whether it was cut.
    ///
    /// A JSON document (or each `data:` line of an SSE stream, each line of NDJSON) is
    /// parsed, JSON-path rules mask their fields, then the text rules run on every
    /// decoded string and the document is written back as JSON: escapes such as
    /// `\u53f7` cannot hide a match or be cut by one. Anything else gets the text rules
    /// over its decoded escapes. With JSON-path rules, a body that is not JSON (or was
    /// cut before its end) is left out rather than written half-masked.
    pub fn body(&self, raw: &[u8], cap: usize, complete: bool) -> Option<(String, bool)> {
        let text = String::from_utf8_lossy(raw);
        let red = self.document(&text, complete)?;
        if red.len() <= cap && complete {
            return Some((red.into_owned(), false));
        }
        let mut cut = cap.min(red.len());
        while !red.is_char_boundary(cut) {
            cut -= 1;
        }
        Some((red[..cut].to_string(), true))
    }

    /// One JSON document, masked and written back; None if `text` is not one.
    fn json(&self, text: &str) -> Option<String> {
        let mut v = serde_json::from_str::<Value>(text).ok()?;
        for p in &self.paths {
            p.apply(&mut v, self);
        }
        self.values(&mut v);
        serde_json::to_string(&v).ok()
    }

    fn document<'a>(&self, text: &'a str, complete: bool) -> Option<Cow<'a, str>> {
        let trimmed = text.trim_start();
        if trimmed.starts_with(['{', '[']) {
            if let Some(out) = self.json(text) {
                return Some(Cow::Owned(out));
            }
        }
        if !text.contains('\n') {
            if !self.paths.is_empty() {
                return None;
            }
            return Some(self.text_escaped(text, Escapes::Json));
        }
        // SSE or NDJSON: each line on its own.
        let mut out = String::with_capacity(text.len());
        let mut lines: Vec<&str> = text.split_inclusive('\n').collect();
        let cut_last = !complete && lines.last().is_some_and(|l| !l.ends_with('\n'));
        if cut_last && !self.paths.is_empty() {
            lines.pop();
        }
        let last = lines.len().saturating_sub(1);
        for (n, line) in lines.iter().enumerate() {
            let body = line.trim_end_matches(['\r', '\n']);
            let (prefix, payload) = match body.strip_prefix("data:") {
                Some(p) => ("data: ", p.trim_start()),
                None => ("", body),
            };
            let framing = payload.is_empty()
                || payload == "[DONE]"
                || body.starts_with(':')
                || body.starts_with("event:")
                || body.starts_with("id:")
                || body.starts_with("retry:");
            if framing {
                out.push_str(&self.text_escaped(line, Escapes::Json));
                continue;
            }
            let json = if cut_last && n == last {
                None
            } else {
                self.json(payload)
            };
            match json {
                Some(j) => {
                    out.push_str(prefix);
                    out.push_str(&j);
                    out.push_str(&line[body.len()..]);
                }
                None if self.paths.is_empty() => {
                    out.push_str(&self.text_escaped(line, Escapes::Json))
                }
                None => return None,
            }
        }
        Some(Cow::Owned(out))
    }
}

/// How a text spells characters it escapes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escapes {
    /// JSON string escapes: `\uXXXX` (surrogate pairs joined), `\n`, `\"`, ...
    Json,
    /// URL percent-encoding: `%2B`.
    Percent,
}

/// The text with its escapes decoded, and for every byte of it (and one past the end)
/// the offset in `s` where the character it belongs to was written.
fn decode(s: &str, escapes: Escapes) -> (String, Vec<usize>) {
    let b = s.as_bytes();
    let mut view = String::with_capacity(s.len());
    let mut starts = Vec::with_capacity(s.len() + 1);
    let push = |view: &mut String, starts: &mut Vec<usize>, c: char, at: usize| {
        view.push(c);
        starts.extend(std::iter::repeat_n(at, c.len_utf8()));
    };
    let mut i = 0;
    while i < b.len() {
        let decoded = match escapes {
            Escapes::Json => json_escape(b, i),
            Escapes::Percent => percent_escape(b, i),
        };
        if let Some((c, len)) = decoded {
            push(&mut view, &mut starts, c, i);
            i += len;
            continue;
        }
        // `i` is on a character boundary: escapes are ASCII, so is every step past one.
        let c = s[i..].chars().next().unwrap_or('\u{fffd}');
        push(&mut view, &mut starts, c, i);
        i += c.len_utf8();
    }
    starts.push(s.len());
    (view, starts)
}

fn hex4(b: &[u8], at: usize) -> Option<u32> {
    let h = b.get(at..at + 4)?;
    let s = std::str::from_utf8(h).ok()?;
    u32::from_str_radix(s, 16).ok()
}

/// A JSON escape at `i`: the character and the escape's length.
fn json_escape(b: &[u8], i: usize) -> Option<(char, usize)> {
    if b[i] != b'\\' {
        return None;
    }
    let c = match *b.get(i + 1)? {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => {
            let hi = hex4(b, i + 2)?;
            if (0xD800..0xDC00).contains(&hi)
                && b.get(i + 6) == Some(&b'\\')
                && b.get(i + 7) == Some(&b'u')
            {
                if let Some(lo) = hex4(b, i + 8).filter(|lo| (0xDC00..0xE000).contains(lo)) {
                    let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                    return Some((char::from_u32(c).unwrap_or('\u{fffd}'), 12));
                }
            }
            return Some((char::from_u32(hi).unwrap_or('\u{fffd}'), 6));
        }
        _ => return None,
    };
    Some((c, 2))
}

/// A percent escape at `i` (one byte; a byte that is not ASCII stands for itself as
/// U+FFFD: a rule's match is ASCII digits, letters and punctuation).
fn percent_escape(b: &[u8], i: usize) -> Option<(char, usize)> {
    if b[i] != b'%' {
        return None;
    }
    let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
    let v = u8::from_str_radix(h, 16).ok()?;
    Some((
        if v.is_ascii() {
            char::from(v)
        } else {
            '\u{fffd}'
        },
        3,
    ))
}

#[cfg(test)]
mod tests;
