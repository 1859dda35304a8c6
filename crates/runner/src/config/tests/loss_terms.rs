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
    assert!(h.term.projections(&s16, &t32).is_empty());
    // Relation KL with 8 relation heads: 16-wide models pass, heads may differ.
    let s = BertConfig {
        num_attention_heads: 2,
        ..student()
    };
    c.check_models(&teacher(), &s, 40).unwrap();
}
