//! The family-agnostic seam: a LLaMA-family student distilled from a LLaMA-family teacher by
//! the same trainer, loss trait and hidden-state term as BERT (only `&dyn Model` in between),
//! and the terms that assume bidirectional attention or classification logits refusing
//! decoders by key.
#![allow(clippy::unwrap_used)]

use candle_core::Device;
use candle_nn::VarMap;
use distillery_data::{BatchConfig, Batcher, Dataset, Example};
use distillery_losses::*;
use distillery_models::llama::{random_llama, LlamaConfig, LlamaShape};
use distillery_models::{testing, Family, Model, TextTokenizer};
use distillery_stages::*;

fn data() -> Dataset {
    let words = [
        "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "fast", "movie",
    ];
    let mut rng = distillery_models::rng::SplitMix64::new(3);
    let examples = (0..40)
        .map(|i| {
            let len = 3 + (rng.next_u64() % 6) as usize;
            let text: Vec<&str> = (0..len)
                .map(|_| words[(rng.next_u64() % words.len() as u64) as usize])
                .collect();
            Example {
                text: text.join(" "),
                pair: None,
                label: None,
                line: i + 1,
            }
        })
        .collect();
    Dataset {
        source: "mem.txt".into(),
        examples,
        skipped: Vec::new(),
    }
}

fn base(vocab: usize) -> LlamaConfig {
    LlamaConfig {
        tie_word_embeddings: true,
        ..testing::llama_base(vocab)
    }
}

fn shape(layers: usize, hidden: usize, intermediate: usize) -> LlamaShape {
    LlamaShape {
        layers,
        hidden,
        heads: 4,
        kv_heads: 2,
        intermediate,
    }
}

#[test]
fn hidden_state_distillation_of_a_decoder_lowers_its_loss() {
    let dir = tempfile::tempdir().unwrap();
    testing::write_tiny_tokenizer(dir.path()).unwrap();
    let tok = TextTokenizer::from_file(&dir.path().join("tokenizer.json"), 16).unwrap();
    let cfg = base(tok.vocab_size());
    let teacher = random_llama(&cfg, &shape(3, 32, 64), 3, false, &Device::Cpu)
        .unwrap()
        .0;
    let (student, vars) = random_llama(&cfg, &shape(2, 16, 32), 5, true, &Device::Cpu).unwrap();
    assert!(vars.is_some() && student.varmap().is_some());
    assert_eq!(teacher.shape().family, Family::Decoder);
    assert_eq!((teacher.shape().heads, teacher.shape().kv_heads), (4, 2));

    let hidden = terms::hidden(
        HiddenLoss {
            kind: HiddenKind::Mse,
            include_embeddings: true,
        },
        LayerMap::Uniform,
        1.0,
    );
    hidden
        .term
        .check(&student.shape(), &teacher.shape())
        .unwrap();
    let specs = hidden.term.projections(&student.shape(), &teacher.shape());
    assert_eq!((specs.len(), specs[0].from, specs[0].to), (1, 16, 32));
    let pvars = VarMap::new();
    let proj = vec![Projection::new(&pvars, &specs[0].name, 16, 32, 9, &Device::Cpu).unwrap()];
    let schedule = Schedule {
        stages: vec![Stage {
            name: "hidden".into(),
            losses: vec![hidden],
            steps: 40,
            optimizer: AdamW::default(),
            lr: LrSchedule {
                peak: 3e-3,
                warmup_steps: 0,
                decay: Decay::Constant,
                min_ratio: 1.0,
            },
            params: ParamGroups::default(),
            carry_optimizer: false,
            eval_every: 0,
            checkpoint_every: 0,
        }],
    };
    let data = data();
    let mut batcher = Batcher::new(&data, &tok, None, BatchConfig::shuffled(8, 99)).unwrap();
    let models = Models {
        teacher: Some(&teacher),
        student: &student,
        projections: &proj,
        projection_vars: Some(&pvars),
        teacher_cache: None,
    };
    let mut trainer = Trainer::new(models, None, TrainerConfig::default()).unwrap();
    let mut recorder = Recorder::default();
    trainer
        .run(&schedule, &mut batcher, &mut [&mut recorder], None)
        .unwrap();
    let v: Vec<f64> = recorder.steps().map(|s| s.loss).collect();
    assert_eq!(v.len(), 40);
    let (head, tail) = (v[..5].iter().sum::<f64>(), v[35..].iter().sum::<f64>());
    assert!(tail < 0.7 * head, "{v:?}");
}

#[test]
fn terms_that_assume_an_encoder_refuse_decoders_by_key() {
    let cfg = base(32);
    let t = random_llama(&cfg, &shape(2, 16, 32), 1, false, &Device::Cpu)
        .unwrap()
        .0
        .shape();
    let cases = [
        (
            terms::attention(
                AttentionLoss {
                    kind: AttentionKind::Kl,
                },
                LayerMap::Uniform,
                1.0,
            ),
            "kind",
        ),
        (
            terms::logit(
                LogitLoss {
                    kind: LogitKind::Kl,
                    temperature: 2.0,
                },
                1.0,
            ),
            "temperature",
        ),
        (terms::hard_label(1.0), "weight"),
    ];
    for (term, want) in cases {
        match term.term.check(&t, &t) {
            Err(terms::TermError::Key { key, message }) => {
                assert_eq!(key, want);
                assert!(message.contains("decoders"), "{message}");
            }
            other => panic!("{}: expected a key error, got {other:?}", term.name()),
        }
    }
}
