//! The order in which examples are visited: epochs of (optionally shuffled) indices cut into
//! batches, with a [`Cursor`] that can be saved in a checkpoint and restored so that a resumed
//! run continues at the same example.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::shuffle::epoch_order;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Examples per batch (≥ 1); the last batch of an epoch may be smaller unless `drop_last`.
    pub batch_size: usize,
    /// `None`: file order every epoch (evaluation). `Some(seed)`: a fresh permutation each epoch,
    /// a function of (number of examples, seed, epoch) only.
    #[serde(default)]
    pub shuffle_seed: Option<u64>,
    /// Drop the last batch of an epoch when it is smaller than `batch_size`.
    #[serde(default)]
    pub drop_last: bool,
}

impl BatchConfig {
    /// Shuffled with `seed`, the last smaller batch kept.
    pub fn shuffled(batch_size: usize, seed: u64) -> Self {
        Self {
            batch_size,
            shuffle_seed: Some(seed),
            drop_last: false,
        }
    }

    /// File order (evaluation), the last smaller batch kept.
    pub fn in_order(batch_size: usize) -> Self {
        Self {
            batch_size,
            shuffle_seed: None,
            drop_last: false,
        }
    }
}

/// Where a [`Sampler`] stands: the next batch starts at `position` (examples already visited)
/// in the order of `epoch`. After the last batch of an epoch the cursor is `(epoch + 1, 0)`.
/// `examples` and `shuffle_seed` are recorded so that restoring it against other data fails
/// instead of silently visiting a different order. Plain data: serialise it into a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cursor {
    pub epoch: u64,
    pub position: usize,
    pub examples: usize,
    pub shuffle_seed: Option<u64>,
}

/// The indices of one batch, in visiting order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexBatch {
    pub epoch: u64,
    pub indices: Vec<usize>,
}

/// Endless batches of indices `0..len` (epoch after epoch).
#[derive(Debug, Clone)]
pub struct Sampler {
    len: usize,
    config: BatchConfig,
    epoch: u64,
    position: usize,
    order: Vec<usize>,
}

impl Sampler {
    /// Starts at epoch 0, position 0.
    pub fn new(len: usize, config: BatchConfig) -> Result<Self> {
        Self::from_cursor(
            len,
            config,
            &Cursor {
                epoch: 0,
                position: 0,
                examples: len,
                shuffle_seed: config.shuffle_seed,
            },
        )
    }

    /// Continues where `cursor` was taken. The batch size may differ from the saved run's (the
    /// position counts examples, not batches); the number of examples and the seed may not.
    pub fn from_cursor(len: usize, config: BatchConfig, cursor: &Cursor) -> Result<Self> {
        let err = |m: String| Err(DataError::Batch(m));
        if config.batch_size == 0 {
            return err("batch size must be at least 1".into());
        }
        if len == 0 {
            return err("no examples to batch".into());
        }
        if config.drop_last && len < config.batch_size {
            return err(format!(
                "drop_last with {len} examples and batch size {} would give no batches",
                config.batch_size
            ));
        }
        if cursor.examples != len {
            return err(format!(
                "the cursor was saved for {} examples, this data has {len}",
                cursor.examples
            ));
        }
        if cursor.shuffle_seed != config.shuffle_seed {
            return err(format!(
                "the cursor was saved with shuffle seed {:?}, this batcher has {:?}",
                cursor.shuffle_seed, config.shuffle_seed
            ));
        }
        if cursor.position > len {
            return err(format!(
                "the cursor position {} is past the {len} examples",
                cursor.position
            ));
        }
        let mut s = Self {
            len,
            config,
            epoch: cursor.epoch,
            position: cursor.position,
            order: epoch_order(len, config.shuffle_seed, cursor.epoch),
        };
        s.roll_over();
        Ok(s)
    }

    pub fn cursor(&self) -> Cursor {
        Cursor {
            epoch: self.epoch,
            position: self.position,
            examples: self.len,
            shuffle_seed: self.config.shuffle_seed,
        }
    }

    pub fn config(&self) -> &BatchConfig {
        &self.config
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Batches in one full epoch.
    pub fn batches_per_epoch(&self) -> usize {
        if self.config.drop_last {
            self.len / self.config.batch_size
        } else {
            self.len.div_ceil(self.config.batch_size)
        }
    }

    /// The order of the current epoch.
    pub fn epoch_order(&self) -> &[usize] {
        &self.order
    }

    /// The batch [`Sampler::next_batch`] would return, without moving.
    pub fn peek(&self) -> IndexBatch {
        let end = (self.position + self.config.batch_size).min(self.len);
        IndexBatch {
            epoch: self.epoch,
            indices: self.order[self.position..end].to_vec(),
        }
    }

    /// The next batch; crosses into the next epoch (reshuffled) after the last one.
    pub fn next_batch(&mut self) -> IndexBatch {
        let batch = self.peek();
        self.advance();
        batch
    }

    pub(crate) fn advance(&mut self) {
        self.position = (self.position + self.config.batch_size).min(self.len);
        self.roll_over();
    }

    /// At the end of an epoch (or before a tail that `drop_last` drops) move to the next.
    fn roll_over(&mut self) {
        let rest = self.len - self.position;
        if rest == 0 || (self.config.drop_last && rest < self.config.batch_size) {
            self.epoch += 1;
            self.position = 0;
            self.order = epoch_order(self.len, self.config.shuffle_seed, self.epoch);
        }
    }
}
