//! Shuffling, cursors and padded batches.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;

use distillery_data::shuffle::epoch_order;
use distillery_data::{
    parse_dataset, BatchConfig, Batcher, ColumnSpec, Cursor, DataError, LabelOrder, LabelVocab,
    ReadConfig, Sampler,
};
use proptest::prelude::*;

/// Epoch → indices visited in it, over `batches` batches.
fn visits(sampler: &mut Sampler, batches: usize) -> BTreeMap<u64, Vec<usize>> {
    let mut out: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for _ in 0..batches {
        let b = sampler.next_batch();
        out.entry(b.epoch).or_default().extend(b.indices);
    }
    out
}

#[test]
fn shuffle_order_is_pinned_for_a_seed() {
    // Part of the reproducibility contract: changing it changes every run's data order.
    assert_eq!(epoch_order(10, Some(42), 0), PINNED_EPOCH0);
    assert_eq!(epoch_order(10, Some(42), 1), PINNED_EPOCH1);
    assert_eq!(epoch_order(5, None, 3), vec![0, 1, 2, 3, 4]);
}

const PINNED_EPOCH0: [usize; 10] = [2, 1, 4, 0, 5, 3, 8, 6, 9, 7];
const PINNED_EPOCH1: [usize; 10] = [0, 3, 5, 9, 7, 1, 2, 8, 6, 4];

#[test]
fn same_seed_same_order_other_seed_other_order() {
    let config = BatchConfig::shuffled(8, 7);
    let a = visits(&mut Sampler::new(50, config).unwrap(), 21);
    let b = visits(&mut Sampler::new(50, config).unwrap(), 21);
    assert_eq!(a, b);
    let c = visits(
        &mut Sampler::new(50, BatchConfig::shuffled(8, 8)).unwrap(),
        21,
    );
    assert_ne!(a[&0], c[&0]);
    assert_ne!(a[&0], a[&1], "each epoch is reshuffled");
    assert_ne!(a[&0], (0..50).collect::<Vec<_>>());
}

#[test]
fn every_example_exactly_once_per_epoch() {
    let mut s = Sampler::new(50, BatchConfig::shuffled(8, 3)).unwrap();
    assert_eq!(s.batches_per_epoch(), 7);
    let mut sizes = Vec::new();
    let mut v: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for _ in 0..21 {
        let b = s.next_batch();
        sizes.push(b.indices.len());
        v.entry(b.epoch).or_default().extend(b.indices);
    }
    assert_eq!(sizes, [[8, 8, 8, 8, 8, 8, 2]; 3].concat());
    assert_eq!(v.len(), 3);
    for (_, mut idx) in v {
        idx.sort_unstable();
        assert_eq!(idx, (0..50).collect::<Vec<_>>());
    }
    assert_eq!(s.cursor().epoch, 3);
    assert_eq!(s.cursor().position, 0);
}

#[test]
fn drop_last_drops_the_short_tail() {
    let config = BatchConfig {
        batch_size: 8,
        shuffle_seed: Some(3),
        drop_last: true,
    };
    let mut s = Sampler::new(50, config).unwrap();
    assert_eq!(s.batches_per_epoch(), 6);
    let v = visits(&mut s, 12);
    assert_eq!(v.len(), 2);
    for idx in v.values() {
        assert_eq!(idx.len(), 48);
        let set: std::collections::BTreeSet<_> = idx.iter().collect();
        assert_eq!(set.len(), 48);
    }
    let err = Sampler::new(5, config).unwrap_err();
    assert!(err.to_string().contains("would give no batches"), "{err}");
}

#[test]
fn in_order_batches_follow_the_file() {
    let mut s = Sampler::new(5, BatchConfig::in_order(2)).unwrap();
    let got: Vec<Vec<usize>> = (0..4).map(|_| s.next_batch().indices).collect();
    assert_eq!(got, vec![vec![0, 1], vec![2, 3], vec![4], vec![0, 1]]);
}

#[test]
fn sampler_config_errors() {
    assert!(Sampler::new(0, BatchConfig::in_order(2)).is_err());
    assert!(Sampler::new(3, BatchConfig::in_order(0)).is_err());
}

#[test]
fn a_restored_cursor_continues_identically() {
    let config = BatchConfig::shuffled(7, 11);
    for stop in [0, 1, 3, 7, 8, 15, 22] {
        let mut original = Sampler::new(48, config).unwrap();
        for _ in 0..stop {
            original.next_batch();
        }
        // Through JSON, as a checkpoint stores it.
        let json = serde_json::to_string(&original.cursor()).unwrap();
        let cursor: Cursor = serde_json::from_str(&json).unwrap();
        let mut resumed = Sampler::from_cursor(48, config, &cursor).unwrap();
        for _ in 0..20 {
            assert_eq!(
                resumed.next_batch(),
                original.next_batch(),
                "stopped after {stop}"
            );
        }
    }
}

#[test]
fn a_cursor_at_an_epoch_end_is_the_next_epoch_start() {
    let mut s = Sampler::new(6, BatchConfig::shuffled(3, 1)).unwrap();
    s.next_batch();
    assert_eq!(
        s.cursor(),
        Cursor {
            epoch: 0,
            position: 3,
            examples: 6,
            shuffle_seed: Some(1)
        }
    );
    s.next_batch();
    assert_eq!(
        s.cursor(),
        Cursor {
            epoch: 1,
            position: 0,
            examples: 6,
            shuffle_seed: Some(1)
        }
    );
    let c: Cursor =
        serde_json::from_str(r#"{"epoch": 4, "position": 6, "examples": 6, "shuffle_seed": 1}"#)
            .unwrap();
    let r = Sampler::from_cursor(6, BatchConfig::shuffled(3, 1), &c).unwrap();
    assert_eq!((r.cursor().epoch, r.cursor().position), (5, 0));
}

#[test]
fn a_cursor_for_other_data_or_another_seed_is_refused() {
    let config = BatchConfig::shuffled(4, 9);
    let cursor = Sampler::new(20, config).unwrap().cursor();
    let err = Sampler::from_cursor(21, config, &cursor).unwrap_err();
    assert_eq!(
        err.to_string(),
        "batching: the cursor was saved for 20 examples, this data has 21"
    );
    let err = Sampler::from_cursor(20, BatchConfig::shuffled(4, 10), &cursor).unwrap_err();
    assert!(err.to_string().contains("shuffle seed Some(9)"), "{err}");
    let bad = Cursor {
        position: 21,
        ..cursor
    };
    assert!(Sampler::from_cursor(20, config, &bad).is_err());
    // The batch size may change on resume: the position counts examples.
    let mut a = Sampler::new(20, config).unwrap();
    a.next_batch();
    let mut b = Sampler::from_cursor(20, BatchConfig::shuffled(2, 9), &a.cursor()).unwrap();
    let next: Vec<usize> = [b.next_batch().indices, b.next_batch().indices].concat();
    assert_eq!(next, a.next_batch().indices);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_size_any_seed_once_per_epoch_and_resumable(
        n in 1usize..120, bs in 1usize..20, seed in any::<u64>(), stop in 0usize..40,
    ) {
        let config = BatchConfig::shuffled(bs, seed);
        let mut s = Sampler::new(n, config).unwrap();
        let per_epoch = s.batches_per_epoch();
        let v = visits(&mut s, per_epoch * 2);
        prop_assert_eq!(v.len(), 2);
        for idx in v.values() {
            let mut idx = idx.clone();
            idx.sort_unstable();
            prop_assert_eq!(idx, (0..n).collect::<Vec<_>>());
        }
        let mut a = Sampler::new(n, config).unwrap();
        for _ in 0..stop { a.next_batch(); }
        let mut b = Sampler::from_cursor(n, config, &a.cursor()).unwrap();
        for _ in 0..5 { prop_assert_eq!(a.next_batch(), b.next_batch()); }
    }
}

#[test]
fn batches_are_padded_to_their_longest_member() {
    let (tok, _t) = common::tiny_tokenizer(32);
    let ds = parse_dataset(
        b"text\tlabel\nthe cat\tgood\nthe cat sat on the mat\tbad\na dog\tgood\n",
        std::path::Path::new("mem.tsv"),
        &ReadConfig::new(ColumnSpec::labelled("text", "label")),
    )
    .unwrap();
    let vocab = LabelVocab::from_dataset(&ds, LabelOrder::Sorted).unwrap();
    let mut b = Batcher::new(&ds, &tok, Some(&vocab), BatchConfig::in_order(2)).unwrap();
    let first = b.next_batch().unwrap();
    assert_eq!(first.indices, vec![0, 1]);
    assert_eq!(first.labels, Some(vec![1, 0]));
    let e = &first.encoded;
    assert_eq!((e.batch, e.seq), (2, 8));
    assert_eq!(
        e.input_ids,
        vec![2, 5, 6, 3, 0, 0, 0, 0, 2, 5, 6, 7, 8, 5, 9, 3]
    );
    assert_eq!(
        e.attention_mask,
        vec![1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
    );
    assert_eq!(e.token_type_ids, vec![0; 16]);
    // The last batch is padded to its own longest member only.
    let second = b.next_batch().unwrap();
    assert_eq!(second.indices, vec![2]);
    assert_eq!((second.encoded.batch, second.encoded.seq), (1, 4));
    assert_eq!(second.encoded.input_ids, vec![2, 10, 11, 3]);
    assert_eq!(second.labels, Some(vec![1]));
    assert_eq!(second.epoch, 0);
    assert_eq!(b.cursor().epoch, 1);
}

#[test]
fn pairs_get_segment_ids_and_long_texts_are_truncated() {
    let (tok, _t) = common::tiny_tokenizer(6);
    let ds = parse_dataset(
        b"{\"a\": \"the cat\", \"b\": \"a dog\"}\n{\"a\": \"the cat sat on the mat\", \"b\": \"dog\"}\n",
        std::path::Path::new("mem.jsonl"),
        &ReadConfig::new(ColumnSpec::text("a").with_pair("b")),
    )
    .unwrap();
    let b = Batcher::new(&ds, &tok, None, BatchConfig::in_order(2)).unwrap();
    let batch = b.batch_of(&[0]).unwrap();
    assert_eq!(batch.labels, None);
    // [CLS] the cat [SEP] a dog [SEP] is 7 > 6 tokens: longest-first truncation.
    assert_eq!(batch.encoded.seq, 6);
    let batch = b.batch_of(&[1, 0]).unwrap();
    assert_eq!(batch.encoded.seq, 6);
    assert_eq!(&batch.encoded.input_ids[..6], &[2, 5, 6, 3, 11, 3]);
    assert_eq!(&batch.encoded.token_type_ids[..6], &[0, 0, 0, 0, 1, 1]);
    assert!(b.batch_of(&[2]).is_err());
}

#[test]
fn batcher_cursor_round_trip_gives_the_same_batches() {
    let (tok, _t) = common::tiny_tokenizer(16);
    let ds = common::synthetic(23, true);
    let vocab = LabelVocab::from_dataset(&ds, LabelOrder::FirstSeen).unwrap();
    let config = BatchConfig::shuffled(4, 2024);
    let mut a = Batcher::new(&ds, &tok, Some(&vocab), config).unwrap();
    for _ in 0..9 {
        a.next_batch().unwrap();
    }
    let cursor = a.cursor();
    assert_eq!((cursor.epoch, cursor.position), (1, 12));
    let mut b = Batcher::from_cursor(&ds, &tok, Some(&vocab), config, &cursor).unwrap();
    for _ in 0..10 {
        assert_eq!(a.next_batch().unwrap(), b.next_batch().unwrap());
    }
}

#[test]
fn an_epoch_iterator_covers_the_rest_of_the_epoch() {
    let (tok, _t) = common::tiny_tokenizer(16);
    let ds = common::synthetic(10, false);
    let mut b = Batcher::new(&ds, &tok, None, BatchConfig::shuffled(3, 1)).unwrap();
    assert_eq!(b.batches_per_epoch(), 4);
    let all: Vec<usize> = b.epoch().flat_map(|r| r.unwrap().indices).collect();
    assert_eq!(all.len(), 10);
    assert_eq!(b.cursor().epoch, 1);
    b.next_batch().unwrap();
    let rest: Vec<_> = b.epoch().map(|r| r.unwrap()).collect();
    assert_eq!(rest.len(), 3);
    assert!(rest.iter().all(|x| x.epoch == 1 && x.labels.is_none()));
    assert_eq!(b.cursor().epoch, 2);
}

#[test]
fn labels_are_checked_when_the_batcher_is_built() {
    let (tok, _t) = common::tiny_tokenizer(16);
    let vocab = LabelVocab::from_names(["good"]).unwrap();
    let ds = common::synthetic(5, true);
    let err = Batcher::new(&ds, &tok, Some(&vocab), BatchConfig::in_order(2)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "synthetic.tsv:3: unknown label `bad` (known: good)"
    );
    let unlabelled = common::synthetic(5, false);
    let err = Batcher::new(&unlabelled, &tok, Some(&vocab), BatchConfig::in_order(2)).unwrap_err();
    assert!(matches!(err, DataError::Malformed { line: 2, .. }), "{err}");
    let empty = common::synthetic(0, false);
    let err = Batcher::new(&empty, &tok, None, BatchConfig::in_order(2)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "batching: synthetic.tsv: no examples to batch"
    );
}
