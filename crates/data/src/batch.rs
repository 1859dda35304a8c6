//! Tokenised, dynamically padded batches: a [`Sampler`] over a [`Dataset`], encoded with the
//! teacher's [`TextTokenizer`] (truncation to its maximum length; padding to each batch's
//! longest sequence).

use distillery_models::{EncodedBatch, TextInput, TextTokenizer};

use crate::error::{DataError, Result};
use crate::labels::LabelVocab;
use crate::read::Dataset;
use crate::sampler::{BatchConfig, Cursor, IndexBatch, Sampler};

/// One batch: the encoded texts, the class ids (when a label vocabulary was given) and the
/// indices of the examples in the dataset, all in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub epoch: u64,
    pub indices: Vec<usize>,
    pub encoded: EncodedBatch,
    pub labels: Option<Vec<u32>>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

#[derive(Debug)]
pub struct Batcher<'a> {
    dataset: &'a Dataset,
    tokenizer: &'a TextTokenizer,
    label_ids: Option<Vec<u32>>,
    sampler: Sampler,
}

impl<'a> Batcher<'a> {
    /// Batches of `dataset` from the start. With `labels`, every example's label is looked up
    /// now, so a missing or unknown label is an error (naming file and line) before training.
    pub fn new(
        dataset: &'a Dataset,
        tokenizer: &'a TextTokenizer,
        labels: Option<&LabelVocab>,
        config: BatchConfig,
    ) -> Result<Self> {
        let sampler = Sampler::new(dataset.len(), config).map_err(|e| named(dataset, e))?;
        Self::with_sampler(dataset, tokenizer, labels, sampler)
    }

    /// Continues from a saved [`Batcher::cursor`]: the next batch is the one the saved run
    /// would have drawn next.
    pub fn from_cursor(
        dataset: &'a Dataset,
        tokenizer: &'a TextTokenizer,
        labels: Option<&LabelVocab>,
        config: BatchConfig,
        cursor: &Cursor,
    ) -> Result<Self> {
        let sampler =
            Sampler::from_cursor(dataset.len(), config, cursor).map_err(|e| named(dataset, e))?;
        Self::with_sampler(dataset, tokenizer, labels, sampler)
    }

    fn with_sampler(
        dataset: &'a Dataset,
        tokenizer: &'a TextTokenizer,
        labels: Option<&LabelVocab>,
        sampler: Sampler,
    ) -> Result<Self> {
        let label_ids = labels.map(|v| v.ids(dataset)).transpose()?;
        Ok(Self {
            dataset,
            tokenizer,
            label_ids,
            sampler,
        })
    }

    pub fn cursor(&self) -> Cursor {
        self.sampler.cursor()
    }

    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    pub fn dataset(&self) -> &Dataset {
        self.dataset
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.sampler.batches_per_epoch()
    }

    /// The next batch, crossing into the next (reshuffled) epoch after the last one; never ends.
    /// On an error the cursor does not move.
    pub fn next_batch(&mut self) -> Result<Batch> {
        let batch = self.encode(self.sampler.peek())?;
        self.sampler.advance();
        Ok(batch)
    }

    /// The remaining batches of the current epoch (all of it when the cursor is at its start);
    /// afterwards the cursor stands at the start of the next epoch.
    pub fn epoch(&mut self) -> EpochBatches<'_, 'a> {
        let epoch = self.sampler.cursor().epoch;
        EpochBatches {
            batcher: self,
            epoch,
            failed: false,
        }
    }

    /// Encodes the given examples (e.g. for prediction); does not move the cursor.
    pub fn batch_of(&self, indices: &[usize]) -> Result<Batch> {
        if let Some(&i) = indices.iter().find(|&&i| i >= self.dataset.len()) {
            return Err(DataError::Batch(format!(
                "{}: example index {i} out of range ({} examples)",
                self.dataset.source.display(),
                self.dataset.len()
            )));
        }
        self.encode(IndexBatch {
            epoch: self.sampler.cursor().epoch,
            indices: indices.to_vec(),
        })
    }

    fn encode(&self, batch: IndexBatch) -> Result<Batch> {
        let inputs: Vec<TextInput> = batch
            .indices
            .iter()
            .map(|&i| {
                let e = &self.dataset.examples[i];
                match &e.pair {
                    Some(p) => TextInput::Pair(e.text.clone(), p.clone()),
                    None => TextInput::Single(e.text.clone()),
                }
            })
            .collect();
        let encoded = self.tokenizer.encode_batch(&inputs)?;
        let labels = self
            .label_ids
            .as_ref()
            .map(|ids| batch.indices.iter().map(|&i| ids[i]).collect());
        Ok(Batch {
            epoch: batch.epoch,
            indices: batch.indices,
            encoded,
            labels,
        })
    }
}

fn named(dataset: &Dataset, e: DataError) -> DataError {
    match e {
        DataError::Batch(m) => DataError::Batch(format!("{}: {m}", dataset.source.display())),
        other => other,
    }
}

/// The rest of one epoch; see [`Batcher::epoch`]. Ends after the first error.
#[derive(Debug)]
pub struct EpochBatches<'b, 'a> {
    batcher: &'b mut Batcher<'a>,
    epoch: u64,
    failed: bool,
}

impl Iterator for EpochBatches<'_, '_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.batcher.sampler.cursor().epoch != self.epoch {
            return None;
        }
        let batch = self.batcher.next_batch();
        // After an error the cursor has not moved; stop rather than repeat it.
        self.failed = batch.is_err();
        Some(batch)
    }
}
