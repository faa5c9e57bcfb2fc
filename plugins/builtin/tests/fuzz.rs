//! Fuzz targets for everything in a pipeline that reads bytes from outside: the six decoder formats, the `tokenize`
//! stage, and the `validate` → `window` pair fed arbitrary frame sequences.
//!
//! Each target is a [`bolero`] test. Under a plain `cargo test` it replays its committed corpus
//! (`tests/__fuzz__/<target>/corpus/`, real seed inputs) and then runs [`ITERATIONS`] random inputs, which keeps the
//! whole file within a few seconds of a debug build. `cargo bolero test` runs the same targets coverage-guided for as
//! long as one wants (README, "Fuzzing"). A target does not stop at "no panic": each checks what its code promises,
//! so a wrong answer fails like a crash does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use prost::Message;
use zinfer_plugins::sensor::validate::Validate;
use zinfer_plugins::sensor::window::{GapPolicy, WindowConfig, WindowStage};
use zinfer_plugins::tokenize::{ATTENTION_MASK, INPUT_IDS, TOKEN_TYPE_IDS};
use zinfer_stage_api::{
    BuildContext, Decoder, Input, Item, ModelManifest, RawMessage, Reason, Request, Samples, SensorSpec, Stage,
    StageError, TensorData,
};

/// Random inputs per target in a plain `cargo test`, after the corpus. Set `BOLERO_RANDOM_ITERATIONS` to run more
/// (it takes precedence over this).
const ITERATIONS: usize = 20_000;

/// The text decoders' payload limit here: small, so that random inputs (up to 4 KiB) land on both sides of it.
const TEXT_MAX_BYTES: usize = 1024;
/// The sensor decoder's payload limit here, for the same reason.
const SENSOR_MAX_BYTES: usize = 2048;
/// The `validate` stage's frame limit in the window target, low enough for random frames to exceed it.
const MAX_SAMPLES: usize = 64;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn manifest(model: &str) -> ModelManifest {
    let path = repo().join("models").join(model).join("manifest.toml");
    ModelManifest::load(&path).unwrap_or_else(|error| panic!("the {model} manifest loads: {error}"))
}

/// Builds a decoder the way the daemon does: through the built-in registry, from TOML options.
fn build_decoder(kind: &str, manifest: &ModelManifest, options: &str) -> Box<dyn Decoder> {
    let options: toml::Table = toml::from_str(options).expect("decoder options are TOML");
    let context = BuildContext { manifest, base_dir: &repo() };
    zinfer_plugins::builtin_registry().build_decoder(kind, &options, &context).expect("the decoder builds")
}

fn message(payload: &[u8], encoding: &str) -> RawMessage {
    RawMessage { key: "fuzz/in".into(), payload: payload.to_vec(), encoding: encoding.into(), attachment_id: None }
}

/// Asserts that a per-message error has one of the reasons this target may give, a stable snake_case name, and a
/// detail for the outcome's message.
fn check_error(error: &StageError, allowed: &[Reason]) {
    assert!(allowed.contains(&error.reason), "unexpected reason {:?} ({error}); allowed: {allowed:?}", error.reason);
    let name = error.reason.as_str();
    assert!(
        !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_'),
        "{name:?}"
    );
    assert!(!error.detail.is_empty(), "{:?} has no detail", error.reason);
}

/// The outcome of a decode as a comparable string (Debug keeps every f32 distinct but NaN, and names the reason).
fn outcome(result: &Result<Request, StageError>) -> String {
    match result {
        Ok(request) => format!("{request:?}"),
        Err(error) => format!("error {:?}", error.reason),
    }
}

/// The size checks every decoder makes before parsing: `Some(reason)` when the payload must be refused for its size.
fn size_reason(payload: &[u8], max_bytes: usize) -> Option<Reason> {
    if payload.is_empty() {
        Some(Reason::EmptyPayload)
    } else if payload.len() > max_bytes {
        Some(Reason::PayloadTooLarge)
    } else {
        None
    }
}

// ----- text decoder -----

/// The decoder for `format`, reached through its zenoh encoding, and the same decoder reached as the default format
/// of samples without an encoding: the two must always agree.
struct TextDecoders {
    format: &'static str,
    encoding: &'static str,
    by_encoding: Box<dyn Decoder>,
    by_default: Box<dyn Decoder>,
    /// A decoder with the default (64 KiB) limit, for re-encoded requests, which may be longer than the original.
    roomy: Box<dyn Decoder>,
}

impl TextDecoders {
    fn new(format: &'static str, encoding: &'static str) -> Self {
        let fixture = manifest("fixture");
        let kind = zinfer_plugins::decode::text::TYPE;
        let limited = format!("default_format = \"{format}\"\nmax_bytes = {TEXT_MAX_BYTES}");
        Self {
            format,
            encoding,
            by_encoding: build_decoder(kind, &fixture, &format!("max_bytes = {TEXT_MAX_BYTES}")),
            by_default: build_decoder(kind, &fixture, &limited),
            roomy: build_decoder(kind, &fixture, &format!("default_format = \"{format}\"")),
        }
    }

    /// Decodes `payload` both ways, checks that they agree and that an error is one `allowed` for this format.
    fn decode(&self, payload: &[u8], allowed: &[Reason]) -> Result<Request, StageError> {
        let result = self.by_encoding.decode(&message(payload, self.encoding));
        let by_default = self.by_default.decode(&message(payload, "zenoh/bytes"));
        assert_eq!(outcome(&result), outcome(&by_default), "{} by encoding and by default differ", self.format);
        if let Err(error) = &result {
            check_error(error, allowed);
        }
        if let Some(reason) = size_reason(payload, TEXT_MAX_BYTES) {
            assert_eq!(result.as_ref().map_err(|error| error.reason).err(), Some(reason), "size check");
        }
        if let Ok(request) = &result {
            assert!(matches!(&request.input, Input::Text(text) if !text.is_empty()), "a decoded request has text");
            assert!(request.id.as_deref() != Some(""), "an empty id is no id");
        }
        result
    }
}

#[test]
fn text_plain() {
    let decoders = AssertUnwindSafe(TextDecoders::new("text", "text/plain;charset=utf-8"));
    bolero::check!().with_iterations(ITERATIONS).for_each(|payload: &[u8]| {
        let result = decoders.decode(payload, &[Reason::EmptyPayload, Reason::PayloadTooLarge, Reason::InvalidUtf8]);
        // Plain text has one right answer for every payload.
        let expected = match (size_reason(payload, TEXT_MAX_BYTES), std::str::from_utf8(payload)) {
            (Some(reason), _) => Err(reason),
            (None, Err(_)) => Err(Reason::InvalidUtf8),
            (None, Ok(text)) => Ok(Request::new(Input::Text(text.to_owned()))),
        };
        assert_eq!(result.map_err(|error| error.reason), expected);
    });
}

#[test]
fn text_json() {
    let decoders = AssertUnwindSafe(TextDecoders::new("json", "application/json"));
    let allowed =
        [Reason::EmptyPayload, Reason::PayloadTooLarge, Reason::InvalidUtf8, Reason::MalformedJson, Reason::EmptyText];
    bolero::check!().with_iterations(ITERATIONS).for_each(|payload: &[u8]| {
        let Ok(request) = decoders.decode(payload, &allowed) else { return };
        // JSON's grammar, not serde_json::Value, which also refuses numbers beyond f64 that JSON allows.
        let is_json =
            std::str::from_utf8(payload).is_ok() && serde_json::from_slice::<serde::de::IgnoredAny>(payload).is_ok();
        assert!(is_json, "accepted a payload that is not JSON");
        // Written back as the documented JSON form, the request decodes to itself.
        let Input::Text(text) = &request.input else { unreachable!("checked by decode") };
        let mut json = serde_json::json!({ "text": text });
        for (key, value) in [
            ("id", request.id.clone().map(serde_json::Value::from)),
            ("deadline_ms", request.deadline_ms.map(serde_json::Value::from)),
            ("sent_at_ms", request.sent_at_ms.map(serde_json::Value::from)),
        ] {
            if let Some(value) = value {
                json[key] = value;
            }
        }
        let again = decoders.roomy.decode(&message(json.to_string().as_bytes(), "application/json"));
        assert_eq!(again.map_err(|error| error.to_string()), Ok(request), "JSON round trip");
    });
}

#[test]
fn text_protobuf() {
    let decoders = AssertUnwindSafe(TextDecoders::new("protobuf", "application/protobuf"));
    let allowed = [Reason::EmptyPayload, Reason::PayloadTooLarge, Reason::MalformedProtobuf, Reason::EmptyText];
    bolero::check!().with_iterations(ITERATIONS).for_each(|payload: &[u8]| {
        let Ok(request) = decoders.decode(payload, &allowed) else { return };
        assert!(request.deadline_ms.is_none_or(|ms| ms > 0) && request.sent_at_ms.is_none_or(|ms| ms > 0));
        let Input::Text(text) = &request.input else { unreachable!("checked by decode") };
        let deadline_ms = request.deadline_ms.map_or(0, |ms| u32::try_from(ms).expect("deadline_ms comes from a u32"));
        let encoded = zinfer_proto::TextRequest {
            id: request.id.clone().unwrap_or_default(),
            text: text.clone(),
            deadline_ms,
            sent_at_ms: request.sent_at_ms.unwrap_or(0),
        }
        .encode_to_vec();
        let again = decoders.roomy.decode(&message(&encoded, "application/protobuf"));
        assert_eq!(again.map_err(|error| error.to_string()), Ok(request), "protobuf round trip");
    });
}

// ----- sensor decoder -----

/// The sensor decoder for the watch model (6 channels), reached by encoding and by default format, plus the
/// `validate` stage its output meets next in a pipeline.
struct SensorDecoders {
    format: &'static str,
    encoding: &'static str,
    spec: SensorSpec,
    by_encoding: Box<dyn Decoder>,
    by_default: Box<dyn Decoder>,
    roomy: Box<dyn Decoder>,
    validate: RefCell<Validate>,
}

const VALIDATE_REASONS: [Reason; 4] =
    [Reason::WrongChannelCount, Reason::NonFiniteValue, Reason::NonMonotonicTimestamps, Reason::FrameTooLarge];

impl SensorDecoders {
    fn new(format: &'static str, encoding: &'static str) -> Self {
        let watch = manifest("zinfer-watch-small");
        let spec = watch.sensor.clone().expect("the watch model has a [sensor] table");
        let kind = zinfer_plugins::decode::sensor::TYPE;
        let limited = format!("default_format = \"{format}\"\nmax_bytes = {SENSOR_MAX_BYTES}");
        Self {
            format,
            encoding,
            validate: RefCell::new(Validate::new(&spec, MAX_SAMPLES)),
            spec,
            by_encoding: build_decoder(kind, &watch, &format!("max_bytes = {SENSOR_MAX_BYTES}")),
            by_default: build_decoder(kind, &watch, &limited),
            roomy: build_decoder(kind, &watch, &format!("default_format = \"{format}\"")),
        }
    }

    /// Decodes `payload` both ways and checks them as [`TextDecoders::decode`] does; a decoded frame then goes
    /// through `validate`, whose verdict is checked against the frame.
    fn decode(&self, payload: &[u8], allowed: &[Reason]) -> Option<(Option<String>, Samples)> {
        let result = self.by_encoding.decode(&message(payload, self.encoding));
        let by_default = self.by_default.decode(&message(payload, ""));
        assert_eq!(outcome(&result), outcome(&by_default), "{} by encoding and by default differ", self.format);
        if let Some(reason) = size_reason(payload, SENSOR_MAX_BYTES) {
            assert_eq!(result.as_ref().map_err(|error| error.reason).err(), Some(reason), "size check");
        }
        let request = match result {
            Ok(request) => request,
            Err(error) => {
                check_error(&error, allowed);
                return None;
            }
        };
        assert!(request.id.as_deref() != Some(""), "an empty id is no id");
        assert!(request.deadline_ms.is_none_or(|ms| ms > 0) && request.sent_at_ms.is_none_or(|ms| ms > 0));
        let Input::Samples(samples) = request.input else { panic!("the sensor decoder gave {:?}", request.input) };
        assert!(samples.source.as_deref() != Some(""), "an empty source is no source");
        let mut item = Item::new("id".into(), "fuzz/in".into(), Input::Samples(samples.clone()));
        let verdict = self.validate.borrow_mut().process(&mut item);
        check_validated(&verdict, &samples, &self.spec);
        Some((request.id, samples))
    }
}

/// Checks `validate`'s verdict on `samples` against what it promises: a frame that passes fits the model.
fn check_validated(verdict: &Result<(), StageError>, samples: &Samples, spec: &SensorSpec) {
    let channels = spec.channels.as_slice();
    let mut allowed = VALIDATE_REASONS.to_vec();
    allowed.push(Reason::EmptyPayload);
    match verdict {
        Err(error) => check_error(error, &allowed),
        Ok(()) => {
            let count = samples.len();
            assert_eq!(samples.width, channels.len(), "passed a frame of the wrong width");
            assert!(samples.channels.as_ref().is_none_or(|names| names == channels), "passed wrong channel names");
            assert_eq!(samples.values.len(), count * channels.len(), "passed a partial sample");
            assert!((1..=MAX_SAMPLES).contains(&count), "passed a frame of {count} samples");
            let mut normalised = samples.values.iter().enumerate().map(|(index, value)| {
                let channel = index % channels.len();
                (value - spec.mean[channel]) / spec.std[channel]
            });
            assert!(normalised.all(f32::is_finite), "passed a reading the model cannot take");
            if let Some(times) = &samples.timestamps_us {
                assert_eq!(times.len(), count, "passed a timestamp count that differs from the sample count");
                assert!(times.windows(2).all(|pair| pair[0] < pair[1]), "passed timestamps that do not increase");
            }
        }
    }
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|value| value.to_bits()).collect()
}

#[test]
fn sensor_f32le() {
    let decoders = AssertUnwindSafe(SensorDecoders::new("f32le", "application/octet-stream"));
    let allowed = [Reason::EmptyPayload, Reason::PayloadTooLarge, Reason::WrongChannelCount];
    let sample_bytes = 4 * decoders.spec.channels.len();
    bolero::check!().with_iterations(ITERATIONS).for_each(|payload: &[u8]| {
        let decoded = decoders.decode(payload, &allowed);
        let whole = size_reason(payload, SENSOR_MAX_BYTES).is_none() && payload.len().is_multiple_of(sample_bytes);
        assert_eq!(decoded.is_some(), whole, "packed frames are accepted exactly when they hold whole samples");
        let Some((id, samples)) = decoded else { return };
        let expected: Vec<u32> = payload
            .chunks_exact(4)
            .map(|bytes| u32::from_le_bytes(bytes.try_into().expect("chunks of 4 bytes")))
            .collect();
        assert_eq!(bits(&samples.values), expected, "every reading is the payload's f32, bit for bit");
        assert_eq!((samples.width, samples.len()), (decoders.spec.channels.len(), payload.len() / sample_bytes));
        assert!(id.is_none() && samples.source.is_none() && samples.timestamps_us.is_none());
    });
}

/// Below this many microseconds a timestamp survives the trip through JSON seconds (an f64) exactly.
const EXACT_MICROS: i64 = 1 << 50;

#[test]
fn sensor_json() {
    let decoders = AssertUnwindSafe(SensorDecoders::new("json", "application/json"));
    let allowed = [Reason::EmptyPayload, Reason::PayloadTooLarge, Reason::MalformedJson, Reason::WrongChannelCount];
    bolero::check!().with_iterations(ITERATIONS).for_each(|payload: &[u8]| {
        let Some((id, samples)) = decoders.decode(payload, &allowed) else { return };
        assert!(samples.channels.is_none(), "JSON frames name no channels");
        assert_eq!(samples.values.len(), samples.width * samples.len());
        if samples.width == 0 {
            // `{"values": []}` decodes to zero-width samples, which `validate` refuses; their count is not kept.
            return;
        }
        let count = samples.len();
        assert!(count >= 1, "an accepted frame holds a sample");
        assert!(samples.timestamps_us.as_ref().is_none_or(|times| times.len() == count));
        let exact = samples.timestamps_us.iter().flatten().all(|micros| micros.abs() < EXACT_MICROS);
        if !exact || !samples.values.iter().all(|value| value.is_finite()) {
            return; // JSON cannot carry infinities (they come from numbers beyond f32), nor these times exactly
        }
        // Written back as the documented list form, the frame decodes to itself.
        let list: Vec<serde_json::Value> = samples
            .values
            .chunks_exact(samples.width)
            .enumerate()
            .map(|(index, values)| {
                let mut sample = serde_json::json!({ "values": values });
                if let Some(times) = &samples.timestamps_us {
                    sample["t"] = serde_json::Value::from(times[index] as f64 / 1e6);
                }
                if let Some(source) = &samples.source {
                    sample["source"] = serde_json::Value::from(source.clone());
                }
                if let Some(id) = &id {
                    sample["id"] = serde_json::Value::from(id.clone());
                }
                sample
            })
            .collect();
        let json = serde_json::Value::from(list).to_string();
        let again = decoders.roomy.decode(&message(json.as_bytes(), "application/json")).expect("re-encoded decodes");
        let original = Request { id, ..Request::new(Input::Samples(samples)) };
        assert_eq!(format!("{again:?}"), format!("{original:?}"), "JSON round trip of {json}");
    });
}

#[test]
fn sensor_protobuf() {
    let decoders = AssertUnwindSafe(SensorDecoders::new("protobuf", "application/protobuf"));
    let allowed = [Reason::EmptyPayload, Reason::PayloadTooLarge, Reason::MalformedProtobuf];
    bolero::check!().with_iterations(ITERATIONS).for_each(|payload: &[u8]| {
        let frame = zinfer_proto::SensorFrame::decode(payload);
        let decoded = decoders.decode(payload, &allowed);
        let fits = size_reason(payload, SENSOR_MAX_BYTES).is_none();
        assert_eq!(decoded.is_some(), fits && frame.is_ok(), "every well-formed frame of a fitting size decodes");
        let (Some((id, samples)), Ok(frame)) = (decoded, frame) else { return };
        assert!(samples.width >= 1, "a protobuf frame's width is its channel count, its names, or the model's");
        assert_eq!(bits(&samples.values), bits(&frame.values), "readings are the frame's, bit for bit");
        // Written back, the frame decodes to the same request.
        let again = zinfer_proto::SensorFrame {
            id: id.clone().unwrap_or_default(),
            source: samples.source.clone().unwrap_or_default(),
            channels: samples.channels.clone().unwrap_or_default(),
            channel_count: u32::try_from(samples.width).expect("a width that came from a u32"),
            timestamps_us: samples.timestamps_us.clone().unwrap_or_default(),
            values: samples.values.clone(),
            deadline_ms: frame.deadline_ms,
            sent_at_ms: frame.sent_at_ms,
        };
        let decoded_again =
            decoders.roomy.decode(&message(&again.encode_to_vec(), "application/protobuf")).expect("re-encoded");
        let Input::Samples(samples_again) = &decoded_again.input else { panic!("not samples") };
        assert_eq!((&decoded_again.id, bits(&samples_again.values)), (&id, bits(&samples.values)));
        assert_eq!(format!("{samples_again:?}"), format!("{samples:?}"), "protobuf round trip");
    });
}

// ----- tokenize -----

/// The stage configurations the tokenizer target runs every text through, with what each promises.
struct Tokenizers {
    /// As shipped in configs/default.toml: buckets [16, 32, 64, 128], truncating at the manifest's 128.
    shipped: Box<dyn Stage>,
    /// `max_length = 8`, truncating, no buckets.
    short: Box<dyn Stage>,
    /// `max_length = 16`, `overflow = "reject"`.
    rejecting: Box<dyn Stage>,
    /// The same tokenizer.json without truncation: the reference token count.
    reference: tokenizers::Tokenizer,
    cls: i64,
    sep: i64,
    pad: i64,
}

impl Tokenizers {
    fn new() -> Self {
        let fixture = manifest("fixture");
        let context = BuildContext { manifest: &fixture, base_dir: &repo() };
        let stage = |options: &str| {
            let options: toml::Table = toml::from_str(options).expect("stage options are TOML");
            zinfer_plugins::tokenize::build(&options, &context).expect("the tokenize stage builds")
        };
        let path = fixture.tokenizer.clone().expect("the fixture names its tokenizer");
        let mut reference = tokenizers::Tokenizer::from_file(&path).expect("tokenizer.json loads");
        reference.with_padding(None);
        reference.with_truncation(None).expect("truncation off");
        let id = |token: &str| i64::from(reference.token_to_id(token).expect("a BERT special token"));
        Self {
            shipped: stage("buckets = [16, 32, 64, 128]"),
            short: stage("max_length = 8"),
            rejecting: stage("max_length = 16\noverflow = \"reject\""),
            cls: id("[CLS]"),
            sep: id("[SEP]"),
            pad: id("[PAD]"),
            reference,
        }
    }
}

/// The three features, checked for what every tokenized text must look like; returns the ids without padding.
fn check_tokens(item: &Item, max_length: usize, buckets: &[usize], special: (i64, i64, i64)) -> Vec<i64> {
    let (cls, sep, pad) = special;
    let feature = |name: &str| -> Vec<i64> {
        let tensor = &item.feature(name).unwrap_or_else(|| panic!("no {name}")).tensor;
        let TensorData::I64(values) = &tensor.data else { panic!("{name} is not int64") };
        assert_eq!(tensor.shape, [values.len()], "{name} is a vector");
        values.clone()
    };
    let (ids, mask, types) = (feature(INPUT_IDS), feature(ATTENTION_MASK), feature(TOKEN_TYPE_IDS));
    assert_eq!(item.features.len(), 3, "exactly the three BERT inputs");
    assert!(ids.len() <= max_length, "{} tokens, more than max_length {max_length}", ids.len());
    assert_eq!((mask.len(), types.len()), (ids.len(), ids.len()), "features of one length");
    let real = mask.iter().take_while(|&&bit| bit == 1).count();
    assert!(mask[real..].iter().all(|&bit| bit == 0), "padding only at the end: {mask:?}");
    assert!(ids[real..].iter().all(|&id| id == pad) && types.iter().all(|&kind| kind == 0));
    assert!(real >= 2 && ids[0] == cls && ids[real - 1] == sep, "[CLS] … [SEP] kept: {ids:?}");
    assert_eq!(real, ids.len(), "the stage never pads; the pipeline pads a batch");
    let group = item.padding.as_ref().map(|padding| padding.group);
    assert_eq!(group, buckets.iter().copied().find(|&bucket| bucket >= real), "the smallest bucket that holds it");
    ids[..real].to_vec()
}

#[test]
fn tokenize_text() {
    let stages = AssertUnwindSafe(RefCell::new(Tokenizers::new()));
    bolero::check!().with_iterations(ITERATIONS / 10).for_each(|bytes: &[u8]| {
        let stages = &mut *stages.borrow_mut();
        let text = String::from_utf8_lossy(bytes).into_owned();
        let full = stages.reference.encode(text.as_str(), true).expect("the reference tokenizer encodes").len();
        let special = (stages.cls, stages.sep, stages.pad);
        let run = |stage: &mut Box<dyn Stage>| {
            let mut item = Item::new("id".into(), "fuzz/in".into(), Input::Text(text.clone()));
            stage.process(&mut item).map(|()| item)
        };

        let shipped = run(&mut stages.shipped).expect("truncating never fails");
        let kept = check_tokens(&shipped, 128, &[16, 32, 64, 128], special);
        assert_eq!(kept.len(), full.min(128), "truncation keeps max_length tokens");
        let short = run(&mut stages.short).expect("truncating never fails");
        let short_ids = check_tokens(&short, 8, &[], special);
        assert_eq!(short_ids[..short_ids.len() - 1], kept[..short_ids.len() - 1], "a shorter cut is a prefix");

        match run(&mut stages.rejecting) {
            Ok(item) => {
                assert!(full <= 16, "accepted {full} tokens over max_length 16");
                assert_eq!(check_tokens(&item, 16, &[], special), kept, "an accepted text is not cut");
            }
            Err(error) => {
                check_error(&error, &[Reason::TooManyTokens]);
                assert!(full > 16, "rejected {full} tokens, within max_length 16");
            }
        }
        let mut samples = Item::new("id".into(), "k".into(), Input::Samples(Samples::default()));
        let error = stages.short.process(&mut samples).expect_err("tokenize refuses samples");
        check_error(&error, &[Reason::MissingInput]);
    });
}

// ----- validate → window -----

/// A tiny sensor model, so that short inputs complete many windows: 2 channels at 100 Hz, windows of 4, hop 2.
fn small_spec() -> SensorSpec {
    SensorSpec {
        input: "frames".into(),
        channels: vec!["a".into(), "b".into()],
        sample_rate_hz: 100.0,
        window: 4,
        hop: 2,
        mean: vec![1.0, 0.0],
        std: vec![2.0, 0.5],
    }
}

/// Reads the window target's input. Byte 0 chooses the setup:
///
/// | bits | meaning                                                                   |
/// |------|---------------------------------------------------------------------------|
/// | 0    | the watch model's manifest (6 channels, window 100, hop 50, 50 Hz), else [`small_spec`] |
/// | 1    | `on_gap = "pad"`, else reset                                              |
/// | 2    | `hop_ms = 25`                                                             |
/// | 3–4  | `max_sources` − 1                                                         |
/// | 5–6  | `gap_tolerance_ms`: the default, 15, 1 or 1000                            |
/// | 7    | `hop = 1` (with bit 2 set, a config the stage must refuse)                |
///
/// Then frames, each: a code byte (bits 0–2: source `s0`…`s5` named in the frame, or 6–7: none, so the key
/// `imu/k0`/`imu/k1` is the stream; bit 3: timestamped; bit 4: one stray value at the end; bit 5: channel names in
/// the wrong order; bit 6: a width one more than the model's; bit 7: the right channel names), a sample count byte,
/// for timestamped frames the first timestamp (i64, little-endian, µs), then per sample a step byte (i8, in ms;
/// not for the first sample) when timestamped and one byte per channel (see [`reading`]).
struct Frames<'a> {
    bytes: &'a [u8],
    channels: Vec<String>,
}

impl Frames<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.bytes.split_first()?;
        self.bytes = rest;
        Some(first)
    }

    fn i64(&mut self) -> Option<i64> {
        let (head, rest) = self.bytes.split_first_chunk::<8>()?;
        self.bytes = rest;
        Some(i64::from_le_bytes(*head))
    }
}

impl Iterator for Frames<'_> {
    /// The message's key and its samples, as the `sensor` decoder would have produced them.
    type Item = (String, Samples);

    fn next(&mut self) -> Option<Self::Item> {
        let code = self.byte()?;
        let count = usize::from(self.byte()?);
        let stream = code & 7;
        let (key, source) = if stream < 6 {
            ("imu/any".to_owned(), Some(format!("s{stream}")))
        } else {
            (format!("imu/k{}", stream - 6), None)
        };
        let timed = code & 8 != 0;
        let mut time = if timed { Some(self.i64()?) } else { None };
        let (mut values, mut times) = (Vec::new(), Vec::new());
        for index in 0..count {
            if let Some(now) = time.as_mut() {
                if index > 0 {
                    *now = now.saturating_add(i64::from(self.byte()? as i8) * 1000);
                }
                times.push(*now);
            }
            for _ in 0..self.channels.len() {
                values.push(reading(self.byte()?));
            }
        }
        if code & 16 != 0 {
            values.push(reading(self.byte()?));
        }
        let channels = match (code & 32 != 0, code & 128 != 0) {
            (true, _) => Some(self.channels.iter().rev().cloned().collect()),
            (false, true) => Some(self.channels.clone()),
            (false, false) => None,
        };
        let width = self.channels.len() + usize::from(code & 64 != 0);
        let timestamps_us = timed.then_some(times);
        Some((key, Samples { source, channels, width, timestamps_us, values }))
    }
}

/// One reading from one byte: mostly small multiples of 1/8, plus the values that break arithmetic.
fn reading(byte: u8) -> f32 {
    match byte as i8 {
        127 => f32::NAN,
        -128 => f32::NEG_INFINITY,
        126 => f32::MAX,
        -127 => f32::MIN,
        value => f32::from(value) / 8.0,
    }
}

/// What the harness expects of the stage's streams: least recently used eviction, window indices counting up per
/// stream, window starts increasing.
#[derive(Default)]
struct Expected {
    /// Sources from least to most recently seen.
    recency: Vec<String>,
    /// Per live stream: the next window index and the last window's first sample.
    windows: HashMap<String, (u64, Option<u64>)>,
}

impl Expected {
    /// Sees `source`; returns whether that evicts another stream.
    fn touch(&mut self, source: &str, max_sources: usize) -> bool {
        if let Some(position) = self.recency.iter().position(|seen| seen == source) {
            let seen = self.recency.remove(position);
            self.recency.push(seen);
            return false;
        }
        let evicts = self.recency.len() >= max_sources;
        if evicts {
            let oldest = self.recency.remove(0);
            self.windows.remove(&oldest);
        }
        self.recency.push(source.to_owned());
        evicts
    }
}

fn counter(item: &Item, name: &str) -> u64 {
    item.counters.iter().filter(|(counter, _)| *counter == name).map(|(_, count)| count).sum()
}

#[test]
fn window_frames() {
    let watch = manifest("zinfer-watch-small").sensor.expect("the watch model has a [sensor] table");
    let watch = AssertUnwindSafe(watch);
    bolero::check!().with_iterations(ITERATIONS).for_each(|input: &[u8]| {
        let Some((&setup, frames)) = input.split_first() else { return };
        let spec = if setup & 1 != 0 { watch.0.clone() } else { small_spec() };
        let max_sources = usize::from((setup >> 3) & 3) + 1;
        let config = WindowConfig {
            hop: (setup & 128 != 0).then_some(1),
            hop_ms: (setup & 4 != 0).then_some(25.0),
            gap_tolerance_ms: [None, Some(15.0), Some(1.0), Some(1000.0)][usize::from((setup >> 5) & 3)],
            on_gap: if setup & 2 != 0 { GapPolicy::Pad } else { GapPolicy::Reset },
            max_sources,
        };
        let mut stage = match WindowStage::new(spec.clone(), &config) {
            Ok(stage) => stage,
            Err(error) => {
                assert!(config.hop.is_some() && config.hop_ms.is_some(), "refused a valid config: {error}");
                assert!(error.to_string().contains("hop_ms"), "{error}");
                return;
            }
        };
        let channels = spec.channels.len();
        let mut validate = Validate::new(&spec, MAX_SAMPLES);
        let mut expected = Expected::default();
        for (key, samples) in (Frames { bytes: frames, channels: spec.channels.clone() }) {
            let source = samples.source.clone().unwrap_or_else(|| key.clone());
            let mut item = Item::new("id".into(), key, Input::Samples(samples.clone()));
            // As in a pipeline: a frame `validate` refuses gets its error outcome and never reaches `window`.
            let verdict = validate.process(&mut item);
            check_validated(&verdict, &samples, &spec);
            if verdict.is_err() {
                continue;
            }
            let evicts = expected.touch(&source, max_sources);
            stage.process(&mut item).expect("a validated frame always windows");
            let windows = item.parts.as_deref().expect("the window stage splits its items");
            assert_eq!(counter(&item, "windows"), windows.len() as u64);
            assert_eq!(counter(&item, "sources_evicted"), u64::from(evicts), "least recently seen stream evicted");
            let (next_index, last_start) = expected.windows.entry(source.clone()).or_default();
            for window in windows {
                let position = window.stream.as_ref().expect("a window has a stream position");
                assert_eq!(position.source, source, "windows stay in their stream");
                assert_eq!(window.index, *next_index, "window indices count up per stream");
                assert!(last_start.is_none_or(|last| position.start_sample > last), "window starts move forward");
                (*next_index, *last_start) = (window.index + 1, Some(position.start_sample));
                if let Some((first, last)) = position.span_us {
                    assert!(first < last, "a window spans forward in time: {first}..{last}");
                }
                assert_eq!(window.features.len(), 1, "one model input per window");
                let tensor = &window.features[0].tensor;
                assert_eq!(window.features[0].name, spec.input);
                assert_eq!(tensor.shape, [spec.window, channels], "the manifest's window shape");
                let TensorData::F32(values) = &tensor.data else { panic!("a window is float32") };
                assert_eq!(values.len(), spec.window * channels);
                assert!(values.iter().all(|value| value.is_finite()), "a window fed the model a non-finite value");
            }
            assert!(stage.stream_count() <= max_sources, "{} streams over max_sources", stage.stream_count());
            let bound = max_sources * spec.window * channels;
            assert!(
                stage.buffered_readings() <= bound,
                "{} readings buffered, over {bound}",
                stage.buffered_readings()
            );
        }
    });
}
