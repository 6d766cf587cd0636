//! `forward` as the listener uses it, compiled here from its schema section at config
//! load ([`ForwardSettings::compile`]), and what the listener tells the request path
//! about a connection ([`ForwardConn`]). A leaf: it imports the schema and the parts it
//! is made of, never the listener or the snapshot.

use super::ca::{self, Authority, CaFiles, VerifyError};
use super::guard::{AllowList, Blocked};
use crate::config::build::{Build, LoadMode};
use crate::config::schema::{self, ConfigFile};
use crate::observability::metrics::ForwardMetrics;
use crate::routing::HostPattern;
use crate::tenant::Tenants;
use pingora::protocols::raw_connect::ProxyDigest;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// What the request path knows about a request that came through the forward listener.
#[derive(Debug, Clone)]
pub struct ForwardConn {
    /// The host the app asked for (lower case, no port).
    pub host: Box<str>,
    pub port: u16,
    /// The tenant of the authenticated proxy user, if any.
    pub tenant: Option<Arc<str>>,
}

impl ForwardConn {
    /// The forward-proxy facts of a request's connection, if it came that way.
    pub fn of(digest: &ProxyDigest) -> Option<&ForwardConn> {
        digest.user_data.as_ref()?.downcast_ref::<ForwardConn>()
    }
}

/// A pass-through entry: a host pattern and, optionally, the one port it may use.
#[derive(Debug)]
pub struct PassRule {
    pub host: HostPattern,
    pub port: Option<u16>,
}

impl PassRule {
    pub fn parse(s: &str) -> Result<PassRule, String> {
        let t = s.trim();
        let (h, port) = match t.rsplit_once(':') {
            Some((h, p))
                if !h.is_empty() && !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()) =>
            {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("\"{s}\": invalid port"))?;
                (h, Some(port))
            }
            _ => (t, None),
        };
        Ok(PassRule {
            host: HostPattern::parse(h.trim_start_matches('[').trim_end_matches(']'))?,
            port,
        })
    }
}

/// Time limits of pass-through tunnels.
#[derive(Clone, Copy, Debug)]
pub struct TunnelLimits {
    pub connect: Duration,
    pub idle: Duration,
    pub total: Duration,
}

impl From<&schema::TunnelSettings> for TunnelLimits {
    fn from(t: &schema::TunnelSettings) -> Self {
        TunnelLimits {
            connect: t.connect.get(),
            idle: t.idle.get(),
            total: t.total.get(),
        }
    }
}

/// A proxy user (who it is and the tenant it acts for). The password is only kept as
/// part of a digest.
#[derive(Debug, Clone)]
pub struct ProxyUser {
    pub name: Arc<str>,
    pub tenant: Arc<str>,
}

#[derive(Debug, Default)]
pub struct ProxyAuth {
    pub required: bool,
    /// SHA-256 of `user:password` → user. Looked up by digest so the lookup time says
    /// nothing about how close a guess was.
    pub users: HashMap<[u8; 32], ProxyUser>,
}

/// `forward` as the listener uses it (compiled at config load).
#[derive(Debug)]
pub struct ForwardSettings {
    pub authority: Option<Arc<ca::Authority>>,
    pub ports: Box<[u16]>,
    /// Host patterns of routes: CONNECTs to these are intercepted.
    pub intercept: Vec<HostPattern>,
    pub passthrough: Vec<PassRule>,
    pub allow_private: AllowList,
    pub tunnel: TunnelLimits,
    pub proxy_auth: Option<ProxyAuth>,
}

impl Default for ForwardSettings {
    fn default() -> Self {
        ForwardSettings {
            authority: None,
            ports: schema::Forward::default().ports.into_boxed_slice(),
            intercept: Vec::new(),
            passthrough: Vec::new(),
            allow_private: AllowList::default(),
            tunnel: TunnelLimits::from(&schema::TunnelSettings::default()),
            proxy_auth: None,
        }
    }
}

/// What to do with a proxy request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Intercept,
    Passthrough,
}

/// Why a proxy request is refused. The string form is the `x-llm-sidecar-error` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    HostNotAllowed,
    PortNotAllowed,
    BlockedAddress(Blocked),
    SniMismatch,
    BadRequest,
    /// A request head over `request.max_header_bytes` (431; reported as a bad request).
    HeadTooLarge,
    ProxyAuth,
    Dns,
    Connect,
    ConnectTimeout,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::HostNotAllowed => "forward_host_not_allowed",
            Refusal::PortNotAllowed => "forward_port_not_allowed",
            Refusal::BlockedAddress(_) => "forward_blocked_address",
            Refusal::SniMismatch => "forward_sni_mismatch",
            Refusal::BadRequest | Refusal::HeadTooLarge => "forward_bad_request",
            Refusal::ProxyAuth => "forward_proxy_auth",
            Refusal::Dns => "forward_dns",
            Refusal::Connect => "forward_connect",
            Refusal::ConnectTimeout => "forward_connect_timeout",
        }
    }

    pub(crate) fn status(self) -> (u16, &'static str) {
        match self {
            Refusal::BadRequest => (400, "Bad Request"),
            Refusal::HeadTooLarge => (431, "Request Header Fields Too Large"),
            Refusal::ProxyAuth => (407, "Proxy Authentication Required"),
            Refusal::Dns | Refusal::Connect => (502, "Bad Gateway"),
            Refusal::ConnectTimeout => (504, "Gateway Timeout"),
            _ => (403, "Forbidden"),
        }
    }
}

pub(crate) fn ip_literal(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

impl ForwardSettings {
    /// Decides by name and port alone (pass-through addresses are checked after DNS).
    pub fn decide(&self, host: &str, port: u16) -> Result<Decision, Refusal> {
        let literal = ip_literal(host);
        if let Some(ip) = literal {
            self.allow_private
                .check(host, ip)
                .map_err(Refusal::BlockedAddress)?;
        }
        if literal.is_none() && self.intercept.iter().any(|p| p.matches(host)) {
            return if self.ports.contains(&port) {
                Ok(Decision::Intercept)
            } else {
                Err(Refusal::PortNotAllowed)
            };
        }
        let mut host_listed = false;
        for rule in self.passthrough.iter().filter(|r| r.host.matches(host)) {
            host_listed = true;
            let port_ok = match rule.port {
                Some(p) => p == port,
                None => self.ports.contains(&port),
            };
            if port_ok {
                return Ok(Decision::Passthrough);
            }
        }
        Err(if host_listed {
            Refusal::PortNotAllowed
        } else {
            Refusal::HostNotAllowed
        })
    }

    /// Checks `Proxy-Authorization`: `Ok(Some(user))` for a known user, `Ok(None)` when
    /// no auth is configured or it is optional and absent.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Option<&ProxyUser>, Refusal> {
        let Some(auth) = &self.proxy_auth else {
            return Ok(None);
        };
        let Some(value) = header else {
            return if auth.required {
                Err(Refusal::ProxyAuth)
            } else {
                Ok(None)
            };
        };
        let encoded = value
            .strip_prefix(b"Basic ")
            .or_else(|| value.strip_prefix(b"basic "))
            .ok_or(Refusal::ProxyAuth)?;
        use base64::Engine;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim_ascii())
            .map_err(|_| Refusal::ProxyAuth)?;
        let digest: [u8; 32] = Sha256::digest(&decoded).into();
        auth.users.get(&digest).map(Some).ok_or(Refusal::ProxyAuth)
    }
}

impl ForwardSettings {
    /// `forward`, checked. `intercept` is the host patterns of the routes (CONNECTs to
    /// them are intercepted); `listener_on`: `listeners.forward` is set, so the CA must
    /// load.
    pub fn compile(
        b: &mut Build<'_>,
        f: &schema::Forward,
        intercept: Vec<HostPattern>,
        tenants: &Tenants,
        listener_on: bool,
        metrics: &ForwardMetrics,
    ) -> Arc<ForwardSettings> {
        let mut out = ForwardSettings::default();

        if f.ports.is_empty() {
            b.errs
                .push("forward.ports", "must list at least one port (usually 443)");
        }
        if f.ports.contains(&0) {
            b.errs.push("forward.ports", "0 is not a port");
        }
        out.ports = f.ports.clone().into_boxed_slice();

        for (i, p) in f.passthrough.iter().enumerate() {
            match PassRule::parse(p) {
                Ok(r) => out.passthrough.push(r),
                Err(e) => b.errs.push(format!("forward.passthrough[{i}]"), e),
            }
        }
        let (allow, errs) = AllowList::parse(&f.allow_private);
        for (i, e) in errs {
            b.errs.push(format!("forward.allow_private[{i}]"), e);
        }
        out.allow_private = allow;

        for (k, v) in [
            ("connect", f.tunnel.connect),
            ("idle", f.tunnel.idle),
            ("total", f.tunnel.total),
        ] {
            if v.get().is_zero() {
                b.errs
                    .push(format!("forward.tunnel.{k}"), "must be greater than 0");
            }
        }
        out.tunnel = TunnelLimits::from(&f.tunnel);

        out.intercept = intercept;
        out.proxy_auth = f.proxy_auth.as_ref().map(|a| proxy_auth(b, a, tenants));

        let validity = f.leaf_validity.get();
        if validity < Duration::from_secs(600) || validity > Duration::from_secs(397 * 86400) {
            b.errs.push(
                "forward.leaf_validity",
                "must be between 10m and 397d (what browsers and most clients accept)",
            );
        }
        if listener_on {
            out.authority = authority(b, f, &out.intercept, validity, metrics);
        } else if f.ca.is_some() || !f.passthrough.is_empty() || f.proxy_auth.is_some() {
            b.warnings.push(
                "forward: listeners.forward is not set, so this section has no effect".into(),
            );
        }
        Arc::new(out)
    }
}

fn authority(
    b: &mut Build<'_>,
    f: &schema::Forward,
    intercept: &[HostPattern],
    validity: Duration,
    metrics: &ForwardMetrics,
) -> Option<Arc<Authority>> {
    let Some(c) = &f.ca else {
        b.errs.push(
                "forward.ca",
                "listeners.forward needs a CA to intercept with: create one with `llm-sidecar ca init --dir DIR` and set forward.ca.dir: DIR",
            );
        return None;
    };
    if let ca::Missing::Create(dir) = ca::Missing::of(c) {
        match b.mode {
            LoadMode::Serve => {}
            LoadMode::Check => {
                b.warnings.push(format!(
                        "forward.ca: {} holds no CA yet; `llm-sidecar run` creates it on its first start (forward.ca.create_if_missing), and apps must then trust {}",
                        dir.display(),
                        dir.join(ca::ROOT_CERT).display()
                    ));
                return None;
            }
            LoadMode::Structure => return None,
        }
    }
    if b.mode == LoadMode::Structure {
        // No file is read; the CA's settings were checked above.
        return None;
    }
    let Some(files) = CaFiles::from_config(c) else {
        b.errs.push(
            "forward.ca",
            "set `dir`, or all of cert_file, key_file and root_file",
        );
        return None;
    };
    // A rotated CA (same paths, new contents) is a change worth reloading for.
    for p in [&files.root, &files.cert, &files.key] {
        if let Ok(bytes) = std::fs::read(p) {
            b.fingerprint.update(&bytes);
        }
        b.files.push(p.clone());
    }
    let authority = match Authority::load(&files, validity) {
        Ok(a) => a.with_metrics(metrics.clone()),
        Err(e) => {
            b.errs.push("forward.ca", e.to_string());
            return None;
        }
    };
    for pattern in intercept {
        let sample = match pattern {
            HostPattern::Exact(h) => h.clone(),
            HostPattern::Subdomains(s) => format!("llm-sidecar-check{s}"),
        };
        if sample.parse::<std::net::IpAddr>().is_ok() || sample.starts_with('[') {
            continue;
        }
        match authority.verify_name(&sample) {
                Ok(()) => {}
                Err(VerifyError::NotPermitted) => b.warnings.push(format!(
                    "forward.ca: the intermediate's name constraints do not cover {}; apps will reject the certificate for it. Re-run `llm-sidecar ca init` with this config to issue a new intermediate (the root is kept)",
                    display(pattern)
                )),
                Err(VerifyError::Other(e)) => b.warnings.push(format!(
                    "forward.ca: a certificate for {} would not verify: {e}",
                    display(pattern)
                )),
            }
    }
    Some(Arc::new(authority))
}

fn proxy_auth(b: &mut Build<'_>, a: &schema::ProxyAuth, tenants: &Tenants) -> ProxyAuth {
    let mut users = HashMap::new();
    if a.users.is_empty() {
        b.errs
            .push("forward.proxy_auth.users", "needs at least one user");
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, u) in a.users.iter().enumerate() {
        let base = format!("forward.proxy_auth.users[{i}]");
        if u.user.is_empty() || u.user.contains(':') {
            b.errs.push(
                format!("{base}.user"),
                "must be non-empty and must not contain ':'",
            );
        }
        if !names.insert(u.user.clone()) {
            b.errs.push(
                format!("{base}.user"),
                format!("duplicate user \"{}\"", u.user),
            );
        }
        if tenants.by_id(&u.tenant).is_none() {
            let known: Vec<&str> = tenants.list.iter().map(|t| &*t.id).collect();
            b.errs.push(
                format!("{base}.tenant"),
                format!(
                    "unknown tenant \"{}\"; known tenants: {}",
                    u.tenant,
                    known.join(", ")
                ),
            );
        }
        let Ok(password) = b.resolve(&format!("{base}.password"), &u.password.0, false) else {
            continue;
        };
        let digest: [u8; 32] = Sha256::digest(format!("{}:{password}", u.user)).into();
        users.insert(
            digest,
            ProxyUser {
                name: Arc::from(u.user.as_str()),
                tenant: Arc::from(u.tenant.as_str()),
            },
        );
    }
    ProxyAuth {
        required: a.required,
        users,
    }
}

fn display(p: &HostPattern) -> String {
    match p {
        HostPattern::Exact(h) => h.clone(),
        HostPattern::Subdomains(s) => format!("*{s}"),
    }
}

/// Domain patterns for `ca init`: the hosts the config's routes match.
pub fn intercepted_domains(file: &ConfigFile) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &file.routes {
        if let Some(h) = &r.matcher.host {
            if ca::permitted_subtree(h).is_ok() && !out.contains(h) {
                out.push(h.clone());
            }
        }
    }
    out
}
