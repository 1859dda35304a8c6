//! Typed errors of the losses; each says which index, layer or shape is wrong and why.

#[derive(Debug, thiserror::Error)]
pub enum LossError {
    #[error("layer map: {0}")]
    Mapping(String),

    #[error(
        "attention KL needs equal head counts, but student layer {student_layer} has {student_heads} heads and \
         teacher layer {teacher_layer} has {teacher_heads}; use relation KL (MiniLMv2), which re-splits both \
         into a common number of relation heads"
    )]
    HeadMismatch {
        student_layer: usize,
        teacher_layer: usize,
        student_heads: usize,
        teacher_heads: usize,
    },

    #[error("{0}")]
    Shape(String),

    #[error("invalid loss configuration: {0}")]
    Config(String),

    #[error(transparent)]
    Kernel(#[from] distillery_kernels::KernelError),

    #[error(transparent)]
    Model(#[from] distillery_models::ModelError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, LossError>;
