//! `distillery-models`: a BERT-family encoder and a LLaMA-family decoder ([`llama`]) for
//! distillation.
//!
//! Its forward returns one plain [`ModelOutput`] with every intermediate a distillation loss may
//! need (embedding output, every layer's hidden states, per-head Q/K/V, optional attention maps,
//! pooled output, logits). It loads and saves Hugging Face folders and builds students.
//!
//! Both families implement [`Model`], the family-agnostic view (shape + forward) the rest of
//! the workspace uses.
//!
//! This crate knows nothing of losses, schedules or training loops.

pub mod bert;
pub mod config;
pub mod error;
pub mod hub;
pub mod layers;
pub mod llama;
pub mod output;
pub mod params;
pub use distillery_util::rng;
pub mod student;
#[doc(hidden)]
pub mod testing;
pub mod tokenizer;
pub mod view;

pub use bert::{mean_pool, BertModel, ForwardOptions};
pub use config::{Activation, BertConfig};
pub use error::{ModelError, Result};
pub use hub::{load_model, save_model, LoadOptions};
pub use layers::Kernels;
pub use output::{key_bias, LayerAttention, ModelOutput};
pub use student::{
    random_student, student_from_teacher, student_from_teacher_spec, with_new_head, StudentSpec,
};
pub use tokenizer::{BatchTensors, EncodedBatch, TextInput, TextTokenizer};
pub use view::{Family, Model, ModelShape};
