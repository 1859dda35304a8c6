//! Fixed train / dev / test splits: separate files, or one file split by seeded fractions.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::read::{read_dataset, Dataset, ReadConfig};
use crate::shuffle::permutation;

/// Fractions of one file for train, dev and test; each ≥ 0, train > 0, summing to 1.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitFractions {
    pub train: f64,
    pub dev: f64,
    pub test: f64,
}

impl SplitFractions {
    pub fn new(train: f64, dev: f64, test: f64) -> Self {
        Self { train, dev, test }
    }

    fn check(&self) -> Result<()> {
        let parts = [
            ("train", self.train),
            ("dev", self.dev),
            ("test", self.test),
        ];
        for (name, f) in parts {
            if !f.is_finite() || !(0.0..=1.0).contains(&f) {
                return Err(DataError::Split(format!(
                    "fraction `{name}` must be in [0, 1], got {f}"
                )));
            }
        }
        if self.train <= 0.0 {
            return Err(DataError::Split("fraction `train` must be > 0".into()));
        }
        let sum = self.train + self.dev + self.test;
        if (sum - 1.0).abs() > 1e-6 {
            return Err(DataError::Split(format!(
                "fractions must sum to 1, got {} + {} + {} = {sum}",
                self.train, self.dev, self.test
            )));
        }
        Ok(())
    }

    /// The exact sizes `[train, dev, test]` for `n` examples: largest remainder rounding of
    /// `n × fraction` (ties go to train, then dev, then test), so they always add up to `n`.
    pub fn sizes(&self, n: usize) -> Result<[usize; 3]> {
        self.check()?;
        let sum = self.train + self.dev + self.test;
        let quotas = [self.train, self.dev, self.test].map(|f| f / sum * n as f64);
        let mut sizes = quotas.map(|q| (q.floor() as usize).min(n));
        let mut order = [0usize, 1, 2];
        // Stable sort: equal remainders keep train, dev, test order.
        order.sort_by(|&a, &b| {
            let ra = quotas[a] - quotas[a].floor();
            let rb = quotas[b] - quotas[b].floor();
            rb.total_cmp(&ra)
        });
        let mut assigned: usize = sizes.iter().sum();
        // A part with fraction 0 never receives an example; train (> 0) always can.
        let open: Vec<usize> = order.into_iter().filter(|&i| quotas[i] > 0.0).collect();
        for &i in open.iter().cycle() {
            if assigned >= n {
                break;
            }
            sizes[i] += 1;
            assigned += 1;
        }
        // Floating-point excess (never in practice): take it back from the largest part.
        while assigned > n {
            let largest = (0..3).max_by_key(|&i| sizes[i]).unwrap_or(0);
            sizes[largest] -= 1;
            assigned -= 1;
        }
        Ok(sizes)
    }
}

/// The splits of a task. `dev` / `test` are `None` when not given (no file, or a zero fraction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splits {
    pub train: Dataset,
    pub dev: Option<Dataset>,
    pub test: Option<Dataset>,
}

/// Splits one dataset by seeded fractions. Which examples go where depends only on
/// (number of examples, fractions, seed); within each split the examples keep file order
/// (shuffling is the batcher's job). Rows skipped while reading are reported once, on `train`.
pub fn split(dataset: Dataset, fractions: SplitFractions, seed: u64) -> Result<Splits> {
    let n = dataset.len();
    let [n_train, n_dev, _] = fractions.sizes(n)?;
    let order = permutation(n, seed, "distillery-data/split");
    let mut part = vec![2u8; n];
    for &i in &order[..n_train] {
        part[i] = 0;
    }
    for &i in &order[n_train..n_train + n_dev] {
        part[i] = 1;
    }
    let Dataset {
        source,
        examples,
        skipped,
    } = dataset;
    let mut buckets = [Vec::new(), Vec::new(), Vec::new()];
    for (e, p) in examples.into_iter().zip(part) {
        buckets[usize::from(p)].push(e);
    }
    let [train, dev, test] = buckets;
    let make = |examples, skipped| Dataset {
        source: source.clone(),
        examples,
        skipped,
    };
    Ok(Splits {
        train: make(train, skipped),
        dev: (fractions.dev > 0.0).then(|| make(dev, Vec::new())),
        test: (fractions.test > 0.0).then(|| make(test, Vec::new())),
    })
}

/// Where the splits come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum SplitSpec {
    /// One file per split.
    Files {
        train: PathBuf,
        #[serde(default)]
        dev: Option<PathBuf>,
        #[serde(default)]
        test: Option<PathBuf>,
    },
    /// One file split by [`split`].
    Fractions {
        path: PathBuf,
        fractions: SplitFractions,
        seed: u64,
    },
}

/// Reads the files of `spec` with `config` (format inferred per file when not given).
pub fn load_splits(spec: &SplitSpec, config: &ReadConfig) -> Result<Splits> {
    match spec {
        SplitSpec::Files { train, dev, test } => Ok(Splits {
            train: read_dataset(train, config)?,
            dev: dev
                .as_deref()
                .map(|p| read_dataset(p, config))
                .transpose()?,
            test: test
                .as_deref()
                .map(|p| read_dataset(p, config))
                .transpose()?,
        }),
        SplitSpec::Fractions {
            path,
            fractions,
            seed,
        } => split(read_dataset(path, config)?, *fractions, *seed),
    }
}
