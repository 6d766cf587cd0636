//! Compiling `forward` (and `dns.overrides`) into [`ForwardSettings`] and [`Overrides`].

use super::Compiler;
use super::RouteTable;
use crate::config::schema::{self, ConfigFile};
use crate::forward::ca::{self, Authority, CaFiles, VerifyError};
use crate::forward::guard::AllowList;
use crate::forward::{ForwardSettings, PassRule, ProxyAuth, ProxyUser, TunnelLimits};
use crate::routing::HostPattern;
use crate::tenant::Tenants;
use crate::upstream::dns::Overrides;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

impl Compiler<'_> {
    pub(super) fn overrides(&mut self, d: &schema::Dns) -> Overrides {
        let mut o = Overrides::default();
        for (k, v) in &d.overrides {
            if let Err(e) = o.insert(k, v) {
                self.errs.push(format!("dns.overrides.{k}"), e);
            }
        }
        o
    }

    /// `listener_on`: `listeners.forward` is set, so the CA must load.
    pub(super) fn forward(
        &mut self,
        file: &ConfigFile,
        routes: &RouteTable,
        tenants: &Tenants,
        listener_on: bool,
    ) -> Arc<ForwardSettings> {
        let f = &file.forward;
        let mut out = ForwardSettings::default();

        if f.ports.is_empty() {
            self.errs
                .push("forward.ports", "must list at least one port (usually 443)");
        }
        if f.ports.contains(&0) {
            self.errs.push("forward.ports", "0 is not a port");
        }
        out.ports = f.ports.clone().into_boxed_slice();

        for (i, p) in f.passthrough.iter().enumerate() {
            match PassRule::parse(p) {
                Ok(r) => out.passthrough.push(r),
                Err(e) => self.errs.push(format!("forward.passthrough[{i}]"), e),
            }
        }
        let (allow, errs) = AllowList::parse(&f.allow_private);
        for (i, e) in errs {
            self.errs.push(format!("forward.allow_private[{i}]"), e);
        }
        out.allow_private = allow;

        for (k, v) in [
            ("connect", f.tunnel.connect),
            ("idle", f.tunnel.idle),
            ("total", f.tunnel.total),
        ] {
            if v.get().is_zero() {
                self.errs
                    .push(format!("forward.tunnel.{k}"), "must be greater than 0");
            }
        }
        out.tunnel = TunnelLimits::from(&f.tunnel);

        out.intercept = routes.iter().filter_map(|r| r.host().cloned()).collect();
        out.proxy_auth = f.proxy_auth.as_ref().map(|a| self.proxy_auth(a, tenants));

        let validity = f.leaf_validity.get();
        if validity < Duration::from_secs(600) || validity > Duration::from_secs(397 * 86400) {
            self.errs.push(
                "forward.leaf_validity",
                "must be between 10m and 397d (what browsers and most clients accept)",
            );
        }
        if listener_on {
            out.authority = self.authority(f, &out.intercept, validity);
        } else if f.ca.is_some() || !f.passthrough.is_empty() || f.proxy_auth.is_some() {
            self.warnings.push(
                "forward: listeners.forward is not set, so this section has no effect".into(),
            );
        }
        Arc::new(out)
    }

    fn authority(
        &mut self,
        f: &schema::Forward,
        intercept: &[HostPattern],
        validity: Duration,
    ) -> Option<Arc<Authority>> {
        let Some(c) = &f.ca else {
            self.errs.push(
                "forward.ca",
                "listeners.forward needs a CA to intercept with: create one with `llm-sidecar ca init --dir DIR` and set forward.ca.dir: DIR",
            );
            return None;
        };
        if let ca::Missing::Create(dir) = ca::Missing::of(c) {
            match self.ctx.mode {
                super::LoadMode::Serve => {}
                super::LoadMode::Check => {
                    self.warnings.push(format!(
                        "forward.ca: {} holds no CA yet; `llm-sidecar run` creates it on its first start (forward.ca.create_if_missing), and apps must then trust {}",
                        dir.display(),
                        dir.join(ca::ROOT_CERT).display()
                    ));
                    return None;
                }
                super::LoadMode::Structure => return None,
            }
        }
        if self.ctx.mode == super::LoadMode::Structure {
            // No file is read; the CA's settings were checked above.
            return None;
        }
        let Some(files) = CaFiles::from_config(c) else {
            self.errs.push(
                "forward.ca",
                "set `dir`, or all of cert_file, key_file and root_file",
            );
            return None;
        };
        // A rotated CA (same paths, new contents) is a change worth reloading for.
        for p in [&files.root, &files.cert, &files.key] {
            if let Ok(bytes) = std::fs::read(p) {
                self.fingerprint.update(&bytes);
            }
            self.files.push(p.clone());
        }
        let authority = match Authority::load(&files, validity) {
            Ok(a) => a.with_metrics(self.ctx.metrics.forward().clone()),
            Err(e) => {
                self.errs.push("forward.ca", e.to_string());
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
                Err(VerifyError::NotPermitted) => self.warnings.push(format!(
                    "forward.ca: the intermediate's name constraints do not cover {}; apps will reject the certificate for it. Re-run `llm-sidecar ca init` with this config to issue a new intermediate (the root is kept)",
                    display(pattern)
                )),
                Err(VerifyError::Other(e)) => self.warnings.push(format!(
                    "forward.ca: a certificate for {} would not verify: {e}",
                    display(pattern)
                )),
            }
        }
        Some(Arc::new(authority))
    }

    fn proxy_auth(&mut self, a: &schema::ProxyAuth, tenants: &Tenants) -> ProxyAuth {
        let mut users = HashMap::new();
        if a.users.is_empty() {
            self.errs
                .push("forward.proxy_auth.users", "needs at least one user");
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, u) in a.users.iter().enumerate() {
            let base = format!("forward.proxy_auth.users[{i}]");
            if u.user.is_empty() || u.user.contains(':') {
                self.errs.push(
                    format!("{base}.user"),
                    "must be non-empty and must not contain ':'",
                );
            }
            if !names.insert(u.user.clone()) {
                self.errs.push(
                    format!("{base}.user"),
                    format!("duplicate user \"{}\"", u.user),
                );
            }
            if tenants.by_id(&u.tenant).is_none() {
                let known: Vec<&str> = tenants.list.iter().map(|t| &*t.id).collect();
                self.errs.push(
                    format!("{base}.tenant"),
                    format!(
                        "unknown tenant \"{}\"; known tenants: {}",
                        u.tenant,
                        known.join(", ")
                    ),
                );
            }
            let Ok(password) = self.resolve(&format!("{base}.password"), &u.password.0, false)
            else {
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
