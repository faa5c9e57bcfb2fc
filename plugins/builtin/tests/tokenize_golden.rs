//! The tokenize stage reproduces, id for id, what Python's `tokenizers` produced for the fixture model's golden
//! cases (including truncation to 128 tokens with the closing [SEP] kept).

use std::path::PathBuf;

use zinfer_plugins::tokenize::{ATTENTION_MASK, INPUT_IDS, Overflow, TOKEN_TYPE_IDS, Tokenize};
use zinfer_stage_api::{Input, Item, Stage};

#[derive(serde::Deserialize)]
struct Golden {
    max_length: usize,
    cases: Vec<Case>,
}

#[derive(serde::Deserialize)]
struct Case {
    text: String,
    input_ids: Vec<i64>,
    attention_mask: Vec<i64>,
    token_type_ids: Vec<i64>,
}

fn fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/fixture").join(file)
}

#[test]
fn token_ids_match_the_python_tokenizer() {
    let golden: Golden =
        serde_json::from_str(&std::fs::read_to_string(fixture("golden.json")).expect("golden.json")).expect("parse");
    let mut stage =
        Tokenize::from_file(&fixture("tokenizer.json"), golden.max_length, Overflow::Truncate).expect("tokenizer");
    let mut truncated = 0;
    for case in &golden.cases {
        let mut item = Item::new("id".into(), "key".into(), Input::Text(case.text.clone()));
        stage.process(&mut item).expect("tokenize");
        let feature = |name: &str| item.feature(name).and_then(|f| f.tensor.as_i64()).expect("feature").to_vec();
        assert_eq!(feature(INPUT_IDS), case.input_ids, "{:?}", case.text);
        assert_eq!(feature(ATTENTION_MASK), case.attention_mask, "{:?}", case.text);
        assert_eq!(feature(TOKEN_TYPE_IDS), case.token_type_ids, "{:?}", case.text);
        truncated += usize::from(case.input_ids.len() == golden.max_length);
    }
    assert!(truncated >= 1, "the golden set must exercise truncation");
}

#[test]
fn reject_mode_refuses_long_texts() {
    let mut stage = Tokenize::from_file(&fixture("tokenizer.json"), 8, Overflow::Reject).expect("tokenizer");
    let mut item = Item::new("id".into(), "key".into(), Input::Text("a b c d e f g h i j".into()));
    let error = stage.process(&mut item).expect_err("too long");
    assert_eq!(error.reason.as_str(), "too_many_tokens");
    let mut short = Item::new("id".into(), "key".into(), Input::Text("fine".into()));
    stage.process(&mut short).expect("short text fits");
}

#[test]
fn buckets_group_texts_for_batching_without_padding_them() {
    let dir = fixture("manifest.toml");
    let manifest = zinfer_stage_api::ModelManifest::load(&dir).expect("manifest");
    let base = dir.parent().expect("folder").to_owned();
    let context = zinfer_stage_api::BuildContext { manifest: &manifest, base_dir: &base };
    let options: toml::Table = toml::from_str("buckets = [64, 16, 32]").expect("toml");
    let mut stage = zinfer_plugins::tokenize::build(&options, &context).expect("stage");
    // 3, 22 and 102 tokens: the last is longer than the largest bucket and has no group.
    for (text, length, group) in
        [("fine", 3, Some(16)), (&*"word ".repeat(20), 22, Some(32)), (&*"word ".repeat(100), 102, None)]
    {
        let mut item = Item::new("id".into(), "key".into(), Input::Text(text.to_owned()));
        stage.process(&mut item).expect("tokenize");
        let ids = item.feature(INPUT_IDS).and_then(|f| f.tensor.as_i64()).expect("ids").to_vec();
        let mask = item.feature(ATTENTION_MASK).and_then(|f| f.tensor.as_i64()).expect("mask").to_vec();
        assert_eq!(ids.len(), length, "{text:?} stays at its own length");
        assert!(mask.iter().all(|&m| m == 1), "no padding yet");
        let padding = item.padding.as_ref();
        assert_eq!(padding.map(|padding| padding.group), group, "{text:?}");
        if let Some(padding) = padding {
            assert_eq!(padding.value(INPUT_IDS), 0, "[PAD] is id 0 in this vocabulary");
            assert_eq!(padding.value(ATTENTION_MASK), 0, "masked out when padded");
        }
    }
    let too_big: toml::Table = toml::from_str("buckets = [16, 4096]").expect("toml");
    assert!(zinfer_plugins::tokenize::build(&too_big, &context).is_err(), "a bucket beyond max_length is refused");
}
