//! W3C trace context (`traceparent` / `tracestate`).
//!
//! ```text
//!  client  traceparent: 00-<trace id>-<client span>-<flags>     valid: joined
//!                                                               absent/invalid: new trace
//!  sidecar one span per upstream attempt, a child of the client's span
//!  upstream traceparent: 00-<same trace id>-<attempt span>-<flags>, tracestate as sent
//! ```
//!
//! Ids come from a per-thread generator seeded from the OS: no syscall, lock or
//! allocation per request.

use http::HeaderValue;
use std::cell::Cell;
use std::fmt::Write as _;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The trace a request belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The client's span (None: the sidecar started the trace).
    pub parent: Option<[u8; 8]>,
    pub flags: u8,
    /// The client's `tracestate`, passed on untouched (only with a valid parent).
    pub state: Option<HeaderValue>,
}

impl TraceContext {
    /// Joins the trace in `headers`, or starts a new one (sampled).
    pub fn from_headers(headers: &http::HeaderMap) -> TraceContext {
        let parsed = headers
            .get(TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        match parsed {
            Some((trace_id, parent, flags)) => TraceContext {
                trace_id,
                parent: Some(parent),
                flags,
                state: headers.get(TRACESTATE).filter(|v| v.len() <= 512).cloned(),
            },
            None => TraceContext::root(),
        }
    }

    /// A new trace, sampled, started by the sidecar.
    pub fn root() -> TraceContext {
        TraceContext {
            trace_id: new_trace_id(),
            parent: None,
            flags: 0x01,
            state: None,
        }
    }

    pub fn sampled(&self) -> bool {
        self.flags & 0x01 == 1
    }

    /// The `traceparent` an upstream attempt with span `span` sends.
    pub fn child_header(&self, span: [u8; 8]) -> HeaderValue {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        push_hex(&mut s, &self.trace_id);
        s.push('-');
        push_hex(&mut s, &span);
        let _ = write!(s, "-{:02x}", self.flags);
        HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// A trace id for log fields: lowercase hex, written only when a line is (empty: none).
pub struct TraceId(pub Option<[u8; 16]>);

impl std::fmt::Display for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(id) => id.iter().try_for_each(|b| write!(f, "{b:02x}")),
            None => Ok(()),
        }
    }
}

fn push_hex(s: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
}

/// `00-<32 hex>-<16 hex>-<2 hex>` (a higher version may append `-...`). Lowercase hex
/// only; all-zero ids are invalid; version `ff` is invalid.
pub fn parse_traceparent(v: &str) -> Option<([u8; 16], [u8; 8], u8)> {
    let v = v.trim();
    let b = v.as_bytes();
    if b.len() < 55 || b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    let lower_hex = |s: &[u8]| s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let (version, trace, span, flags) = (&b[0..2], &b[3..35], &b[36..52], &b[53..55]);
    if ![version, trace, span, flags].iter().all(|p| lower_hex(p)) || version == b"ff" {
        return None;
    }
    // version 00 is exactly 55 bytes; later versions may add fields after a '-'
    if (version == b"00" && b.len() != 55) || (b.len() > 55 && b[55] != b'-') {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    let mut f = [0u8; 1];
    hex::decode_to_slice(trace, &mut trace_id).ok()?;
    hex::decode_to_slice(span, &mut span_id).ok()?;
    hex::decode_to_slice(flags, &mut f).ok()?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some((trace_id, span_id, f[0]))
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // no OS randomness: mix the clock and the thread's address
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        return t ^ (&b as *const _ as u64).rotate_left(32);
    }
    u64::from_le_bytes(b) | 1
}

/// splitmix64: fast, and a full 64-bit period; ids need uniqueness, not secrecy.
fn next_u64() -> u64 {
    RNG.with(|r| {
        let mut z = r.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        r.set(z);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

pub fn new_span_id() -> [u8; 8] {
    loop {
        let id = next_u64();
        if id != 0 {
            return id.to_le_bytes();
        }
    }
}

pub fn new_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&new_span_id());
    id[8..].copy_from_slice(&next_u64().to_le_bytes());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_w3c_example_and_rejects_bad_ones() {
        let (t, s, f) = parse_traceparent(GOOD).unwrap();
        assert_eq!(hex::encode(t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex::encode(s), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // a future version may carry more fields
        assert!(parse_traceparent(&format!("01{}-ab", &GOOD[2..])).is_some());
    }

    #[test]
    fn children_keep_the_trace_and_flags() {
        let mut h = http::HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(GOOD));
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=abc"));
        let cx = TraceContext::from_headers(&h);
        assert_eq!(cx.state.as_ref().unwrap(), "vendor=abc");
        let span = new_span_id();
        let child = cx.child_header(span);
        let (t, s, f) = parse_traceparent(child.to_str().unwrap()).unwrap();
        assert_eq!((t, s, f), (cx.trace_id, span, 1));
        // no or a broken header: a new sampled trace, and no tracestate passed on
        h.insert(TRACEPARENT, HeaderValue::from_static("garbage"));
        let cx = TraceContext::from_headers(&h);
        assert!(cx.parent.is_none() && cx.state.is_none() && cx.sampled());
        assert_ne!(cx.trace_id, [0; 16]);
        assert_ne!(new_trace_id(), new_trace_id());
    }
}
