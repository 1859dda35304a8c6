//! Tokenisation: fixed padding off, truncation, dynamic padding, pairs.
#![allow(clippy::unwrap_used)]

mod common;

use distillery_models::{TextInput, TextTokenizer};

#[test]
fn pads_per_batch_truncates_and_encodes_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let path = common::write_tiny_tokenizer(dir.path());
    let tok = TextTokenizer::from_file(&path, 8).unwrap();
    let batch = tok
        .encode_batch(&[
            TextInput::Single("The cat sat.".into()),
            TextInput::Single("dog".into()),
            TextInput::Pair("good movie".into(), "bad".into()),
        ])
        .unwrap();
    // Longest is [CLS] the cat sat . [SEP] = 6 and the pair = 6: padded to 6, not to the file's 16.
    assert_eq!((batch.batch, batch.seq), (3, 6));
    assert_eq!(&batch.input_ids[..6], &[2, 5, 6, 7, 15, 3]);
    assert_eq!(&batch.input_ids[6..12], &[2, 11, 3, 0, 0, 0]);
    assert_eq!(&batch.attention_mask[6..12], &[1, 1, 1, 0, 0, 0]);
    assert_eq!(&batch.input_ids[12..], &[2, 18, 20, 3, 19, 3]);
    assert_eq!(&batch.token_type_ids[12..], &[0, 0, 0, 0, 1, 1]);

    let long = TextInput::Single("the cat sat on the mat , the dog ran fast !".into());
    let b = tok.encode_batch(&[long]).unwrap();
    assert_eq!(b.seq, 8);
    assert_eq!(b.input_ids[7], 3, "truncation keeps the final [SEP]");
    let t = b.to_tensors(&candle_core::Device::Cpu).unwrap();
    assert_eq!(t.input_ids.dims(), [1, 8]);
}

#[test]
fn missing_tokenizer_is_a_named_error() {
    let e = TextTokenizer::from_file(std::path::Path::new("/nonexistent/tokenizer.json"), 8)
        .unwrap_err();
    assert!(e.to_string().contains("/nonexistent/tokenizer.json"));
}
