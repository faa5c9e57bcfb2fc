//! Every element type an edge model uses goes into and comes out of a real ONNX Runtime session, item by item:
//! tests/fixtures/dtypes/model.onnx (scripts/fixture/make_dtypes_model.py) passes each typed input through and sums
//! each item's elements into `total`.
//!
//! Needs the library from `scripts/install-onnxruntime.sh` (or ORT_DYLIB_PATH).

mod common;

use zinfer_ort::{Model, SessionConfig};
use zinfer_stage_api::{ElementType, NamedTensor, Tensor, TensorData, f16};

fn load() -> Model {
    common::load_with("tests/fixtures/dtypes/model.onnx", &SessionConfig::default())
}

/// One item's inputs: each type's two elements, and the sum they make.
fn item(base: i8, flag: bool) -> (Vec<NamedTensor>, f32) {
    let b = base;
    let data = [
        ("u8", TensorData::U8(vec![b as u8, b as u8 + 200])),
        ("i8", TensorData::I8(vec![-b, b])),
        ("i32", TensorData::I32(vec![i32::from(b) * 1000, 7])),
        ("i64", TensorData::I64(vec![i64::from(b) << 20, -3])),
        ("f16", TensorData::F16(vec![f16::from_f32(0.5), f16::from_f32(f32::from(b))])),
        ("f32", TensorData::F32(vec![0.25, -f32::from(b)])),
        ("bool", TensorData::Bool(vec![flag, true])),
    ];
    let sum = (2.0 * f32::from(b) + 200.0)
        + 0.0
        + (f32::from(b) * 1000.0 + 7.0)
        + ((i64::from(b) << 20) as f32 - 3.0)
        + (0.5 + f32::from(b))
        + (0.25 - f32::from(b))
        + (f32::from(u8::from(flag)) + 1.0);
    let features = data
        .into_iter()
        .map(|(name, data)| NamedTensor { name: format!("in_{name}"), tensor: Tensor { shape: vec![2], data } })
        .collect();
    (features, sum)
}

#[test]
fn the_signature_names_every_element_type() {
    let model = load();
    let types: Vec<(String, ElementType)> =
        model.signature().inputs.iter().map(|spec| (spec.name.clone(), spec.element_type)).collect();
    assert_eq!(
        types,
        [
            ("in_u8".to_owned(), ElementType::U8),
            ("in_i8".to_owned(), ElementType::I8),
            ("in_i32".to_owned(), ElementType::I32),
            ("in_i64".to_owned(), ElementType::I64),
            ("in_f16".to_owned(), ElementType::F16),
            ("in_f32".to_owned(), ElementType::F32),
            ("in_bool".to_owned(), ElementType::Bool),
        ]
    );
    let names: Vec<String> = types.iter().map(|(_, element)| element.to_string()).collect();
    assert_eq!(names, ["uint8", "int8", "int32", "int64", "float16", "float32", "bool"]);
}

#[test]
fn a_batch_of_every_element_type_comes_back_item_by_item() {
    let mut model = load();
    model.warm_up(4, 2).expect("warm-up fills every type");
    let (first, first_sum) = item(3, false);
    let (second, second_sum) = item(5, true);
    let outputs = model.run(&[first.as_slice(), second.as_slice()]).expect("run");
    assert_eq!(outputs.len(), 2, "one set of outputs per item");
    for ((inputs, sum), outputs) in [(&first, first_sum), (&second, second_sum)].into_iter().zip(&outputs) {
        for input in inputs {
            let name = input.name.replacen("in_", "out_", 1);
            let output = outputs.iter().find(|output| output.name == name).expect("each output");
            assert_eq!(output.tensor, input.tensor, "{name} passes through unchanged, in its own type");
        }
        let total = outputs.iter().find(|output| output.name == "total").expect("total");
        let total = total.tensor.as_f32().expect("float32")[0];
        assert!((total - sum).abs() <= sum.abs() * 1e-6, "total {total}, expected {sum}");
    }
}

#[test]
fn a_stage_that_feeds_the_wrong_type_gets_an_error_naming_both() {
    let mut model = load();
    let (mut features, _) = item(1, true);
    features[0].tensor.data = TensorData::I64(vec![1, 2]);
    let error = model.run(&[features.as_slice()]).expect_err("int64 where uint8 is expected").to_string();
    assert!(error.contains("in_u8") && error.contains("uint8") && error.contains("int64"), "{error}");
}
