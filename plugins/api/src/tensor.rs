//! Owned, minimal tensors: what stages hand to the model and get back from it.
//!
//! Deliberately not ndarray or an ONNX Runtime value: stages stay independent of the inference engine, and the
//! engine crate converts at the boundary. Tensors here are per item, without the batch axis; the engine stacks them.

/// Element type of a tensor, limited to what text and sensor classifiers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElementType {
    /// 64-bit signed integers (token ids, masks).
    I64,
    /// 32-bit floats (logits, sensor values).
    F32,
}

impl std::fmt::Display for ElementType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::I64 => "int64",
            Self::F32 => "float32",
        })
    }
}

/// The elements of a tensor, row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    /// 64-bit signed integers.
    I64(Vec<i64>),
    /// 32-bit floats.
    F32(Vec<f32>),
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
        match self.data {
            TensorData::I64(_) => ElementType::I64,
            TensorData::F32(_) => ElementType::F32,
        }
    }

    /// Lengthens the first axis to `length` rows with `value` (cast to floats for a float tensor); a tensor already
    /// that long, or a scalar, is left as it is.
    pub fn pad_first_axis(&mut self, length: usize, value: i64) {
        let Some(&rows) = self.shape.first() else { return };
        if rows >= length {
            return;
        }
        let row: usize = self.shape[1..].iter().product();
        match &mut self.data {
            TensorData::I64(values) => values.resize(length * row, value),
            TensorData::F32(values) => values.resize(length * row, value as f32),
        }
        self.shape[0] = length;
    }

    /// The float elements, if this is a float32 tensor.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            TensorData::F32(values) => Some(values),
            TensorData::I64(_) => None,
        }
    }

    /// The integer elements, if this is an int64 tensor.
    pub fn as_i64(&self) -> Option<&[i64]> {
        match &self.data {
            TensorData::I64(values) => Some(values),
            TensorData::F32(_) => None,
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
}
