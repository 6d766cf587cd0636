//! Server-sent events, read across network chunks and written back.

/// The most of one event kept while waiting for its end.
pub const EVENT_LIMIT: usize = 4 << 20;

/// Splits a byte stream into SSE events, whatever the chunk boundaries: a line or an
/// event split across reads is kept until its end arrives.
#[derive(Debug, Default)]
pub struct Reader {
    /// Bytes after the last complete line.
    partial: Vec<u8>,
    /// The event being read: its `event:` name and its `data:` lines joined by `\n`.
    name: String,
    data: Vec<u8>,
    has_data: bool,
}

/// One event: its name (empty when it has none) and its data.
pub struct Event<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

impl Reader {
    /// Feeds `chunk`, calling `f` for each event it completes, in order.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut f: impl FnMut(Event<'_>) -> super::Result<()>,
    ) -> super::Result<()> {
        let mut rest = chunk;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let piece = &rest[..i];
            rest = &rest[i + 1..];
            if self.partial.is_empty() {
                self.line(piece, &mut f)?;
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(piece);
                self.line(&line, &mut f)?;
                line.clear();
                self.partial = line;
            }
        }
        if self.partial.len() + rest.len() > EVENT_LIMIT {
            return Err(super::Error::new(
                "the provider sent a stream line longer than the sidecar translates",
            ));
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// The stream ended: an event not yet closed by a blank line still counts.
    pub fn finish(
        &mut self,
        mut f: impl FnMut(Event<'_>) -> super::Result<()>,
    ) -> super::Result<()> {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.line(&line, &mut f)?;
        }
        self.dispatch(&mut f)
    }

    fn line(
        &mut self,
        line: &[u8],
        f: &mut impl FnMut(Event<'_>) -> super::Result<()>,
    ) -> super::Result<()> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return self.dispatch(f);
        }
        if line[0] == b':' {
            return Ok(()); // a comment (keep-alive)
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.has_data {
                    self.data.push(b'\n');
                }
                if self.data.len() + value.len() > EVENT_LIMIT {
                    return Err(super::Error::new(
                        "the provider sent a stream event larger than the sidecar translates",
                    ));
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name.push_str(&String::from_utf8_lossy(value));
            }
            _ => {} // id, retry: nothing to translate
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        f: &mut impl FnMut(Event<'_>) -> super::Result<()>,
    ) -> super::Result<()> {
        if !self.has_data {
            self.name.clear();
            return Ok(());
        }
        let r = f(Event {
            name: &self.name,
            data: &self.data,
        });
        self.name.clear();
        self.data.clear();
        self.has_data = false;
        r
    }
}

/// `data: <json>\n\n`
pub fn data(v: &serde_json::Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}

/// `event: <name>\ndata: <json>\n\n`
pub fn named(name: &str, v: &serde_json::Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}

/// An error event in an OpenAI stream: the SDKs raise it as an API error.
pub fn openai_error_event(message: &str, out: &mut Vec<u8>) {
    data(
        &serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": "translation"}}),
        out,
    );
}

/// An error event in an Anthropic stream.
pub fn anthropic_error_event(message: &str, out: &mut Vec<u8>) {
    named(
        "error",
        &serde_json::json!({"type": "error", "error": {"type": "api_error", "message": message}}),
        out,
    );
}
