//! One-line errors that name the config file, the dotted key and, for TOML syntax and type
//! errors, the line.

use std::fmt;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// What is wrong at one key; the file is added where the error leaves the config module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KeyError {
    pub key: String,
    pub message: String,
}

pub(crate) type KeyResult<T> = Result<T, KeyError>;

pub(crate) fn key_err(key: impl Into<String>, message: impl fmt::Display) -> KeyError {
    KeyError {
        key: key.into(),
        message: message.to_string(),
    }
}

/// A term's error at `key` of its `[losses.<name>]` table (empty `key`: the table itself).
pub(crate) fn term_key_err(name: &str, key: &str, message: impl fmt::Display) -> KeyError {
    if key.is_empty() {
        key_err(format!("losses.{name}"), message)
    } else {
        key_err(format!("losses.{name}.{key}"), message)
    }
}

impl KeyError {
    /// `configs/x.toml: key `distill.lr`: must be positive, got -1`.
    pub fn in_file(self, source: &Path) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: key `{}`: {}",
            source.display(),
            self.key,
            one_line(&self.message)
        )
    }
}

/// A TOML syntax or serde error as one line: `file: line N: key `a.b`: message`. The toml
/// crate's `Display` draws a multi-line snippet, so the message and span are used instead; the
/// key is found by locating the span in the parsed document (the error itself only knows the
/// parent keys, and not array indices).
pub(crate) fn toml_error(source: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let message = one_line(e.message());
    let Some(span) = e.span() else {
        return anyhow::anyhow!("{}: {message}", source.display());
    };
    let line = line_of(text, span.start);
    match key_at(text, span.start) {
        Some(key) => anyhow::anyhow!("{}: line {line}: key `{key}`: {message}", source.display()),
        None => anyhow::anyhow!("{}: line {line}: {message}", source.display()),
    }
}

/// Newlines (and the indentation after them) become single spaces.
pub(crate) fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The 1-based line holding byte `offset` (clamped to the text).
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

/// The dotted key (`distill.stages[1].losses[0]`) whose key or value covers byte `at`; `None`
/// when the text does not parse (a syntax error) or the offset is on no key (e.g. a header).
fn key_at(text: &str, at: usize) -> Option<String> {
    let doc = DeTable::parse(text).ok()?;
    // First only keys and scalar values, whose spans are exact; then also whole tables and
    // arrays (e.g. an inline table where a string was expected), whose spans may be wider.
    [true, false].into_iter().find_map(|exact| {
        let mut path = Vec::new();
        (in_table(doc.get_ref(), at, exact, &mut path) && !path.is_empty()).then(|| path.concat())
    })
}

fn covers(span: &std::ops::Range<usize>, at: usize) -> bool {
    // An empty span (at the end of the input) still marks its start.
    span.start <= at && at < span.end.max(span.start + 1)
}

fn in_table(table: &DeTable<'_>, at: usize, exact: bool, path: &mut Vec<String>) -> bool {
    for (k, v) in table.iter() {
        let segment = if path.is_empty() {
            k.get_ref().to_string()
        } else {
            format!(".{}", k.get_ref())
        };
        path.push(segment);
        if covers(&k.span(), at) || in_value(v, at, exact, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn in_value(v: &Spanned<DeValue<'_>>, at: usize, exact: bool, path: &mut Vec<String>) -> bool {
    let inner = match v.get_ref() {
        DeValue::Table(t) => in_table(t, at, exact, path),
        DeValue::Array(items) => items.iter().enumerate().any(|(i, item)| {
            path.push(format!("[{i}]"));
            let hit = in_value(item, at, exact, path);
            if !hit {
                path.pop();
            }
            hit
        }),
        _ => return covers(&v.span(), at),
    };
    inner || (!exact && covers(&v.span(), at))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn key_at_finds_nested_keys_and_array_indices() {
        let text = "seed = 1\n[distill]\nlr = 2\n[[distill.stages]]\nname = \"a\"\n[[distill.stages]]\nname = \"b\"\nlosses = [\"x\", \"y\"]\n";
        let at = |needle: &str| text.find(needle).unwrap();
        assert_eq!(key_at(text, at("seed")).as_deref(), Some("seed"));
        assert_eq!(key_at(text, at("2\n")).as_deref(), Some("distill.lr"));
        assert_eq!(
            key_at(text, at("\"b\"")).as_deref(),
            Some("distill.stages[1].name")
        );
        assert_eq!(
            key_at(text, at("\"y\"")).as_deref(),
            Some("distill.stages[1].losses[1]")
        );
        assert_eq!(line_of(text, at("\"y\"")), 8);
    }
}
