//! `distillery`: the command line of the distillation workspace.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use embed::Pooling;

mod cache;
mod config;
mod distill;
mod embed;
mod evaluate;
mod faults;
mod fingerprint;
mod generate;
mod inspect;
mod jobs;
mod observe;
mod perplexity;
mod plan;
mod plot;
mod records;
mod report;
mod summary;
mod task;
mod teacher;
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

#[derive(Debug, clap::Args)]
struct JobFlags {
    /// A TOML config; without one, the embedded quickstart (configs/quickstart.toml) runs.
    config: Option<PathBuf>,
    /// Output folder (default: runs/<config name>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue from the newest checkpoint in --out (finished parts are kept as they are).
    #[arg(long)]
    resume: bool,
    /// cpu, cuda or cuda:N (overrides the config's `device`).
    #[arg(long)]
    device: Option<String>,
    /// No progress bar or per-stage lines.
    #[arg(long)]
    quiet: bool,
    /// Read the data, check the config against the models' shapes, print the planned stages;
    /// train nothing, write nothing.
    #[arg(long)]
    dry_run: bool,
}

impl JobFlags {
    fn into_args(self) -> jobs::JobArgs {
        jobs::JobArgs {
            config: self.config,
            out: self.out,
            resume: self.resume,
            device: self.device,
            quiet: self.quiet,
            dry_run: self.dry_run,
        }
    }
}

#[derive(Debug, clap::Args)]
struct DataFlags {
    /// A saved classifier folder (config.json with labels, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Column (TSV/CSV) or key (JSONL) of the text.
    #[arg(long, default_value = "text")]
    text: String,
    /// Column or key of the second text of a pair.
    #[arg(long)]
    text_pair: Option<String>,
    /// tsv, csv or jsonl (default: from the extension).
    #[arg(long)]
    format: Option<String>,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    batch_size: u64,
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u64).range(2..))]
    max_len: u64,
}

impl DataFlags {
    fn into_args(self, data: PathBuf, label: String) -> evaluate::DataArgs {
        evaluate::DataArgs {
            model: self.model,
            data,
            text: self.text,
            text_pair: self.text_pair,
            label,
            format: self.format,
            batch_size: self.batch_size as usize,
            max_len: self.max_len as usize,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the config's schedule: student (HF layout), metrics.jsonl, report.md, loss.svg.
    Run {
        #[command(flatten)]
        job: JobFlags,
    },
    /// Run several schedules at the same step budget; write comparison.md and comparison.svg.
    Compare {
        #[command(flatten)]
        job: JobFlags,
        /// Comma-separated: one-stage, two-stage, three-stage, custom.
        #[arg(long)]
        schedules: Option<String>,
    },
    /// Accuracy and macro-F1 of a classifier on a labelled file, as JSON.
    Eval {
        #[command(flatten)]
        flags: DataFlags,
        /// A labelled TSV / CSV / JSONL file.
        #[arg(long)]
        data: PathBuf,
        /// Column or key of the label.
        #[arg(long, default_value = "label")]
        label: String,
    },
    /// Label and class probabilities per text, as JSONL.
    Predict {
        #[command(flatten)]
        flags: DataFlags,
        /// A text file (one text per line) or a TSV / CSV / JSONL file.
        #[arg(long)]
        input: PathBuf,
        /// The JSONL file to write (replaced only once complete); stdout when not given.
        #[arg(long)]
        output: Option<PathBuf>,
    },
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
    /// Continue prompts with a decoder (LLaMA family): greedy at temperature 0, else sampled.
    Generate {
        /// A Hugging Face decoder folder (config.json, model.safetensors, tokenizer.json) or a
        /// GGUF file.
        #[arg(long)]
        model: PathBuf,
        /// One prompt; its continuation is printed.
        #[arg(long, conflicts_with = "input", required_unless_present = "input")]
        prompt: Option<String>,
        /// A UTF-8 file, one prompt per line; JSONL {prompt, completion, tokens} per line.
        #[arg(long)]
        input: Option<PathBuf>,
        /// The JSONL file to write (replaced only once complete).
        #[arg(long)]
        output: Option<PathBuf>,
        #[arg(long, default_value_t = 64)]
        max_new_tokens: usize,
        /// 0: greedy.
        #[arg(long, default_value_t = 0.0)]
        temperature: f64,
        #[arg(long, default_value_t = 1.0)]
        top_p: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Wrap each prompt as a user message in the model's chat template.
        #[arg(long)]
        chat: bool,
    },
    /// Per line of a text file: a decoder's (LLaMA family) mean next-token negative
    /// log-likelihood and perplexity, as JSONL, then a summary line for the whole file.
    Perplexity {
        /// A Hugging Face decoder folder (config.json, model.safetensors, tokenizer.json) or a
        /// GGUF file.
        #[arg(long)]
        model: PathBuf,
        /// A UTF-8 text file, one text per line.
        #[arg(long)]
        input: PathBuf,
        /// The JSONL file to write (replaced only once complete); stdout when not given.
        #[arg(long)]
        output: Option<PathBuf>,
        /// Truncate each line to this many tokens, special tokens included.
        #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u64).range(2..))]
        max_len: u64,
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
        batch_size: u64,
    },
    /// Print a model's config and its parameter count per part.
    Inspect {
        /// A Hugging Face model folder (BERT or LLaMA family) or a GGUF file.
        #[arg(long)]
        model: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    distillery_kernels::memory::retain_freed_buffers();
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
        Command::Generate {
            model,
            prompt,
            input,
            output,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            chat,
        } => generate::run(&generate::GenerateArgs {
            model,
            prompt,
            input,
            output,
            max_new_tokens,
            temperature,
            top_p,
            seed,
            chat,
        }),
        Command::Perplexity {
            model,
            input,
            output,
            max_len,
            batch_size,
        } => perplexity::run(&perplexity::PerplexityArgs {
            model,
            input,
            output,
            max_len: max_len as usize,
            batch_size: batch_size as usize,
        }),
        Command::Run { job } => jobs::run(&job.into_args()),
        Command::Compare { job, schedules } => {
            jobs::compare(&job.into_args(), schedules.as_deref())
        }
        Command::Eval { flags, data, label } => evaluate::eval(&flags.into_args(data, label)),
        Command::Predict {
            flags,
            input,
            output,
        } => evaluate::predict(&flags.into_args(input, String::new()), output.as_deref()),
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
