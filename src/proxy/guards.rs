//! Checks made on a request before anything else happens to it: header size, message
//! framing (request smuggling), path shape and declared body size.

use super::errors::{Cause, SidecarError};
use crate::config::compile::Guards;
use crate::routing::has_dot_segment;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::RequestHeader;

/// Bytes of the request line and headers, as they would appear in HTTP/1.1.
pub fn header_bytes(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.uri.to_string().len() + 12;
    line + req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

pub fn check(req: &RequestHeader, guards: &Guards) -> Result<(), SidecarError> {
    let hb = header_bytes(req);
    if hb > guards.max_header_bytes {
        return Err(SidecarError::new(
            Cause::HeadersTooLarge,
            format!(
                "request headers are {hb} bytes, above this sidecar's limit of {} (request.max_header_bytes)",
                guards.max_header_bytes
            ),
        ));
    }
    let has_te = req.headers.contains_key(TRANSFER_ENCODING);
    let cls: Vec<&http::HeaderValue> = req.headers.get_all(CONTENT_LENGTH).iter().collect();
    if has_te && !cls.is_empty() {
        return Err(SidecarError::new(
            Cause::BadFraming,
            "request has both Transfer-Encoding and Content-Length; send only one",
        ));
    }
    if cls.len() > 1 || cls.first().is_some_and(|v| v.as_bytes().contains(&b',')) {
        return Err(SidecarError::new(
            Cause::BadFraming,
            "request has more than one Content-Length; send exactly one",
        ));
    }
    if let Some(v) = cls.first() {
        let n = std::str::from_utf8(v.as_bytes())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok());
        match n {
            None => {
                return Err(SidecarError::new(
                    Cause::BadFraming,
                    "Content-Length is not a number",
                ));
            }
            Some(n) if n > guards.max_body_bytes as u64 => {
                return Err(body_too_large(guards.max_body_bytes));
            }
            Some(_) => {}
        }
    }
    if has_te {
        let chunked_last = req
            .headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .last()
            .and_then(|v| v.to_str().ok())
            .and_then(|s| s.rsplit(',').next())
            .is_some_and(|s| s.trim().eq_ignore_ascii_case("chunked"));
        if !chunked_last {
            return Err(SidecarError::new(
                Cause::BadFraming,
                "Transfer-Encoding must end with chunked",
            ));
        }
    }
    if has_dot_segment(req.uri.path()) {
        return Err(SidecarError::new(
            Cause::BadPath,
            "request path must not contain . or .. segments",
        ));
    }
    Ok(())
}

pub fn body_too_large(limit: usize) -> SidecarError {
    SidecarError::new(
        Cause::BodyTooLarge,
        format!("request body is larger than this sidecar's limit of {limit} bytes (request.max_body_bytes)"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guards() -> Guards {
        Guards {
            max_header_bytes: 2048,
            max_body_bytes: 100,
        }
    }

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/v1/chat/completions", None).unwrap();
        for (n, v) in headers {
            r.append_header(n.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn framing() {
        let g = guards();
        assert!(check(&req(&[("content-length", "10")]), &g).is_ok());
        assert!(check(&req(&[("transfer-encoding", "chunked")]), &g).is_ok());
        let e = check(
            &req(&[("content-length", "10"), ("transfer-encoding", "chunked")]),
            &g,
        )
        .unwrap_err();
        assert_eq!(e.status(), 400);
        let e = check(
            &req(&[("content-length", "10"), ("content-length", "11")]),
            &g,
        )
        .unwrap_err();
        assert_eq!(e.cause, Cause::BadFraming);
        assert!(check(&req(&[("content-length", "10, 10")]), &g).is_err());
        assert!(check(&req(&[("content-length", "-1")]), &g).is_err());
        assert!(check(&req(&[("transfer-encoding", "gzip")]), &g).is_err());
    }

    #[test]
    fn sizes() {
        let g = guards();
        assert_eq!(
            check(&req(&[("content-length", "101")]), &g)
                .unwrap_err()
                .status(),
            413
        );
        let big = "x".repeat(3000);
        assert_eq!(
            check(&req(&[("x-big", &big)]), &g).unwrap_err().status(),
            431
        );
    }

    #[test]
    fn dot_segments() {
        let g = guards();
        let r = RequestHeader::build("GET", b"/openai/../admin", None).unwrap();
        assert_eq!(check(&r, &g).unwrap_err().cause, Cause::BadPath);
        let r = RequestHeader::build("GET", b"/openai/%2e%2e/admin", None).unwrap();
        assert!(check(&r, &g).is_err());
        let r = RequestHeader::build("GET", b"/openai/v1.2/x..y", None).unwrap();
        assert!(check(&r, &g).is_ok());
    }
}
