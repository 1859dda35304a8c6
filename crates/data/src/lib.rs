//! `distillery-data`: from a TSV / CSV / JSONL file to tokenised, padded, seeded batches.
//!
//! ```text
//! read_dataset(path, &ReadConfig)          → Dataset { examples, skipped }   (read)
//! split(dataset, fractions, seed)          → Splits { train, dev, test }      (split)
//! LabelVocab::from_dataset(&train, order)  → label ↔ id; validate(dev/test)   (labels)
//! Batcher::new(&train, &tokenizer, Some(&vocab), BatchConfig) → Batch …       (batch)
//! synthetic::generate(&SyntheticConfig)   → Dataset (seeded, offline; quickstart) (synthetic)
//! ```
//!
//! - Malformed rows (wrong column count, empty text or label, invalid UTF-8, bad JSON, missing
//!   key, unknown label) are errors naming the file and 1-based line, or — with
//!   [`MalformedPolicy::Skip`] — left out and listed in [`Dataset::skipped`].
//! - Everything random (splits, shuffling) draws from `distillery_util::rng::SplitMix64`
//!   streams derived from the seed: the same seed gives the same order on every platform.
//! - [`Batcher::cursor`] / [`Batcher::from_cursor`] save and restore the position so that a
//!   resumed run continues at the same example.
//! - Tokenisation is the teacher's ([`distillery_models::TextTokenizer`]): truncation to its
//!   maximum length, padding to each batch's longest sequence. The tokenizer is the only thing
//!   this crate takes from `distillery-models` (a model family brings its own tokenizer);
//!   utilities come from `distillery-util`.
//!
//! This crate knows nothing of models' internals or of training.

mod batch;
mod csv;
pub mod error;
mod labels;
mod read;
mod sampler;
pub mod shuffle;
mod split;
pub mod synthetic;

pub use batch::{Batch, Batcher, EpochBatches};
pub use error::{DataError, Problem, Result};
pub use labels::{LabelOrder, LabelVocab};
pub use read::{
    parse_dataset, read_dataset, ColumnSpec, Dataset, Example, Format, MalformedPolicy, ReadConfig,
    Skipped,
};
pub use sampler::{BatchConfig, Cursor, IndexBatch, Sampler};
pub use split::{load_splits, split, SplitFractions, SplitSpec, Splits};
pub use synthetic::SyntheticConfig;
