//! Typed errors of the stage engine.

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("schedule: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, StageError>;
