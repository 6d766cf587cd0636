//! Checks made on a request before anything else happens to it: header size, message
//! framing (request smuggling), path shape and declared body size.

use super::errors::{Cause, SidecarError};
use crate::config::compile::Guards;
use crate::routing::has_dot_segment;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use pingora::http::RequestHeader;

/// Bytes of the request line and headers, as they would appear in HTTP/1.1.
pub fn header_bytes(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    line + req
        .headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>()
}

/// True when raw HTTP/1 header bytes carry a `Content-Length` line. Pingora drops
/// Content-Length from the parsed header when Transfer-Encoding is also present (as RFC
/// 9112 allows a recipient to), so double framing is only visible in the raw bytes.
pub fn raw_has_content_length(raw: &[u8]) -> bool {
    raw.split(|b| *b == b'\n')
        .skip(1)
        .any(|line| line.len() > 15 && line[..15].eq_ignore_ascii_case(b"content-length:"))
}

/// `raw_h1`: the request's raw header bytes when it came over HTTP/1.
pub fn check(
    req: &RequestHeader,
    raw_h1: Option<&[u8]>,
    guards: &Guards,
) -> Result<(), SidecarError> {
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
    let mut cls = req.headers.get_all(CONTENT_LENGTH).iter();
    let first_cl = cls.next();
    let repeated_cl = cls.next().is_some();
    if has_te && (first_cl.is_some() || raw_h1.is_some_and(raw_has_content_length)) {
        return Err(SidecarError::new(
            Cause::BadFraming,
            "request has both Transfer-Encoding and Content-Length; send only one",
        ));
    }
    if repeated_cl || first_cl.is_some_and(|v| v.as_bytes().contains(&b',')) {
        // Pingora already collapses identical repeats and refuses differing ones; this
        // catches what reaches us another way (HTTP/2, say).
        return Err(SidecarError::new(
            Cause::BadFraming,
            "request has more than one Content-Length; send exactly one",
        ));
    }
    if let Some(v) = first_cl {
        let n = std::str::from_utf8(v.as_bytes())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok());
        if n.is_none() {
            return Err(SidecarError::new(
                Cause::BadFraming,
                "Content-Length is not a number",
            ));
        }
    }
    if has_te {
        let chunked_last = req
            .headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
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

/// A declared body above the limit is refused before any of it is read.
pub fn check_declared_length(req: &RequestHeader, guards: &Guards) -> Result<(), SidecarError> {
    let declared = req
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok());
    match declared {
        Some(n) if n > guards.max_body_bytes as u64 => Err(body_too_large(guards.max_body_bytes)),
        _ => Ok(()),
    }
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
        assert!(check(&req(&[("content-length", "10")]), None, &g).is_ok());
        assert!(check(&req(&[("transfer-encoding", "chunked")]), None, &g).is_ok());
        let e = check(
            &req(&[("content-length", "10"), ("transfer-encoding", "chunked")]),
            None,
            &g,
        )
        .unwrap_err();
        assert_eq!(e.status(), 400);
        let e = check(
            &req(&[("content-length", "10"), ("content-length", "11")]),
            None,
            &g,
        )
        .unwrap_err();
        assert_eq!(e.cause, Cause::BadFraming);
        assert!(check(&req(&[("content-length", "10, 10")]), None, &g).is_err());
        assert!(check(&req(&[("content-length", "-1")]), None, &g).is_err());
        assert!(check(&req(&[("transfer-encoding", "gzip")]), None, &g).is_err());
    }

    #[test]
    fn raw_double_framing() {
        let raw = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(raw_has_content_length(raw));
        assert!(!raw_has_content_length(
            b"POST /content-length: HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        ));
        let g = guards();
        let e = check(&req(&[("transfer-encoding", "chunked")]), Some(raw), &g).unwrap_err();
        assert_eq!(e.cause, Cause::BadFraming);
    }

    #[test]
    fn sizes() {
        let g = guards();
        assert!(check(&req(&[("content-length", "101")]), None, &g).is_ok());
        let e = check_declared_length(&req(&[("content-length", "101")]), &g).unwrap_err();
        assert_eq!(e.status(), 413);
        assert!(check_declared_length(&req(&[("content-length", "100")]), &g).is_ok());
        let big = "x".repeat(3000);
        assert_eq!(
            check(&req(&[("x-big", &big)]), None, &g)
                .unwrap_err()
                .status(),
            431
        );
    }

    #[test]
    fn dot_segments() {
        let g = guards();
        let r = RequestHeader::build("GET", b"/openai/../admin", None).unwrap();
        assert_eq!(check(&r, None, &g).unwrap_err().cause, Cause::BadPath);
        let r = RequestHeader::build("GET", b"/openai/%2e%2e/admin", None).unwrap();
        assert!(check(&r, None, &g).is_err());
        let r = RequestHeader::build("GET", b"/openai/v1.2/x..y", None).unwrap();
        assert!(check(&r, None, &g).is_ok());
    }
}
