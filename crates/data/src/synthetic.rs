//! An offline, seeded synthetic classification task for the quickstart: a tiny teacher learns it
//! from scratch in seconds on a CPU, then is distilled into a smaller student.
//!
//! Every text is a sequence of `L` plain words from the first `vocab_words` of [`WORDS`], `L`
//! uniform in `[min_len, max_len]`, labelled `yes` or `no` by one of two [`Rule`]s.
//!
//! ## [`Rule::Order`] (the default)
//!
//! `L` *distinct* words: the two markers `cat` and `dog` ([`WORDS`]`[0]` and `[1]`) plus `L − 2`
//! fillers drawn from the other words.
//!
//! - **`yes`**: `cat` comes before `dog` (`owl cat bee dog fox`);
//! - **`no`**: `dog` comes before `cat` (`owl dog bee cat fox`).
//!
//! Examples come in *twins* like the two above: the same length and fillers in the same
//! positions, the markers' two positions (a uniformly random pair) swapped. So the classes have
//! exactly the same bag-of-words statistics and a bag-of-words model is at chance by
//! construction (held-out naive Bayes on unigrams: 0.46 on the default task). The label is a
//! relation between two tokens' positions: a model has to bind each marker's identity to its
//! position and bring both into `[CLS]`, which in an encoder is attention's job.
//!
//! Positions are not hidden, though. One marker's position alone is partly informative (`cat`
//! first ⇒ `yes`, `cat` last ⇒ `no`): naive Bayes on `cat`'s position scores 0.76. And the
//! label is linear in (word, position) features — `yes` iff pos(`dog`) − pos(`cat`) > 0 — so a
//! per-(word, position) model, with no interaction between tokens, can be exact; naive Bayes on
//! (word, position) features scores 0.975. (Figures: the default task, held-out 25%; see the
//! tests.) The rule tests word–position binding, not a token-to-token match like
//! [`Rule::FirstRepeated`].
//!
//! It is the default because a small transformer learns it fast: a 4-layer, 64-wide BERT
//! trained from scratch reaches 100% in about 200 steps.
//!
//! ## [`Rule::FirstRepeated`]
//!
//! All `L` words distinct except exactly one word that appears twice:
//!
//! - **`yes`**: the repeated word is the *first* word (`cat owl dog cat bee`);
//! - **`no`**: the first word is unique and the pair lies elsewhere (`cat owl dog owl bee`).
//!
//! Both classes have the same bag-of-words statistics: `L − 1` distinct words drawn uniformly,
//! one of them (uniformly chosen) twice, and the same length distribution (examples come in
//! `yes`/`no` twins of equal length). Every (word, position) pair is equally likely in both
//! classes too, so a bag-of-words or per-position model stays at chance. The label depends only
//! on a relation between tokens — "does the token at position 1 (after `[CLS]`) occur again?" —
//! which an attention head solves by letting that token's query match the key of an identical
//! token. It is much slower to learn: the same 4-layer, 64-wide BERT stays at chance for 1500
//! steps in this engine (PyTorch needs about 1500 steps to reach 0.88).
//!
//! All randomness comes from `distillery_util::rng::SplitMix64` streams derived from the seed,
//! so the same seed gives the same data on every platform.

use std::path::{Path, PathBuf};

use distillery_util::rng::SplitMix64;
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

/// The rule that labels a text (see the module doc); `order` or `first-repeated` in a config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// `yes` iff `cat` comes before `dog`; learned in a few hundred steps.
    #[default]
    Order,
    /// `yes` iff the first word occurs again; much slower to learn.
    FirstRepeated,
}

/// The size and shape of the task. In a config file every field is optional (defaults below).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// The labelling rule (default [`Rule::Order`]).
    pub rule: Rule,
    /// Number of examples (≥ 2); `yes` and `no` differ in count by at most one.
    pub examples: usize,
    /// Shortest text in words: ≥ 2 for [`Rule::Order`] (the two markers), ≥ 3 for
    /// [`Rule::FirstRepeated`] (a `no` text needs a first word plus a pair).
    pub min_len: usize,
    /// Longest text in words (≥ `min_len`).
    pub max_len: usize,
    /// How many of [`WORDS`] are used (`max_len ≤ vocab_words ≤ 64`: a text has at least
    /// `max_len − 1` distinct words, or for [`Rule::Order`] `max_len − 2` distinct fillers
    /// besides the two markers).
    pub vocab_words: usize,
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            rule: Rule::Order,
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
        let shortest = match self.rule {
            Rule::Order => 2,
            Rule::FirstRepeated => 3,
        };
        if self.min_len < shortest {
            return bad("min_len", format!("at least {shortest}"), self.min_len);
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
    // Twins of one length, `yes` first; an odd count drops the last `no`.
    let mut made: Vec<(String, &'static str)> = Vec::with_capacity(config.examples + 1);
    while made.len() < config.examples {
        let len = config.min_len + below(&mut rng, span);
        let [yes, no] = match config.rule {
            Rule::Order => order_twins(&mut rng, words.len(), len),
            Rule::FirstRepeated => {
                [true, false].map(|yes| first_repeated(&mut rng, words.len(), len, yes))
            }
        };
        made.push((render(words, &yes), LABELS[1]));
        made.push((render(words, &no), LABELS[0]));
    }
    made.truncate(config.examples);
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

/// A `yes` and a `no` text of `len` word ids for [`Rule::Order`]: the markers 0 (`cat`) and 1
/// (`dog`) at a uniformly random pair of positions (`cat` first in the `yes` twin, swapped in the
/// `no` twin) and the same `len − 2` distinct fillers from `2..vocab_words` everywhere else.
fn order_twins(rng: &mut SplitMix64, vocab_words: usize, len: usize) -> [Vec<usize>; 2] {
    let a = below(rng, len);
    let b = below(rng, len - 1);
    let (first, second) = if b >= a { (a, b + 1) } else { (b, a) };
    let mut yes = sample(rng, (2..vocab_words).collect(), len - 2);
    yes.insert(first, 0);
    yes.insert(second, 1);
    let mut no = yes.clone();
    no.swap(first, second);
    [yes, no]
}

/// One text of `len` word ids for [`Rule::FirstRepeated`]: `len − 1` distinct words, the first
/// of them twice, at positions 0 and a random later one (`yes`), or at two random positions
/// after the first (`no`).
fn first_repeated(rng: &mut SplitMix64, vocab_words: usize, len: usize, yes: bool) -> Vec<usize> {
    let pool = sample(rng, (0..vocab_words).collect(), len - 1);
    let (a, b) = if yes {
        (0, 1 + below(rng, len - 1))
    } else {
        let a = 1 + below(rng, len - 1);
        let b = 1 + below(rng, len - 2);
        (a, if b >= a { b + 1 } else { b })
    };
    let mut slots = vec![pool[0]; len];
    let others = (0..len).filter(|&p| p != a && p != b);
    for (p, &w) in others.zip(&pool[1..]) {
        slots[p] = w;
    }
    slots
}

/// A uniformly random ordered sample of `k ≤ pool.len()` distinct items (partial Fisher–Yates).
fn sample(rng: &mut SplitMix64, mut pool: Vec<usize>, k: usize) -> Vec<usize> {
    for i in 0..k {
        let j = i + below(rng, pool.len() - i);
        pool.swap(i, j);
    }
    pool.truncate(k);
    pool
}

/// The text of a sequence of word ids.
fn render(words: &[&str], ids: &[usize]) -> String {
    ids.iter().map(|&w| words[w]).collect::<Vec<_>>().join(" ")
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
    distillery_util::fs::write_atomic(&path, text.as_bytes())?;
    Ok(path)
}
