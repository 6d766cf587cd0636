//! Compiling `providers.*.auth` (and tenants' own provider keys) into [`Auth`].

use crate::auth::hmac::{HmacHeaders, HmacKeySpec, HmacSigner, TimestampUnit};
use crate::auth::keys::KeyMetrics;
use crate::auth::keys::{KeyPool, KeySpec, Strategy};
use crate::auth::oauth2::TokenMetrics;
use crate::auth::oauth2::{self, ClientAuth, Flow, TokenSource};
use crate::auth::sigv4::{self, AwsCredentials, SigV4Signer};
use crate::auth::static_key::{BearerToken, StaticHeader};
use crate::auth::{Auth, NoAuth, Signer};
use crate::config::build::{Build, LoadMode};
use crate::config::schema::{self, KeyStrategy, PoolKey};
use crate::config::secret::{Secret, SecretTemplate};
use crate::upstream::trust;
use http::HeaderName;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// A key of a pool, resolved.
pub(crate) struct ResolvedKey {
    name: Arc<str>,
    secret: Secret,
    weight: u32,
    key_id: Option<String>,
}

/// Which keys a key-based auth uses: a single key (no pool: it is never ejected) or a pool.
pub(crate) struct Keys {
    keys: Vec<ResolvedKey>,
    pooled: bool,
    strategy: Strategy,
    cooldown: Duration,
}

const SINGLE_KEY_NAME: &str = "default";

impl Keys {
    /// (name, secret) of every key, in order.
    fn pairs(&self) -> Vec<(Arc<str>, Secret)> {
        self.keys
            .iter()
            .map(|k| (k.name.clone(), k.secret.clone()))
            .collect()
    }
}

/// The metric handles a provider's auth keeps, made by the caller (metrics sit above
/// this part: they know its handle types, it does not know them).
pub struct AuthMetrics<'m> {
    /// `(provider, key name)` → the key's counters in a pool.
    pub key: &'m dyn Fn(&str, &str) -> KeyMetrics,
    /// `provider` → its OAuth2 token fetch counters.
    pub token: &'m dyn Fn(&str) -> TokenMetrics,
}

/// Compiles the auth of providers and tenants' keys, over one load's [`Build`].
pub struct AuthCompiler<'c, 'a> {
    b: &'c mut Build<'a>,
    metrics: AuthMetrics<'c>,
}

impl<'a> std::ops::Deref for AuthCompiler<'_, 'a> {
    type Target = Build<'a>;
    fn deref(&self) -> &Build<'a> {
        self.b
    }
}

impl std::ops::DerefMut for AuthCompiler<'_, '_> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        self.b
    }
}

impl<'c, 'a> AuthCompiler<'c, 'a> {
    pub fn new(b: &'c mut Build<'a>, metrics: AuthMetrics<'c>) -> Self {
        AuthCompiler { b, metrics }
    }

    /// `token`/`value`/`secret` (one key) or `keys` (a pool), exactly one of them.
    #[allow(clippy::too_many_arguments)]
    fn keys(
        &mut self,
        base: &str,
        single_field: &str,
        single: Option<&SecretTemplate>,
        pool: Option<&Vec<PoolKey>>,
        strategy: KeyStrategy,
        cooldown: Duration,
        optional: bool,
        missing: &mut Vec<String>,
    ) -> Option<Keys> {
        let strategy = match strategy {
            KeyStrategy::RoundRobin => Strategy::RoundRobin,
            KeyStrategy::Weighted => Strategy::Weighted,
        };
        match (single, pool) {
            (Some(_), Some(_)) => {
                self.errs.push(
                    base,
                    format!("give either `{single_field}` or `keys`, not both"),
                );
                None
            }
            (None, None) => {
                self.errs.push(
                    base,
                    format!("needs `{single_field}` (one key) or `keys` (a pool)"),
                );
                None
            }
            (Some(t), None) => {
                let v = self.secret(&format!("{base}.{single_field}"), &t.0, optional, missing)?;
                Some(Keys {
                    keys: vec![ResolvedKey {
                        name: Arc::from(SINGLE_KEY_NAME),
                        secret: Secret::new(v),
                        weight: 1,
                        key_id: None,
                    }],
                    pooled: false,
                    strategy,
                    cooldown,
                })
            }
            (None, Some(list)) => {
                if list.is_empty() {
                    self.errs
                        .push(format!("{base}.keys"), "must list at least one key");
                    return None;
                }
                let mut names = BTreeSet::new();
                let mut out = Vec::new();
                let mut ok = true;
                for (i, k) in list.iter().enumerate() {
                    let path = format!("{base}.keys[{i}]");
                    if k.name.is_empty()
                        || !k
                            .name
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                    {
                        self.errs.push(
                            format!("{path}.name"),
                            "key names may only use letters, digits, '-', '_' and '.'",
                        );
                        ok = false;
                    }
                    if !names.insert(k.name.clone()) {
                        self.errs.push(
                            format!("{path}.name"),
                            format!("duplicate key name \"{}\"", k.name),
                        );
                        ok = false;
                    }
                    if k.weight == 0 {
                        self.errs
                            .push(format!("{path}.weight"), "must be at least 1");
                        ok = false;
                    }
                    if let Some(v) =
                        self.secret(&format!("{path}.key"), &k.key.0, optional, missing)
                    {
                        out.push(ResolvedKey {
                            name: Arc::from(k.name.as_str()),
                            secret: Secret::new(v),
                            weight: k.weight,
                            key_id: k.key_id.clone(),
                        });
                    } else {
                        ok = false;
                    }
                }
                ok.then_some(Keys {
                    keys: out,
                    pooled: true,
                    strategy,
                    cooldown,
                })
            }
        }
    }

    /// A key-based auth: the signer, with a pool when several keys were configured.
    fn keyed(&self, provider: &str, keys: &Keys, signer: Box<dyn Signer>) -> Auth {
        Auth {
            keys: self.pool(provider, keys),
            ..Auth::new(signer)
        }
    }

    fn pool(&self, provider: &str, keys: &Keys) -> Option<KeyPool> {
        keys.pooled.then(|| {
            let specs = keys
                .keys
                .iter()
                .map(|k| KeySpec {
                    name: k.name.clone(),
                    weight: k.weight,
                    metrics: Some((self.metrics.key)(provider, &k.name)),
                })
                .collect();
            KeyPool::new(Arc::from(provider), specs, keys.strategy, keys.cooldown)
        })
    }

    /// Builds a provider's credential machinery. Missing secrets of an optional provider
    /// go to `missing`; everything else wrong is recorded as an error.
    pub fn auth(
        &mut self,
        name: &str,
        base: &str,
        p: &schema::Provider,
        missing: &mut Vec<String>,
    ) -> Option<Auth> {
        let base = format!("{base}.auth");
        let optional = p.optional;
        match &p.auth {
            schema::Auth::None => Some(Auth::new(Box::new(NoAuth))),
            schema::Auth::Bearer {
                token,
                keys,
                strategy,
                cooldown,
            } => {
                let keys = self.keys(
                    &base,
                    "token",
                    token.as_ref(),
                    keys.as_ref(),
                    *strategy,
                    cooldown.get(),
                    optional,
                    missing,
                )?;
                let pairs = keys.pairs();
                let signer = self.check(&base, StaticHeader::bearer(&pairs))?;
                Some(self.keyed(name, &keys, Box::new(signer)))
            }
            schema::Auth::Header {
                name: header,
                value,
                keys,
                strategy,
                cooldown,
            } => {
                let keys = self.keys(
                    &base,
                    "value",
                    value.as_ref(),
                    keys.as_ref(),
                    *strategy,
                    cooldown.get(),
                    optional,
                    missing,
                )?;
                let pairs = keys.pairs();
                let signer = self.check(&base, StaticHeader::header(header, &pairs))?;
                Some(self.keyed(name, &keys, Box::new(signer)))
            }
            schema::Auth::Hmac {
                key_id,
                secret,
                keys,
                strategy,
                cooldown,
                headers,
                timestamp_unit,
            } => {
                let keys = self.keys(
                    &base,
                    "secret",
                    secret.as_ref(),
                    keys.as_ref(),
                    *strategy,
                    cooldown.get(),
                    optional,
                    missing,
                )?;
                if !keys.pooled && key_id.is_none() {
                    self.errs.push(
                        format!("{base}.key_id"),
                        "needed with a single `secret` (it is sent in the key-id header)",
                    );
                    return None;
                }
                if keys.pooled && key_id.is_some() {
                    self.errs.push(
                        format!("{base}.key_id"),
                        "with `keys`, give each key its own `key_id`",
                    );
                    return None;
                }
                let hmac_headers = self.hmac_headers(&base, headers)?;
                let specs = keys
                    .keys
                    .iter()
                    .map(|k| HmacKeySpec {
                        key_id: k
                            .key_id
                            .clone()
                            .or_else(|| key_id.clone())
                            .unwrap_or_else(|| k.name.to_string()),
                        secret: k.secret.clone(),
                    })
                    .collect();
                let unit = TimestampUnit::from(*timestamp_unit);
                let signer = self.check(&base, HmacSigner::new(hmac_headers, unit, specs))?;
                Some(self.keyed(name, &keys, Box::new(signer)))
            }
            schema::Auth::AwsSigv4 {
                region,
                service,
                credentials,
            } => {
                if region.trim().is_empty()
                    || !region
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    self.errs.push(
                        format!("{base}.region"),
                        format!("\"{region}\" is not an AWS region (e.g. us-east-1)"),
                    );
                    return None;
                }
                let creds = self.aws_credentials(
                    &format!("{base}.credentials"),
                    credentials,
                    optional,
                    missing,
                )?;
                Some(Auth::new(Box::new(SigV4Signer::new(
                    region, service, &creds,
                ))))
            }
            schema::Auth::Oauth2 {
                flow,
                token_url,
                client_id,
                client_secret,
                service_account,
                scope,
                client_auth,
                extra_params,
                refresh_before,
                ca_file,
            } => {
                let flow = match flow {
                    schema::OAuthFlow::ClientCredentials => {
                        let Some(url) = token_url else {
                            self.errs.push(
                                format!("{base}.token_url"),
                                "needed for the client_credentials flow",
                            );
                            return None;
                        };
                        self.check_url(&format!("{base}.token_url"), url)?;
                        let (Some(id), Some(secret)) = (client_id, client_secret) else {
                            self.errs.push(
                                &base,
                                "the client_credentials flow needs `client_id` and `client_secret`",
                            );
                            return None;
                        };
                        let id =
                            self.secret(&format!("{base}.client_id"), &id.0, optional, missing);
                        let secret = self.secret(
                            &format!("{base}.client_secret"),
                            &secret.0,
                            optional,
                            missing,
                        );
                        let (id, secret) = (id?, secret?);
                        Flow::ClientCredentials {
                            token_url: url.clone(),
                            client_id: id,
                            client_secret: Secret::new(secret),
                            scope: scope.clone(),
                            client_auth: match client_auth {
                                schema::OAuthClientAuth::Basic => ClientAuth::Basic,
                                schema::OAuthClientAuth::Body => ClientAuth::Body,
                            },
                            extra: extra_params
                                .iter()
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect(),
                        }
                    }
                    schema::OAuthFlow::GoogleServiceAccount => {
                        let Some(sa) = service_account else {
                            self.errs.push(
                                format!("{base}.service_account"),
                                "needed for the google_service_account flow, e.g. \"${file:/secrets/key.json}\"",
                            );
                            return None;
                        };
                        if let Some(url) = token_url {
                            self.check_url(&format!("{base}.token_url"), url)?;
                        }
                        let json = self.secret(
                            &format!("{base}.service_account"),
                            &sa.0,
                            optional,
                            missing,
                        )?;
                        let scope = scope.clone().unwrap_or_else(|| {
                            "https://www.googleapis.com/auth/cloud-platform".into()
                        });
                        match oauth2::service_account(&json, &scope, token_url.as_deref()) {
                            Ok(f) => f,
                            Err(e) => {
                                self.errs.push(format!("{base}.service_account"), e);
                                return None;
                            }
                        }
                    }
                };
                let client = self.token_client(&format!("{base}.ca_file"), ca_file.as_deref())?;
                let source = TokenSource::new(
                    Arc::from(name),
                    flow,
                    client,
                    refresh_before.get(),
                    Some((self.metrics.token)(name)),
                );
                Some(Auth {
                    tokens: Some(Arc::new(source)),
                    ..Auth::new(Box::new(BearerToken::default()))
                })
            }
        }
    }

    /// A tenant's own key for a key-based provider: the provider's scheme with that key.
    pub fn tenant_key_auth(
        &mut self,
        path: &str,
        p: &schema::Provider,
        key: &SecretTemplate,
    ) -> Option<Auth> {
        let value = self.secret(path, &key.0, false, &mut Vec::new())?;
        let pair = [(Arc::from(SINGLE_KEY_NAME), Secret::new(value))];
        let signer: Box<dyn Signer> = match &p.auth {
            schema::Auth::Bearer { .. } => Box::new(self.check(path, StaticHeader::bearer(&pair))?),
            schema::Auth::Header { name, .. } => {
                Box::new(self.check(path, StaticHeader::header(name, &pair))?)
            }
            schema::Auth::Hmac {
                key_id,
                keys,
                headers,
                timestamp_unit,
                ..
            } => {
                let id = key_id
                    .clone()
                    .or_else(|| {
                        keys.as_ref()
                            .and_then(|k| k.first())
                            .map(|k| k.key_id.clone().unwrap_or_else(|| k.name.clone()))
                    })
                    .unwrap_or_else(|| SINGLE_KEY_NAME.to_string());
                let unit = TimestampUnit::from(*timestamp_unit);
                let h = self.hmac_headers(path, headers)?;
                let spec = HmacKeySpec {
                    key_id: id,
                    secret: pair[0].1.clone(),
                };
                Box::new(self.check(path, HmacSigner::new(h, unit, vec![spec]))?)
            }
            _ => {
                self.errs.push(
                    path,
                    "a tenant key needs the provider's auth to be bearer, header or hmac",
                );
                return None;
            }
        };
        Some(Auth::new(signer))
    }

    fn hmac_headers(&mut self, base: &str, h: &schema::HmacHeaderNames) -> Option<HmacHeaders> {
        let mut parse = |field: &str, v: &str| match HeaderName::from_bytes(v.as_bytes()) {
            Ok(n) => Some(n),
            Err(_) => {
                self.errs.push(
                    format!("{base}.headers.{field}"),
                    format!("\"{v}\" is not a valid header name"),
                );
                None
            }
        };
        let sig = parse("signature", &h.signature);
        let ts = parse("timestamp", &h.timestamp);
        let nonce = parse("nonce", &h.nonce);
        let key_id = parse("key_id", &h.key_id);
        Some(HmacHeaders {
            signature: sig?,
            timestamp: ts?,
            nonce: nonce?,
            key_id: key_id?,
        })
    }

    fn aws_credentials(
        &mut self,
        base: &str,
        c: &schema::AwsCredentials,
        optional: bool,
        missing: &mut Vec<String>,
    ) -> Option<AwsCredentials> {
        match c {
            _ if self.mode == LoadMode::Structure => {
                self.unresolved.push(base.to_string());
                missing.push(format!("{base}: not resolved (--no-secrets)"));
                None
            }
            schema::AwsCredentials::Env => match sigv4::from_env(self.env) {
                Ok(creds) => {
                    self.fingerprint_secret(creds.secret_access_key.expose());
                    Some(creds)
                }
                Err(e) if optional => {
                    missing.push(format!("{base}: {e}"));
                    None
                }
                Err(e) => {
                    self.errs.push(base, format!("{e} (credentials come from the environment; or use `from: static` or `from: file`)"));
                    None
                }
            },
            schema::AwsCredentials::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => {
                let id = self.secret(
                    &format!("{base}.access_key_id"),
                    &access_key_id.0,
                    optional,
                    missing,
                );
                let secret = self.secret(
                    &format!("{base}.secret_access_key"),
                    &secret_access_key.0,
                    optional,
                    missing,
                );
                let token = match session_token {
                    Some(t) => Some(self.secret(
                        &format!("{base}.session_token"),
                        &t.0,
                        optional,
                        missing,
                    )?),
                    None => None,
                };
                Some(AwsCredentials {
                    access_key_id: id?,
                    secret_access_key: Secret::new(secret?),
                    session_token: token.map(Secret::new),
                })
            }
            schema::AwsCredentials::File { path, profile } => match sigv4::from_file(path, profile)
            {
                Ok(creds) => {
                    self.files.push(path.clone());
                    self.fingerprint_secret(creds.secret_access_key.expose());
                    if let Some(t) = &creds.session_token {
                        self.fingerprint_secret(t.expose());
                    }
                    Some(creds)
                }
                Err(e) => {
                    // Watch it anyway: the file may appear, and a reload will pick it up.
                    self.files.push(path.clone());
                    if optional {
                        missing.push(format!("{base}: {e}"));
                    } else {
                        self.errs.push(base, e);
                    }
                    None
                }
            },
        }
    }

    fn check_url(&mut self, path: &str, url: &str) -> Option<()> {
        match url.parse::<http::Uri>() {
            Ok(u) if u.authority().is_some_and(|a| a.as_str().contains('@')) => {
                // Never echo the URL: it holds a credential.
                self.errs.push(
                    path,
                    "credentials in the URL are not allowed; use client_id and client_secret",
                );
                None
            }
            Ok(u)
                if matches!(u.scheme_str(), Some("https") | Some("http")) && u.host().is_some() =>
            {
                Some(())
            }
            _ => {
                self.errs
                    .push(path, format!("\"{url}\" is not an http(s) URL"));
                None
            }
        }
    }

    /// The HTTP client for a token endpoint: the same trust rules as providers (public
    /// roots plus an optional CA file), no proxy from the environment (an app's
    /// `HTTPS_PROXY` may point at this very sidecar).
    fn token_client(
        &mut self,
        path: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Option<reqwest::Client> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned());
        if let Some(ca) = ca_file.filter(|_| self.mode != LoadMode::Structure) {
            match trust::load_ca_file(ca) {
                Ok(certs) => {
                    self.files.push(ca.to_path_buf());
                    roots.add_parsable_certificates(certs);
                }
                Err(e) => {
                    self.errs.push(path, e);
                    return None;
                }
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let tls = match tls {
            Ok(t) => t,
            Err(e) => {
                self.errs.push(path, format!("TLS setup failed: {e}"));
                return None;
            }
        };
        match reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .user_agent(concat!("llm-sidecar/", env!("CARGO_PKG_VERSION")))
            .build()
        {
            Ok(c) => Some(c),
            Err(e) => {
                self.errs
                    .push(path, format!("cannot build the token endpoint client: {e}"));
                None
            }
        }
    }

    fn check<T>(&mut self, path: &str, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.errs.push(path, e);
                None
            }
        }
    }
}

impl From<schema::TimestampUnit> for TimestampUnit {
    fn from(unit: schema::TimestampUnit) -> TimestampUnit {
        match unit {
            schema::TimestampUnit::Ms => TimestampUnit::Millis,
            schema::TimestampUnit::S => TimestampUnit::Seconds,
        }
    }
}
