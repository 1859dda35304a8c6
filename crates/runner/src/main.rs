//! `distillery`: the command line of the distillation workspace.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod embed;
mod inspect;
mod textfile;

#[derive(Debug, Parser)]
#[command(
    name = "distillery",
    version,
    about = "Distil a transformer teacher into a smaller student"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Pooling {
    /// Average of the last hidden state over non-padding tokens (not normalised).
    Mean,
    /// The last hidden state of the [CLS] token.
    Cls,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Embed one text per input line; write one JSON object per line: {"text", "embedding"}.
    Embed {
        /// A Hugging Face model folder (config.json, model.safetensors, tokenizer.json).
        #[arg(long)]
        model: PathBuf,
        /// A UTF-8 text file, one text per line.
        #[arg(long)]
        input: PathBuf,
        /// The JSONL file to write (replaced only once complete).
        #[arg(long)]
        output: PathBuf,
        #[arg(long, value_enum, default_value_t = Pooling::Mean)]
        pooling: Pooling,
        #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..))]
        batch_size: u64,
        /// Truncate each text to this many tokens, special tokens included.
        #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(2..))]
        max_len: u64,
    },
    /// Print a model's config and its parameter count per part.
    Inspect {
        #[arg(long)]
        model: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Embed {
            model,
            input,
            output,
            pooling,
            batch_size,
            max_len,
        } => embed::run(&embed::EmbedArgs {
            model,
            input,
            output,
            pooling,
            batch_size: batch_size as usize,
            max_len: max_len as usize,
        }),
        Command::Inspect { model, json } => inspect::run(&model, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context, then each cause.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
