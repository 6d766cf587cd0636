//! The tenant an app belongs to, and the headers that tell the provider (or a gateway in
//! front of it) who is calling.
//!
//! Header values are templates with `{tenant}`, expanded once at config load. Client-sent
//! headers with the same names are removed before injection, so an app cannot claim to be
//! another tenant.

use http::{HeaderName, HeaderValue};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Arc<str>,
    /// Headers added to every upstream request.
    pub inject: Arc<[(HeaderName, HeaderValue)]>,
    /// Client headers removed from every request (includes the injected names).
    pub strip: Arc<[HeaderName]>,
}

pub const TENANT_PLACEHOLDER: &str = "{tenant}";

/// Tenant ids appear in headers, logs and metrics: keep them simple.
pub fn validate_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "\"{id}\" may only use letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

pub fn expand(template: &str, tenant_id: &str) -> String {
    template.replace(TENANT_PLACEHOLDER, tenant_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_templates() {
        assert!(validate_id("team-a_1.prod").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a b").is_err());
        assert_eq!(expand("tenant={tenant};{tenant}", "t1"), "tenant=t1;t1");
    }
}
