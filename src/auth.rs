//! Credentials put on upstream requests.
//!
//! Each provider gets one [`Signer`], built when the config loads: secrets are resolved
//! and header values are pre-encoded then, so signing a request is a header insert.
//! Header values holding credentials are marked sensitive, which makes `http`'s `Debug`
//! print `Sensitive` instead of the value (Pingora's debug logs print request headers).
//!
//! Later signers (HMAC, SigV4, OAuth2) implement the same trait.

use crate::config::secret::Secret;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use std::fmt;

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("cannot add credential header: {0}")]
    Header(String),
}

/// Adds a provider's credential to an upstream request.
pub trait Signer: Send + Sync + fmt::Debug {
    /// A short name for logs and `/config`: `none`, `bearer`, `header`.
    fn scheme(&self) -> &'static str;
    /// The headers this signer writes. Client-sent copies are always removed.
    fn header_names(&self) -> &[HeaderName];
    /// Writes the credential into `req`, replacing any value already there.
    fn sign(&self, req: &mut RequestHeader) -> Result<(), SignError>;
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
    fn sign(&self, _req: &mut RequestHeader) -> Result<(), SignError> {
        Ok(())
    }
}

/// One fixed header: `Authorization: Bearer <token>` or `<name>: <value>`.
pub struct StaticHeader {
    scheme: &'static str,
    names: [HeaderName; 1],
    value: HeaderValue,
}

impl StaticHeader {
    pub fn bearer(token: &Secret) -> Result<StaticHeader, String> {
        Self::build(
            "bearer",
            http::header::AUTHORIZATION,
            &format!("Bearer {}", token.expose()),
        )
    }

    pub fn header(name: &str, value: &Secret) -> Result<StaticHeader, String> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("\"{name}\" is not a valid header name"))?;
        Self::build("header", name, value.expose())
    }

    fn build(scheme: &'static str, name: HeaderName, value: &str) -> Result<StaticHeader, String> {
        // The message must not echo the value: it is a secret.
        let mut value = HeaderValue::from_str(value).map_err(|_| {
            "the credential contains characters not allowed in an HTTP header (a newline?)"
                .to_string()
        })?;
        value.set_sensitive(true);
        Ok(StaticHeader {
            scheme,
            names: [name],
            value,
        })
    }
}

impl fmt::Debug for StaticHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StaticHeader({}: [redacted])", self.names[0])
    }
}

impl Signer for StaticHeader {
    fn scheme(&self) -> &'static str {
        self.scheme
    }
    fn header_names(&self) -> &[HeaderName] {
        &self.names
    }
    fn sign(&self, req: &mut RequestHeader) -> Result<(), SignError> {
        req.insert_header(self.names[0].clone(), self.value.clone())
            .map_err(|e| SignError::Header(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_replaces_and_hides_value() {
        let s = StaticHeader::bearer(&Secret::new("sk-canary")).unwrap();
        let mut req = RequestHeader::build("POST", b"/v1/x", None).unwrap();
        req.insert_header("authorization", "Bearer forged").unwrap();
        s.sign(&mut req).unwrap();
        let all: Vec<_> = req.headers.get_all("authorization").iter().collect();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0], "Bearer sk-canary");
        assert!(!format!("{s:?} {req:?}").contains("sk-canary"));
    }

    #[test]
    fn bad_values_do_not_echo_the_secret() {
        let e = StaticHeader::header("x-api-key", &Secret::new("abc\ndef")).unwrap_err();
        assert!(!e.contains("abc"));
        assert!(StaticHeader::header("bad name", &Secret::new("x")).is_err());
    }
}
