//! Anthropic Messages as the shape in the middle: Bedrock Converse and Gemini answers
//! are first told as Messages events and documents, then either written as they are
//! (a Messages client) or told as OpenAI chunks by `anthropic::ChatStream` (a Chat
//! client). One set of stream rules (dense tool indexes, `{}` for empty arguments,
//! usage in the last chunk) serves every target.

use super::{anthropic, sse, Api, Error, ReplySpec, Result};
use serde_json::Value;

/// Where a stream's Messages events go.
pub enum Sink {
    /// A Chat client: the events become chunks.
    Chat(Box<anthropic::ChatStream>),
    /// A Messages client: the events are written as SSE.
    Messages { stopped: bool, failed: bool },
}

impl Sink {
    pub fn new(front: Api, spec: ReplySpec) -> Sink {
        match front {
            Api::OpenAiChat => Sink::Chat(Box::new(anthropic::ChatStream::new(spec))),
            _ => Sink::Messages {
                stopped: false,
                failed: false,
            },
        }
    }

    /// One event: `ev["type"]` is its name.
    pub fn event(&mut self, ev: &Value, out: &mut Vec<u8>) -> Result<()> {
        let ty = ev.get("type").and_then(Value::as_str).unwrap_or("");
        match self {
            Sink::Chat(c) => c.apply(ty, ev, out),
            Sink::Messages { stopped, failed } => {
                if *stopped || *failed {
                    return Ok(());
                }
                sse::named(ty, ev, out);
                match ty {
                    "message_stop" => *stopped = true,
                    "error" => *failed = true,
                    _ => {}
                }
                Ok(())
            }
        }
    }

    /// The provider's stream ended: it must have ended its message.
    pub fn end(&self) -> Result<()> {
        let (stopped, failed) = match self {
            Sink::Chat(c) => (c.stopped(), c.failed()),
            Sink::Messages { stopped, failed } => (*stopped, *failed),
        };
        if stopped || failed {
            Ok(())
        } else {
            Err(Error::new(
                "the provider's stream ended before its message did",
            ))
        }
    }

    /// The client got an error event: nothing more is sent.
    pub fn failed(&self) -> bool {
        match self {
            Sink::Chat(c) => c.failed(),
            Sink::Messages { failed, .. } => *failed,
        }
    }
}

/// A Messages document for the front: as it is for a Messages client, as a Chat
/// completion for a Chat client.
pub fn document(front: Api, doc: Value, spec: &ReplySpec) -> Result<Value> {
    match front {
        Api::OpenAiChat => anthropic::response(doc, spec),
        _ => Ok(doc),
    }
}

/// A fresh message id (targets that give none): unique within the process.
pub fn message_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", super::now_secs())
}

/// The `message_start` event of a message the target did not name.
pub fn message_start(id: String, model: &str) -> Value {
    serde_json::json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 0, "output_tokens": 0},
    }})
}

/// An Anthropic `error` event.
pub fn error_event(kind: &str, message: &str) -> Value {
    serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
}
