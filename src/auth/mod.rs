//! Credentials and signatures put on upstream requests.
//!
//! Every provider has one [`Auth`], compiled when the config loads: a [`Signer`] (how to
//! put a credential on a request), and where the credential comes from — a [`KeyPool`]
//! of static keys, or an OAuth2 [`TokenSource`]. Per exchange and per attempt:
//!
//! ```text
//!  exchange                                   attempt (upstream_request_filter)
//!  ────────                                   ─────────────────────────────────
//!  Auth::acquire ──► Credential ──────────►   Signer::sign(req, SignContext)
//!   pick a key (skip ejected / cooling)         bearer / header: one header
//!   or get a token (cached, single-flight)      hmac: canonical string, fresh nonce
//!                                               aws_sigv4: aws-sigv4 over the exact bytes
//!  Auth::feedback ◄── upstream status ──────
//!   401/403: eject the key; 429: cool it down; 401 with a token: invalidate (the
//!   exchange then refreshes and replays once)
//! ```
//!
//! Signing is synchronous and cheap: secrets are resolved and header values encoded at
//! load time, the body's SHA-256 is computed once per exchange and reused by every
//! attempt. Values that carry credentials are marked sensitive, so `http`'s `Debug`
//! prints `Sensitive` (Pingora's debug logs print request headers).

pub mod compile;
pub mod hmac;
pub mod keys;
pub mod oauth2;
pub mod sigv4;
pub mod static_key;

pub use keys::{KeyPool, KeyPoolUnavailable};
pub use oauth2::{AccessToken, TokenSource};

use http::HeaderName;
use pingora::http::RequestHeader;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot add credential header: {0}")]
    Header(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("the attempt carries no credential for this signer")]
    MissingCredential,
}

/// What one attempt signs with.
#[derive(Clone, Debug)]
pub enum Credential {
    /// The signer needs nothing chosen per request (no auth, or a single SigV4 identity).
    Fixed,
    /// Index into the signer's keys (and the pool's slots).
    Key(usize),
    /// An OAuth2 access token.
    Token(Arc<AccessToken>),
}

/// Everything about the upstream request a signer may cover.
pub struct SignContext<'a> {
    pub method: &'a str,
    /// Path and query exactly as sent upstream.
    pub path_and_query: &'a str,
    /// The `Host` (authority) sent upstream.
    pub host: &'a str,
    pub body: &'a [u8],
    /// Lowercase hex SHA-256 of `body`; empty unless the signer asked for it.
    pub body_sha256: &'a str,
    pub now: SystemTime,
    pub credential: &'a Credential,
}

/// Puts a credential (and, for signature schemes, a signature) on an upstream request.
pub trait Signer: Send + Sync + fmt::Debug {
    /// A short name for logs and metrics: `none`, `bearer`, `header`, `hmac`, ...
    fn scheme(&self) -> &'static str;
    /// Headers this signer writes. Client-sent copies are always removed.
    fn header_names(&self) -> &[HeaderName];
    /// Client headers starting with this (lower-case) prefix are removed too
    /// (`x-amz-` for SigV4).
    fn strip_prefix(&self) -> Option<&'static str> {
        None
    }
    /// True when [`SignContext::body_sha256`] must be filled in.
    fn needs_body_hash(&self) -> bool {
        false
    }
    /// Writes the credential into `req`, replacing any value already there.
    fn sign(&self, req: &mut RequestHeader, cx: &SignContext<'_>) -> Result<(), SignError>;
}

/// Sends no credential.
#[derive(Debug, Default)]
pub struct NoAuth;

impl Signer for NoAuth {
    fn scheme(&self) -> &'static str {
        "none"
    }
    fn header_names(&self) -> &[HeaderName] {
        &[]
    }
    fn sign(&self, _req: &mut RequestHeader, _cx: &SignContext<'_>) -> Result<(), SignError> {
        Ok(())
    }
}

/// Why no credential could be had for a request.
#[derive(Debug, thiserror::Error)]
pub enum AcquireError {
    /// Every key is ejected or cooling down.
    #[error("every key of provider \"{provider}\" is unavailable ({detail})")]
    KeysUnavailable {
        provider: Arc<str>,
        detail: String,
        retry_after: Duration,
    },
    /// The OAuth2 token endpoint did not give a token.
    #[error("no access token for provider \"{provider}\": {reason}")]
    Token { provider: Arc<str>, reason: String },
}

/// A provider's credential machinery.
pub struct Auth {
    pub signer: Box<dyn Signer>,
    pub keys: Option<KeyPool>,
    pub tokens: Option<Arc<TokenSource>>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("signer", &self.signer)
            .finish_non_exhaustive()
    }
}

/// What an upstream answer means for the credential used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do.
    Ok,
    /// The token was refused: it has been invalidated; refresh and replay once.
    TokenRejected,
}

impl Auth {
    pub fn new(signer: Box<dyn Signer>) -> Auth {
        Auth {
            signer,
            keys: None,
            tokens: None,
        }
    }

    /// The credential for one attempt. Waits only for an OAuth2 token that must be
    /// fetched (single-flight).
    pub async fn acquire(&self) -> Result<Credential, AcquireError> {
        self.acquire_except(&[]).await
    }

    /// [`Self::acquire`], passing over the pool keys in `tried`.
    pub async fn acquire_except(&self, tried: &[usize]) -> Result<Credential, AcquireError> {
        if let Some(t) = &self.tokens {
            return t
                .get()
                .await
                .map(Credential::Token)
                .map_err(|e| AcquireError::Token {
                    provider: t.provider().clone(),
                    reason: e.0,
                });
        }
        if let Some(pool) = &self.keys {
            return pool.pick_except(tried).map(Credential::Key).map_err(|e| {
                AcquireError::KeysUnavailable {
                    provider: pool.provider().clone(),
                    detail: e.detail,
                    retry_after: e.retry_after,
                }
            });
        }
        Ok(Credential::Fixed)
    }

    /// Applies what the upstream said about `credential` (the response status and its
    /// `Retry-After`).
    pub fn feedback(
        &self,
        credential: &Credential,
        status: u16,
        retry_after: Option<Duration>,
    ) -> Verdict {
        match credential {
            Credential::Key(i) => {
                if let Some(pool) = &self.keys {
                    pool.feedback(*i, status, retry_after);
                }
                Verdict::Ok
            }
            Credential::Token(t) if status == 401 => {
                if let Some(src) = &self.tokens {
                    src.invalidate(t);
                }
                Verdict::TokenRejected
            }
            _ => Verdict::Ok,
        }
    }

    /// The configured name of the key a credential refers to, for logs.
    pub fn key_name(&self, credential: &Credential) -> Option<Arc<str>> {
        match (credential, &self.keys) {
            (Credential::Key(i), Some(pool)) => Some(pool.name(*i)),
            _ => None,
        }
    }
}

/// Parses `Retry-After` (seconds or an HTTP date) and the `retry-after-ms` variant some
/// providers send.
pub fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
    {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_millis(ms as u64));
        }
    }
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(v).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
        let mut h = http::HeaderMap::new();
        let later = SystemTime::now() + Duration::from_secs(120);
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert("retry-after", "soon".parse().unwrap());
        assert_eq!(retry_after(&h), None);
    }
}
