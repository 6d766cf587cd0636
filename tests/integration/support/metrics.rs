//! Reading `/metrics` in tests, strictly: a series is named by its metric name and the
//! labels it must carry (parsed, so label order and extra labels do not matter), a series
//! that is not there fails the test instead of reading as 0, and a value that another task
//! writes is polled for until it matches or a bound passes (linkerd2-proxy's
//! `MetricMatch::assert_in`).
//!
//! The sidecar updates its counters when an exchange *ends*, which is just after the
//! client has read the last byte; a test that reads `/metrics` once right after a response
//! races that. Use [`Series::assert_in`] / [`TestSidecar::assert_metric`] there.

use std::fmt;
use std::time::{Duration, Instant};

/// How long a polled assertion waits for the value it expects.
pub const METRIC_WAIT: Duration = Duration::from_secs(10);

/// One sample of the text exposition: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus text exposition format (what the admin `/metrics` serves).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| parse_line(l).unwrap_or_else(|| panic!("not a sample line: {l:?}")))
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = parse_series(series)?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// `name` or `name{k="v",...}`, with `\"`, `\\` and `\n` escapes in values.
fn parse_series(s: &str) -> Option<(String, Vec<(String, String)>)> {
    let Some(open) = s.find('{') else {
        return Some((s.to_owned(), Vec::new()));
    };
    let name = s[..open].to_owned();
    let body = s[open + 1..].strip_suffix('}')?;
    let mut labels = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        labels.push((key.trim_start_matches(',').to_owned(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some((name, labels))
}

/// A series to look for: a metric name and labels it must have.
#[derive(Clone)]
pub struct Series {
    name: String,
    labels: Vec<(String, String)>,
}

/// `series(r#"llm_sidecar_requests_total{route="mock",status="200"}"#)`: the labels
/// given must match; others the sample has are free (and summed over).
pub fn series(selector: &str) -> Series {
    let (name, labels) =
        parse_series(selector).unwrap_or_else(|| panic!("not a series selector: {selector:?}"));
    Series { name, labels }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)?;
        if !self.labels.is_empty() {
            let l: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            write!(f, "{{{}}}", l.join(","))?;
        }
        Ok(())
    }
}

impl Series {
    pub fn label(mut self, key: &str, value: &str) -> Series {
        self.labels.push((key.to_owned(), value.to_owned()));
        self
    }

    fn matches(&self, s: &Sample) -> bool {
        s.name == self.name
            && self
                .labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
    }

    /// The sum of the matching samples, or `None` when no sample matches.
    pub fn find(&self, text: &str) -> Option<f64> {
        let mut found = None;
        for s in parse(text) {
            if self.matches(&s) {
                *found.get_or_insert(0.0) += s.value;
            }
        }
        found
    }

    /// Whether the metric family (its `# TYPE` line) is in the text at all.
    fn family_exported(&self, text: &str) -> bool {
        let family = family_of(&self.name);
        text.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .and_then(|r| r.split(' ').next())
                .is_some_and(|n| n == family)
        })
    }

    /// The value; a series that is not there fails the test, naming what is.
    pub fn value(&self, text: &str) -> f64 {
        self.find(text)
            .unwrap_or_else(|| panic!("no series {self} in /metrics; {}", self.context(text)))
    }

    /// For "it never happened": 0, or no such series yet (a labelled counter appears on
    /// its first increment). The metric itself must exist, so a renamed metric fails.
    pub fn zero_or_absent(&self, text: &str) -> f64 {
        assert!(
            self.family_exported(text),
            "no metric {} in /metrics at all (renamed?)",
            family_of(&self.name)
        );
        self.find(text).unwrap_or(0.0)
    }

    /// What the text holds of this metric, for a failure message.
    fn context(&self, text: &str) -> String {
        let family = family_of(&self.name);
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.starts_with(family))
            .take(40)
            .collect();
        if lines.is_empty() && !self.family_exported(text) {
            format!("no metric {family} at all (renamed?)")
        } else {
            format!("its samples: {lines:#?}")
        }
    }

    /// Polls `fetch` until the series has `expected`, failing after [`METRIC_WAIT`] with
    /// the last value seen.
    pub async fn assert_in<F, Fut>(&self, fetch: F, expected: f64)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        self.wait_for(fetch, &format!("== {expected}"), |v| v == expected)
            .await;
    }

    /// Polls until `ok(value)` holds; returns the value that satisfied it.
    pub async fn wait_for<F, Fut>(&self, mut fetch: F, what: &str, ok: impl Fn(f64) -> bool) -> f64
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = String>,
    {
        let deadline = Instant::now() + METRIC_WAIT;
        loop {
            let text = fetch().await;
            let v = self.find(&text);
            if let Some(v) = v.filter(|v| ok(*v)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "{self}: wanted {what} within {METRIC_WAIT:?}, last seen {v:?}; {}",
                    self.context(&text)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `x_bucket`, `x_sum`, `x_count` belong to the histogram `x`.
fn family_of(name: &str) -> &str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            return base;
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP a_total A.\n# TYPE a_total counter\n\
        a_total{route=\"r\",status=\"200\"} 3\n\
        a_total{route=\"r\",status=\"500\"} 1\n\
        a_total{route=\"q\\\"x\",status=\"200\"} 2\n\
        # TYPE h histogram\nh_bucket{le=\"+Inf\"} 4\nh_count 4\n\
        # TYPE b_total counter\n";

    #[test]
    fn series_match_by_name_and_labels_and_missing_ones_are_not_zero() {
        assert_eq!(
            series(r#"a_total{status="200",route="r"}"#).value(TEXT),
            3.0
        );
        assert_eq!(series(r#"a_total{route="r"}"#).value(TEXT), 4.0);
        assert_eq!(series(r#"a_total{route="q\"x"}"#).value(TEXT), 2.0);
        assert_eq!(series("a_total").value(TEXT), 6.0);
        assert_eq!(series("h_count").value(TEXT), 4.0);
        assert_eq!(series(r#"h_bucket{le="+Inf"}"#).value(TEXT), 4.0);
        assert_eq!(series("a").find(TEXT), None, "no prefix matches");
        assert_eq!(series(r#"a_total{route="s"}"#).find(TEXT), None);
        assert_eq!(series(r#"b_total{x="y"}"#).zero_or_absent(TEXT), 0.0);
        let renamed = std::panic::catch_unwind(|| series("c_total").zero_or_absent(TEXT));
        assert!(renamed.is_err());
        let missing = std::panic::catch_unwind(|| series(r#"a_total{route="s"}"#).value(TEXT));
        assert!(missing.is_err());
    }
}
