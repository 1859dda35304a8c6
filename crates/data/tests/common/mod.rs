#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use distillery_data::{read_dataset, DataError, Dataset, ReadConfig};
use distillery_models::TextTokenizer;

/// Writes `contents` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, contents: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, contents).unwrap();
    path
}

/// Writes `contents` to a fresh temporary `name` and reads it back.
pub fn read(
    name: &str,
    contents: &[u8],
    config: &ReadConfig,
) -> (PathBuf, Result<Dataset, DataError>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), name, contents);
    let result = read_dataset(&path, config);
    (path, result, dir)
}

/// The tiny BERT-shaped WordPiece tokenizer of distillery-models' test fixtures.
pub fn tiny_tokenizer(max_len: usize) -> (TextTokenizer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = distillery_models::testing::write_tiny_tokenizer(dir.path()).unwrap();
    (TextTokenizer::from_file(&path, max_len).unwrap(), dir)
}

/// An unlabelled or labelled in-memory dataset of `n` short texts from the tiny vocabulary.
pub fn synthetic(n: usize, labelled: bool) -> Dataset {
    let words = [
        "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "fast", "good", "bad", "movie",
    ];
    let examples = (0..n)
        .map(|i| {
            let len = 1 + (i * 7) % 9;
            let text: Vec<&str> = (0..len).map(|k| words[(i + k * 5) % words.len()]).collect();
            distillery_data::Example {
                text: text.join(" "),
                pair: None,
                label: labelled.then(|| if i % 3 == 0 { "good" } else { "bad" }.to_string()),
                line: i + 2,
            }
        })
        .collect();
    Dataset {
        source: PathBuf::from("synthetic.tsv"),
        examples,
        skipped: Vec::new(),
    }
}
