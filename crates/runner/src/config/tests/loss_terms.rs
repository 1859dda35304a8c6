//! Config tests of the loss terms: their tables into terms, and their errors.
#![allow(clippy::unwrap_used)]

use distillery_losses::{
    AttentionKind, AttentionLoss, HiddenKind, HiddenLoss, LayerMap, LogitKind, LogitLoss,
};
use distillery_models::BertConfig;
use distillery_stages::terms::{self, Weighted};

use super::*;

#[test]
fn attention_relation_and_logit_jsd_settings_convert() {
    let text = edit(
        BASE,
        &[
            (
                "kind = \"kl\"\n",
                "kind = \"relation\"\nrelation_heads = 8\nrelations = [\"query\", \"value\"]\nmap = \"last-k\"\n",
            ),
            ("temperature = 2.0", "kind = \"jsd\"\nbeta = 0.3\ntemperature = 4"),
            ("map = \"uniform\"", "map = [2, 4, 6]\nprojection = \"none\""),
        ],
    );
    let (_dir, c) = load_ok(&text);
    let term = |name: &str| c.losses.terms.get(name).unwrap().clone();
    assert_eq!(
        term("attention"),
        terms::attention(
            AttentionLoss {
                kind: AttentionKind::Relation {
                    relation_heads: 8,
                    relations: vec![
                        distillery_losses::Relation::Query,
                        distillery_losses::Relation::Value
                    ],
                }
            },
            LayerMap::LastK,
            1.0
        )
    );
    assert_eq!(
        term("logit"),
        Weighted::new(
            terms::LogitTerm {
                loss: LogitLoss {
                    kind: LogitKind::Jsd { beta: 0.3 },
                    temperature: 4.0,
                },
                hard_label_weight: 0.5,
            },
            1.0
        )
    );
    let h = term("hidden");
    assert_eq!(
        h,
        Weighted::new(
            terms::HiddenTerm {
                loss: HiddenLoss {
                    kind: HiddenKind::Mse,
                    include_embeddings: true,
                },
                map: LayerMap::Explicit(vec![2, 4, 6]),
                projection: terms::Projecting::None,
            },
            1.0
        )
    );
    let (s16, t32) = (
        student(),
        BertConfig {
            hidden_size: 32,
            ..teacher()
        },
    );
    assert!(h.term.projections(&s16.shape(), &t32.shape()).is_empty());
    // Relation KL with 8 relation heads: 16-wide models pass, heads may differ.
    let s = BertConfig {
        num_attention_heads: 2,
        ..student()
    };
    c.check_models(&teacher(), &s, 40).unwrap();
}

#[test]
fn value_relation_term_in_a_custom_stage() {
    let text = edit(BASE, &[(&BASE[BASE.find("[distill]").unwrap()..], CUSTOM)]);
    let text = edit(
        &text,
        &[(
            "losses = [\"hidden\", \"attention\"]",
            "losses = [\"attention\", \"value_relation\"]",
        )],
    );
    // Without its table: named with the stage.
    let e = load_err(&text, "distill.stages[0].losses");
    assert!(e.contains("[losses.value_relation]"), "{e}");
    let text = format!("{text}\n[losses.value_relation]\nweight = 0.5\n");
    let (_dir, c) = load_ok(&text);
    let s = c.schedule(ScheduleChoice::Custom, 100).unwrap();
    assert_eq!(kinds(&s)[0], ["attention", "value_relation"]);
    assert_eq!(
        s.stages[0].losses[1],
        terms::value_relation(LayerMap::LastK, 0.5)
    );
    c.check_models(&teacher(), &student(), 40).unwrap();
    let s2 = BertConfig {
        num_attention_heads: 2,
        ..student()
    };
    check_models_err(&text, &teacher(), &s2, 40, "losses.attention.kind");
    // A key the term does not have: its line and dotted key.
    let bad = edit(
        &text,
        &[(
            "[losses.value_relation]\nweight = 0.5",
            "[losses.value_relation]\nweight = 0.5\nheads = 2",
        )],
    );
    let e = load_err(&bad, "losses.value_relation.heads");
    assert!(
        e.contains("unknown field `heads`") && e.contains("line "),
        "{e}"
    );
    // An unknown table is not a loss.
    let e = load_err(&format!("{text}[losses.values]\n"), "losses.values");
    assert!(e.contains("value_relation"), "{e}");
}
