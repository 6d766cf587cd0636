//! Reading a proxy request's head: `CONNECT host:port` or an absolute-form
//! `GET http://host/path`, before deciding what to do with the connection.

use bytes::BytesMut;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The most headers a proxy request may carry.
const MAX_HEADERS: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `CONNECT host:port`.
    Authority { host: String, port: u16 },
    /// `METHOD http://host[:port]/path`.
    Absolute {
        host: String,
        port: u16,
        path_and_query: String,
    },
}

#[derive(Debug)]
pub struct Head {
    pub method: String,
    pub target: Target,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head within `buf`.
    pub len: usize,
    /// Everything read so far: the head and whatever followed it.
    pub buf: BytesMut,
}

impl Head {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn is_connect(&self) -> bool {
        matches!(self.target, Target::Authority { .. })
    }

    pub fn host_port(&self) -> (&str, u16) {
        match &self.target {
            Target::Authority { host, port } | Target::Absolute { host, port, .. } => (host, *port),
        }
    }

    /// The request rewritten for an origin server: origin-form request line, no
    /// `Proxy-*` headers, `Connection: close` (the tunnel carries one request).
    pub fn origin_form(&self) -> Vec<u8> {
        let Target::Absolute {
            host,
            port,
            path_and_query,
        } = &self.target
        else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(self.len + 32);
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path_and_query.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut has_host = false;
        for (n, v) in &self.headers {
            let lower = n.to_ascii_lowercase();
            if lower.starts_with("proxy-") || lower == "connection" || lower == "keep-alive" {
                continue;
            }
            has_host |= lower == "host";
            out.extend_from_slice(n.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
        if !has_host {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(host.as_bytes());
            if *port != 80 {
                out.extend_from_slice(format!(":{port}").as_bytes());
            }
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("connection closed before a request")]
    Closed,
    #[error("timed out waiting for the request")]
    Timeout,
    #[error("request head larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Malformed(String),
    #[error("HTTPS_PROXY port: {0}")]
    NotProxyRequest(String),
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads until a complete request head is buffered.
pub async fn read<S: AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
    timeout: Duration,
) -> Result<Head, HeadError> {
    let mut buf = BytesMut::with_capacity(2048);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if buf.len() >= max {
            return Err(HeadError::TooLarge(max));
        }
        buf.reserve(2048);
        let n = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf))
            .await
            .map_err(|_| HeadError::Timeout)??;
        if n == 0 {
            return Err(if buf.is_empty() {
                HeadError::Closed
            } else {
                HeadError::Malformed("connection closed in the middle of the request head".into())
            });
        }
        if let Some(head) = parse(&buf, max)? {
            let (method, target, headers, len) = head;
            return Ok(Head {
                method,
                target,
                headers,
                len,
                buf,
            });
        }
    }
}

type Parsed = (String, Target, Vec<(String, Vec<u8>)>, usize);

fn parse(buf: &[u8], max: usize) -> Result<Option<Parsed>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Malformed(format!(
                "more than {MAX_HEADERS} headers"
            )))
        }
        Err(e) => return Err(HeadError::Malformed(format!("not an HTTP request: {e}"))),
    };
    if len > max {
        return Err(HeadError::TooLarge(max));
    }
    let method = req.method.unwrap_or_default().to_string();
    let raw_target = req.path.unwrap_or_default();
    let target = if method == "CONNECT" {
        let (host, port) = split_authority(raw_target)?;
        let port = port.ok_or_else(|| {
            HeadError::Malformed(format!("CONNECT {raw_target}: the target needs a port"))
        })?;
        Target::Authority { host, port }
    } else {
        absolute(raw_target)?
    };
    let headers = req
        .headers
        .iter()
        .map(|h| (h.name.to_string(), h.value.to_vec()))
        .collect();
    Ok(Some((method, target, headers, len)))
}

fn absolute(raw: &str) -> Result<Target, HeadError> {
    if raw.starts_with('/') || raw == "*" {
        return Err(HeadError::NotProxyRequest(format!(
            "\"{raw}\" is a plain request, not a proxy request; send base-URL requests to the sidecar's reverse listener, or use this port as HTTPS_PROXY"
        )));
    }
    let lower = raw
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    if lower.starts_with("https://") {
        return Err(HeadError::Malformed(
            "https:// URLs go through CONNECT, not as a plain proxy request".into(),
        ));
    }
    if !lower.starts_with("http://") {
        return Err(HeadError::Malformed(format!(
            "\"{raw}\" is not an http:// URL"
        )));
    }
    let uri: http::Uri = raw
        .parse()
        .map_err(|_| HeadError::Malformed(format!("\"{raw}\" is not a valid URL")))?;
    let authority = uri
        .authority()
        .ok_or_else(|| HeadError::Malformed(format!("\"{raw}\" has no host")))?;
    let (host, port) = split_authority(authority.as_str())?;
    Ok(Target::Absolute {
        host,
        port: port.unwrap_or(80),
        path_and_query: uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
    })
}

/// `host:port` or `[v6]:port` → lower-case host (IPv6 without brackets) and port.
fn split_authority(a: &str) -> Result<(String, Option<u16>), HeadError> {
    let bad = || HeadError::Malformed(format!("\"{a}\" is not a valid host:port"));
    if a.contains('@') {
        return Err(HeadError::Malformed(
            "credentials in the target are not allowed".into(),
        ));
    }
    let (host, port) = if let Some(rest) = a.strip_prefix('[') {
        let end = rest.find(']').ok_or_else(bad)?;
        let ip: std::net::Ipv6Addr = rest[..end].parse().map_err(|_| bad())?;
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(bad()),
        };
        (ip.to_string(), port)
    } else {
        match a.rsplit_once(':') {
            // An IPv6 address must be bracketed: "::1:443" and "a:b:443" are ambiguous.
            Some((h, _)) if h.contains(':') => return Err(bad()),
            Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
            None => (a.to_ascii_lowercase(), None),
        }
    };
    let host = host.trim_end_matches('.').to_string();
    if host.is_empty()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err(bad());
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?),
        None => None,
    };
    Ok((host, port))
}

#[cfg(test)]
mod fuzz {
    //! Property tests of the CONNECT / absolute-form parser (bounded: proptest's default
    //! 256 cases each, with a fixed seed per run).
    use super::*;
    use proptest::prelude::*;

    fn label() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9]([a-zA-Z0-9-]{0,14}[a-zA-Z0-9])?"
    }

    fn host() -> impl Strategy<Value = String> {
        proptest::collection::vec(label(), 1..4).prop_map(|l| l.join("."))
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = parse(&buf, 8192);
        }

        #[test]
        fn request_like_bytes_never_panic(
            method in "(CONNECT|GET|POST|[A-Z]{1,8})",
            target in "[ -~]{0,80}",
            headers in proptest::collection::vec(("[!-9;-~]{1,20}", "[ -~\t]{0,40}"), 0..6),
            end in "(\r\n\r\n|\n\n|\r\n|)",
        ) {
            let mut raw = format!("{method} {target} HTTP/1.1\r\n");
            for (n, v) in &headers {
                raw.push_str(&format!("{n}: {v}\r\n"));
            }
            raw.push_str(&end);
            match parse(raw.as_bytes(), 8192) {
                Ok(Some((m, Target::Authority { host, port }, _, len))) => {
                    prop_assert_eq!(m, "CONNECT");
                    prop_assert!(port != 0 && !host.is_empty() && len <= raw.len());
                    prop_assert!(!host.bytes().any(|b| b.is_ascii_uppercase() || b == b'@' || b == b' '));
                    // What was accepted means one thing: written back, it parses the same.
                    let again = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
                    let back = parse(format!("CONNECT {again} HTTP/1.1\r\n\r\n").as_bytes(), 8192);
                    prop_assert!(
                        matches!(&back, Ok(Some((_, Target::Authority { host: h2, port: p2 }, _, _))) if *h2 == host && *p2 == port),
                        "{target} -> {host}:{port} -> {back:?}"
                    );
                }
                Ok(Some((m, Target::Absolute { host, port, path_and_query }, _, _))) => {
                    prop_assert_ne!(m, "CONNECT");
                    prop_assert!(port != 0 && !host.is_empty());
                    prop_assert!(path_and_query.starts_with('/'));
                }
                Ok(None) | Err(_) => {}
            }
        }

        #[test]
        fn connect_heads_parse_to_their_target_and_prefixes_wait_for_more(
            h in host(),
            port in 1u16..,
            extra in proptest::collection::vec(("[a-zA-Z][a-zA-Z0-9-]{0,15}", "[!-~]{0,30}"), 0..5),
        ) {
            let mut raw = format!("CONNECT {h}:{port} HTTP/1.1\r\nHost: {h}:{port}\r\n");
            for (n, v) in &extra {
                raw.push_str(&format!("{n}: {v}\r\n"));
            }
            raw.push_str("\r\n");
            let (m, target, headers, len) = parse(raw.as_bytes(), 8192).unwrap().unwrap();
            prop_assert_eq!(m, "CONNECT");
            prop_assert_eq!(target, Target::Authority { host: h.to_ascii_lowercase(), port });
            prop_assert_eq!(headers.len(), extra.len() + 1);
            prop_assert_eq!(len, raw.len());
            for cut in 0..raw.len() {
                prop_assert!(
                    matches!(parse(&raw.as_bytes()[..cut], 8192), Ok(None)),
                    "a prefix of {} bytes is not complete", cut
                );
            }
            // The head limit holds whatever the content.
            prop_assert!(matches!(parse(raw.as_bytes(), len - 1), Err(HeadError::TooLarge(_))));
        }

        #[test]
        fn ipv6_connect_targets_round_trip(ip in any::<std::net::Ipv6Addr>(), port in 1u16..) {
            let raw = format!("CONNECT [{ip}]:{port} HTTP/1.1\r\n\r\n");
            let (_, target, _, _) = parse(raw.as_bytes(), 8192).unwrap().unwrap();
            prop_assert_eq!(target, Target::Authority { host: ip.to_string(), port });
        }

        #[test]
        fn absolute_form_keeps_path_and_query(
            h in host(),
            port in proptest::option::of(1u16..),
            path in "(/[a-zA-Z0-9._~-]{0,12}){1,4}",
            query in proptest::option::of("[a-zA-Z0-9=&_-]{0,30}"),
        ) {
            let authority = match port { Some(p) => format!("{h}:{p}"), None => h.clone() };
            let pq = match &query { Some(q) => format!("{path}?{q}"), None => path.clone() };
            let raw = format!("POST http://{authority}{pq} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
            let (_, target, _, _) = parse(raw.as_bytes(), 8192).unwrap().unwrap();
            prop_assert_eq!(target, Target::Absolute {
                host: h.to_ascii_lowercase(),
                port: port.unwrap_or(80),
                path_and_query: pq,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn head(raw: &[u8]) -> Result<Head, HeadError> {
        let mut r = raw;
        read(&mut r, 8192, Duration::from_secs(1)).await
    }

    #[tokio::test]
    async fn connect_targets() {
        let h = head(
            b"CONNECT API.OpenAI.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n\x16\x03",
        )
        .await
        .unwrap();
        assert_eq!(
            h.target,
            Target::Authority {
                host: "api.openai.com".into(),
                port: 443
            }
        );
        assert_eq!(&h.buf[h.len..], b"\x16\x03");
        let h = head(b"CONNECT [::1]:22 HTTP/1.1\r\n\r\n").await.unwrap();
        assert_eq!(h.host_port(), ("::1", 22));
        for bad in [
            &b"CONNECT api.openai.com HTTP/1.1\r\n\r\n"[..],
            b"CONNECT a.com:0 HTTP/1.1\r\n\r\n",
            b"CONNECT a.com:99999 HTTP/1.1\r\n\r\n",
            b"CONNECT user@a.com:443 HTTP/1.1\r\n\r\n",
            b"CONNECT [::1:443 HTTP/1.1\r\n\r\n",
            b"CONNECT a b.com:443 HTTP/1.1\r\n\r\n",
            b"CONNECT ::1:443 HTTP/1.1\r\n\r\n",
            b"CONNECT a:b:443 HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(head(bad).await, Err(HeadError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[tokio::test]
    async fn absolute_form_is_rewritten_for_the_origin() {
        let h = head(b"POST http://example.com:8080/v1/x?y=1 HTTP/1.1\r\nHost: example.com:8080\r\nProxy-Authorization: Basic eA==\r\nProxy-Connection: keep-alive\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi")
            .await
            .unwrap();
        assert_eq!(h.host_port(), ("example.com", 8080));
        assert_eq!(h.header("proxy-authorization"), Some(&b"Basic eA=="[..]));
        let o = String::from_utf8(h.origin_form()).unwrap();
        assert_eq!(
            o,
            "POST /v1/x?y=1 HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
        let h = head(b"GET http://example.com HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8(h.origin_form()).unwrap(),
            "GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n"
        );
    }

    #[tokio::test]
    async fn non_proxy_requests_are_explained() {
        assert!(matches!(
            head(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n").await,
            Err(HeadError::NotProxyRequest(_))
        ));
        assert!(matches!(
            head(b"GET https://a.com/ HTTP/1.1\r\n\r\n").await,
            Err(HeadError::Malformed(_))
        ));
        assert!(matches!(head(b"").await, Err(HeadError::Closed)));
        assert!(matches!(
            head(b"CONNECT a.com:443 HTTP/1.1\r\n").await,
            Err(HeadError::Malformed(_))
        ));
        let big = format!(
            "CONNECT a.com:443 HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(9000)
        );
        assert!(matches!(
            head(big.as_bytes()).await,
            Err(HeadError::TooLarge(_))
        ));
    }
}
