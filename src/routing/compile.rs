//! A route's own part of `routes[*]`, checked: its `match` (host pattern, path prefix),
//! its `rewrite_prefix`, and whether an earlier route hides it. Binding a route to its
//! provider and plan is the snapshot's work (`config::compile`), since it joins parts.

use super::{has_dot_segment, normalize_prefix, HostPattern, Route};
use crate::config::build::Build;
use crate::config::schema;

/// `routes[i].match` and `rewrite_prefix`: the host pattern and the normalized path
/// prefix (each `None` when absent or invalid; the error is recorded).
pub fn matcher(
    b: &mut Build<'_>,
    base: &str,
    r: &schema::Route,
) -> (Option<HostPattern>, Option<String>) {
    let prefix = match &r.matcher.path_prefix {
        Some(p) => match normalize_prefix(p) {
            Ok(p) => p,
            Err(e) => {
                b.errs.push(format!("{base}.match.path_prefix"), e);
                None
            }
        },
        None => None,
    };
    let host = match &r.matcher.host {
        Some(h) => match HostPattern::parse(h) {
            Ok(h) => Some(h),
            Err(e) => {
                b.errs.push(format!("{base}.match.host"), e);
                None
            }
        },
        None => None,
    };
    if r.matcher.path_prefix.is_none() && r.matcher.host.is_none() {
        b.errs.push(
            format!("{base}.match"),
            "needs path_prefix and/or host (use path_prefix: / to match every request)",
        );
    }
    if let Some(rw) = &r.rewrite_prefix {
        if !rw.starts_with('/') || has_dot_segment(rw) || rw.contains(['?', '#']) {
            b.errs.push(
                format!("{base}.rewrite_prefix"),
                format!("\"{rw}\" must be a path starting with /"),
            );
        }
    }
    (host, prefix)
}

/// Records an error when a route before `route` matches every request it would.
pub fn check_reachable<A, B>(
    b: &mut Build<'_>,
    base: &str,
    earlier: &[Route<A>],
    route: &Route<B>,
) {
    if let Some(e) = earlier.iter().find(|e| e.shadows(route)) {
        b.errs.push(
            base,
            format!(
                "can never match: route \"{}\" comes first and matches every request this one would; put the more specific route first",
                e.name
            ),
        );
    }
}
