//! An offline, seeded synthetic classification task for the quickstart: a tiny teacher learns it
//! from scratch in seconds on a CPU, then is distilled into a smaller student.
//!
//! Every text is a sequence of `L` plain words (`L` uniform in `[min_len, max_len]`), all
//! distinct except exactly one word that appears twice:
//!
//! - **`yes`**: the repeated word is the *first* word (`cat owl dog cat bee`);
//! - **`no`**: the first word is unique and the pair lies elsewhere (`cat owl dog owl bee`).
//!
//! **Why it needs attention.** Both classes have the same bag-of-words statistics: `L − 1`
//! distinct words drawn uniformly, one of them (uniformly chosen) twice, and the same length
//! distribution (examples come in `yes`/`no` pairs of equal length). Every (word, position)
//! pair is equally likely in both classes too. The label depends only on a *relation* between
//! tokens — "does the token at position 1 (after `[CLS]`) occur again?" — which an attention
//! head solves by letting that token's query match the key of an identical token, while a
//! bag-of-words or per-position model stays at chance.
//!
//! All randomness comes from `distillery_models::rng::SplitMix64` streams derived from the seed,
//! so the same seed gives the same data on every platform.

use std::path::{Path, PathBuf};

use distillery_models::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{DataError, Result};
use crate::read::{Dataset, Example};
use crate::shuffle::permutation;

/// The class names; sorted, so [`crate::LabelOrder::Sorted`] gives `no` = 0, `yes` = 1.
pub const LABELS: [&str; 2] = ["no", "yes"];

/// The [`Dataset::source`] of generated data (it names the task in error messages).
pub const SOURCE: &str = "<synthetic>";

/// The tokenizer's special tokens, ids 0..5 in this order; word `i` has id `5 + i`.
pub const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// The words texts are made of; a task uses the first `vocab_words`.
pub const WORDS: [&str; 64] = [
    "cat", "dog", "owl", "fox", "bee", "cow", "pig", "hen", "ant", "bat", "elk", "yak", "eel",
    "emu", "ram", "seal", "red", "blue", "green", "pink", "gold", "grey", "black", "white",
    "brown", "olive", "teal", "navy", "amber", "ivory", "lilac", "coral", "cup", "hat", "box",
    "key", "pen", "map", "jar", "bag", "bell", "lamp", "drum", "kite", "ring", "rope", "sock",
    "coin", "fork", "vase", "comb", "desk", "door", "boat", "shoe", "book", "sofa", "bowl",
    "clock", "chair", "table", "brush", "spoon", "glove",
];

/// The size and shape of the task. In a config file every field is optional (defaults below).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Number of examples (≥ 2); `yes` and `no` differ in count by at most one.
    pub examples: usize,
    /// Shortest text in words (≥ 3: a `no` text needs a first word plus a pair).
    pub min_len: usize,
    /// Longest text in words (≥ `min_len`).
    pub max_len: usize,
    /// How many of [`WORDS`] are used (`max_len ≤ vocab_words ≤ 64`).
    pub vocab_words: usize,
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            examples: 4000,
            min_len: 6,
            max_len: 12,
            vocab_words: 16,
            seed: 7,
        }
    }
}

impl SyntheticConfig {
    /// Checks every field; the error names the field and what was expected.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, expected: String, got: usize| {
            Err(DataError::Config {
                source_name: SOURCE.to_string(),
                message: format!("`{field}` must be {expected}, got {got}"),
            })
        };
        if self.examples < 2 {
            return bad("examples", "at least 2".into(), self.examples);
        }
        if self.min_len < 3 {
            return bad("min_len", "at least 3".into(), self.min_len);
        }
        if self.max_len < self.min_len {
            let expected = format!("at least min_len ({})", self.min_len);
            return bad("max_len", expected, self.max_len);
        }
        if self.vocab_words < self.max_len {
            let expected = format!("at least max_len ({})", self.max_len);
            return bad("vocab_words", expected, self.vocab_words);
        }
        if self.vocab_words > WORDS.len() {
            let expected = format!("at most {} (the built-in word list)", WORDS.len());
            return bad("vocab_words", expected, self.vocab_words);
        }
        Ok(())
    }
}

/// The words of the task: the first `vocab_words` of [`WORDS`].
pub fn words(config: &SyntheticConfig) -> Result<&'static [&'static str]> {
    config.validate()?;
    Ok(&WORDS[..config.vocab_words])
}

/// The tokenizer's vocabulary size: the special tokens plus one token per word.
pub fn vocab_size(config: &SyntheticConfig) -> usize {
    SPECIAL_TOKENS.len() + config.vocab_words
}

/// Generates the task: examples in a seeded random order, `line` = 1-based position.
pub fn generate(config: &SyntheticConfig) -> Result<Dataset> {
    let words = words(config)?;
    let mut rng = SplitMix64::derive(config.seed, "distillery-data/synthetic/examples");
    let span = config.max_len - config.min_len + 1;
    let mut len = config.min_len;
    let mut made: Vec<(String, &'static str)> = (0..config.examples)
        .map(|i| {
            // Even i: `yes` with a fresh length; odd i: `no` with the same length.
            let yes = i % 2 == 0;
            if yes {
                len = config.min_len + below(&mut rng, span);
            }
            (
                sequence(&mut rng, words, len, yes),
                LABELS[usize::from(yes)],
            )
        })
        .collect();
    let order = permutation(made.len(), config.seed, "distillery-data/synthetic/order");
    let examples = order
        .into_iter()
        .enumerate()
        .map(|(k, i)| {
            let (text, label) = std::mem::take(&mut made[i]);
            Example {
                text,
                pair: None,
                label: Some(label.to_string()),
                line: k + 1,
            }
        })
        .collect();
    Ok(Dataset {
        source: PathBuf::from(SOURCE),
        examples,
        skipped: Vec::new(),
    })
}

/// One text of `len` words: `len − 1` distinct words, the first of them twice, at positions 0
/// and a random later one (`yes`), or at two random positions after the first (`no`).
fn sequence(rng: &mut SplitMix64, words: &[&str], len: usize, yes: bool) -> String {
    // A uniformly random ordered sample of `len − 1` distinct words (partial Fisher–Yates).
    let mut pool: Vec<usize> = (0..words.len()).collect();
    for k in 0..len - 1 {
        let j = k + below(rng, pool.len() - k);
        pool.swap(k, j);
    }
    let (a, b) = if yes {
        (0, 1 + below(rng, len - 1))
    } else {
        let a = 1 + below(rng, len - 1);
        let b = 1 + below(rng, len - 2);
        (a, if b >= a { b + 1 } else { b })
    };
    let mut slots = vec![pool[0]; len];
    let others = (0..len).filter(|&p| p != a && p != b);
    for (p, &w) in others.zip(&pool[1..len - 1]) {
        slots[p] = w;
    }
    slots
        .iter()
        .map(|&w| words[w])
        .collect::<Vec<_>>()
        .join(" ")
}

/// A uniform draw below `n` (`n` ≥ 1).
fn below(rng: &mut SplitMix64, n: usize) -> usize {
    crate::shuffle::below(rng, n as u64) as usize
}

/// Writes `dir/tokenizer.json` (atomically): a BERT-shaped WordPiece tokenizer, no padding,
/// [`SPECIAL_TOKENS`] at ids 0..5, then every word of the task as one token.
pub fn write_tokenizer(dir: &Path, config: &SyntheticConfig) -> Result<PathBuf> {
    let vocab: Map<String, Value> = SPECIAL_TOKENS
        .iter()
        .chain(words(config)?)
        .enumerate()
        .map(|(i, w)| (w.to_string(), json!(i)))
        .collect();
    let added: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, w)| {
            json!({"id": id, "content": w, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let special = |name: &str, id: u32| json!({"id": name, "ids": [id], "tokens": [name]});
    let token =
        |name: &str, type_id: u32| json!({"SpecialToken": {"id": name, "type_id": type_id}});
    let seq = |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
    let json = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "TemplateProcessing",
            "single": [token("[CLS]", 0), seq("A", 0), token("[SEP]", 0)],
            "pair": [token("[CLS]", 0), seq("A", 0), token("[SEP]", 0),
                     seq("B", 1), token("[SEP]", 1)],
            "special_tokens": {"[CLS]": special("[CLS]", 2), "[SEP]": special("[SEP]", 3)}},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    });
    let path = dir.join("tokenizer.json");
    let text = json.to_string();
    distillery_models::hub::write_atomically(&path, |tmp| {
        std::fs::write(tmp, &text).map_err(|e| distillery_models::ModelError::Io {
            path: tmp.to_path_buf(),
            message: format!("cannot write: {e}"),
        })
    })?;
    Ok(path)
}
