//! The label vocabulary: label names ↔ class ids.
//!
//! Built from the training split ([`LabelVocab::from_dataset`]) or from a teacher's head
//! ([`LabelVocab::from_names`], e.g. `BertConfig::labels`, whose order must be kept so that the
//! ids match the teacher's logits). From a dataset the default order is [`LabelOrder::Sorted`]:
//! the ids then depend only on the set of labels, not on the file order or the split seed.
//! Sorting is numeric when every label is a non-negative integer (`"2" < "10"`, so `0..n` keep
//! their values as ids), else by bytes.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Problem, Result};
use crate::read::{Dataset, MalformedPolicy, Skipped};

/// The order of ids in a vocabulary built from a dataset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LabelOrder {
    /// Sorted (numerically when all labels are non-negative integers, else by bytes).
    #[default]
    Sorted,
    /// In the order the labels first appear in the file.
    FirstSeen,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelVocab {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl LabelVocab {
    /// The labels of `dataset` (normally the training split). Every example must have a label
    /// (an error names the file and line of the first without); an empty dataset is an error.
    pub fn from_dataset(dataset: &Dataset, order: LabelOrder) -> Result<Self> {
        let mut names: Vec<String> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for e in &dataset.examples {
            let Some(label) = &e.label else {
                return Err(dataset.error_at(e.line, Problem::MissingLabel));
            };
            if seen.insert(label.as_str()) {
                names.push(label.clone());
            }
        }
        if names.is_empty() {
            return Err(DataError::Labels(format!(
                "{}: no labelled examples to build a label vocabulary from",
                dataset.source.display()
            )));
        }
        if order == LabelOrder::Sorted {
            sort_labels(&mut names);
        }
        Self::from_names(names)
    }

    /// A vocabulary whose ids are the positions in `names` (e.g. a teacher's `id2label`).
    /// Empty or duplicate names are errors.
    pub fn from_names<I, S>(names: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let names: Vec<String> = names.into_iter().map(Into::into).collect();
        if names.is_empty() {
            return Err(DataError::Labels("no labels".into()));
        }
        let mut ids = HashMap::with_capacity(names.len());
        for (i, name) in names.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(DataError::Labels(format!("label {i} is empty")));
            }
            let id = u32::try_from(i)
                .map_err(|_| DataError::Labels(format!("too many labels ({})", names.len())))?;
            if ids.insert(name.clone(), id).is_some() {
                return Err(DataError::Labels(format!(
                    "label `{name}` appears more than once"
                )));
            }
        }
        Ok(Self { names, ids })
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The label names, indexed by id.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    pub fn get(&self, label: &str) -> Option<u32> {
        self.ids.get(label).copied()
    }

    /// The id of `label`; an unknown label is an error listing the known ones.
    pub fn id(&self, label: &str) -> Result<u32> {
        self.get(label)
            .ok_or_else(|| DataError::Labels(self.unknown(label).to_string()))
    }

    pub fn name(&self, id: u32) -> Option<&str> {
        self.names.get(id as usize).map(String::as_str)
    }

    fn unknown(&self, label: &str) -> Problem {
        Problem::UnknownLabel {
            label: label.to_string(),
            known: self.names.clone(),
        }
    }

    /// The id of every example of `dataset`, in order. An example without a label or with a label
    /// outside the vocabulary is an error naming the file and line.
    pub fn ids(&self, dataset: &Dataset) -> Result<Vec<u32>> {
        dataset
            .examples
            .iter()
            .map(|e| match &e.label {
                None => Err(dataset.error_at(e.line, Problem::MissingLabel)),
                Some(l) => self
                    .get(l)
                    .ok_or_else(|| dataset.error_at(e.line, self.unknown(l))),
            })
            .collect()
    }

    /// Checks that every example of `dataset` (a dev or test split) has a label in the
    /// vocabulary. Under [`MalformedPolicy::Error`] the first that does not is an error naming
    /// the file and line; under [`MalformedPolicy::Skip`] such examples are moved to
    /// [`Dataset::skipped`] (kind "unknown label" / "missing label").
    pub fn validate(&self, mut dataset: Dataset, policy: MalformedPolicy) -> Result<Dataset> {
        let examples = std::mem::take(&mut dataset.examples);
        let mut kept = Vec::with_capacity(examples.len());
        for e in examples {
            let problem = match &e.label {
                None => Problem::MissingLabel,
                Some(l) if self.get(l).is_none() => self.unknown(l),
                Some(_) => {
                    kept.push(e);
                    continue;
                }
            };
            match policy {
                MalformedPolicy::Error => return Err(dataset.error_at(e.line, problem)),
                MalformedPolicy::Skip => dataset.skipped.push(Skipped {
                    line: e.line,
                    problem,
                }),
            }
        }
        dataset.examples = kept;
        Ok(dataset)
    }
}

fn sort_labels(names: &mut [String]) {
    let numeric: Option<Vec<u64>> = names
        .iter()
        .map(|n| {
            if n.bytes().all(|b| b.is_ascii_digit()) {
                n.parse::<u64>().ok()
            } else {
                None
            }
        })
        .collect();
    match numeric {
        // Ties ("1" vs "01") fall back to the text so the order is total.
        Some(_) => names.sort_by(|a, b| {
            let key = |s: &String| s.parse::<u64>().unwrap_or(u64::MAX);
            key(a).cmp(&key(b)).then_with(|| a.cmp(b))
        }),
        None => names.sort(),
    }
}
