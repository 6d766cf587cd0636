//! `oauth2`: access tokens from a token endpoint, cached and refreshed.
//!
//! Two flows:
//! - **client credentials** (RFC 6749 §4.4): `client_id` and `client_secret` (HTTP Basic,
//!   or in the form body), an optional `scope` and extra form parameters;
//! - **Google service account** (RFC 7523): an RS256-signed JWT assertion made from a
//!   service-account JSON key, exchanged at its `token_uri` (Vertex AI and other Google
//!   APIs).
//!
//! The token in use is one atomic load away. When fewer than `refresh_before` remain, the
//! request still uses it and a background refresh starts; the refresh retries with
//! exponential backoff (0.5 s doubling to 30 s) for as long as the old token is valid. Only
//! when there is no valid token do requests wait, and then for one shared fetch: any number
//! of concurrent requests cause one call to the token endpoint. A failure is remembered for
//! a second so an outage of the endpoint is not hammered. An upstream 401 invalidates the
//! token it was sent with (only that one: a token already replaced is left alone); the
//! exchange then fetches a new one and replays the request once.

use crate::config::secret::Secret;
use arc_swap::ArcSwapOption;
use base64::Engine;
use http::HeaderValue;
use prometheus::{IntCounter, IntGauge};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A token and when it stops being usable.
pub struct AccessToken {
    header: HeaderValue,
    expires_at: Instant,
    generation: u64,
}

impl AccessToken {
    /// `Bearer <token>`, marked sensitive.
    pub fn header(&self) -> &HeaderValue {
        &self.header
    }
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }
}

impl std::fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AccessToken(#{}, [redacted])", self.generation)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// `Authorization: Basic base64(id:secret)` (RFC 6749 §2.3.1).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Body,
}

pub enum Flow {
    ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: Secret,
        scope: Option<String>,
        client_auth: ClientAuth,
        extra: Vec<(String, String)>,
    },
    ServiceAccount {
        token_url: String,
        client_email: String,
        key_id: Option<String>,
        key: Box<ring::signature::RsaKeyPair>,
        scope: String,
    },
}

impl std::fmt::Debug for Flow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flow::ClientCredentials {
                token_url,
                client_id,
                ..
            } => {
                write!(f, "ClientCredentials({token_url}, {client_id}, [redacted])")
            }
            Flow::ServiceAccount {
                token_url,
                client_email,
                ..
            } => {
                write!(f, "ServiceAccount({token_url}, {client_email}, [redacted])")
            }
        }
    }
}

/// A Google service-account key file, the fields used.
#[derive(serde::Deserialize)]
struct ServiceAccountKey {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: String,
    private_key: String,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";

/// Builds the service-account flow from the key file's JSON. Errors never quote the key.
pub fn service_account(json: &str, scope: &str, token_url: Option<&str>) -> Result<Flow, String> {
    let k: ServiceAccountKey = serde_json::from_str(json)
        .map_err(|e| format!("not a service-account key file ({})", e.classify_name()))?;
    if k.kind.as_deref().is_some_and(|t| t != "service_account") {
        return Err("the key file's \"type\" is not \"service_account\"".into());
    }
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(k.private_key.as_bytes())
        .map_err(|_| "private_key is not a PEM PKCS#8 RSA key".to_string())?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| format!("private_key is not a usable RSA key: {e}"))?;
    Ok(Flow::ServiceAccount {
        token_url: token_url
            .map(str::to_string)
            .or(k.token_uri)
            .unwrap_or_else(|| GOOGLE_TOKEN_URL.to_string()),
        client_email: k.client_email,
        key_id: k.private_key_id,
        key: Box::new(key),
        scope: scope.to_string(),
    })
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "missing or wrong fields",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The RS256 JWT assertion of the service-account flow.
pub fn jwt_assertion(
    key: &ring::signature::RsaKeyPair,
    key_id: Option<&str>,
    issuer: &str,
    scope: &str,
    audience: &str,
    now: SystemTime,
) -> Result<String, String> {
    let iat = now
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let mut header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    if let Some(kid) = key_id {
        header["kid"] = serde_json::Value::String(kid.to_string());
    }
    let claims = serde_json::json!({"iss": issuer, "scope": scope, "aud": audience, "iat": iat, "exp": iat + 3600});
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut sig = vec![0u8; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|_| "RSA signing failed".to_string())?;
    Ok(format!("{signing_input}.{}", b64url(&sig)))
}

/// Token metrics of one provider.
#[derive(Clone)]
pub struct TokenMetrics {
    pub fetched: IntCounter,
    pub failed: IntCounter,
    /// Unix time the current token expires.
    pub expires: IntGauge,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

struct Failure {
    at: Instant,
    reason: String,
}

pub struct TokenSource {
    provider: Arc<str>,
    flow: Flow,
    client: reqwest::Client,
    current: ArcSwapOption<AccessToken>,
    last_failure: ArcSwapOption<Failure>,
    refresh: tokio::sync::Mutex<()>,
    background: AtomicBool,
    generation: AtomicU64,
    refresh_before: Duration,
    metrics: Option<TokenMetrics>,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSource({}, {:?})", self.provider, self.flow)
    }
}

/// How long a failed fetch makes further fetches wait.
const FAILURE_MEMORY: Duration = Duration::from_secs(1);
const BACKOFF_START: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

impl TokenSource {
    pub fn new(
        provider: Arc<str>,
        flow: Flow,
        client: reqwest::Client,
        refresh_before: Duration,
        metrics: Option<TokenMetrics>,
    ) -> TokenSource {
        TokenSource {
            provider,
            flow,
            client,
            current: ArcSwapOption::empty(),
            last_failure: ArcSwapOption::empty(),
            refresh: tokio::sync::Mutex::new(()),
            background: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            refresh_before,
            metrics,
        }
    }

    pub fn provider(&self) -> &Arc<str> {
        &self.provider
    }

    /// Installs a token as if fetched (benchmarks and tools; never used on a request path).
    #[doc(hidden)]
    pub fn preload(&self, token: &str, lifetime: Duration) {
        if let Ok(mut header) = HeaderValue::from_str(&format!("Bearer {token}")) {
            header.set_sensitive(true);
            self.current.store(Some(Arc::new(AccessToken {
                header,
                expires_at: Instant::now() + lifetime,
                generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
            })));
        }
    }

    /// A valid token; waits (for one shared fetch) only when there is none.
    pub async fn get(self: &Arc<Self>) -> Result<Arc<AccessToken>, TokenError> {
        let now = Instant::now();
        if let Some(t) = self.current.load_full() {
            if t.expires_at > now {
                if t.expires_at.duration_since(now) <= self.refresh_before {
                    self.refresh_in_background();
                }
                return Ok(t);
            }
        }
        let _one_at_a_time = self.refresh.lock().await;
        if let Some(t) = self.current.load_full() {
            if t.expires_at > Instant::now() {
                return Ok(t);
            }
        }
        if let Some(f) = self.last_failure.load_full() {
            if f.at.elapsed() < FAILURE_MEMORY {
                return Err(TokenError(f.reason.clone()));
            }
        }
        self.fetch_and_store().await
    }

    /// Forgets `used` if it is still the current token (after the provider refused it).
    pub fn invalidate(&self, used: &AccessToken) {
        let cur = self.current.load();
        if cur
            .as_ref()
            .is_some_and(|t| t.generation == used.generation)
        {
            self.current.compare_and_swap(&cur, None);
            tracing::info!(provider = %self.provider, "access token refused by the provider; fetching a new one");
        }
    }

    fn refresh_in_background(self: &Arc<Self>) {
        if self.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            let mut delay = BACKOFF_START;
            loop {
                let done = {
                    let _one_at_a_time = me.refresh.lock().await;
                    let fresh = me.current.load().as_ref().is_some_and(|t| {
                        t.expires_at.saturating_duration_since(Instant::now()) > me.refresh_before
                    });
                    fresh || me.fetch_and_store().await.is_ok()
                };
                let still_valid = me
                    .current
                    .load()
                    .as_ref()
                    .is_some_and(|t| t.expires_at > Instant::now());
                if done || !still_valid {
                    // Done, or the token expired: requests now fetch in the foreground.
                    break;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(BACKOFF_MAX);
            }
            me.background.store(false, Ordering::Release);
        });
    }

    async fn fetch_and_store(&self) -> Result<Arc<AccessToken>, TokenError> {
        match self.fetch().await {
            Ok((token, lifetime)) => {
                let mut header =
                    HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                        TokenError(
                            "the token endpoint returned a token with invalid characters".into(),
                        )
                    })?;
                header.set_sensitive(true);
                let t = Arc::new(AccessToken {
                    header,
                    expires_at: Instant::now() + lifetime,
                    generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
                });
                self.current.store(Some(t.clone()));
                self.last_failure.store(None);
                if let Some(m) = &self.metrics {
                    m.fetched.inc();
                    let exp = (SystemTime::now() + lifetime)
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    m.expires.set(i64::try_from(exp).unwrap_or(i64::MAX));
                }
                tracing::debug!(provider = %self.provider, lifetime = ?lifetime, "access token fetched");
                Ok(t)
            }
            Err(reason) => {
                tracing::warn!(provider = %self.provider, %reason, "access token fetch failed");
                if let Some(m) = &self.metrics {
                    m.failed.inc();
                }
                self.last_failure.store(Some(Arc::new(Failure {
                    at: Instant::now(),
                    reason: reason.clone(),
                })));
                Err(TokenError(reason))
            }
        }
    }

    /// One call to the token endpoint: the token and how long it lives.
    async fn fetch(&self) -> Result<(String, Duration), String> {
        let (url, req) = match &self.flow {
            Flow::ClientCredentials {
                token_url,
                client_id,
                client_secret,
                scope,
                client_auth,
                extra,
            } => {
                let mut form: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
                if let Some(s) = scope {
                    form.push(("scope", s));
                }
                form.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                let mut req = self.client.post(token_url);
                match client_auth {
                    ClientAuth::Basic => {
                        let enc = |s: &str| {
                            form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                        };
                        let pair = format!("{}:{}", enc(client_id), enc(client_secret.expose()));
                        let mut v = HeaderValue::from_str(&format!(
                            "Basic {}",
                            base64::engine::general_purpose::STANDARD.encode(pair)
                        ))
                        .map_err(|_| "client credentials contain invalid characters".to_string())?;
                        v.set_sensitive(true);
                        req = req.header(http::header::AUTHORIZATION, v);
                    }
                    ClientAuth::Body => {
                        form.push(("client_id", client_id));
                        form.push(("client_secret", client_secret.expose()));
                    }
                }
                (token_url.as_str(), req.form(&form))
            }
            Flow::ServiceAccount {
                token_url,
                client_email,
                key_id,
                key,
                scope,
            } => {
                let assertion = jwt_assertion(
                    key,
                    key_id.as_deref(),
                    client_email,
                    scope,
                    token_url,
                    SystemTime::now(),
                )?;
                let form = [
                    ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    ("assertion", assertion.as_str()),
                ];
                (token_url.as_str(), self.client.post(token_url).form(&form))
            }
        };
        let resp = req
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("cannot reach the token endpoint {url}: {}", without_url(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("reading the token response failed: {}", without_url(&e)))?;
        if !status.is_success() {
            // The error body of a token endpoint names the problem (invalid_client, ...);
            // keep only its `error` code, never anything that could echo a credential.
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v["error"]
                        .as_str()
                        .map(|s| s.chars().take(64).collect::<String>())
                });
            return Err(format!(
                "the token endpoint {url} answered {status}{}",
                code.map(|c| format!(" ({c})")).unwrap_or_default()
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|_| format!("the token endpoint {url} did not answer JSON"))?;
        let token = v["access_token"]
            .as_str()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("the token endpoint {url} answered without an access_token"))?;
        let expires_in = match &v["expires_in"] {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
        .unwrap_or(3600);
        Ok((token.to_string(), Duration::from_secs(expires_in.max(1))))
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_service_account_keys_are_described_without_content() {
        let e = service_account(
            "{\"client_email\":\"a@b\",\"private_key\":\"SECRET-ISH\"}",
            "s",
            None,
        )
        .err()
        .unwrap();
        assert!(e.contains("PEM") && !e.contains("SECRET"), "{e}");
        let e = service_account("not json", "s", None).err().unwrap();
        assert!(e.contains("invalid JSON"), "{e}");
        let e = service_account(
            "{\"type\":\"user\",\"client_email\":\"a\",\"private_key\":\"k\"}",
            "s",
            None,
        )
        .err()
        .unwrap();
        assert!(e.contains("service_account"), "{e}");
    }
}
