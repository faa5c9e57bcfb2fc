//! Decoders: the first phase of a pipeline, from zenoh sample bytes to a request.

pub mod sensor;
pub mod text;

use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use zinfer_stage_api::{PEEK_BYTES, Reason, StageError};

/// The media type of a zenoh encoding, without its schema suffix (`text/plain;charset=utf-8` → `text/plain`).
fn media_type(encoding: &str) -> &str {
    encoding.split(';').next().unwrap_or_default().trim()
}

/// Refuses an empty payload or one larger than `max_bytes`, before any parsing.
fn check_size(payload: &[u8], max_bytes: usize) -> Result<(), StageError> {
    if payload.is_empty() {
        return Err(StageError::new(Reason::EmptyPayload, "the payload is empty"));
    }
    if payload.len() > max_bytes {
        return Err(StageError::new(
            Reason::PayloadTooLarge,
            format!("payload of {} bytes exceeds the limit of {max_bytes} bytes", payload.len()),
        ));
    }
    Ok(())
}

/// A JSON request id: a string, or a number taken as its decimal text.
#[derive(Deserialize)]
#[serde(untagged)]
enum JsonId {
    Text(String),
    Number(serde_json::Number),
}

impl From<JsonId> for String {
    fn from(id: JsonId) -> Self {
        match id {
            JsonId::Text(text) => text,
            JsonId::Number(number) => number.to_string(),
        }
    }
}

/// The top-level `"id"` of a JSON object (or of the first object of a list, as sensor frames may be), read from the
/// first [`PEEK_BYTES`] only. Parsing stops at the id; a document that is cut there or malformed after it still
/// yields the id found before.
pub fn peek_json_id(payload: &[u8]) -> Option<String> {
    let mut found = None;
    let mut deserializer = serde_json::Deserializer::from_slice(&payload[..payload.len().min(PEEK_BYTES)]);
    // The error is expected whenever the peek stops early or the prefix ends mid-document: only `found` matters.
    let _ = serde::Deserializer::deserialize_any(&mut deserializer, IdVisitor { found: &mut found, in_list: false });
    // An empty id is none, as the decoders take it.
    found.map(String::from).filter(|id| !id.is_empty())
}

/// Looks for `"id"` among an object's keys; in a top-level list, in its first element.
struct IdVisitor<'a> {
    found: &'a mut Option<JsonId>,
    in_list: bool,
}

impl<'de> Visitor<'de> for IdVisitor<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object with an id")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(is_id) = map.next_key_seed(IsId)? {
            if is_id {
                *self.found = Some(map.next_value()?);
                return Ok(());
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        if !self.in_list {
            seq.next_element_seed(IdVisitor { found: self.found, in_list: true })?;
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for IdVisitor<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Whether an object key is `id`, without allocating the key.
struct IsId;

impl<'de> DeserializeSeed<'de> for IsId {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for IsId {
    type Value = bool;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == "id")
    }
}

/// Field 1 as a non-empty UTF-8 string, read from the first [`PEEK_BYTES`] of a protobuf message: the `id` of both
/// `TextRequest` and `SensorFrame`. Other fields are skipped by their wire type without being decoded.
pub fn peek_protobuf_id(payload: &[u8]) -> Option<String> {
    use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
    let mut buf = &payload[..payload.len().min(PEEK_BYTES)];
    while !buf.is_empty() {
        let (tag, wire_type) = decode_key(&mut buf).ok()?;
        if tag == 1 && wire_type == WireType::LengthDelimited {
            let length = usize::try_from(decode_varint(&mut buf).ok()?).ok()?;
            let id = std::str::from_utf8(buf.get(..length)?).ok()?;
            return Some(id.to_owned()).filter(|id| !id.is_empty());
        }
        skip_field(wire_type, tag, &mut buf, DecodeContext::default()).ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn json_ids_are_found_without_reading_the_rest() {
        assert_eq!(peek_json_id(br#"{"id": "a-1", "text": "hi"}"#).as_deref(), Some("a-1"));
        assert_eq!(peek_json_id(br#"{"text": "hi", "id": 42}"#).as_deref(), Some("42"));
        assert_eq!(peek_json_id(br#"{"nested": {"id": "no"}, "id": "yes"}"#).as_deref(), Some("yes"));
        assert_eq!(peek_json_id(br#"[{"t": 0.1, "values": [1], "id": "f"}, {"id": "f"}]"#).as_deref(), Some("f"));
        // Malformed or cut after the id: the id still counts. Before it: none.
        assert_eq!(peek_json_id(br#"{"id": "early", "text": "#).as_deref(), Some("early"));
        assert_eq!(peek_json_id(br#"{"text": "x" "id": "late"}"#), None);
        let long = format!(r#"{{"text": "{}", "id": "far"}}"#, "x".repeat(PEEK_BYTES));
        assert_eq!(peek_json_id(long.as_bytes()), None, "beyond the peek window");
        for junk in [&b""[..], b"null", b"[[{\"id\": 1}]]", b"\"id\"", b"{\"id\": [1]}", &[0xff, 0x7b]] {
            assert_eq!(peek_json_id(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn protobuf_ids_are_found_in_both_schemas() {
        let text = zinfer_proto::TextRequest { id: "t-9".into(), text: "hello".into(), ..Default::default() };
        assert_eq!(peek_protobuf_id(&text.encode_to_vec()).as_deref(), Some("t-9"));
        let frame = zinfer_proto::SensorFrame { id: "s-3".into(), values: vec![1.0; 600], ..Default::default() };
        assert_eq!(peek_protobuf_id(&frame.encode_to_vec()).as_deref(), Some("s-3"));
        // Fields before the id are skipped by wire type (a varint, then a length-delimited one).
        let mut reordered = zinfer_proto::TextRequest { deadline_ms: 5, ..Default::default() }.encode_to_vec();
        reordered.extend(zinfer_proto::TextRequest { text: "x".into(), ..Default::default() }.encode_to_vec());
        reordered.extend(zinfer_proto::TextRequest { id: "late".into(), ..Default::default() }.encode_to_vec());
        assert_eq!(peek_protobuf_id(&reordered).as_deref(), Some("late"));
        for junk in [&b""[..], &[0x0a, 0xff], &[0x0a, 0x02, 0xff, 0xfe], &[0xff; 12]] {
            assert_eq!(peek_protobuf_id(junk), None, "{junk:?}");
        }
    }
}
