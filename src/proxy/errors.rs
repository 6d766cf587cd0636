//! Responses the sidecar writes itself.
//!
//! They use the shape of the provider the request was for, so SDKs surface a readable
//! message: OpenAI-style `{"error":{"message","type","code"}}` or Anthropic-style
//! `{"type":"error","error":{"type","message"}}`. Every one carries
//! `x-llm-sidecar-error: <cause>` so operators can tell a sidecar answer from a provider
//! answer. Messages never contain secrets, file paths or internal error chains.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Which provider's error JSON to answer with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorStyle {
    OpenAi,
    Anthropic,
}

impl ErrorStyle {
    /// The error shape of an API's clients.
    pub fn of(api: crate::translate::Api) -> ErrorStyle {
        match api {
            crate::translate::Api::AnthropicMessages => ErrorStyle::Anthropic,
            _ => ErrorStyle::OpenAi,
        }
    }

    /// For requests that matched no route: guess from what the client sent.
    pub fn guess(req: &pingora::http::RequestHeader) -> ErrorStyle {
        if req.headers.contains_key("anthropic-version") || req.uri.path().ends_with("/messages") {
            ErrorStyle::Anthropic
        } else {
            ErrorStyle::OpenAi
        }
    }
}

/// Why the sidecar answered instead of the provider. The string form is the value of the
/// `x-llm-sidecar-error` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    NoRoute,
    /// An intercepted connection carried a request for another host.
    Misdirected,
    ProviderDisabled,
    HeadersTooLarge,
    BodyTooLarge,
    BadFraming,
    BadPath,
    BadRequest,
    /// The client went silent while sending its request body.
    ClientTimeout,
    UpstreamDns,
    ConnectTimeout,
    UpstreamConnect,
    /// The sidecar itself could not open a connection: no local port or file descriptor
    /// left. Not the provider's failure: its breaker does not count it.
    LocalConnect,
    UpstreamTls,
    UpstreamProtocol,
    UpstreamReset,
    FirstByteTimeout,
    IdleTimeout,
    TotalTimeout,
    ShuttingDown,
    /// The provider's circuit breaker is open (and no fallback could take the request).
    CircuitOpen,
    /// A `limits` rule: request rate, token budget, concurrency.
    RateLimited,
    TokenBudget,
    ConcurrencyLimited,
    /// A shared limit's backend is unreachable, the local lease is spent and
    /// `on_backend_failure` is `deny`.
    LimitsBackendDown,
    KeysUnavailable,
    TokenUnavailable,
    TenantMissing,
    TenantUntrusted,
    TenantUnknown,
    KeyMissing,
    KeyUnknown,
    SigningFailed,
    /// The request cannot be put in the target's API (docs/unified-api.md).
    Untranslatable,
    /// The provider's answer cannot be put in the client's API.
    Translation,
    Internal,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::NoRoute => "no_route",
            Cause::Misdirected => "misdirected_request",
            Cause::ProviderDisabled => "provider_disabled",
            Cause::HeadersTooLarge => "headers_too_large",
            Cause::BodyTooLarge => "body_too_large",
            Cause::BadFraming => "bad_framing",
            Cause::BadPath => "bad_path",
            Cause::BadRequest => "bad_request",
            Cause::ClientTimeout => "client_timeout",
            Cause::UpstreamDns => "upstream_dns",
            Cause::ConnectTimeout => "upstream_timeout_connect",
            Cause::UpstreamConnect => "upstream_connect",
            Cause::LocalConnect => "local_connect",
            Cause::UpstreamTls => "upstream_tls",
            Cause::UpstreamProtocol => "upstream_protocol",
            Cause::UpstreamReset => "upstream_reset",
            Cause::FirstByteTimeout => "upstream_timeout_first_byte",
            Cause::IdleTimeout => "upstream_timeout_idle",
            Cause::TotalTimeout => "upstream_timeout_total",
            Cause::ShuttingDown => "shutting_down",
            Cause::CircuitOpen => "circuit_open",
            Cause::RateLimited => "rate_limited",
            Cause::TokenBudget => "token_budget_exceeded",
            Cause::ConcurrencyLimited => "concurrency_limited",
            Cause::LimitsBackendDown => "limits_backend_unavailable",
            Cause::KeysUnavailable => "keys_unavailable",
            Cause::TokenUnavailable => "token_unavailable",
            Cause::TenantMissing => "tenant_missing",
            Cause::TenantUntrusted => "tenant_untrusted",
            Cause::TenantUnknown => "tenant_unknown",
            Cause::KeyMissing => "key_missing",
            Cause::KeyUnknown => "key_unknown",
            Cause::SigningFailed => "signing_failed",
            Cause::Untranslatable => "untranslatable_request",
            Cause::Translation => "translation",
            Cause::Internal => "internal",
        }
    }

    /// An error about the request's framing or the client's pace: bytes of it may be
    /// left unread, so the connection is closed after the answer.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Cause::Misdirected
                | Cause::HeadersTooLarge
                | Cause::BodyTooLarge
                | Cause::BadFraming
                | Cause::BadPath
                | Cause::BadRequest
                | Cause::ClientTimeout
        )
    }

    pub fn status(self) -> u16 {
        match self {
            Cause::NoRoute => 404,
            Cause::Misdirected => 421,
            Cause::RateLimited | Cause::TokenBudget | Cause::ConcurrencyLimited => 429,
            Cause::ProviderDisabled
            | Cause::ShuttingDown
            | Cause::CircuitOpen
            | Cause::LocalConnect
            | Cause::LimitsBackendDown
            | Cause::KeysUnavailable
            | Cause::TokenUnavailable => 503,
            Cause::TenantMissing => 400,
            Cause::KeyMissing | Cause::KeyUnknown => 401,
            Cause::TenantUntrusted | Cause::TenantUnknown => 403,
            Cause::SigningFailed => 500,
            Cause::HeadersTooLarge => 431,
            Cause::BodyTooLarge => 413,
            Cause::BadFraming | Cause::BadPath | Cause::BadRequest | Cause::Untranslatable => 400,
            Cause::ClientTimeout => 408,
            Cause::UpstreamDns
            | Cause::UpstreamConnect
            | Cause::UpstreamTls
            | Cause::UpstreamProtocol
            | Cause::UpstreamReset
            | Cause::Translation => 502,
            Cause::ConnectTimeout
            | Cause::FirstByteTimeout
            | Cause::IdleTimeout
            | Cause::TotalTimeout => 504,
            Cause::Internal => 500,
        }
    }
}

/// An answer the sidecar makes itself.
#[derive(Clone, Debug)]
pub struct SidecarError {
    pub cause: Cause,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// More response headers (`x-ratelimit-*` on a 429).
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
}

impl SidecarError {
    pub fn new(cause: Cause, message: impl Into<String>) -> SidecarError {
        SidecarError {
            cause,
            message: message.into(),
            retry_after_secs: None,
            headers: Vec::new(),
        }
    }

    pub fn status(&self) -> u16 {
        self.cause.status()
    }

    /// The JSON body in the given provider's shape.
    pub fn body(&self, style: ErrorStyle) -> Bytes {
        let status = self.status();
        let v = match style {
            ErrorStyle::OpenAi => serde_json::json!({
                "error": {
                    "message": self.message,
                    "type": openai_type(status),
                    "param": null,
                    "code": self.cause.as_str(),
                }
            }),
            ErrorStyle::Anthropic => serde_json::json!({
                "type": "error",
                "error": {
                    "type": anthropic_type(status),
                    "message": self.message,
                }
            }),
        };
        Bytes::from(v.to_string())
    }

    pub fn response_header(&self, body_len: usize) -> Result<ResponseHeader> {
        let mut h = ResponseHeader::build(self.status(), Some(5))?;
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())?;
        h.insert_header(http::header::CACHE_CONTROL, "no-store")?;
        h.insert_header("x-llm-sidecar-error", self.cause.as_str())?;
        if let Some(s) = self.retry_after_secs {
            h.insert_header(http::header::RETRY_AFTER, s.to_string())?;
        }
        for (n, v) in &self.headers {
            h.insert_header(n.clone(), v.clone())?;
        }
        Ok(h)
    }

    /// Writes the whole response. `keepalive: false` closes an HTTP/1 connection after it
    /// (when request bytes may be left unread, say).
    pub async fn write(
        &self,
        session: &mut Session,
        style: ErrorStyle,
        keepalive: bool,
    ) -> Result<()> {
        let body = self.body(style);
        let header = self.response_header(body.len())?;
        if !keepalive {
            session.set_keepalive(None);
        }
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    }
}

use crate::translate::{anthropic_error_type as anthropic_type, openai_error_type as openai_type};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let e = SidecarError::new(Cause::NoRoute, "no route for /x");
        let o: serde_json::Value = serde_json::from_slice(&e.body(ErrorStyle::OpenAi)).unwrap();
        assert_eq!(o["error"]["message"], "no route for /x");
        assert_eq!(o["error"]["code"], "no_route");
        assert_eq!(o["error"]["type"], "not_found_error");
        let a: serde_json::Value = serde_json::from_slice(&e.body(ErrorStyle::Anthropic)).unwrap();
        assert_eq!(a["type"], "error");
        assert_eq!(a["error"]["type"], "not_found_error");
        let h = SidecarError::new(Cause::FirstByteTimeout, "t")
            .response_header(3)
            .unwrap();
        assert_eq!(h.status.as_u16(), 504);
        assert_eq!(
            h.headers["x-llm-sidecar-error"],
            "upstream_timeout_first_byte"
        );
    }
}
