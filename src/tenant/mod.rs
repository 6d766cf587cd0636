//! Tenants: who a request is for, and the headers that tell the provider (or a gateway in
//! front of it).
//!
//! A tenant is resolved per request in one of three ways (`tenant.source`):
//!
//! - `static`: one app per sidecar; every request is `tenant.id`.
//! - `header`: several apps share the sidecar; a trusted inbound header names the tenant.
//!   Only peers in `tenant.trusted_sources` may use it, and only tenants listed under
//!   `tenants:` are accepted.
//! - `virtual_key`: the app presents a sidecar-issued key (where an SDK puts its API key:
//!   `Authorization: Bearer`, `x-api-key` or `api-key`); it maps to a tenant, and the
//!   sidecar swaps it for the provider's real key (the tenant's own, if configured).
//!
//! Tenant headers are templates (`{tenant}`, `{tenant.id}`, `{tenant.NAME}` for an
//! attribute) expanded for every tenant at load time. Client-sent headers with those
//! names, and the tenant header itself, are removed before forwarding.

mod compile;

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Arc<str>,
    /// Position in [`Tenants`]; indexes per-tenant data such as provider keys.
    pub index: usize,
    /// Headers added to every upstream request.
    pub inject: Arc<[(HeaderName, HeaderValue)]>,
    /// Client headers removed from every request (includes the injected names).
    pub strip: Arc<[HeaderName]>,
}

/// An IP network (`10.0.0.0/8`, `::1/128`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("\"{s}\" is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("\"{s}\": prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Cidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // Treat IPv4-mapped IPv6 peers (::ffff:a.b.c.d) as IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// How requests are mapped to tenants.
#[derive(Debug)]
pub enum Resolution {
    Static(usize),
    Header {
        name: HeaderName,
        trusted: Vec<Cidr>,
        by_id: HashMap<String, usize>,
    },
    VirtualKey {
        by_digest: HashMap<[u8; 32], usize>,
    },
}

#[derive(Debug)]
pub struct Tenants {
    pub list: Vec<Tenant>,
    pub resolution: Resolution,
}

/// Why a request has no tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantError {
    /// `header` mode, and the request has no tenant header.
    MissingHeader(HeaderName),
    /// `header` mode, and the peer may not name a tenant.
    UntrustedSource,
    /// A tenant id no `tenants:` entry has.
    UnknownTenant,
    /// `virtual_key` mode, and the request carries no key.
    MissingKey,
    /// `virtual_key` mode, and the key is not one the sidecar issued.
    UnknownKey,
}

/// Where SDKs put their API key, in the order they are looked at.
pub const KEY_HEADERS: [&str; 3] = ["authorization", "x-api-key", "api-key"];

/// The key an SDK presents: `Authorization: Bearer K`, `x-api-key: K` or `api-key: K`.
pub fn presented_key(req: &RequestHeader) -> Option<&[u8]> {
    for name in KEY_HEADERS {
        if let Some(v) = req.headers.get(name) {
            let b = v.as_bytes();
            let key = if name == "authorization" {
                match b
                    .strip_prefix(b"Bearer ")
                    .or_else(|| b.strip_prefix(b"bearer "))
                {
                    Some(k) => k,
                    None => continue,
                }
            } else {
                b
            };
            let key = key.trim_ascii();
            if !key.is_empty() {
                return Some(key);
            }
        }
    }
    None
}

/// Virtual keys are looked up by their SHA-256, so the lookup's timing says nothing about
/// how close a wrong key was.
pub fn key_digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl Tenants {
    /// A single static tenant (tests and tools).
    pub fn single(t: Tenant) -> Tenants {
        Tenants {
            list: vec![t],
            resolution: Resolution::Static(0),
        }
    }

    /// The tenant with this id (forward-proxy users name theirs).
    pub fn by_id(&self, id: &str) -> Option<&Tenant> {
        self.list.iter().find(|t| &*t.id == id)
    }

    pub fn resolve(
        &self,
        req: &RequestHeader,
        peer: Option<IpAddr>,
    ) -> Result<&Tenant, TenantError> {
        let index = match &self.resolution {
            Resolution::Static(i) => *i,
            Resolution::Header {
                name,
                trusted,
                by_id,
            } => {
                let Some(v) = req.headers.get(name) else {
                    return Err(TenantError::MissingHeader(name.clone()));
                };
                if !peer.is_some_and(|ip| trusted.iter().any(|c| c.contains(ip))) {
                    return Err(TenantError::UntrustedSource);
                }
                let id = v.to_str().map_err(|_| TenantError::UnknownTenant)?.trim();
                *by_id.get(id).ok_or(TenantError::UnknownTenant)?
            }
            Resolution::VirtualKey { by_digest } => {
                let key = presented_key(req).ok_or(TenantError::MissingKey)?;
                *by_digest
                    .get(&key_digest(key))
                    .ok_or(TenantError::UnknownKey)?
            }
        };
        self.list.get(index).ok_or(TenantError::UnknownTenant)
    }
}

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

/// Expands `{tenant}`, `{tenant.id}` and `{tenant.NAME}` (an attribute). An unknown
/// attribute is an error naming it.
pub fn expand(
    template: &str,
    id: &str,
    attributes: &indexmap::IndexMap<String, String>,
) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find("{tenant") {
        out.push_str(&rest[..i]);
        let after = &rest[i + "{tenant".len()..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[i..]);
            rest = "";
            break;
        };
        let field = &after[..end];
        match field {
            "" | ".id" => out.push_str(id),
            f if f.starts_with('.') => {
                let name = &f[1..];
                let v = attributes.get(name).ok_or_else(|| {
                    format!("{{tenant.{name}}} is not an attribute of tenant \"{id}\"")
                })?;
                out.push_str(v);
            }
            // `{tenants}` or similar: not a placeholder, keep it.
            _ => out.push_str(&rest[i..i + "{tenant".len() + end + 1]),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use indexmap::IndexMap;

    #[test]
    fn ids_and_templates() {
        assert!(validate_id("team-a_1.prod").is_ok());
        assert!(validate_id("").is_err());
        assert!(validate_id("a b").is_err());
        let mut attrs = IndexMap::new();
        attrs.insert("cost_center".to_string(), "cc-7".to_string());
        assert_eq!(
            expand("t={tenant};{tenant.id}/{tenant.cost_center}", "t1", &attrs).unwrap(),
            "t=t1;t1/cc-7"
        );
        assert!(expand("{tenant.nope}", "t1", &attrs)
            .unwrap_err()
            .contains("nope"));
        assert_eq!(
            expand("{tenants} {tenant", "t1", &attrs).unwrap(),
            "{tenants} {tenant"
        );
    }

    #[test]
    fn cidrs() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(
            c.contains("::ffff:10.1.0.9".parse().unwrap()),
            "IPv4-mapped peers"
        );
        assert!(Cidr::parse("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("127.0.0.1")
            .unwrap()
            .contains("127.0.0.1".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn presented_keys() {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        assert_eq!(presented_key(&r), None);
        r.insert_header("x-api-key", " vk-2 ").unwrap();
        assert_eq!(presented_key(&r), Some(&b"vk-2"[..]));
        r.insert_header("authorization", "Basic abc").unwrap();
        assert_eq!(
            presented_key(&r),
            Some(&b"vk-2"[..]),
            "not a bearer key: next header"
        );
        r.insert_header("authorization", "Bearer vk-1").unwrap();
        assert_eq!(presented_key(&r), Some(&b"vk-1"[..]));
    }
}
