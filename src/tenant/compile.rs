//! Compiling `tenant`, `tenants` and `virtual_keys` into [`Tenants`].

use crate::config::build::{Build, LoadMode};
use crate::config::schema::{ConfigFile, TenantDef, TenantSource};
use crate::tenant::{self, Cidr, Resolution, Tenant, Tenants};
use http::{HeaderName, HeaderValue};
use indexmap::IndexMap;
use std::collections::HashMap;
use std::sync::Arc;

impl Tenants {
    /// The tenants and how requests map to them. Also returns each tenant's definition
    /// (attributes, own provider keys), by tenant index.
    pub fn compile<'f>(
        b: &mut Build<'_>,
        file: &'f ConfigFile,
    ) -> (Tenants, Vec<Option<&'f TenantDef>>) {
        let t = &file.tenant;
        let mut ids: Vec<String> = Vec::new();
        let mut defs: Vec<Option<&TenantDef>> = Vec::new();
        for (id, _) in &file.tenants {
            if let Err(e) = tenant::validate_id(id) {
                b.errs.push(format!("tenants.{id}"), e);
            }
        }

        let resolution = match t.source {
            TenantSource::Static => {
                if !file.virtual_keys.is_empty() {
                    b.errs.push(
                        "virtual_keys",
                        "used only with `tenant.source: virtual_key`",
                    );
                }
                let unresolved = b.mode == LoadMode::Structure && t.id.0.has_refs();
                let id = match t.id.0.resolve(b.env) {
                    _ if unresolved => {
                        b.unresolved.push("tenant.id".into());
                        "default".to_string()
                    }
                    Ok(r) => r.value,
                    Err(e) => {
                        b.errs.push("tenant.id", e.to_string());
                        "default".to_string()
                    }
                };
                if let Err(e) = tenant::validate_id(&id) {
                    b.errs.push("tenant.id", e);
                }
                defs.push(file.tenants.get(&id));
                // The other listed tenants stay reachable for forward-proxy users
                // (`forward.proxy_auth`), which name their tenant themselves.
                for (other, def) in &file.tenants {
                    if *other != id {
                        ids.push(other.clone());
                        defs.push(Some(def));
                    }
                }
                ids.insert(0, id);
                Resolution::Static(0)
            }
            TenantSource::Header => {
                let name = match t
                    .header
                    .as_deref()
                    .map(|h| HeaderName::from_bytes(h.as_bytes()))
                {
                    Some(Ok(n)) => Some(n),
                    Some(Err(_)) => {
                        b.errs.push("tenant.header", "not a valid header name");
                        None
                    }
                    None => {
                        b.errs.push(
                            "tenant.header",
                            "`tenant.source: header` needs the header that names the tenant",
                        );
                        None
                    }
                };
                if file.tenants.is_empty() {
                    b.errs.push("tenants", "`tenant.source: header` accepts only the tenants listed here; list at least one");
                }
                if !file.virtual_keys.is_empty() {
                    b.errs.push(
                        "virtual_keys",
                        "used only with `tenant.source: virtual_key`",
                    );
                }
                let mut trusted = Vec::new();
                for (i, s) in t.trusted_sources.iter().enumerate() {
                    match Cidr::parse(s) {
                        Ok(c) => trusted.push(c),
                        Err(e) => b.errs.push(format!("tenant.trusted_sources[{i}]"), e),
                    }
                }
                let mut by_id = HashMap::new();
                for (id, def) in &file.tenants {
                    by_id.insert(id.clone(), ids.len());
                    ids.push(id.clone());
                    defs.push(Some(def));
                }
                Resolution::Header {
                    name: name.unwrap_or(http::header::HOST),
                    trusted,
                    by_id,
                }
            }
            TenantSource::VirtualKey => {
                if file.virtual_keys.is_empty() {
                    b.errs.push(
                        "virtual_keys",
                        "`tenant.source: virtual_key` needs at least one virtual key",
                    );
                }
                let mut index: HashMap<String, usize> = HashMap::new();
                for (id, def) in &file.tenants {
                    index.insert(id.clone(), ids.len());
                    ids.push(id.clone());
                    defs.push(Some(def));
                }
                let mut by_digest = HashMap::new();
                for (i, vk) in file.virtual_keys.iter().enumerate() {
                    let path = format!("virtual_keys[{i}]");
                    if let Err(e) = tenant::validate_id(&vk.tenant) {
                        b.errs.push(format!("{path}.tenant"), e);
                        continue;
                    }
                    let idx = *index.entry(vk.tenant.clone()).or_insert_with(|| {
                        ids.push(vk.tenant.clone());
                        defs.push(None);
                        ids.len() - 1
                    });
                    let Some(key) =
                        b.secret(&format!("{path}.key"), &vk.key.0, false, &mut Vec::new())
                    else {
                        continue;
                    };
                    if key.len() < 16 {
                        b.errs.push(
                            format!("{path}.key"),
                            "virtual keys must be at least 16 characters (they are credentials)",
                        );
                        continue;
                    }
                    if by_digest
                        .insert(tenant::key_digest(key.as_bytes()), idx)
                        .is_some()
                    {
                        b.errs
                            .push(format!("{path}.key"), "the same key is listed twice");
                    }
                }
                Resolution::VirtualKey { by_digest }
            }
        };

        // Headers, expanded for each tenant.
        let mut names = Vec::new();
        for (name, _) in &t.headers {
            match HeaderName::from_bytes(name.as_bytes()) {
                Ok(n) => names.push(n),
                Err(_) => b
                    .errs
                    .push(format!("tenant.headers.{name}"), "not a valid header name"),
            }
        }
        let mut strip = b.header_names("tenant.strip", &t.strip);
        strip.extend(names.iter().cloned());
        if let Resolution::Header { name, .. } = &resolution {
            strip.push(name.clone());
        }
        let strip: Arc<[HeaderName]> = strip.into();
        let empty = IndexMap::new();
        let mut list = Vec::with_capacity(ids.len());
        for (index, id) in ids.iter().enumerate() {
            let attributes = defs[index].map_or(&empty, |d| &d.attributes);
            let mut inject = Vec::with_capacity(names.len());
            for ((raw_name, template), name) in t.headers.iter().zip(names.iter()) {
                let path = format!("tenant.headers.{raw_name}");
                match tenant::expand(template, id, attributes) {
                    Ok(v) => match HeaderValue::from_str(&v) {
                        Ok(v) => inject.push((name.clone(), v)),
                        Err(_) => b.errs.push(
                            path,
                            format!(
                                "value for tenant \"{id}\" has characters not allowed in a header"
                            ),
                        ),
                    },
                    Err(e) => b.errs.push(path, e),
                }
            }
            list.push(Tenant {
                id: Arc::from(id.as_str()),
                index,
                inject: inject.into(),
                strip: strip.clone(),
            });
        }
        (Tenants { list, resolution }, defs)
    }
}
