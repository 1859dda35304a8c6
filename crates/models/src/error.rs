//! Typed errors of the models crate. Every variant that comes from user input names the file,
//! field or tensor and what was expected, so the runner can print it as one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },

    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },

    #[error("config field `{field}`: {message}")]
    Config {
        field: &'static str,
        message: String,
    },

    #[error("{path}: missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        path: PathBuf,
        name: String,
        expected: Vec<usize>,
    },

    #[error("{path}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },

    #[error("{0}")]
    Folder(String),

    /// A GGUF file that cannot be used; `message` names the metadata key or tensor.
    #[error("{path}: {message}")]
    Gguf { path: PathBuf, message: String },

    #[error("student: {0}")]
    Student(String),

    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("input: {0}")]
    Input(String),

    #[error(transparent)]
    Kernel(#[from] distillery_kernels::KernelError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl From<distillery_util::fs::WriteError> for ModelError {
    fn from(e: distillery_util::fs::WriteError) -> Self {
        io_err(&e.path, e.source)
    }
}

pub(crate) fn io_err(path: &std::path::Path, e: impl std::fmt::Display) -> ModelError {
    ModelError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}
