//! A saved model is read back by another implementation: candle-transformers' BERT loads the
//! folder (config.json + model.safetensors, with and without a head's `bert.` prefix) and
//! computes the same hidden states.
#![allow(clippy::unwrap_used)]

mod common;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use distillery_models::{save_model, ForwardOptions};

#[test]
fn candle_transformers_loads_a_saved_model_and_agrees() {
    let root = tempfile::tempdir().unwrap();
    for labels in [&[][..], &["neg", "pos"][..]] {
        let model = common::tiny_model(labels, 21, DType::F32);
        let dir = root.path().join(format!("m{}", labels.len()));
        save_model(&model, &dir, None).unwrap();
        let cfg: candle_transformers::models::bert::Config =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        // SAFETY: the file was just written by this test and is not modified while mapped.
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        let theirs = candle_transformers::models::bert::BertModel::load(vb, &cfg).unwrap();
        let (ids, types, mask) = common::tiny_batch();
        let got = theirs.forward(&ids, &types, Some(&mask)).unwrap();
        let ours = model
            .forward(&ids, Some(&types), &mask, &ForwardOptions::default())
            .unwrap();
        let diff = common::max_abs_diff(&got, ours.last_hidden_state());
        assert!(diff < 1e-5, "labels {labels:?}: max difference {diff}");
    }
}
