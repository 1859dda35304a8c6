//! Typed errors of the stage engine.

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("schedule: {0}")]
    Config(String),
    /// A NaN or infinite loss or gradient; the message names stage and step.
    #[error("{0}")]
    NonFinite(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// The teacher-output cache cannot serve a batch (data or shapes other than it was built for).
    #[error("teacher cache: {0}")]
    Cache(String),
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Model(#[from] distillery_models::ModelError),
    #[error(transparent)]
    Loss(#[from] distillery_losses::LossError),
    #[error(transparent)]
    Data(#[from] distillery_data::DataError),
}

pub type Result<T> = std::result::Result<T, StageError>;

impl From<distillery_util::fs::WriteError> for StageError {
    fn from(e: distillery_util::fs::WriteError) -> Self {
        io_err(&e.path, e.source)
    }
}

pub(crate) fn io_err(path: &std::path::Path, source: std::io::Error) -> StageError {
    StageError::Io {
        path: path.to_path_buf(),
        source,
    }
}
