//! The LLaMA architecture family (LLaMA 2/3, SmolLM, TinyLlama, Mistral, Qwen2 with its q/k/v
//! biases): the config, the decoder, loading from Hugging Face folders (single or sharded
//! `model.safetensors`) and GGUF files (dequantised to f32, tokenizer rebuilt from the file),
//! students (teacher layers or a seeded shape) and saving as a folder transformers loads.

mod chat;
mod config;
mod generate;
mod gguf;
mod gguf_scan;
mod gguf_tokenizer;
mod load;
mod model;
mod nll;
mod open;
mod save;
mod student;

pub use chat::{apply_chat_template, ChatMessage};
pub use config::{LlamaConfig, RopeScaling};
pub use generate::Sampling;
pub use gguf::{is_gguf, GgufFile, GgufTensor};
pub use gguf_tokenizer::{gguf_tokenizer, GgufTokenizerInfo};
pub use load::load_llama;
pub use model::{KvCache, LlamaModel};
pub use nll::{next_token_nll, RowNll};
pub use open::{open_decoder, Decoder, DecoderSource};
pub use save::save_llama;
pub use student::{llama_from_layers, random_llama, LlamaShape};
