//! Fixtures shared by the trainer and cache tests: the tiny student and the preset settings.
#![allow(clippy::unwrap_used, dead_code)]

use candle_core::{DType, Device};
use candle_nn::VarMap;
use distillery_losses::*;
use distillery_models::{random_student, BertConfig, BertModel, StudentSpec};
use distillery_stages::*;

/// A 2-layer, 8-wide, 4-head student of `teacher` (16 wide) and its shared projection.
pub fn student(teacher: &BertConfig) -> (BertModel, VarMap, Vec<Projection>) {
    let spec = StudentSpec {
        layers: 2,
        hidden: 8,
        heads: 4,
        intermediate: 16,
    };
    let s = random_student(
        spec.config(teacher).unwrap(),
        21,
        true,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let vm = VarMap::new();
    let p = Projection::new(&vm, "projection.hidden", 8, 16, 3, &Device::Cpu).unwrap();
    (s, vm, vec![p])
}

/// The three losses (hidden MSE + embeddings, attention KL, logit KD with hard labels at 0.5),
/// lr 3e-3 with 10% warm-up; evaluation and checkpoints every `every` steps (0: stage ends).
pub fn settings(total: usize, every: usize) -> PresetSettings {
    PresetSettings {
        hidden: terms::hidden(
            HiddenLoss {
                kind: HiddenKind::Mse,
                include_embeddings: true,
            },
            LayerMap::Uniform,
            1.0,
        ),
        attention: terms::attention(
            AttentionLoss {
                kind: AttentionKind::Kl,
            },
            LayerMap::Uniform,
            1.0,
        ),
        logit: terms::logit(
            LogitLoss {
                kind: LogitKind::Kl,
                temperature: 2.0,
            },
            1.0,
        ),
        hard_label: Some(terms::hard_label(0.5)),
        total_steps: total,
        split: None,
        optimizer: AdamW::default(),
        lr: LrSchedule {
            peak: 3e-3,
            warmup_steps: 0,
            decay: Decay::Linear,
            min_ratio: 0.0,
        },
        warmup_ratio: Some(0.1),
        params: ParamGroups::default(),
        eval_every: every,
        checkpoint_every: every,
    }
}
