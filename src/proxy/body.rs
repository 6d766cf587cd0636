//! The request body: read whole (every attempt replays it from memory), hashed once for
//! the signers that need it, and rewritten as JSON where the sidecar must (the output
//! cap under a token budget, the model of a fallback target).

use crate::config::compile::Guards;
use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use pingora::proxy::Session;
use pingora::{Error, ErrorType};

pub enum BodyError {
    TooLarge,
    /// Silent for longer than `request.body_timeout`.
    Timeout,
    /// Bad chunked framing; Pingora's own description.
    Malformed(String),
    /// The client hung up or its connection failed.
    Client(Box<Error>),
}

impl BodyError {
    fn from_read(e: Box<Error>) -> BodyError {
        match e.etype() {
            ErrorType::ReadTimedout => BodyError::Timeout,
            // Pingora's `INVALID_CHUNK` and `INVALID_TRAILER_END` are crate-private; their
            // names are what they export.
            ErrorType::Custom("InvalidChunk" | "InvalidTrailerEnd")
            | ErrorType::InvalidHTTPHeader => BodyError::Malformed(
                e.context
                    .as_ref()
                    .map(|c| c.as_str().to_owned())
                    .unwrap_or_default(),
            ),
            _ => BodyError::Client(e),
        }
    }
}

/// Reads the whole request body, refusing it past `max` bytes. A body that arrives in one
/// piece (the usual case) is kept without copying.
pub async fn read(session: &mut Session, guards: &Guards) -> std::result::Result<Bytes, BodyError> {
    if session.is_body_empty() {
        return Ok(Bytes::new());
    }
    let max = guards.max_body_bytes;
    session
        .downstream_session
        .set_read_timeout(Some(guards.body_timeout));
    let mut first: Option<Bytes> = None;
    let mut buf: Option<BytesMut> = None;
    let mut total = 0usize;
    while let Some(chunk) = session
        .read_request_body()
        .await
        .map_err(BodyError::from_read)?
    {
        total += chunk.len();
        if total > max {
            return Err(BodyError::TooLarge);
        }
        match (&mut first, &mut buf) {
            (None, None) => first = Some(chunk),
            (Some(f), None) => {
                let cap = session
                    .req_header()
                    .headers
                    .get(CONTENT_LENGTH)
                    .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                    .unwrap_or(total * 2)
                    .min(max);
                let mut b = BytesMut::with_capacity(cap.max(total));
                b.extend_from_slice(f);
                b.extend_from_slice(&chunk);
                first = None;
                buf = Some(b);
            }
            (_, Some(b)) => b.extend_from_slice(&chunk),
        }
    }
    Ok(match (first, buf) {
        (Some(f), None) => f,
        (_, Some(b)) => b.freeze(),
        (None, None) => Bytes::new(),
    })
}

/// Hex SHA-256 of a body, computed once per exchange. Large bodies are hashed on the
/// blocking pool so a 32 MiB upload does not stall the worker thread for ~20 ms.
pub async fn sha256_hex(body: &Bytes) -> String {
    use sha2::{Digest, Sha256};
    const INLINE_LIMIT: usize = 256 * 1024;
    if body.len() <= INLINE_LIMIT {
        return hex::encode(Sha256::digest(body));
    }
    let b = body.clone();
    match tokio::task::spawn_blocking(move || hex::encode(Sha256::digest(&b))).await {
        Ok(h) => h,
        Err(_) => hex::encode(Sha256::digest(body)),
    }
}

/// A JSON object body edited by `f` and serialized again (None: not a JSON object).
fn edit_json(
    body: &Bytes,
    f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Option<Bytes> {
    let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
    f(v.as_object_mut()?);
    serde_json::to_vec(&v).ok().map(Bytes::from)
}

/// The JSON body with its output cap lowered to `cap` (token budget clamping): every
/// cap field the request used, else `max_tokens`.
pub fn with_max_tokens(body: &Bytes, cap: u64) -> Option<Bytes> {
    edit_json(body, |o| {
        let mut set = false;
        for k in ["max_tokens", "max_completion_tokens", "max_output_tokens"] {
            if o.contains_key(k) {
                o.insert(k.into(), cap.into());
                set = true;
            }
        }
        if !set {
            o.insert("max_tokens".into(), cap.into());
        }
    })
}

/// The JSON body with its top-level `model` replaced (for a fallback target).
pub fn with_model(body: &Bytes, model: &str) -> Option<Bytes> {
    edit_json(body, |o| {
        o.insert("model".into(), serde_json::Value::from(model));
    })
}
