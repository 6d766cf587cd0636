//! The route table: which provider serves a request, and the path it gets upstream.
//!
//! Routes are tried in the order they are written; the first match wins. A route matches
//! on a path prefix (at a `/` boundary: `/openai` matches `/openai` and `/openai/v1/...`
//! but not `/openaix`), on the request's host (exact, or `*.example.com` for subdomains),
//! or both. Config loading rejects a route that an earlier one shadows completely.
//!
//! The upstream path is `provider base path` + `rewrite_prefix` (default empty) + the rest
//! of the request path after the matched prefix; the query string is kept as is.
//!
//! ```text
//! base_url https://api.openai.com/v1, path_prefix /openai/v1
//!   POST /openai/v1/chat/completions?x=1  ->  POST /v1/chat/completions?x=1
//! ```

pub mod compile;

use crate::observability::metrics::RouteMetrics;
use std::sync::Arc;

/// A host pattern, lower-cased at load time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com` is stored as `.example.com`.
    Subdomains(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let s = s.trim().trim_end_matches('.').to_ascii_lowercase();
        if s.is_empty() {
            return Err("empty host".into());
        }
        if s.contains(':') && !s.starts_with('[') {
            return Err(format!(
                "host \"{s}\" must not carry a port; ports are ignored when matching"
            ));
        }
        if let Some(rest) = s.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(format!(
                    "invalid wildcard host \"{s}\": use e.g. *.example.com"
                ));
            }
            return Ok(HostPattern::Subdomains(format!(".{rest}")));
        }
        if s.contains('*') {
            return Err(format!("invalid host \"{s}\": a wildcard is only allowed as the first label (*.example.com)"));
        }
        if !s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'[' | b']' | b':')
        }) {
            return Err(format!("invalid host \"{s}\""));
        }
        Ok(HostPattern::Exact(s))
    }

    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h),
            HostPattern::Subdomains(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
        }
    }

    /// True when every host `other` matches is also matched by `self`.
    fn covers(&self, other: &HostPattern) -> bool {
        match (self, other) {
            (HostPattern::Exact(a), HostPattern::Exact(b)) => a == b,
            (HostPattern::Subdomains(_), HostPattern::Exact(b)) => self.matches(b),
            (HostPattern::Subdomains(a), HostPattern::Subdomains(b)) => b.ends_with(a.as_str()),
            (HostPattern::Exact(_), HostPattern::Subdomains(_)) => false,
        }
    }
}

/// Normalizes a configured path prefix: leading `/`, no trailing `/`. `/` alone means
/// "any path" and is stored as `None`.
pub fn normalize_prefix(p: &str) -> Result<Option<String>, String> {
    if !p.starts_with('/') {
        return Err(format!("path prefix \"{p}\" must start with /"));
    }
    if p.contains(['?', '#']) {
        return Err(format!("path prefix \"{p}\" must not contain ? or #"));
    }
    if has_dot_segment(p) {
        return Err(format!(
            "path prefix \"{p}\" must not contain . or .. segments"
        ));
    }
    let t = p.trim_end_matches('/');
    Ok(if t.is_empty() {
        None
    } else {
        Some(t.to_string())
    })
}

/// Joins path pieces so exactly one `/` separates them and the result starts with `/`.
pub fn join_mount(base: &str, rewrite: &str) -> String {
    let mut out = String::new();
    for part in [base, rewrite] {
        let t = part.trim_matches('/');
        if !t.is_empty() {
            out.push('/');
            out.push_str(t);
        }
    }
    out
}

/// A route: what it matches, how a matched path maps upstream, its metrics, and its
/// action `A` (in the compiled config, [`crate::config::compile::RouteAction`]: the
/// target it sends to and its plan for failures). One struct, looked up once.
#[derive(Debug)]
pub struct Route<A = ()> {
    pub name: Arc<str>,
    pub index: usize,
    host: Option<HostPattern>,
    prefix: Option<String>,
    /// Provider base path + rewrite prefix, without trailing `/` ("" for none).
    mount: String,
    /// Send the request path unchanged (`keep_path`).
    keep_path: bool,
    pub metrics: RouteMetrics,
    pub action: A,
}

impl<A> Route<A> {
    pub fn new(
        name: Arc<str>,
        index: usize,
        host: Option<HostPattern>,
        prefix: Option<String>,
        mount: String,
        metrics: RouteMetrics,
        action: A,
    ) -> Route<A> {
        Route {
            name,
            index,
            host,
            prefix,
            mount,
            keep_path: false,
            metrics,
            action,
        }
    }

    /// Sends request paths upstream unchanged.
    pub fn keeping_path(mut self, keep: bool) -> Route<A> {
        self.keep_path = keep;
        self
    }

    /// The host this route matches, if it matches by host.
    pub fn host(&self) -> Option<&HostPattern> {
        self.host.as_ref()
    }

    fn matches(&self, host: Option<&str>, path: &str) -> bool {
        if let Some(h) = &self.host {
            match host {
                Some(req_host) if h.matches(req_host) => {}
                _ => return false,
            }
        }
        match &self.prefix {
            None => true,
            Some(p) => prefix_matches(p, path),
        }
    }

    /// The path and query for a fallback provider mounted at `mount`: the part of the
    /// request path below the route's prefix (or, for `keep_path` routes, below the
    /// primary provider's base path), under `mount`.
    pub fn fallback_path(&self, mount: &str, path: &str, query: Option<&str>) -> String {
        let rest = if self.keep_path {
            if prefix_matches(&self.mount, path) && !self.mount.is_empty() {
                &path[self.mount.len()..]
            } else {
                path
            }
        } else {
            self.below_prefix(path)
        };
        assemble(mount, rest, query)
    }

    /// The path and query sent upstream for a request path and query.
    pub fn upstream_path(&self, path: &str, query: Option<&str>) -> String {
        if self.keep_path {
            assemble("", path, query)
        } else {
            assemble(&self.mount, self.below_prefix(path), query)
        }
    }

    /// The request path after the matched prefix.
    fn below_prefix<'p>(&self, path: &'p str) -> &'p str {
        match &self.prefix {
            Some(p) => &path[p.len().min(path.len())..],
            None => path,
        }
    }

    /// True when this route matches every request `later` would match.
    pub fn shadows<B>(&self, later: &Route<B>) -> bool {
        let host_covered = match (&self.host, &later.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a.covers(b),
        };
        let prefix_covered = match (&self.prefix, &later.prefix) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => prefix_matches(a, b),
        };
        host_covered && prefix_covered
    }
}

/// `mount` + `rest` (at least `/`), then `?query`.
fn assemble(mount: &str, rest: &str, query: Option<&str>) -> String {
    let mut out =
        String::with_capacity(mount.len() + rest.len() + query.map_or(0, |q| q.len() + 1) + 1);
    out.push_str(mount);
    out.push_str(rest);
    if out.is_empty() {
        out.push('/');
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    path.starts_with(prefix)
        && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/')
}

/// A `.` or `..` path segment, literal or percent-encoded. Such paths are refused rather
/// than forwarded, so a route's prefix is a real boundary upstream too.
///
/// A provider or gateway that decodes `%2F` (or `%5C`, which some treat as `/`) before it
/// normalises would resolve `/v1/..%2f..%2fx` to `/x`, outside the route's prefix. So the
/// path is also checked as it reads once decoded, and again for each further level of
/// encoding (`%252e%252e%252f`). Encoded slashes themselves are fine (Bedrock model ARNs
/// in paths need `%2F` and `%3A`): only dot segments are refused.
pub fn has_dot_segment(path: &str) -> bool {
    let raw = path.as_bytes();
    if raw.split(|&b| b == b'/').any(is_dot_segment) {
        return true;
    }
    // No allocation unless the path holds an escape or a backslash.
    if !raw.iter().any(|&b| b == b'%' || b == b'\\') {
        return false;
    }
    let mut cur = raw.to_vec();
    for _ in 0..MAX_DECODE_ROUNDS {
        if cur.split(|&b| b == b'/' || b == b'\\').any(is_dot_segment) {
            return true;
        }
        match percent_decode(&cur) {
            Some(next) => cur = next,
            None => return false,
        }
    }
    // Still decoding after this many levels: no legitimate path nests escapes so deep.
    true
}

/// Levels of percent-encoding a path is decoded through.
const MAX_DECODE_ROUNDS: usize = 4;

/// The bytes with every `%XX` decoded; None when there is none.
fn percent_decode(b: &[u8]) -> Option<Vec<u8>> {
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut changed = false;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(h), Some(l)) = (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                out.push(h << 4 | l);
                changed = true;
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    changed.then_some(out)
}

/// `.` or `..`, each dot possibly written `%2e`/`%2E`. No allocation: this runs on every
/// request.
fn is_dot_segment(seg: &[u8]) -> bool {
    let mut rest = seg;
    let mut dots = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && (rest[2] | 0x20) == b'e'
        {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
        if dots > 2 {
            return false;
        }
    }
    dots > 0
}

#[derive(Debug)]
pub struct RouteTable<A = ()> {
    routes: Vec<Route<A>>,
}

impl<A> Default for RouteTable<A> {
    fn default() -> Self {
        RouteTable { routes: Vec::new() }
    }
}

impl<A> RouteTable<A> {
    pub fn new(routes: Vec<Route<A>>) -> RouteTable<A> {
        RouteTable { routes }
    }

    /// The first route matching `host` (without port) and `path` (without query).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route<A>> {
        self.routes.iter().find(|r| r.matches(host, path))
    }

    /// The first route that matches by host `host` (a request that arrived through the
    /// forward proxy for that host) and `path`. Routes without a host never match.
    pub fn find_intercepted(&self, host: &str, path: &str) -> Option<&Route<A>> {
        self.routes
            .iter()
            .find(|r| r.host.is_some() && r.matches(Some(host), path))
    }

    pub fn get(&self, index: usize) -> Option<&Route<A>> {
        self.routes.get(index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route<A>> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The host a request is for, without port: the URI authority (HTTP/2, absolute-form)
/// or else the `Host` header.
pub fn request_host(req: &pingora::http::RequestHeader) -> Option<&str> {
    let raw = match req.uri.authority() {
        Some(a) => a.as_str(),
        None => req.headers.get(http::header::HOST)?.to_str().ok()?,
    };
    Some(strip_port(raw))
}

fn strip_port(authority: &str) -> &str {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        // [v6]:port
        match rest.find(']') {
            Some(i) => &authority[..i + 2],
            None => authority,
        }
    } else {
        match authority.rfind(':') {
            Some(i) => &authority[..i],
            None => authority,
        }
    };
    host.trim_end_matches('.')
}

#[cfg(test)]
mod tests;
