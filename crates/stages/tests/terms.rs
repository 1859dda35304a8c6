//! Loss terms through the trait: the registry is the one list of names, each term reads what
//! it says, and the value-relation term (MiniLM) against a materialised reference.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor};
use distillery_data::Batch;
use distillery_losses::{AttentionKind, AttentionLoss, LayerMap, Relation};
use distillery_models::{EncodedBatch, LayerAttention, ModelOutput};
use distillery_stages::terms::{self, Layers, TermContext, TermError};
use distillery_stages::MeanOver;
use toml::de::ValueDeserializer;

/// Seeded values in [-2, 2) (a small LCG: the tests need spread, not quality).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

const B: usize = 2;
const L: usize = 5;
const HEADS: usize = 2;

/// Lengths 5 and 3 (the second example padded).
fn mask() -> Tensor {
    Tensor::new(
        &[[1f32, 1., 1., 1., 1.], [1., 1., 1., 0., 0.]],
        &Device::Cpu,
    )
    .unwrap()
}

/// An output of `layers` layers whose Q/K/V are seeded, `d` per head.
fn output(layers: usize, d: usize, seed: u64) -> ModelOutput {
    let shape = (B, HEADS, L, d);
    let n = B * HEADS * L * d;
    let t = |s: u64| Tensor::from_vec(values(n, s), shape, &Device::Cpu).unwrap();
    let attentions = (0..layers)
        .map(|l| {
            let s = seed + 10 * l as u64;
            LayerAttention::from_heads(&t(s), &t(s + 1), &t(s + 2)).unwrap()
        })
        .collect();
    ModelOutput {
        hidden_states: Vec::new(),
        attentions,
        pooled: None,
        logits: None,
        token_logits: None,
        causal: false,
        mask: mask(),
    }
}

fn batch() -> Batch {
    Batch {
        epoch: 0,
        indices: vec![0, 1],
        encoded: EncodedBatch {
            batch: B,
            seq: L,
            input_ids: vec![0; B * L],
            token_type_ids: vec![0; B * L],
            attention_mask: vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0],
        },
        labels: None,
    }
}

fn scalar(t: &Tensor) -> f64 {
    f64::from(t.to_scalar::<f32>().unwrap())
}

/// `KL(softmax(V_t V_tᵀ/√d_t) ‖ softmax(V_s V_sᵀ/√d_s))` per head and valid query row, keys
/// restricted to the valid ones, averaged over heads and valid rows; straight from the
/// definition, in f64.
fn value_relation_reference(s: &LayerAttention, t: &LayerAttention, lengths: &[usize]) -> f64 {
    let v = |a: &LayerAttention| -> (Vec<f32>, usize) {
        let v = a.v().unwrap();
        let d = v.dim(3).unwrap();
        (v.flatten_all().unwrap().to_vec1().unwrap(), d)
    };
    let ((vs, ds), (vt, dt)) = (v(s), v(t));
    let at = |x: &[f32], d: usize, b: usize, h: usize, i: usize, k: usize| {
        f64::from(x[((b * HEADS + h) * L + i) * d + k])
    };
    let log_softmax_row = |x: &[f32], d: usize, b: usize, h: usize, i: usize, n: usize| {
        let logits: Vec<f64> = (0..n)
            .map(|j| {
                (0..d)
                    .map(|k| at(x, d, b, h, i, k) * at(x, d, b, h, j, k))
                    .sum::<f64>()
                    / (d as f64).sqrt()
            })
            .collect();
        let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z = logits.iter().map(|l| (l - m).exp()).sum::<f64>().ln() + m;
        logits.iter().map(|l| l - z).collect::<Vec<f64>>()
    };
    let (mut total, mut rows) = (0.0, 0usize);
    for (b, &n) in lengths.iter().enumerate() {
        for h in 0..HEADS {
            for i in 0..n {
                let lt = log_softmax_row(&vt, dt, b, h, i, n);
                let ls = log_softmax_row(&vs, ds, b, h, i, n);
                total += lt
                    .iter()
                    .zip(&ls)
                    .map(|(a, c)| a.exp() * (a - c))
                    .sum::<f64>();
                rows += 1;
            }
        }
    }
    total / rows as f64
}

#[test]
fn value_relation_is_minilms_per_head_value_kl() {
    // Student 2 layers, 3 wide per head; teacher 4 layers, 4 per head: last-k maps 1→3, 2→4.
    let (s, t) = (output(2, 3, 1), output(4, 4, 100));
    let term = terms::value_relation(LayerMap::LastK, 1.0);
    let batch = batch();
    let cx = TermContext {
        stage: "I",
        student: &s,
        teacher: Some(&t),
        batch: &batch,
        layers: Layers {
            student: 2,
            teacher: 4,
        },
        projections: &[],
    };
    let got = scalar(&term.term.compute(&cx).unwrap());
    let want = (value_relation_reference(&s.attentions[0], &t.attentions[2], &[5, 3])
        + value_relation_reference(&s.attentions[1], &t.attentions[3], &[5, 3]))
        / 2.0;
    assert!(
        want > 0.01,
        "a test with a near-zero answer proves little: {want}"
    );
    assert!((got - want).abs() < 1e-5 * want.max(1.0), "{got} vs {want}");
    // The same numbers as MiniLMv2's V-V relation with as many relation heads as heads.
    let v2 = terms::attention(
        AttentionLoss {
            kind: AttentionKind::Relation {
                relation_heads: HEADS,
                relations: vec![Relation::Value],
            },
        },
        LayerMap::LastK,
        1.0,
    );
    let got_v2 = scalar(&v2.term.compute(&cx).unwrap());
    assert!((got - got_v2).abs() < 1e-6, "{got} vs {got_v2}");
    // It reads exactly the mapped teacher layers' V, and is a mean over tokens.
    let reads = term.term.reads(cx.layers).unwrap();
    assert_eq!(reads.v.iter().copied().collect::<Vec<_>>(), [3, 4]);
    assert!(reads.q.is_empty() && reads.k.is_empty() && reads.hidden.is_empty() && !reads.logits);
    assert_eq!(term.term.mean_over(), MeanOver::Tokens);
    // Identical relations give 0.
    let same = TermContext {
        teacher: Some(&s),
        layers: Layers {
            student: 2,
            teacher: 2,
        },
        ..cx
    };
    assert!(scalar(&term.term.compute(&same).unwrap()).abs() < 1e-6);
}

fn build(name: &str, table: &str) -> Result<terms::Weighted, TermError> {
    terms::build(name, Some(ValueDeserializer::parse(table).unwrap()))
}

#[test]
fn the_registry_is_the_one_list_of_names_and_builds_every_term() {
    let names = terms::names();
    assert_eq!(
        names,
        [
            "hidden",
            "attention",
            "value_relation",
            "logit",
            "hard_label"
        ]
    );
    for (entry, name) in terms::REGISTRY.iter().zip(names) {
        assert_eq!(entry.name, *name);
        assert!(!entry.about.is_empty());
        // Every term builds from an empty table and reports its own name.
        let w = build(name, "{}").unwrap();
        assert_eq!(w.name(), *name);
        assert_eq!(w.weight, 1.0);
    }
    let w = build("value_relation", "{ map = [3, 4], weight = 0.25 }").unwrap();
    assert_eq!(
        w,
        terms::value_relation(LayerMap::Explicit(vec![3, 4]), 0.25)
    );
    // Only hard-label CE may go without a table.
    assert!(terms::build("hard_label", None).is_ok());
    assert!(matches!(
        terms::build("value_relation", None),
        Err(TermError::Key { .. })
    ));
}

#[test]
fn bad_tables_name_the_key() {
    let key = |r: Result<terms::Weighted, TermError>| match r {
        Err(TermError::Key { key, message }) => format!("{key}: {message}"),
        Err(TermError::Toml(e)) => format!("toml: {}", e.message()),
        Ok(w) => panic!("accepted: {w:?}"),
    };
    let e = key(terms::build("values", None));
    assert!(
        e.starts_with(": is not a loss") && e.contains("value_relation"),
        "{e}"
    );
    let e = key(build("value_relation", "{ weight = 0 }"));
    assert!(e.starts_with("weight: must be positive"), "{e}");
    let e = key(build("value_relation", "{ map = [0, 1] }"));
    assert!(e.starts_with("map: entry 0 is 0"), "{e}");
    let e = key(build("value_relation", "{ heads = 2 }"));
    assert!(e.contains("unknown field `heads`"), "{e}");
    let e = key(build("attention", "{ kind = \"relation\" }"));
    assert!(e.starts_with("relation_heads: is required"), "{e}");
    let e = key(build("logit", "{ kind = \"kl\", beta = 0.5 }"));
    assert!(e.starts_with("beta: only applies"), "{e}");
}

#[test]
fn value_relation_checks_heads_and_maps_against_the_models() {
    let t = distillery_models::testing::tiny_config(&["a", "b"]);
    let term = terms::value_relation(LayerMap::LastK, 1.0);
    term.term.check(&t.shape(), &t.shape()).unwrap();
    let fewer_heads = distillery_models::BertConfig {
        num_attention_heads: t.num_attention_heads / 2,
        ..t.clone()
    };
    match term.term.check(&fewer_heads.shape(), &t.shape()) {
        Err(TermError::Key { key, message }) => {
            assert_eq!(key, "");
            assert!(message.contains("equal head counts"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let far = terms::value_relation(LayerMap::Explicit(vec![99]), 1.0);
    assert!(
        matches!(far.term.check(&t.shape(), &t.shape()), Err(TermError::Key { key, .. }) if key == "map")
    );
}
