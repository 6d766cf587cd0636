//! `bearer` and `header`: one header carrying a key, from a pool of one or more keys.

use super::{Credential, SignContext, SignError, Signer};
use crate::config::secret::Secret;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use std::fmt;
use std::sync::Arc;

/// `Authorization: Bearer <key>` or `<name>: <key>`.
pub struct StaticHeader {
    scheme: &'static str,
    names: [HeaderName; 1],
    /// Pre-encoded value per key, marked sensitive.
    values: Vec<HeaderValue>,
}

fn encode(value: &str) -> Result<HeaderValue, String> {
    // The message must not echo the value: it is a secret.
    let mut v = HeaderValue::from_str(value).map_err(|_| {
        "the credential contains characters not allowed in an HTTP header (a newline?)".to_string()
    })?;
    v.set_sensitive(true);
    Ok(v)
}

impl StaticHeader {
    /// `keys`: (name, secret) pairs.
    pub fn bearer(keys: &[(Arc<str>, Secret)]) -> Result<StaticHeader, String> {
        let values = keys
            .iter()
            .map(|(_, k)| encode(&format!("Bearer {}", k.expose())))
            .collect::<Result<_, _>>()?;
        Ok(StaticHeader {
            scheme: "bearer",
            names: [http::header::AUTHORIZATION],
            values,
        })
    }

    pub fn header(name: &str, keys: &[(Arc<str>, Secret)]) -> Result<StaticHeader, String> {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("\"{name}\" is not a valid header name"))?;
        let values = keys
            .iter()
            .map(|(_, k)| encode(k.expose()))
            .collect::<Result<_, _>>()?;
        Ok(StaticHeader {
            scheme: "header",
            names: [name],
            values,
        })
    }
}

impl fmt::Debug for StaticHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StaticHeader({}: [redacted] x{})",
            self.names[0],
            self.values.len()
        )
    }
}

impl Signer for StaticHeader {
    fn scheme(&self) -> &'static str {
        self.scheme
    }
    fn header_names(&self) -> &[HeaderName] {
        &self.names
    }
    fn sign(&self, req: &mut RequestHeader, cx: &SignContext<'_>) -> Result<(), SignError> {
        let value = match cx.credential {
            Credential::Key(i) => self.values.get(*i),
            _ => self.values.first(),
        }
        .ok_or(SignError::MissingCredential)?;
        req.insert_header(self.names[0].clone(), value.clone())
            .map_err(|e| SignError::Header(e.to_string()))
    }
}

/// `Authorization: Bearer <token>` from an OAuth2 token source.
#[derive(Debug)]
pub struct BearerToken {
    names: [HeaderName; 1],
}

impl Default for BearerToken {
    fn default() -> Self {
        BearerToken {
            names: [http::header::AUTHORIZATION],
        }
    }
}

impl Signer for BearerToken {
    fn scheme(&self) -> &'static str {
        "oauth2"
    }
    fn header_names(&self) -> &[HeaderName] {
        &self.names
    }
    fn sign(&self, req: &mut RequestHeader, cx: &SignContext<'_>) -> Result<(), SignError> {
        let Credential::Token(t) = cx.credential else {
            return Err(SignError::MissingCredential);
        };
        req.insert_header(self.names[0].clone(), t.header().clone())
            .map_err(|e| SignError::Header(e.to_string()))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::SystemTime;

    pub fn cx<'a>(credential: &'a Credential) -> SignContext<'a> {
        SignContext {
            method: "POST",
            path_and_query: "/v1/x",
            host: "api.example.com",
            body: b"",
            body_sha256: "",
            now: SystemTime::now(),
            credential,
        }
    }

    fn keys(v: &[&str]) -> Vec<(Arc<str>, Secret)> {
        v.iter()
            .enumerate()
            .map(|(i, k)| (Arc::from(format!("k{i}")), Secret::new(*k)))
            .collect()
    }

    #[test]
    fn bearer_replaces_and_hides_value() {
        let s = StaticHeader::bearer(&keys(&["sk-canary", "sk-other"])).unwrap();
        let mut req = RequestHeader::build("POST", b"/v1/x", None).unwrap();
        req.insert_header("authorization", "Bearer forged").unwrap();
        s.sign(&mut req, &cx(&Credential::Key(1))).unwrap();
        let all: Vec<_> = req.headers.get_all("authorization").iter().collect();
        assert_eq!(all, vec!["Bearer sk-other"]);
        assert!(!format!("{s:?} {req:?}").contains("sk-"));
        assert!(matches!(
            s.sign(&mut req, &cx(&Credential::Key(9))),
            Err(SignError::MissingCredential)
        ));
    }

    #[test]
    fn bad_values_do_not_echo_the_secret() {
        let e = StaticHeader::header("x-api-key", &keys(&["abc\ndef"])).unwrap_err();
        assert!(!e.contains("abc"));
        assert!(StaticHeader::header("bad name", &keys(&["x"])).is_err());
    }
}
