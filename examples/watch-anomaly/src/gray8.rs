//! Grayscale images in, a uint8 tensor out: the `pgm` decoder and the `pixels` stage.
//!
//! A camera node publishes each frame as a binary PGM (`P5`: a short text header, then one byte per pixel), the
//! simplest image format there is. The decoder parses it into an `image` tensor (uint8, `[height, width]`); the
//! stage checks that the image has the size the model takes and hands it over as the model's input. Nothing is
//! converted to floats on the way: a model that takes raw bytes gets raw bytes.
//!
//! `pgm` options: `max_bytes` (default 1 MiB): a larger payload is refused before it is parsed.
//! `pixels` options: `input` (the model input, default `pixels`), `height`, `width` (required: the model's size).
//!
//! Error reasons: `bad_pgm` (not a binary PGM, or its pixels do not match its header), `payload_too_large`,
//! `wrong_image_size`.

use serde::Deserialize;
use zinfer_stage_api::{
    BuildContext, BuildError, Decoder, ElementType, Input, Item, NamedTensor, RawMessage, Reason, Request, Stage,
    StageError, Tensor, TensorData, TensorSpec, parse_options,
};

/// The decoder's registry name.
pub const DECODER: &str = "pgm";
/// The stage's registry name.
pub const STAGE: &str = "pixels";

/// The name of the tensor the decoder hands on.
const IMAGE: &str = "image";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecoderOptions {
    #[serde(default = "default_max_bytes")]
    max_bytes: usize,
}

fn default_max_bytes() -> usize {
    1 << 20
}

/// Builds the decoder.
pub fn build_decoder(options: &toml::Table, _context: &BuildContext<'_>) -> Result<Box<dyn Decoder>, BuildError> {
    let options: DecoderOptions = parse_options(options)?;
    Ok(Box::new(Pgm { max_bytes: options.max_bytes }))
}

/// The `pgm` decoder.
#[derive(Debug)]
pub struct Pgm {
    max_bytes: usize,
}

impl Decoder for Pgm {
    fn decode(&self, message: &RawMessage) -> Result<Request, StageError> {
        if message.payload.len() > self.max_bytes {
            return Err(StageError::new(
                Reason::PayloadTooLarge,
                format!(
                    "{} bytes; this pipeline takes images of up to {} bytes",
                    message.payload.len(),
                    self.max_bytes
                ),
            ));
        }
        let (height, width, pixels) = parse_pgm(&message.payload)
            .map_err(|why| StageError::new(Reason::Custom("bad_pgm"), format!("not a binary PGM image: {why}")))?;
        let image = Tensor { shape: vec![height, width], data: TensorData::U8(pixels.to_vec()) };
        Ok(Request::new(Input::Tensors(vec![NamedTensor { name: IMAGE.into(), tensor: image }])))
    }
}

/// Splits a binary PGM into its size and its pixels: `P5`, width, height and maximum value (at most 255) as ASCII
/// numbers separated by whitespace (`#` comments allowed), one whitespace byte, then width × height bytes.
fn parse_pgm(bytes: &[u8]) -> Result<(usize, usize, &[u8]), String> {
    let rest = bytes.strip_prefix(b"P5").ok_or("it does not start with P5")?;
    let mut at = 0;
    let mut fields = [0usize; 3];
    for field in &mut fields {
        loop {
            match rest.get(at) {
                Some(byte) if byte.is_ascii_whitespace() => at += 1,
                Some(b'#') => at += rest[at..].iter().position(|&byte| byte == b'\n').ok_or("an unended comment")?,
                _ => break,
            }
        }
        let digits = rest[at..].iter().take_while(|byte| byte.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return Err("its header needs width, height and maximum value".into());
        }
        let text = std::str::from_utf8(&rest[at..at + digits]).map_err(|_| "a non-ASCII header")?;
        *field = text.parse().map_err(|_| "a header number out of range")?;
        at += digits;
    }
    let [width, height, max_value] = fields;
    if !(1..=255).contains(&max_value) {
        return Err(format!("maximum value {max_value}: only 8-bit images (1 to 255) are supported"));
    }
    if !rest.get(at).is_some_and(u8::is_ascii_whitespace) {
        return Err("no whitespace after the header".into());
    }
    let pixels = &rest[at + 1..];
    if width == 0 || height == 0 || width.checked_mul(height) != Some(pixels.len()) {
        return Err(format!("{width} × {height} pixels announced, {} bytes of pixels sent", pixels.len()));
    }
    Ok((height, width, pixels))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageOptions {
    #[serde(default = "default_input")]
    input: String,
    height: usize,
    width: usize,
}

fn default_input() -> String {
    "pixels".to_owned()
}

/// Builds the stage.
pub fn build_stage(options: &toml::Table, _context: &BuildContext<'_>) -> Result<Box<dyn Stage>, BuildError> {
    let options: StageOptions = parse_options(options)?;
    Ok(Box::new(Pixels { input: options.input, shape: vec![options.height, options.width] }))
}

/// The `pixels` stage.
#[derive(Debug)]
pub struct Pixels {
    input: String,
    shape: Vec<usize>,
}

impl Stage for Pixels {
    fn name(&self) -> &str {
        STAGE
    }

    fn process(&mut self, item: &mut Item) -> Result<(), StageError> {
        let Input::Tensors(tensors) = &mut item.input else {
            return Err(StageError::new(Reason::MissingInput, "the pixels stage needs an image from the pgm decoder"));
        };
        let index = tensors.iter().position(|tensor| tensor.name == IMAGE).ok_or_else(|| {
            StageError::new(Reason::MissingInput, "the pixels stage needs an image from the pgm decoder")
        })?;
        let mut image = tensors.swap_remove(index);
        if image.tensor.shape != self.shape {
            return Err(StageError::new(
                Reason::Custom("wrong_image_size"),
                format!("a {:?} image; the model takes {:?} (height, width)", image.tensor.shape, self.shape),
            ));
        }
        image.name.clone_from(&self.input);
        item.features.push(image);
        Ok(())
    }

    fn produces(&self) -> Vec<TensorSpec> {
        vec![TensorSpec::new(self.input.clone(), ElementType::U8, self.shape.iter().copied().map(Some).collect())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary PGM of `pixels` (row-major), `width` wide.
    fn pgm(width: usize, pixels: &[u8]) -> Vec<u8> {
        let mut bytes = format!("P5\n# test\n{width} {}\n255\n", pixels.len() / width).into_bytes();
        bytes.extend_from_slice(pixels);
        bytes
    }

    #[test]
    fn parses_the_header_and_keeps_the_bytes() {
        let image = pgm(3, &[0, 1, 2, 250, 251, 255]);
        let (height, width, pixels) = parse_pgm(&image).expect("a valid PGM");
        assert_eq!((height, width, pixels), (2, 3, &[0, 1, 2, 250, 251, 255][..]));
    }

    #[test]
    fn refuses_what_is_not_a_binary_pgm() {
        for (bytes, why) in [
            (b"P2\n1 1\n255\n\x00".to_vec(), "P5"),
            (b"P5\n2 2\n255\n\x00\x00\x00".to_vec(), "2 × 2 pixels announced, 3 bytes"),
            (b"P5\n1 1\n65535\n\x00\x00".to_vec(), "only 8-bit"),
            (b"P5\n1\n".to_vec(), "width, height"),
            (b"P5 # no end".to_vec(), "comment"),
        ] {
            let error = parse_pgm(&bytes).expect_err("invalid");
            assert!(error.contains(why), "{error} (wanted {why})");
        }
    }

    #[test]
    fn the_stage_moves_an_image_of_the_right_size_to_the_model_input() {
        let decoder = Pgm { max_bytes: 100 };
        let message = |payload| RawMessage { key: "k".into(), payload, encoding: String::new(), attachment_id: None };
        let request = decoder.decode(&message(pgm(2, &[7, 8, 9, 10]))).expect("decoded");
        let mut stage = Pixels { input: "pixels".into(), shape: vec![2, 2] };
        let mut item = Item::new("1".into(), "k".into(), request.input.clone());
        stage.process(&mut item).expect("right size");
        let feature = item.feature("pixels").expect("the model input");
        assert_eq!(
            (feature.tensor.shape.as_slice(), &feature.tensor.data),
            (&[2, 2][..], &TensorData::U8(vec![7, 8, 9, 10]))
        );

        let mut wrong = Pixels { input: "pixels".into(), shape: vec![8, 8] };
        let mut item = Item::new("2".into(), "k".into(), request.input);
        assert_eq!(wrong.process(&mut item).expect_err("2 × 2, not 8 × 8").reason.as_str(), "wrong_image_size");
        let error = decoder.decode(&message(vec![0; 101])).expect_err("over max_bytes");
        assert_eq!(error.reason, Reason::PayloadTooLarge);
    }
}
