//! Typed errors of the data crate. Every error about a file names the file and, for a row, its
//! 1-based line, so the runner can print it as one line.

use std::fmt;
use std::path::PathBuf;

use distillery_models::ModelError;

/// What is wrong with one row (record) of a data file. The same value is the cause of a
/// [`DataError::Malformed`] under [`crate::MalformedPolicy::Error`] and the reason stored in a
/// [`crate::Skipped`] under [`crate::MalformedPolicy::Skip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// A TSV/CSV row whose number of fields differs from the header's.
    WrongColumnCount { expected: usize, found: usize },
    /// The text (or text-pair) column is empty or only whitespace.
    EmptyText { column: String },
    /// The label column is empty or only whitespace.
    EmptyLabel { column: String },
    /// The bytes of the line (or of the CSV record starting on it) are not UTF-8.
    InvalidUtf8,
    /// A JSONL line that is not valid JSON.
    InvalidJson { message: String },
    /// A JSONL line that is valid JSON but not an object.
    NotAnObject,
    /// A JSONL object without the configured key (or with `null` there).
    MissingKey { key: String },
    /// A JSONL value of the wrong type (text must be a string; a label a string, integer or bool).
    WrongType { key: String, expected: &'static str },
    /// A CSV field with a quote that is never closed (the record runs to the end of the file).
    UnterminatedQuote,
    /// A CSV quoted field followed by something other than a comma or the end of the line.
    TextAfterQuote,
    /// A label that is not in the label vocabulary (the training split's labels).
    UnknownLabel { label: String, known: Vec<String> },
    /// A labelled example was required but the row has no label (no label column configured).
    MissingLabel,
}

impl Problem {
    /// A short stable name for counting skipped rows by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::WrongColumnCount { .. } => "wrong column count",
            Problem::EmptyText { .. } => "empty text",
            Problem::EmptyLabel { .. } => "empty label",
            Problem::InvalidUtf8 => "invalid UTF-8",
            Problem::InvalidJson { .. } => "invalid JSON",
            Problem::NotAnObject => "not a JSON object",
            Problem::MissingKey { .. } => "missing key",
            Problem::WrongType { .. } => "wrong type",
            Problem::UnterminatedQuote => "unterminated quote",
            Problem::TextAfterQuote => "text after closing quote",
            Problem::UnknownLabel { .. } => "unknown label",
            Problem::MissingLabel => "missing label",
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::WrongColumnCount { expected, found } => write!(
                f,
                "wrong column count: expected {expected} fields (as the header), found {found}"
            ),
            Problem::EmptyText { column } => write!(f, "empty text in column `{column}`"),
            Problem::EmptyLabel { column } => write!(f, "empty label in column `{column}`"),
            Problem::InvalidUtf8 => write!(f, "invalid UTF-8"),
            Problem::InvalidJson { message } => write!(f, "invalid JSON: {message}"),
            Problem::NotAnObject => write!(f, "not a JSON object (expected one object per line)"),
            Problem::MissingKey { key } => write!(f, "missing key `{key}`"),
            Problem::WrongType { key, expected } => {
                write!(f, "key `{key}`: expected {expected}")
            }
            Problem::UnterminatedQuote => {
                write!(f, "unterminated quoted field (the quote is never closed)")
            }
            Problem::TextAfterQuote => write!(
                f,
                "text after a closing quote (a quote inside a quoted field must be doubled)"
            ),
            Problem::UnknownLabel { label, known } => {
                const SHOWN: usize = 20;
                write!(f, "unknown label `{label}` (known: ")?;
                for (i, k) in known.iter().take(SHOWN).enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{k}")?;
                }
                if known.len() > SHOWN {
                    write!(f, ", … {} more", known.len() - SHOWN)?;
                }
                write!(f, ")")
            }
            Problem::MissingLabel => write!(f, "no label (a labelled dataset is required)"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },

    /// A bad setting (e.g. of the synthetic task), naming its source and field.
    #[error("{source_name}: {message}")]
    Config {
        source_name: String,
        message: String,
    },

    #[error(
        "{path}: cannot tell the format from the extension (expected .tsv, .csv, .jsonl or .ndjson); set the format explicitly"
    )]
    UnknownFormat { path: PathBuf },

    /// The header row (TSV/CSV) is missing, unreadable or lacks a configured column. Never skipped.
    #[error("{path}:{line}: header: {message}")]
    Header {
        path: PathBuf,
        line: usize,
        message: String,
    },

    /// A malformed row under [`crate::MalformedPolicy::Error`].
    #[error("{path}:{line}: {problem}")]
    Malformed {
        path: PathBuf,
        line: usize,
        problem: Problem,
    },

    #[error("labels: {0}")]
    Labels(String),

    #[error("split: {0}")]
    Split(String),

    #[error("batching: {0}")]
    Batch(String),

    #[error(transparent)]
    Tokenizer(#[from] ModelError),

    #[error(transparent)]
    Write(#[from] distillery_util::fs::WriteError),
}

pub type Result<T> = std::result::Result<T, DataError>;
