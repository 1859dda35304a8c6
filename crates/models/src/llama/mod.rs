//! The LLaMA architecture family (LLaMA 2/3, SmolLM, TinyLlama, Mistral, Qwen2 with its q/k/v
//! biases): the config, the decoder, and loading from Hugging Face folders (single or sharded
//! `model.safetensors`). GGUF files, students, saving and the fused ops are the next slices.

mod config;
mod load;
mod model;

pub use config::{LlamaConfig, RopeScaling};
pub use load::load_llama;
pub use model::{DecoderOutput, LlamaModel};
