//! Fuzz targets for the `pgm` decoder, the one part of this crate that reads bytes from outside.
//!
//! Each is a [`bolero`] test, as zinfer's own decoders have (zinfer's `plugins/builtin/tests/fuzz.rs`): a plain
//! `cargo test` runs [`ITERATIONS`] random inputs (`BOLERO_RANDOM_ITERATIONS` overrides it), and `cargo bolero test`
//! runs them coverage-guided. Neither stops at "no panic": each checks what the decoder promises.

use std::path::Path;

use zinfer_stage_api::{BuildContext, Decoder, Input, ModelManifest, RawMessage, Reason, Request, TensorData};

/// Random inputs per target in a plain `cargo test`.
const ITERATIONS: usize = 20_000;

/// The decoder's payload limit here: small, so that random inputs land on both sides of it.
const MAX_BYTES: usize = 600;

/// The `pgm` decoder, built through the crate's registry as zinferd builds it.
fn decoder() -> Box<dyn Decoder> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = ModelManifest::load(&root.join("fixtures/gray8/manifest.toml")).expect("the gray8 manifest");
    let options: toml::Table = toml::from_str(&format!("max_bytes = {MAX_BYTES}")).expect("TOML");
    let context = BuildContext { manifest: &manifest, base_dir: root };
    zinfer_watch_anomaly::registry().build_decoder("pgm", &options, &context).expect("the pgm decoder builds")
}

fn decode(decoder: &dyn Decoder, payload: &[u8]) -> Result<Request, zinfer_stage_api::StageError> {
    let message =
        RawMessage { key: "k".into(), payload: payload.to_vec(), encoding: String::new(), attachment_id: None };
    decoder.decode(&message)
}

/// The image a request carries: height, width, pixels.
fn image(request: &Request) -> (usize, usize, &[u8]) {
    let Input::Tensors(tensors) = &request.input else { panic!("the decoder hands on tensors: {request:?}") };
    let [image] = tensors.as_slice() else { panic!("one tensor: {tensors:?}") };
    let TensorData::U8(pixels) = &image.tensor.data else { panic!("uint8 pixels: {image:?}") };
    let [height, width] = image.tensor.shape[..] else { panic!("[height, width]: {:?}", image.tensor.shape) };
    (height, width, pixels)
}

/// Any bytes: an image whose shape matches its pixels, which written back as a plain PGM decodes to itself, or an
/// error with a reason the decoder documents (payload_too_large exactly when the payload is over the limit).
#[test]
fn pgm_any_bytes() {
    let decoder = std::panic::AssertUnwindSafe(decoder());
    bolero::check!().with_iterations(ITERATIONS).for_each(|payload: &[u8]| match decode(decoder.as_ref(), payload) {
        Ok(request) => {
            assert!(payload.starts_with(b"P5") && payload.len() <= MAX_BYTES, "accepted {payload:?}");
            let (height, width, pixels) = image(&request);
            assert!(height > 0 && width > 0 && pixels.len() == height * width, "{height} x {width}");
            assert!(payload.ends_with(pixels), "the pixels are the payload's last bytes");
            let mut plain = format!("P5 {width} {height} 255\n").into_bytes();
            plain.extend_from_slice(pixels);
            if plain.len() <= MAX_BYTES {
                assert_eq!(decode(decoder.as_ref(), &plain).map_err(|error| error.to_string()), Ok(request));
            }
        }
        Err(error) if payload.len() > MAX_BYTES => assert_eq!(error.reason, Reason::PayloadTooLarge),
        Err(error) => {
            assert_eq!(error.reason, Reason::Custom("bad_pgm"), "{error}");
            assert!(!error.to_string().is_empty());
        }
    });
}

/// Headers built from random fields, so that most inputs get past `P5` (random bytes rarely do): the decoder
/// accepts exactly the 8-bit images whose pixel count matches the header, comments and all.
#[test]
fn pgm_headers() {
    let decoder = std::panic::AssertUnwindSafe(decoder());
    let fields = bolero::check!().with_type::<(u8, u8, u16, bool, u8, bool, Vec<u8>)>();
    fields.with_iterations(ITERATIONS).for_each(|(width, height, max_value, comment, whitespace, fit, pixels)| {
        let (width, height) = (usize::from(*width % 24), usize::from(*height % 24));
        // Around the 8-bit range's edges (0 and 256 and beyond), often enough to meet them.
        let max_value = max_value % 300;
        let separator = [" ", "\n", "\t", "  \r\n"][usize::from(*whitespace % 4)];
        let comment = if *comment { "# a camera's note\n" } else { "" };
        let mut pixels = pixels.clone();
        // Random lengths rarely match the header: half the inputs get exactly the pixels it announces.
        if *fit {
            pixels.resize(width * height, 0x5a);
        }
        let mut payload = format!("P5{separator}{comment}{width} {height}{separator}{max_value}\n").into_bytes();
        payload.extend_from_slice(&pixels);
        let valid = (1..=255).contains(&max_value) && width * height > 0 && pixels.len() == width * height;
        match decode(decoder.as_ref(), &payload) {
            Ok(request) => {
                assert!(valid, "accepted {payload:?}");
                assert_eq!(image(&request), (height, width, pixels.as_slice()));
            }
            Err(error) if payload.len() > MAX_BYTES => assert_eq!(error.reason, Reason::PayloadTooLarge),
            Err(error) => assert!(!valid, "refused a valid image ({error}): {payload:?}"),
        }
    });
}
