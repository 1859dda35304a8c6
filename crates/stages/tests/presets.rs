//! The presets expand to exactly the rows of the table in `src/presets.rs`, at equal total cost.
#![allow(clippy::unwrap_used)]

use distillery_losses::*;
use distillery_stages::*;
use proptest::prelude::*;

fn settings(total: usize, split: Option<Vec<f64>>) -> PresetSettings {
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
        hard_label: None,
        total_steps: total,
        split,
        optimizer: AdamW::default(),
        lr: LrSchedule {
            peak: 5e-4,
            warmup_steps: 10,
            decay: Decay::Linear,
            min_ratio: 0.0,
        },
        warmup_ratio: None,
        params: ParamGroups::default(),
        eval_every: 0,
        checkpoint_every: 0,
    }
}

fn kinds(s: &Schedule) -> Vec<Vec<&'static str>> {
    s.stages
        .iter()
        .map(|st| st.losses.iter().map(Weighted::name).collect())
        .collect()
}

#[test]
fn presets_match_the_design_table() {
    let s = settings(300, None);
    assert_eq!(
        kinds(&expand(Preset::OneStage, &s).unwrap()),
        [vec!["hidden", "attention", "logit"]]
    );
    assert_eq!(
        kinds(&expand(Preset::TwoStage, &s).unwrap()),
        [vec!["hidden", "attention"], vec!["logit"]]
    );
    assert_eq!(
        kinds(&expand(Preset::ThreeStage, &s).unwrap()),
        [
            vec!["hidden", "attention"],
            vec!["hidden", "attention", "logit"],
            vec!["logit"]
        ]
    );
    for p in Preset::ALL {
        assert_eq!(expand(p, &s).unwrap().total_steps(), 300, "{}", p.name());
        assert_eq!(Preset::parse(p.name()), Some(p));
    }
    let custom = expand(Preset::TwoStage, &settings(101, Some(vec![0.7, 0.3]))).unwrap();
    assert_eq!(
        custom.stages.iter().map(|s| s.steps).collect::<Vec<_>>(),
        [71, 30]
    );
}

#[test]
fn bad_settings_are_errors_that_name_the_field() {
    let e = expand(Preset::ThreeStage, &settings(100, Some(vec![0.5, 0.5])))
        .unwrap_err()
        .to_string();
    assert!(e.contains("split") && e.contains("3 stages"), "{e}");
    let e = expand(Preset::ThreeStage, &settings(2, None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("0 of the 2 steps"), "{e}");
    let mut s = settings(100, None);
    s.lr.peak = 0.0;
    let e = expand(Preset::OneStage, &s).unwrap_err().to_string();
    assert!(e.contains("`lr`") && e.contains("positive"), "{e}");
    let mut s = settings(100, None);
    s.logit = terms::logit(
        LogitLoss {
            kind: LogitKind::Kl,
            temperature: 1.0,
        },
        -1.0,
    );
    let e = expand(Preset::OneStage, &s).unwrap_err().to_string();
    assert!(e.contains("weight") && e.contains("logit"), "{e}");
}

proptest! {
    #[test]
    fn splits_always_sum_to_the_budget(total in 3usize..100_000, a in 1u32..100, b in 1u32..100, c in 1u32..100) {
        let sum = f64::from(a + b + c);
        let f = [f64::from(a) / sum, f64::from(b) / sum, f64::from(c) / sum];
        // Only a stage whose exact share is under one step can end up with none.
        let too_small = f.iter().any(|x| x * (total as f64) < 1.0);
        match split_steps(total, &f) {
            Ok(parts) => {
                prop_assert_eq!(parts.iter().sum::<usize>(), total);
                for (p, x) in parts.iter().zip(f) {
                    prop_assert!(*p >= 1);
                    prop_assert!((*p as f64 - x * total as f64).abs() < 1.0 + 1e-9);
                }
            }
            Err(e) => {
                prop_assert!(too_small, "{total} steps by {f:?}: {e}");
                prop_assert!(e.to_string().contains("would get 0"), "{e}");
            }
        }
    }
}

#[test]
fn hard_label_joins_every_stage_with_the_logit_term() {
    let mut s = settings(300, None);
    s.hard_label = Some(terms::hard_label(0.5));
    assert_eq!(
        kinds(&expand(Preset::ThreeStage, &s).unwrap()),
        [
            vec!["hidden", "attention"],
            vec!["hidden", "attention", "logit", "hard_label"],
            vec!["logit", "hard_label"]
        ]
    );
    assert_eq!(
        kinds(&expand(Preset::TwoStage, &s).unwrap()),
        [vec!["hidden", "attention"], vec!["logit", "hard_label"]]
    );
}

#[test]
fn warmup_ratio_scales_with_each_stage() {
    let mut s = settings(100, Some(vec![0.2, 0.3, 0.5]));
    s.warmup_ratio = Some(0.1);
    let w: Vec<usize> = expand(Preset::ThreeStage, &s)
        .unwrap()
        .stages
        .iter()
        .map(|st| st.lr.warmup_steps)
        .collect();
    assert_eq!(w, [2, 3, 5]);
}
