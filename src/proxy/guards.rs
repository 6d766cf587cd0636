//! Checks made on a request before anything else happens to it: header size, message
//! framing (request smuggling), path shape and declared body size.

use super::errors::{Cause, SidecarError};
use crate::config::compile::Guards;
use crate::routing::has_dot_segment;
use http::header::{CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE};
use pingora::http::RequestHeader;

/// Bytes of the request line and headers, as they would appear in HTTP/1.1.
pub fn header_bytes(req: &RequestHeader) -> usize {
    req.method.as_str().len() + req.raw_path().len() + 12 + fields_bytes(&req.headers)
}

/// Bytes of header fields as HTTP/1.1 lines (`name: value` and CRLF).
pub fn fields_bytes(headers: &http::HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
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
    if let Some(name) = connection_names_end_to_end(req) {
        return Err(SidecarError::new(
            Cause::BadRequest,
            format!("Connection names {name}, which is not a hop-by-hop header"),
        ));
    }
    // `Upgrade: h2c` may be ignored (RFC 9113 §3.1: curl sends it on http:// URLs); any
    // other upgrade would need the connection handed over, which the sidecar never does.
    if let Some(up) = req.headers.get(UPGRADE) {
        if !up.as_bytes().eq_ignore_ascii_case(b"h2c") {
            return Err(SidecarError::new(
                Cause::BadRequest,
                format!(
                    "this sidecar does not proxy protocol upgrades (Upgrade: {})",
                    String::from_utf8_lossy(up.as_bytes())
                ),
            ));
        }
    }
    if has_te && !chunked_once_and_last(req) {
        return Err(SidecarError::new(
            Cause::BadFraming,
            "Transfer-Encoding must name chunked exactly once, as the last coding",
        ));
    }
    if let Some(raw) = raw_h1 {
        check_raw_head(raw)?;
        if req.version == http::Version::HTTP_11 && !req.headers.contains_key(HOST) {
            return Err(SidecarError::new(
                Cause::BadRequest,
                "an HTTP/1.1 request must carry a Host header",
            ));
        }
    }
    if has_dot_segment(req.uri.path()) {
        return Err(SidecarError::new(
            Cause::BadPath,
            "request path must not contain . or .. segments, written plainly or percent-encoded (%2e, or made a segment by %2f or %5c, at any level of encoding)",
        ));
    }
    Ok(())
}

/// True when the Transfer-Encoding values, read as one list, name `chunked` once and last
/// (`chunked, chunked` would be framed twice; `chunked, gzip` cannot be framed).
fn chunked_once_and_last(req: &RequestHeader) -> bool {
    let mut chunked = 0;
    let mut last_is_chunked = false;
    for v in req.headers.get_all(TRANSFER_ENCODING) {
        let Ok(v) = v.to_str() else { return false };
        for coding in v.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            last_is_chunked = coding.eq_ignore_ascii_case("chunked");
            chunked += usize::from(last_is_chunked);
        }
    }
    chunked == 1 && last_is_chunked
}

/// A header that `Connection` must never name: a proxy honouring the option would drop
/// the message's framing or its target.
fn connection_names_end_to_end(req: &RequestHeader) -> Option<&'static str> {
    const NEVER: [&str; 3] = ["content-length", "transfer-encoding", "host"];
    req.headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|t| NEVER.into_iter().find(|n| t.trim().eq_ignore_ascii_case(n)))
}

/// RFC 9112 lets a recipient accept a bare LF as a line end; a proxy that did, in front of
/// a server that does not, would let a client hide a header line from one of them. The
/// head must use CRLF throughout, with no stray CR.
pub fn check_raw_head(raw: &[u8]) -> Result<(), SidecarError> {
    let bare_lf = memchr::memchr_iter(b'\n', raw).any(|i| i == 0 || raw[i - 1] != b'\r');
    let bare_cr = memchr::memchr_iter(b'\r', raw).any(|i| raw.get(i + 1) != Some(&b'\n'));
    if bare_lf || bare_cr {
        return Err(SidecarError::new(
            Cause::BadFraming,
            "request head has a line that does not end in CRLF",
        ));
    }
    let request_line = &raw[..memchr::memchr(b'\r', raw).unwrap_or(raw.len())];
    if request_line.contains(&b'#') {
        return Err(SidecarError::new(
            Cause::BadPath,
            "request target must not contain a fragment (#)",
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
            header_timeout: std::time::Duration::from_secs(1),
            body_timeout: std::time::Duration::from_secs(1),
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
