//! AWS event-stream framing (Bedrock's `ConverseStream`), read across network chunks.
//!
//! A message is a prelude (total length, headers length, CRC-32 of the eight bytes
//! before it), headers, the payload and a CRC-32 of everything before it; all integers
//! big-endian. A message whose lengths or checksums are wrong is an error: the stream
//! is not what it claims to be, and guessing would invent or drop events.

use super::{Error, Result};

/// The largest message accepted (AWS's own limit is 16 MiB).
const MESSAGE_LIMIT: usize = 16 << 20;

#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

/// One message: the headers that matter and the payload.
#[derive(Debug, Default)]
pub struct Message<'a> {
    /// `:message-type`: `event`, `exception` or `error`.
    pub message_type: &'a str,
    /// `:event-type` of an event (`messageStart`, `contentBlockDelta`, …).
    pub event_type: &'a str,
    /// `:exception-type` of an exception (`throttlingException`, …), or `:error-code`.
    pub exception_type: &'a str,
    pub payload: &'a [u8],
}

impl Decoder {
    /// Feeds `chunk`, calling `f` for each message it completes, in order.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut f: impl FnMut(Message<'_>) -> Result<()>,
    ) -> Result<()> {
        self.buf.extend_from_slice(chunk);
        let mut at = 0;
        let r = loop {
            let rest = &self.buf[at..];
            if rest.len() < 12 {
                break Ok(());
            }
            let total = be32(&rest[0..4]) as usize;
            let headers_len = be32(&rest[4..8]) as usize;
            if !(16..=MESSAGE_LIMIT).contains(&total) || headers_len > total - 16 {
                break Err(Error::new(
                    "the provider's event stream has a message of an impossible length",
                ));
            }
            if crc32fast::hash(&rest[..8]) != be32(&rest[8..12]) {
                break Err(Error::new(
                    "the provider's event stream has a message whose prelude checksum is wrong",
                ));
            }
            if rest.len() < total {
                break Ok(());
            }
            let msg = &rest[..total];
            if crc32fast::hash(&msg[..total - 4]) != be32(&msg[total - 4..]) {
                break Err(Error::new(
                    "the provider's event stream has a message whose checksum is wrong",
                ));
            }
            let m = match parse(
                &msg[12..12 + headers_len],
                &msg[12 + headers_len..total - 4],
            ) {
                Ok(m) => m,
                Err(e) => break Err(e),
            };
            if let Err(e) = f(m) {
                break Err(e);
            }
            at += total;
        };
        self.buf.drain(..at);
        r
    }

    /// The stream ended: bytes of a message not yet whole are an error.
    pub fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                "the provider's event stream ended in the middle of a message",
            ))
        }
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn parse<'a>(mut headers: &'a [u8], payload: &'a [u8]) -> Result<Message<'a>> {
    let bad = || Error::new("the provider's event stream has a malformed header");
    let mut m = Message {
        payload,
        ..Message::default()
    };
    while !headers.is_empty() {
        let name_len = headers[0] as usize;
        let name = headers.get(1..1 + name_len).ok_or_else(bad)?;
        let rest = &headers[1 + name_len..];
        let (&ty, rest) = rest.split_first().ok_or_else(bad)?;
        // Value sizes by type: 0/1 bool, 2 byte, 3 short, 4 int, 5 long, 6 bytes,
        // 7 string, 8 timestamp, 9 uuid.
        let (value, rest): (&[u8], &[u8]) = match ty {
            0 | 1 => (&[], rest),
            2 => split(rest, 1).ok_or_else(bad)?,
            3 => split(rest, 2).ok_or_else(bad)?,
            4 => split(rest, 4).ok_or_else(bad)?,
            5 | 8 => split(rest, 8).ok_or_else(bad)?,
            9 => split(rest, 16).ok_or_else(bad)?,
            6 | 7 => {
                let (len, rest) = split(rest, 2).ok_or_else(bad)?;
                split(rest, u16::from_be_bytes([len[0], len[1]]) as usize).ok_or_else(bad)?
            }
            _ => return Err(bad()),
        };
        if ty == 7 {
            let v = std::str::from_utf8(value).map_err(|_| bad())?;
            match name {
                b":message-type" => m.message_type = v,
                b":event-type" => m.event_type = v,
                b":exception-type" | b":error-code" => m.exception_type = v,
                _ => {}
            }
        }
        headers = rest;
    }
    Ok(m)
}

fn split(b: &[u8], n: usize) -> Option<(&[u8], &[u8])> {
    (b.len() >= n).then(|| b.split_at(n))
}
