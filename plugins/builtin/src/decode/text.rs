//! The `text` decoder: plain UTF-8, JSON `{"id": ..., "text": ...}`, or the protobuf `TextRequest`.
//!
//! The format is chosen by the sample's zenoh encoding (`text/plain`, `application/json`,
//! `application/protobuf`); samples published without an encoding (`zenoh/bytes`) use `default_format`.
//!
//! Options:
//! - `default_format` = `"text"` | `"json"` | `"protobuf"` (default `"text"`)
//! - `max_bytes`: largest accepted payload (default 65536); larger ones get a `payload_too_large` error outcome.

use prost::Message;
use serde::Deserialize;
use zinfer_stage_api::{
    BuildContext, BuildError, Decoder, Input, RawMessage, Reason, Request, StageError, parse_options,
};

/// The registry name.
pub const TYPE: &str = "text";

/// Payload formats this decoder understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The whole payload is the UTF-8 text.
    Text,
    /// `{"id": "...", "text": "..."}`; `id` may be a string or a number and may be absent.
    Json,
    /// The protobuf `zinfer.v1.TextRequest`.
    Protobuf,
}

/// Options of the `text` decoder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextDecoderConfig {
    /// Format of samples that carry no (or the generic `zenoh/bytes`) encoding.
    #[serde(default = "default_format")]
    pub default_format: Format,
    /// Largest accepted payload in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

fn default_format() -> Format {
    Format::Text
}

fn default_max_bytes() -> usize {
    64 * 1024
}

/// Builds the decoder from its options.
pub fn build(options: &toml::Table, _context: &BuildContext<'_>) -> Result<Box<dyn Decoder>, BuildError> {
    let config: TextDecoderConfig = parse_options(options)?;
    if config.max_bytes == 0 {
        return Err(BuildError::option("max_bytes", "must be at least 1"));
    }
    Ok(Box::new(TextDecoder { config }))
}

/// The decoder itself.
#[derive(Debug)]
pub struct TextDecoder {
    config: TextDecoderConfig,
}

impl TextDecoder {
    /// A decoder with the given options.
    pub fn new(config: TextDecoderConfig) -> Self {
        Self { config }
    }

    fn format_of(&self, encoding: &str) -> Result<Format, StageError> {
        match super::media_type(encoding) {
            "" | "zenoh/bytes" | "application/octet-stream" => Ok(self.config.default_format),
            "text/plain" | "zenoh/string" => Ok(Format::Text),
            "application/json" | "text/json" => Ok(Format::Json),
            "application/protobuf" | "application/x-protobuf" => Ok(Format::Protobuf),
            other => Err(StageError::new(
                Reason::UnsupportedEncoding,
                format!(
                    "encoding `{other}` is not supported; use text/plain, application/json or application/protobuf"
                ),
            )),
        }
    }
}

#[derive(Deserialize)]
struct JsonRequest {
    #[serde(default)]
    id: Option<super::JsonId>,
    text: String,
    #[serde(default)]
    deadline_ms: Option<u64>,
    #[serde(default)]
    sent_at_ms: Option<u64>,
}

impl Decoder for TextDecoder {
    fn decode(&self, message: &RawMessage) -> Result<Request, StageError> {
        let payload = message.payload.as_slice();
        super::check_size(payload, self.config.max_bytes)?;
        let (id, text, deadline_ms, sent_at_ms) = match self.format_of(&message.encoding)? {
            Format::Text => (None, utf8(payload)?.to_owned(), None, None),
            Format::Json => {
                // JSON is UTF-8, and serde_json does not check the strings it skips (an unknown field's value), so
                // check first: a payload with invalid UTF-8 anywhere is not JSON (found by the text_json fuzz target).
                let request: JsonRequest = serde_json::from_str(utf8(payload)?).map_err(|error| {
                    StageError::new(Reason::MalformedJson, format!("expected {{\"id\": ..., \"text\": ...}}: {error}"))
                })?;
                // An empty id is none, as in the protobuf form: it must not replace the attachment's or the generated
                // one.
                let id = request.id.map(String::from).filter(|id| !id.is_empty());
                (id, request.text, request.deadline_ms, request.sent_at_ms)
            }
            Format::Protobuf => {
                let request = zinfer_proto::TextRequest::decode(payload).map_err(|error| {
                    StageError::new(Reason::MalformedProtobuf, format!("expected zinfer.v1.TextRequest: {error}"))
                })?;
                let nonzero = |value: u64| Some(value).filter(|&value| value > 0);
                let id = Some(request.id).filter(|id| !id.is_empty());
                (id, request.text, nonzero(u64::from(request.deadline_ms)), nonzero(request.sent_at_ms))
            }
        };
        if text.is_empty() {
            return Err(StageError::new(Reason::EmptyText, "the request has no text"));
        }
        Ok(Request { id, input: Input::Text(text), deadline_ms, sent_at_ms })
    }

    fn peek_id(&self, message: &RawMessage) -> Option<String> {
        match self.format_of(&message.encoding).ok()? {
            Format::Text => None,
            Format::Json => super::peek_json_id(&message.payload),
            Format::Protobuf => super::peek_protobuf_id(&message.payload),
        }
    }
}

fn utf8(payload: &[u8]) -> Result<&str, StageError> {
    std::str::from_utf8(payload).map_err(|error| StageError::new(Reason::InvalidUtf8, error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder(default_format: Format) -> TextDecoder {
        TextDecoder::new(TextDecoderConfig { default_format, max_bytes: 64 })
    }

    fn message(payload: &[u8], encoding: &str) -> RawMessage {
        RawMessage { key: "k".into(), payload: payload.to_vec(), encoding: encoding.into(), attachment_id: None }
    }

    fn reason(result: Result<Request, StageError>) -> Reason {
        result.expect_err("should fail").reason
    }

    #[test]
    fn formats_follow_the_encoding() {
        let text = decoder(Format::Json).decode(&message(b"hello", "text/plain;charset=utf-8")).expect("text");
        assert_eq!(text, Request::new(Input::Text("hello".into())));

        let json = decoder(Format::Text)
            .decode(&message(br#"{"id": 7, "text": "hi", "deadline_ms": 50, "sent_at_ms": 9}"#, "application/json"))
            .expect("json");
        let expected = Request {
            id: Some("7".into()),
            deadline_ms: Some(50),
            sent_at_ms: Some(9),
            ..Request::new(Input::Text("hi".into()))
        };
        assert_eq!(json, expected);

        let bytes = zinfer_proto::TextRequest { id: "p".into(), text: "pb".into(), deadline_ms: 5, sent_at_ms: 0 }
            .encode_to_vec();
        let proto = decoder(Format::Text).decode(&message(&bytes, "application/protobuf")).expect("protobuf");
        let expected = Request { id: Some("p".into()), deadline_ms: Some(5), ..Request::new(Input::Text("pb".into())) };
        assert_eq!(proto, expected);

        let default = decoder(Format::Json).decode(&message(br#"{"text": "d"}"#, "zenoh/bytes")).expect("default");
        assert_eq!(default.input, Input::Text("d".into()));

        let no_id = decoder(Format::Json).decode(&message(br#"{"id": "", "text": "e"}"#, "application/json"));
        assert_eq!(no_id.expect("json").id, None, "an empty id is none");
    }

    #[test]
    fn bad_input_gets_a_reason() {
        let d = decoder(Format::Text);
        assert_eq!(reason(d.decode(&message(b"", "text/plain"))), Reason::EmptyPayload);
        assert_eq!(reason(d.decode(&message(&[b'a'; 65], "text/plain"))), Reason::PayloadTooLarge);
        assert_eq!(reason(d.decode(&message(&[0xff, 0xfe], "text/plain"))), Reason::InvalidUtf8);
        assert_eq!(reason(d.decode(&message(b"{\"text\":", "application/json"))), Reason::MalformedJson);
        assert_eq!(reason(d.decode(&message(b"{\"id\":1}", "application/json"))), Reason::MalformedJson);
        let skipped_field = b"{\"text\": \"hi\", \"note\": \"\xff\"}";
        assert_eq!(reason(d.decode(&message(skipped_field, "application/json"))), Reason::InvalidUtf8);
        assert_eq!(reason(d.decode(&message(&[0x0a, 0xff], "application/protobuf"))), Reason::MalformedProtobuf);
        assert_eq!(reason(d.decode(&message(b"x", "image/png"))), Reason::UnsupportedEncoding);
        assert_eq!(reason(d.decode(&message(br#"{"text": ""}"#, "application/json"))), Reason::EmptyText);
    }
}
