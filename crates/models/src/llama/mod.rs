//! The LLaMA architecture family (LLaMA 2/3, SmolLM, TinyLlama, Mistral, Qwen2 with its q/k/v
//! biases): the config, the decoder, and loading from Hugging Face folders (single or sharded
//! `model.safetensors`), students (teacher layers or a seeded shape) and saving as a folder
//! transformers loads. GGUF files and the fused ops are the next slices.

mod config;
mod generate;
mod load;
mod model;
mod nll;
mod save;
mod student;

pub use config::{LlamaConfig, RopeScaling};
pub use generate::Sampling;
pub use load::load_llama;
pub use model::{DecoderAttention, DecoderOutput, KvCache, LlamaModel};
pub use nll::{next_token_nll, RowNll};
pub use save::save_llama;
pub use student::{llama_from_layers, random_llama, LlamaShape};
