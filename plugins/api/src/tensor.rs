//! Owned, minimal tensors: what stages hand to the model and get back from it.
//!
//! Deliberately not ndarray or an ONNX Runtime value: stages stay independent of the inference engine, and the
//! engine crate converts at the boundary. Tensors here are per item, without the batch axis; the engine stacks them.

pub use half::f16;

/// Element type of a tensor: the types an edge model's inputs and outputs use (token ids and masks, quantized or
/// raw image bytes, sensor values, half-precision activations, flags). More may come: match with a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ElementType {
    /// 8-bit unsigned integers (image bytes, quantized inputs).
    U8,
    /// 8-bit signed integers (quantized inputs).
    I8,
    /// 32-bit signed integers.
    I32,
    /// 64-bit signed integers (token ids, masks).
    I64,
    /// 16-bit floats (IEEE 754 half precision).
    F16,
    /// 32-bit floats (logits, sensor values).
    F32,
    /// Booleans (masks, flags).
    Bool,
}

impl std::fmt::Display for ElementType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::U8 => "uint8",
            Self::I8 => "int8",
            Self::I32 => "int32",
            Self::I64 => "int64",
            Self::F16 => "float16",
            Self::F32 => "float32",
            Self::Bool => "bool",
        })
    }
}

/// The elements of a tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum TensorData {
    /// 8-bit unsigned integers.
    U8(Vec<u8>),
    /// 8-bit signed integers.
    I8(Vec<i8>),
    /// 32-bit signed integers.
    I32(Vec<i32>),
    /// 64-bit signed integers.
    I64(Vec<i64>),
    /// 16-bit floats.
    F16(Vec<f16>),
    /// 32-bit floats.
    F32(Vec<f32>),
    /// Booleans.
    Bool(Vec<bool>),
}

impl TensorData {
    /// No elements, of `element_type`.
    pub fn empty(element_type: ElementType) -> Self {
        match element_type {
            ElementType::U8 => Self::U8(Vec::new()),
            ElementType::I8 => Self::I8(Vec::new()),
            ElementType::I32 => Self::I32(Vec::new()),
            ElementType::I64 => Self::I64(Vec::new()),
            ElementType::F16 => Self::F16(Vec::new()),
            ElementType::F32 => Self::F32(Vec::new()),
            ElementType::Bool => Self::Bool(Vec::new()),
        }
    }

    /// `count` copies of `value`, of `element_type`: `value` converted as by [`TensorData::resize`].
    pub fn filled(element_type: ElementType, count: usize, value: i64) -> Self {
        let mut data = Self::empty(element_type);
        data.resize(count, value);
        data
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        match self {
            Self::U8(_) => ElementType::U8,
            Self::I8(_) => ElementType::I8,
            Self::I32(_) => ElementType::I32,
            Self::I64(_) => ElementType::I64,
            Self::F16(_) => ElementType::F16,
            Self::F32(_) => ElementType::F32,
            Self::Bool(_) => ElementType::Bool,
        }
    }

    /// The number of elements.
    pub fn len(&self) -> usize {
        match self {
            Self::U8(values) => values.len(),
            Self::I8(values) => values.len(),
            Self::I32(values) => values.len(),
            Self::I64(values) => values.len(),
            Self::F16(values) => values.len(),
            Self::F32(values) => values.len(),
            Self::Bool(values) => values.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `other`'s elements; false (and nothing appended) if its type differs.
    pub fn extend_from(&mut self, other: &Self) -> bool {
        match (self, other) {
            (Self::U8(values), Self::U8(more)) => values.extend_from_slice(more),
            (Self::I8(values), Self::I8(more)) => values.extend_from_slice(more),
            (Self::I32(values), Self::I32(more)) => values.extend_from_slice(more),
            (Self::I64(values), Self::I64(more)) => values.extend_from_slice(more),
            (Self::F16(values), Self::F16(more)) => values.extend_from_slice(more),
            (Self::F32(values), Self::F32(more)) => values.extend_from_slice(more),
            (Self::Bool(values), Self::Bool(more)) => values.extend_from_slice(more),
            _ => return false,
        }
        true
    }

    /// Shortens or lengthens to `count` elements, new ones `value` converted to the element type (saturating for
    /// narrow integers, nearest for floats, `value != 0` for booleans).
    pub fn resize(&mut self, count: usize, value: i64) {
        let narrow = |min: i64, max: i64| value.clamp(min, max);
        match self {
            Self::U8(values) => values.resize(count, narrow(0, u8::MAX.into()) as u8),
            Self::I8(values) => values.resize(count, narrow(i8::MIN.into(), i8::MAX.into()) as i8),
            Self::I32(values) => values.resize(count, narrow(i32::MIN.into(), i32::MAX.into()) as i32),
            Self::I64(values) => values.resize(count, value),
            Self::F16(values) => values.resize(count, f16::from_f64(value as f64)),
            Self::F32(values) => values.resize(count, value as f32),
            Self::Bool(values) => values.resize(count, value != 0),
        }
    }
}

/// A dense row-major tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
    /// Elements; their count equals the product of `shape`.
    pub data: TensorData,
}

impl Tensor {
    /// A 1-D int64 tensor.
    pub fn i64_vector(values: Vec<i64>) -> Self {
        Self { shape: vec![values.len()], data: TensorData::I64(values) }
    }

    /// A 1-D float32 tensor.
    pub fn f32_vector(values: Vec<f32>) -> Self {
        Self { shape: vec![values.len()], data: TensorData::F32(values) }
    }

    /// The element type.
    pub fn element_type(&self) -> ElementType {
        self.data.element_type()
    }

    /// Lengthens the first axis to `length` rows with `value` (converted as by [`TensorData::resize`]); a tensor
    /// already that long, or a scalar, is left as it is.
    pub fn pad_first_axis(&mut self, length: usize, value: i64) {
        let Some(&rows) = self.shape.first() else { return };
        if rows >= length {
            return;
        }
        let row: usize = self.shape[1..].iter().product();
        self.data.resize(length * row, value);
        self.shape[0] = length;
    }

    /// The float elements, if this is a float32 tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(values) => Some(values),
            _ => None,
        }
    }

    /// The integer elements, if this is an int64 tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(values) => Some(values),
            _ => None,
        }
    }
}

/// A tensor with the name of the model input or output it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// The model input/output name.
    pub name: String,
    /// The value.
    pub tensor: Tensor,
}

/// What a stage promises to produce or expects to consume, checked against the model at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The model input/output name.
    pub name: String,
    /// The element type.
    pub element_type: ElementType,
    /// Per-item dimensions (no batch axis); `None` for a dimension that varies per item.
    pub dims: Vec<Option<usize>>,
}

impl TensorSpec {
    /// A spec with the given name, type and per-item dimensions.
    pub fn new(name: impl Into<String>, element_type: ElementType, dims: Vec<Option<usize>>) -> Self {
        Self { name: name.into(), element_type, dims }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_the_first_axis_appends_whole_rows() {
        let mut matrix = Tensor { shape: vec![2, 3], data: TensorData::F32(vec![1.0; 6]) };
        matrix.pad_first_axis(4, 7);
        assert_eq!(matrix.shape, vec![4, 3]);
        assert_eq!(matrix.as_f32().map(<[f32]>::len), Some(12));
        assert_eq!(matrix.as_f32().map(|values| values[6]), Some(7.0));
        let mut ids = Tensor::i64_vector(vec![101, 5, 102]);
        ids.pad_first_axis(2, 0);
        assert_eq!(ids.as_i64(), Some(&[101, 5, 102][..]), "never shortened");
        ids.pad_first_axis(5, 9);
        assert_eq!(ids.as_i64(), Some(&[101, 5, 102, 9, 9][..]));
    }

    #[test]
    fn every_element_type_pads_with_the_value_converted() {
        let padded = |element_type, value| {
            let mut tensor = Tensor { shape: vec![1], data: TensorData::filled(element_type, 1, 1) };
            tensor.pad_first_axis(2, value);
            tensor.data
        };
        assert_eq!(padded(ElementType::U8, 300), TensorData::U8(vec![1, 255]), "saturated");
        assert_eq!(padded(ElementType::I8, -300), TensorData::I8(vec![1, -128]), "saturated");
        assert_eq!(padded(ElementType::I32, 7), TensorData::I32(vec![1, 7]));
        assert_eq!(padded(ElementType::F16, 3), TensorData::F16(vec![f16::from_f32(1.0), f16::from_f32(3.0)]));
        assert_eq!(padded(ElementType::Bool, 0), TensorData::Bool(vec![true, false]));
        let mut joined = TensorData::empty(ElementType::I32);
        assert!(joined.extend_from(&TensorData::I32(vec![1, 2])));
        assert!(!joined.extend_from(&TensorData::I64(vec![3])), "another type is refused");
        assert_eq!(joined, TensorData::I32(vec![1, 2]));
    }
}
