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
