//! The `sensor` decoder: frames of sensor readings, one sample or many per message.
//!
//! Formats, chosen by the sample's zenoh encoding (`default_format` for samples without one):
//! - `application/octet-stream` (`f32le`): packed little-endian `f32`, `channels` values per sample, no timestamps.
//! - `application/json` (`json`): `{"t": 1.25, "values": [..]}`, or a list of such objects; `t` is the sample's
//!   time in seconds (any epoch, increasing). An object may also carry `"source"` and `"id"` (equal in a list).
//! - `application/protobuf` (`protobuf`): the `zinfer.v1.SensorFrame` message.
//!
//! The decoder only reads the payload; whether the readings fit the model (channel count, finite values, increasing
//! timestamps, frame size) is the `validate` stage's job, so that every such problem gets the same outcome whatever
//! the format.
//!
//! Options:
//! - `channels`: values per sample for the packed format (default: the model manifest's channel count).
//! - `default_format` = `"f32le"` | `"json"` | `"protobuf"` (default `"f32le"`).
//! - `max_bytes`: largest accepted payload (default 1 MiB); larger ones get a `payload_too_large` error outcome.

use prost::Message;
use serde::Deserialize;
use zinfer_stage_api::{
    BuildContext, BuildError, Decoder, Input, RawMessage, Reason, Request, Samples, StageError, parse_options,
};

/// The registry name.
pub const TYPE: &str = "sensor";

/// Payload formats this decoder understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Packed little-endian f32.
    F32le,
    /// JSON samples with timestamps.
    Json,
    /// The protobuf `zinfer.v1.SensorFrame`.
    Protobuf,
}

/// Options of the `sensor` decoder.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SensorDecoderConfig {
    /// Values per sample in packed frames.
    pub channels: Option<usize>,
    /// Format of samples without an encoding.
    #[serde(default = "default_format")]
    pub default_format: Format,
    /// Largest accepted payload in bytes.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

fn default_format() -> Format {
    Format::F32le
}

fn default_max_bytes() -> usize {
    1024 * 1024
}

/// Builds the decoder from its options and the manifest's `[sensor]` table.
pub fn build(options: &toml::Table, context: &BuildContext<'_>) -> Result<Box<dyn Decoder>, BuildError> {
    let config: SensorDecoderConfig = parse_options(options)?;
    let channels =
        config.channels.or_else(|| context.manifest.sensor.as_ref().map(|sensor| sensor.channels.len())).ok_or_else(
            || BuildError::option("channels", "the model manifest has no [sensor] table; set the channel count here"),
        )?;
    if channels == 0 {
        return Err(BuildError::option("channels", "must be at least 1"));
    }
    if config.max_bytes == 0 {
        return Err(BuildError::option("max_bytes", "must be at least 1"));
    }
    Ok(Box::new(SensorDecoder { config, channels }))
}

/// The decoder itself.
#[derive(Debug)]
pub struct SensorDecoder {
    config: SensorDecoderConfig,
    channels: usize,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonFrame {
    One(JsonSample),
    Many(Vec<JsonSample>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSample {
    t: Option<f64>,
    values: Vec<f32>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

impl SensorDecoder {
    fn format_of(&self, encoding: &str) -> Result<Format, StageError> {
        match super::media_type(encoding) {
            "" | "zenoh/bytes" => Ok(self.config.default_format),
            "application/octet-stream" => Ok(Format::F32le),
            "application/json" | "text/json" => Ok(Format::Json),
            "application/protobuf" | "application/x-protobuf" => Ok(Format::Protobuf),
            other => Err(StageError::new(
                Reason::UnsupportedEncoding,
                format!(
                    "encoding `{other}` is not supported; use application/octet-stream (packed f32), \
                     application/json or application/protobuf"
                ),
            )),
        }
    }

    fn packed(&self, payload: &[u8]) -> Result<Request, StageError> {
        let sample_bytes = 4 * self.channels;
        if !payload.len().is_multiple_of(sample_bytes) {
            return Err(StageError::new(
                Reason::WrongChannelCount,
                format!(
                    "{} bytes is not a whole number of {}-channel f32 samples ({sample_bytes} bytes each)",
                    payload.len(),
                    self.channels
                ),
            ));
        }
        let values =
            payload.chunks_exact(4).map(|bytes| f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])).collect();
        Ok(Request::new(Input::Samples(Samples { width: self.channels, values, ..Samples::default() })))
    }

    fn json(&self, payload: &[u8]) -> Result<Request, StageError> {
        let frame: JsonFrame = serde_json::from_slice(payload).map_err(|error| {
            StageError::new(
                Reason::MalformedJson,
                format!("expected {{\"t\": seconds, \"values\": [..]}} or a list of them: {error}"),
            )
        })?;
        let samples = match frame {
            JsonFrame::One(sample) => vec![sample],
            JsonFrame::Many(samples) => samples,
        };
        let Some(first) = samples.first() else {
            return Err(StageError::new(Reason::EmptyPayload, "the frame holds no sample"));
        };
        let (source, id, width) = (first.source.clone(), first.id.clone(), first.values.len());
        if samples.iter().any(|sample| sample.source != source || sample.id != id) {
            return Err(StageError::new(Reason::MalformedJson, "samples of one frame name different sources or ids"));
        }
        if let Some(bad) = samples.iter().find(|sample| sample.values.len() != width) {
            return Err(StageError::new(
                Reason::WrongChannelCount,
                format!("samples of one frame have {width} and {} values", bad.values.len()),
            ));
        }
        let timestamps = match samples.iter().map(|sample| sample.t).collect::<Option<Vec<f64>>>() {
            Some(times) => Some(times.iter().map(|seconds| seconds_to_micros(*seconds)).collect::<Result<_, _>>()?),
            None if samples.iter().all(|sample| sample.t.is_none()) => None,
            None => return Err(StageError::new(Reason::MalformedJson, "some samples have a `t` and some do not")),
        };
        let values = samples.into_iter().flat_map(|sample| sample.values).collect();
        // An empty id or source is none, as in the protobuf form (where the two cannot be told apart): an empty id
        // would otherwise replace the attachment's or the generated one (found by the sensor_json fuzz target).
        let source = source.filter(|source| !source.is_empty());
        let input = Samples { source, channels: None, width, timestamps_us: timestamps, values };
        Ok(Request { id: id.filter(|id| !id.is_empty()), ..Request::new(Input::Samples(input)) })
    }

    fn protobuf(&self, payload: &[u8]) -> Result<Request, StageError> {
        let frame = zinfer_proto::SensorFrame::decode(payload).map_err(|error| {
            StageError::new(Reason::MalformedProtobuf, format!("expected zinfer.v1.SensorFrame: {error}"))
        })?;
        let width = match (frame.channel_count, frame.channels.len()) {
            (0, 0) => self.channels,
            (0, named) => named,
            (count, _) => count as usize,
        };
        let nonzero = |value: u64| Some(value).filter(|&value| value > 0);
        let input = Samples {
            source: Some(frame.source).filter(|source| !source.is_empty()),
            channels: Some(frame.channels).filter(|channels| !channels.is_empty()),
            width,
            timestamps_us: Some(frame.timestamps_us).filter(|times| !times.is_empty()),
            values: frame.values,
        };
        Ok(Request {
            id: Some(frame.id).filter(|id| !id.is_empty()),
            input: Input::Samples(input),
            deadline_ms: nonzero(u64::from(frame.deadline_ms)),
            sent_at_ms: nonzero(frame.sent_at_ms),
        })
    }
}

fn seconds_to_micros(seconds: f64) -> Result<i64, StageError> {
    let micros = (seconds * 1e6).round();
    if micros.is_finite() && micros.abs() < 9.0e18 {
        Ok(micros as i64)
    } else {
        Err(StageError::new(Reason::MalformedJson, format!("`t` = {seconds} is not a usable time in seconds")))
    }
}

impl Decoder for SensorDecoder {
    fn decode(&self, message: &RawMessage) -> Result<Request, StageError> {
        let payload = message.payload.as_slice();
        super::check_size(payload, self.config.max_bytes)?;
        match self.format_of(&message.encoding)? {
            Format::F32le => self.packed(payload),
            Format::Json => self.json(payload),
            Format::Protobuf => self.protobuf(payload),
        }
    }

    fn peek_id(&self, message: &RawMessage) -> Option<String> {
        match self.format_of(&message.encoding).ok()? {
            Format::F32le => None,
            Format::Json => super::peek_json_id(&message.payload),
            Format::Protobuf => super::peek_protobuf_id(&message.payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoder() -> SensorDecoder {
        SensorDecoder {
            config: SensorDecoderConfig { channels: None, default_format: Format::F32le, max_bytes: 4096 },
            channels: 2,
        }
    }

    fn message(payload: Vec<u8>, encoding: &str) -> RawMessage {
        RawMessage { key: "imu/left".into(), payload, encoding: encoding.into(), attachment_id: None }
    }

    fn samples(request: Request) -> Samples {
        match request.input {
            Input::Samples(samples) => samples,
            other => panic!("not samples: {other:?}"),
        }
    }

    #[test]
    fn packed_f32_json_and_protobuf_give_the_same_samples() {
        let values = [1.0f32, -2.5, 3.25, 4.0];
        let packed: Vec<u8> = values.iter().flat_map(|value| value.to_le_bytes()).collect();
        let from_packed = samples(decoder().decode(&message(packed, "application/octet-stream")).expect("packed"));
        assert_eq!((from_packed.width, from_packed.len(), from_packed.values.as_slice()), (2, 2, &values[..]));
        assert_eq!(from_packed.timestamps_us, None);

        let json = br#"[{"t": 1.0, "values": [1.0, -2.5]}, {"t": 1.02, "values": [3.25, 4.0]}]"#.to_vec();
        let from_json = samples(decoder().decode(&message(json, "application/json")).expect("json"));
        assert_eq!(from_json.values, values);
        assert_eq!(from_json.timestamps_us, Some(vec![1_000_000, 1_020_000]));
        let unnamed = br#"{"t": 1.0, "values": [1.0, -2.5], "id": "", "source": ""}"#.to_vec();
        let unnamed = decoder().decode(&message(unnamed, "application/json")).expect("json");
        assert_eq!(unnamed.id, None, "an empty id is none");
        assert_eq!(samples(unnamed).source, None, "an empty source is none");

        let frame = zinfer_proto::SensorFrame {
            id: "f1".into(),
            source: "wrist".into(),
            channels: vec!["x".into(), "y".into()],
            timestamps_us: vec![5, 6],
            values: values.to_vec(),
            ..Default::default()
        };
        let request = decoder().decode(&message(frame.encode_to_vec(), "application/protobuf")).expect("protobuf");
        assert_eq!(request.id.as_deref(), Some("f1"));
        let from_protobuf = samples(request);
        assert_eq!((from_protobuf.width, from_protobuf.values.as_slice()), (2, &values[..]));
        assert_eq!(from_protobuf.source.as_deref(), Some("wrist"));
        assert_eq!(from_protobuf.channels, Some(vec!["x".to_owned(), "y".to_owned()]));
    }

    #[test]
    fn malformed_payloads_get_their_reason() {
        let cases: [(Vec<u8>, &str, Reason); 6] = [
            (vec![0; 12], "application/octet-stream", Reason::WrongChannelCount),
            (b"{".to_vec(), "application/json", Reason::MalformedJson),
            (
                br#"[{"t": 1, "values": [1]}, {"t": 2, "values": [1, 2]}]"#.to_vec(),
                "application/json",
                Reason::WrongChannelCount,
            ),
            (br#"[]"#.to_vec(), "application/json", Reason::EmptyPayload),
            (vec![0xff, 0xff], "application/protobuf", Reason::MalformedProtobuf),
            (vec![0; 8], "text/plain", Reason::UnsupportedEncoding),
        ];
        for (payload, encoding, reason) in cases {
            let error = decoder().decode(&message(payload.clone(), encoding)).expect_err("must fail");
            assert_eq!(error.reason, reason, "{encoding} {payload:?}: {error}");
        }
        let error = decoder().decode(&message(vec![0; 8192], "")).expect_err("too large");
        assert_eq!(error.reason, Reason::PayloadTooLarge);
    }
}
