//! `hmac`: a request signature for gateways that authenticate callers by a shared secret.
//!
//! The string signed is, with `\n` between the parts and no trailing newline:
//!
//! ```text
//! METHOD
//! PATH?QUERY        the path and query exactly as sent upstream (no `?` without a query)
//! TIMESTAMP         Unix time in ms (or s), the same value as the timestamp header
//! NONCE             16 characters from [a-z0-9], new for every attempt
//! hex(SHA256(body)) lowercase; for an empty body e3b0c442...b855
//! ```
//!
//! It is signed with HMAC-SHA256 and sent base64-encoded (standard alphabet, padded) in
//! `X-Signature`, along with `X-Timestamp`, `X-Nonce` and `X-Key-Id` (names configurable).
//! `docs/configuration.md#hmac` has a worked example to reproduce with `openssl dgst`.

use super::{Credential, SignContext, SignError, Signer};
use crate::config::secret::Secret;
use base64::Engine;
use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use std::fmt;
use std::time::UNIX_EPOCH;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampUnit {
    Millis,
    Seconds,
}

/// Header names the signer writes.
#[derive(Clone, Debug)]
pub struct HmacHeaders {
    pub signature: HeaderName,
    pub timestamp: HeaderName,
    pub nonce: HeaderName,
    pub key_id: HeaderName,
}

impl Default for HmacHeaders {
    fn default() -> Self {
        HmacHeaders {
            signature: HeaderName::from_static("x-signature"),
            timestamp: HeaderName::from_static("x-timestamp"),
            nonce: HeaderName::from_static("x-nonce"),
            key_id: HeaderName::from_static("x-key-id"),
        }
    }
}

struct HmacKey {
    key_id: HeaderValue,
    key: ring::hmac::Key,
}

pub struct HmacSigner {
    headers: HmacHeaders,
    names: [HeaderName; 4],
    unit: TimestampUnit,
    keys: Vec<HmacKey>,
}

impl fmt::Debug for HmacSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&HeaderValue> = self.keys.iter().map(|k| &k.key_id).collect();
        write!(f, "HmacSigner(key ids {ids:?}, secrets [redacted])")
    }
}

/// One signing key: the id sent in `X-Key-Id`, and the secret.
pub struct HmacKeySpec {
    pub key_id: String,
    pub secret: Secret,
}

impl HmacSigner {
    pub fn new(
        headers: HmacHeaders,
        unit: TimestampUnit,
        keys: Vec<HmacKeySpec>,
    ) -> Result<HmacSigner, String> {
        let keys = keys
            .into_iter()
            .map(|k| {
                let key_id = HeaderValue::from_str(&k.key_id)
                    .map_err(|_| format!("key id \"{}\" is not valid in a header", k.key_id))?;
                Ok(HmacKey {
                    key_id,
                    key: ring::hmac::Key::new(
                        ring::hmac::HMAC_SHA256,
                        k.secret.expose().as_bytes(),
                    ),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let names = [
            headers.signature.clone(),
            headers.timestamp.clone(),
            headers.nonce.clone(),
            headers.key_id.clone(),
        ];
        Ok(HmacSigner {
            headers,
            names,
            unit,
            keys,
        })
    }
}

/// Random bytes from the OS, fetched 4 KiB at a time per thread: one syscall serves
/// about 250 nonces.
fn random_bytes(out: &mut [u8]) {
    use std::cell::RefCell;
    thread_local! {
        static POOL: RefCell<(Box<[u8; 4096]>, usize)> = RefCell::new((Box::new([0u8; 4096]), 4096));
    }
    POOL.with(|pool| {
        let (buf, used) = &mut *pool.borrow_mut();
        let mut filled = 0;
        while filled < out.len() {
            if *used == buf.len() {
                if getrandom::fill(&mut buf[..]).is_err() {
                    // The OS source does not fail on Linux once booted; never stall a
                    // request over it: fall back to the clock, mixed.
                    let t = std::time::SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos());
                    for (i, b) in buf.iter_mut().enumerate() {
                        *b = (t.rotate_left((i % 128) as u32) as u8) ^ (i as u8).wrapping_mul(31);
                    }
                }
                *used = 0;
            }
            let n = (out.len() - filled).min(buf.len() - *used);
            out[filled..filled + n].copy_from_slice(&buf[*used..*used + n]);
            *used += n;
            filled += n;
        }
    });
}

/// 16 characters from `[a-z0-9]`, uniformly, from the OS random source.
pub fn nonce() -> [u8; 16] {
    const ALPHABET: &[u8; 36] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = [0u8; 16];
    let mut filled = 0;
    let mut b = [0u8; 1];
    while filled < out.len() {
        random_bytes(&mut b);
        // 252 = 7 * 36: rejecting the rest keeps the characters uniform.
        if b[0] < 252 {
            out[filled] = ALPHABET[usize::from(b[0] % 36)];
            filled += 1;
        }
    }
    out
}

/// The exact string that is signed.
pub fn canonical(
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    nonce: &str,
    body_sha256: &str,
) -> String {
    let mut s = String::with_capacity(
        method.len() + path_and_query.len() + timestamp.len() + nonce.len() + 68,
    );
    for (i, part) in [method, path_and_query, timestamp, nonce, body_sha256]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(part);
    }
    s
}

impl Signer for HmacSigner {
    fn scheme(&self) -> &'static str {
        "hmac"
    }
    fn header_names(&self) -> &[HeaderName] {
        &self.names
    }
    fn needs_body_hash(&self) -> bool {
        true
    }
    fn sign(&self, req: &mut RequestHeader, cx: &SignContext<'_>) -> Result<(), SignError> {
        let key = match cx.credential {
            Credential::Key(i) => self.keys.get(*i),
            _ => self.keys.first(),
        }
        .ok_or(SignError::MissingCredential)?;
        let since = cx.now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let timestamp = match self.unit {
            TimestampUnit::Millis => since.as_millis().to_string(),
            TimestampUnit::Seconds => since.as_secs().to_string(),
        };
        let nonce = nonce();
        // The alphabet is ASCII.
        let nonce = std::str::from_utf8(&nonce).unwrap_or_default();
        let to_sign = canonical(
            cx.method,
            cx.path_and_query,
            &timestamp,
            nonce,
            cx.body_sha256,
        );
        let tag = ring::hmac::sign(&key.key, to_sign.as_bytes());
        let signature = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        let header =
            |v: &str| HeaderValue::from_str(v).map_err(|e| SignError::Header(e.to_string()));
        let mut sig_value = header(&signature)?;
        sig_value.set_sensitive(true);
        let h = &self.headers;
        let mut put = |n: &HeaderName, v: HeaderValue| {
            req.insert_header(n.clone(), v)
                .map_err(|e| SignError::Header(e.to_string()))
        };
        put(&h.signature, sig_value)?;
        put(&h.timestamp, header(&timestamp)?)?;
        put(&h.nonce, header(nonce)?)?;
        put(&h.key_id, key.key_id.clone())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::static_key::tests::cx;
    use sha2::Digest;

    #[test]
    fn nonces_are_16_lowercase_alphanumerics_and_differ() {
        let a = nonce();
        let b = nonce();
        assert_ne!(a, b);
        assert!(a
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
    }

    #[test]
    fn canonical_form() {
        assert_eq!(
            canonical("GET", "/v1/models?x=1", "1700000000000", "abc", "e3"),
            "GET\n/v1/models?x=1\n1700000000000\nabc\ne3"
        );
    }

    #[test]
    fn signs_a_known_vector() {
        // Computed independently with openssl:
        //   H=$(printf '%s' '{"model":"m"}' | openssl dgst -sha256 | awk '{print $2}')
        //   printf 'POST\n/v1/chat\n1700000000000\nn0nce0000000000a\n%s' "$H" |
        //     openssl dgst -sha256 -hmac secret -binary | base64
        let body = br#"{"model":"m"}"#;
        let hash = hex::encode(sha2::Sha256::digest(body));
        assert_eq!(
            hash,
            "548f58d1c36c715b44f0863472074a97c448d5b8d18164b92adf55592b127f86"
        );
        let to_sign = canonical(
            "POST",
            "/v1/chat",
            "1700000000000",
            "n0nce0000000000a",
            &hash,
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"secret");
        let sig = base64::engine::general_purpose::STANDARD
            .encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        assert_eq!(sig, "XG5PZIrd3FMAyLX6e0ZKtK3Joxt9JW6dUuOoSM2IrnQ=");
    }

    /// The worked example in docs/configuration.md#hmac, so the documentation cannot drift.
    #[test]
    fn the_documented_example() {
        let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
        let hash = hex::encode(sha2::Sha256::digest(body));
        assert_eq!(
            hash,
            "c0d337f2f8840199018ef48c91537b37c6fb1636594bb1bd3692a2b8ee83ac00"
        );
        let to_sign = canonical(
            "POST",
            "/v1/chat/completions",
            "1700000000000",
            "k3j9x0q2m5p7a1b4",
            &hash,
        );
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let sig = base64::engine::general_purpose::STANDARD
            .encode(ring::hmac::sign(&key, to_sign.as_bytes()).as_ref());
        assert_eq!(sig, "58T+/klf/aJ0u1t0uijfLnOHS5hOsEKUBbsTorf7V0I=");
    }

    #[test]
    fn writes_all_four_headers_with_a_fresh_nonce() {
        let s = HmacSigner::new(
            HmacHeaders::default(),
            TimestampUnit::Seconds,
            vec![HmacKeySpec {
                key_id: "app-1".into(),
                secret: Secret::new("s3cret"),
            }],
        )
        .unwrap();
        let cred = Credential::Key(0);
        let mut a = RequestHeader::build("POST", b"/v1/x", None).unwrap();
        let mut b = RequestHeader::build("POST", b"/v1/x", None).unwrap();
        s.sign(&mut a, &cx(&cred)).unwrap();
        s.sign(&mut b, &cx(&cred)).unwrap();
        assert_eq!(a.headers["x-key-id"], "app-1");
        assert_ne!(
            a.headers["x-nonce"], b.headers["x-nonce"],
            "every attempt gets a fresh nonce"
        );
        assert_eq!(a.headers["x-timestamp"].len(), 10, "seconds");
        assert!(!format!("{s:?}").contains("s3cret"));
    }
}
