//! Readers for TSV, CSV and JSONL files with configurable text / text-pair / label columns.
//!
//! - **TSV**: a header row, then one row per line, fields split on tabs (no quoting); every row
//!   must have as many fields as the header.
//! - **CSV**: a header row, then RFC 4180 records (quoted fields may hold commas, doubled quotes
//!   and newlines); every record must have as many fields as the header.
//! - **JSONL**: one JSON object per line; columns are keys. A label may be a string, an integer
//!   or a boolean (turned into its JSON text, e.g. `1` or `true`).
//!
//! All formats: a UTF-8 byte-order mark at the start is ignored, `\r\n` line endings are
//! accepted, and blank lines are skipped silently (they are not rows). Texts are kept verbatim
//! (the tokenizer normalises whitespace); labels are trimmed. Line numbers are 1-based physical
//! lines; a CSV record spanning several lines is reported at the line where it starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::csv::CsvRecords;
use crate::error::{DataError, Problem, Result};

/// The file format; inferred from the extension (`.tsv`, `.csv`, `.jsonl`/`.ndjson`, any case)
/// when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Tsv,
    Csv,
    Jsonl,
}

impl Format {
    /// The format the extension of `path` names, if any.
    pub fn from_extension(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "tsv" => Some(Format::Tsv),
            "csv" => Some(Format::Csv),
            "jsonl" | "ndjson" => Some(Format::Jsonl),
            _ => None,
        }
    }

    /// `given`, or else the format named by the extension of `path`.
    pub fn resolve(given: Option<Format>, path: &Path) -> Result<Format> {
        given
            .or_else(|| Format::from_extension(path))
            .ok_or_else(|| DataError::UnknownFormat {
                path: path.to_path_buf(),
            })
    }
}

/// Which columns (TSV/CSV header names, JSONL keys) hold the text, the optional second text of a
/// pair, and the optional label. An unlabelled corpus (task-agnostic stages) names only `text`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnSpec {
    pub text: String,
    #[serde(default)]
    pub text_pair: Option<String>,
    #[serde(default)]
    pub label: Option<String>,
}

impl ColumnSpec {
    /// Only a text column (unlabelled text).
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            text_pair: None,
            label: None,
        }
    }

    /// A text column and a label column.
    pub fn labelled(text: impl Into<String>, label: impl Into<String>) -> Self {
        Self::text(text).with_label(label)
    }

    pub fn with_pair(mut self, text_pair: impl Into<String>) -> Self {
        self.text_pair = Some(text_pair.into());
        self
    }

    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }
}

/// What to do with a malformed row: fail naming the file and line (the default), or skip it and
/// record it in [`Dataset::skipped`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MalformedPolicy {
    #[default]
    Error,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadConfig {
    /// `None`: inferred from the file's extension.
    pub format: Option<Format>,
    pub columns: ColumnSpec,
    pub malformed: MalformedPolicy,
}

impl ReadConfig {
    /// Format from the extension, malformed rows are errors.
    pub fn new(columns: ColumnSpec) -> Self {
        Self {
            format: None,
            columns,
            malformed: MalformedPolicy::Error,
        }
    }

    pub fn with_format(mut self, format: Format) -> Self {
        self.format = Some(format);
        self
    }

    pub fn with_malformed(mut self, malformed: MalformedPolicy) -> Self {
        self.malformed = malformed;
        self
    }
}

/// One example: a text (or a pair) and an optional label, with the line it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub text: String,
    pub pair: Option<String>,
    pub label: Option<String>,
    /// The 1-based line of the source file where the row starts.
    pub line: usize,
}

/// A row left out under [`MalformedPolicy::Skip`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub line: usize,
    pub problem: Problem,
}

/// The examples read from one file, in file order, with the rows that were skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dataset {
    pub source: PathBuf,
    pub examples: Vec<Example>,
    pub skipped: Vec<Skipped>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.examples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.examples.is_empty()
    }

    /// Skipped rows counted by [`Problem::kind`].
    pub fn skip_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut counts = BTreeMap::new();
        for s in &self.skipped {
            *counts.entry(s.problem.kind()).or_insert(0) += 1;
        }
        counts
    }

    /// One line for a log, e.g. `data/train.tsv: skipped 3 rows (2 empty text, 1 wrong column
    /// count; first at line 7)`; `None` when nothing was skipped.
    pub fn skip_summary(&self) -> Option<String> {
        let first = self.skipped.iter().map(|s| s.line).min()?;
        let kinds: Vec<String> = self
            .skip_counts()
            .into_iter()
            .map(|(kind, n)| format!("{n} {kind}"))
            .collect();
        let n = self.skipped.len();
        Some(format!(
            "{}: skipped {n} row{} ({}; first at line {first})",
            self.source.display(),
            if n == 1 { "" } else { "s" },
            kinds.join(", ")
        ))
    }

    /// The error for `problem` at `line` of this dataset's source file.
    pub fn error_at(&self, line: usize, problem: Problem) -> DataError {
        DataError::Malformed {
            path: self.source.clone(),
            line,
            problem,
        }
    }
}

/// Reads a TSV, CSV or JSONL file (see the module docs for the rules of each).
pub fn read_dataset(path: &Path, config: &ReadConfig) -> Result<Dataset> {
    let format = Format::resolve(config.format, path)?;
    let bytes = std::fs::read(path).map_err(|e| DataError::Io {
        path: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    parse_dataset(
        &bytes,
        path,
        &ReadConfig {
            format: Some(format),
            ..config.clone()
        },
    )
}

/// Parses file contents already in memory; `source` names them in errors (and gives the format
/// when `config.format` is `None`).
pub fn parse_dataset(bytes: &[u8], source: &Path, config: &ReadConfig) -> Result<Dataset> {
    let format = Format::resolve(config.format, source)?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = Collector {
        dataset: Dataset {
            source: source.to_path_buf(),
            examples: Vec::new(),
            skipped: Vec::new(),
        },
        policy: config.malformed,
        columns: &config.columns,
    };
    match format {
        Format::Tsv => parse_tsv(bytes, &mut out)?,
        Format::Csv => parse_csv(bytes, &mut out)?,
        Format::Jsonl => parse_jsonl(bytes, &mut out)?,
    }
    Ok(out.dataset)
}

struct Collector<'a> {
    dataset: Dataset,
    policy: MalformedPolicy,
    columns: &'a ColumnSpec,
}

impl Collector<'_> {
    fn reject(&mut self, line: usize, problem: Problem) -> Result<()> {
        match self.policy {
            MalformedPolicy::Error => Err(self.dataset.error_at(line, problem)),
            MalformedPolicy::Skip => {
                self.dataset.skipped.push(Skipped { line, problem });
                Ok(())
            }
        }
    }

    /// Checks the fields of one row and keeps it, or rejects it.
    fn row(
        &mut self,
        line: usize,
        text: String,
        pair: Option<String>,
        label: Option<String>,
    ) -> Result<()> {
        match self.check(text, pair, label) {
            Ok((text, pair, label)) => {
                self.dataset.examples.push(Example {
                    text,
                    pair,
                    label,
                    line,
                });
                Ok(())
            }
            Err(problem) => self.reject(line, problem),
        }
    }

    #[allow(clippy::type_complexity)]
    fn check(
        &self,
        text: String,
        pair: Option<String>,
        label: Option<String>,
    ) -> std::result::Result<(String, Option<String>, Option<String>), Problem> {
        let cols = self.columns;
        if text.trim().is_empty() {
            return Err(Problem::EmptyText {
                column: cols.text.clone(),
            });
        }
        if let (Some(p), Some(column)) = (&pair, &cols.text_pair) {
            if p.trim().is_empty() {
                return Err(Problem::EmptyText {
                    column: column.clone(),
                });
            }
        }
        let label = match (label, &cols.label) {
            (Some(l), Some(column)) => {
                let l = l.trim();
                if l.is_empty() {
                    return Err(Problem::EmptyLabel {
                        column: column.clone(),
                    });
                }
                Some(l.to_string())
            }
            _ => None,
        };
        Ok((text, pair, label))
    }
}

/// Column indices resolved from a header row.
struct Columns {
    count: usize,
    text: usize,
    pair: Option<usize>,
    label: Option<usize>,
}

fn resolve_columns(header: &[&str], out: &Collector<'_>, line: usize) -> Result<Columns> {
    let find = |name: &str| -> Result<usize> {
        let mut hits = header
            .iter()
            .enumerate()
            .filter(|(_, h)| h.trim() == name)
            .map(|(i, _)| i);
        let err = |message: String| DataError::Header {
            path: out.dataset.source.clone(),
            line,
            message,
        };
        match (hits.next(), hits.next()) {
            (Some(i), None) => Ok(i),
            (None, _) => Err(err(format!(
                "no column `{name}` (columns: {})",
                header
                    .iter()
                    .map(|h| h.trim())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            (Some(_), Some(_)) => Err(err(format!("column `{name}` appears more than once"))),
        }
    };
    let cols = out.columns;
    Ok(Columns {
        count: header.len(),
        text: find(&cols.text)?,
        pair: cols.text_pair.as_deref().map(find).transpose()?,
        label: cols.label.as_deref().map(find).transpose()?,
    })
}

/// The fields of a data row at the resolved columns.
fn pick(fields: &mut [String], cols: &Columns) -> (String, Option<String>, Option<String>) {
    let text = fields[cols.text].clone();
    let pair = cols.pair.map(|i| fields[i].clone());
    let label = cols.label.map(|i| std::mem::take(&mut fields[i]));
    (text, pair, label)
}

fn header_error(out: &Collector<'_>, line: usize, message: impl Into<String>) -> DataError {
    DataError::Header {
        path: out.dataset.source.clone(),
        line,
        message: message.into(),
    }
}

/// Non-blank lines with their 1-based numbers, `\r` endings removed.
fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    bytes
        .split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.is_empty())
}

fn parse_tsv(bytes: &[u8], out: &mut Collector<'_>) -> Result<()> {
    let mut rows = lines(bytes);
    let Some((header_line, header)) = rows.next() else {
        return Err(header_error(out, 1, "empty file (expected a header row)"));
    };
    let header =
        std::str::from_utf8(header).map_err(|_| header_error(out, header_line, "invalid UTF-8"))?;
    let header: Vec<&str> = header.split('\t').collect();
    let cols = resolve_columns(&header, out, header_line)?;
    for (line, row) in rows {
        let Ok(row) = std::str::from_utf8(row) else {
            out.reject(line, Problem::InvalidUtf8)?;
            continue;
        };
        let mut fields: Vec<String> = row.split('\t').map(str::to_string).collect();
        if fields.len() != cols.count {
            out.reject(
                line,
                Problem::WrongColumnCount {
                    expected: cols.count,
                    found: fields.len(),
                },
            )?;
            continue;
        }
        let (text, pair, label) = pick(&mut fields, &cols);
        out.row(line, text, pair, label)?;
    }
    Ok(())
}

fn parse_csv(bytes: &[u8], out: &mut Collector<'_>) -> Result<()> {
    let mut records = CsvRecords::new(bytes);
    let header = match records.next() {
        None => return Err(header_error(out, 1, "empty file (expected a header row)")),
        Some(Err((line, problem))) => return Err(header_error(out, line, problem.to_string())),
        Some(Ok(r)) => r,
    };
    let header_line = header.line;
    let header: Vec<&str> = header
        .fields
        .iter()
        .map(|f| std::str::from_utf8(f))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| header_error(out, header_line, "invalid UTF-8"))?;
    let cols = resolve_columns(&header, out, header_line)?;
    for record in records {
        let record = match record {
            Ok(r) => r,
            Err((line, problem)) => {
                out.reject(line, problem)?;
                continue;
            }
        };
        let line = record.line;
        if record.fields.len() != cols.count {
            out.reject(
                line,
                Problem::WrongColumnCount {
                    expected: cols.count,
                    found: record.fields.len(),
                },
            )?;
            continue;
        }
        let fields: std::result::Result<Vec<String>, _> =
            record.fields.into_iter().map(String::from_utf8).collect();
        let Ok(mut fields) = fields else {
            out.reject(line, Problem::InvalidUtf8)?;
            continue;
        };
        let (text, pair, label) = pick(&mut fields, &cols);
        out.row(line, text, pair, label)?;
    }
    Ok(())
}

fn parse_jsonl(bytes: &[u8], out: &mut Collector<'_>) -> Result<()> {
    let cols = out.columns.clone();
    for (line, raw) in lines(bytes) {
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(raw) = std::str::from_utf8(raw) else {
            out.reject(line, Problem::InvalidUtf8)?;
            continue;
        };
        let value: Value = match serde_json::from_str(raw) {
            Ok(v) => v,
            Err(e) => {
                out.reject(
                    line,
                    Problem::InvalidJson {
                        message: e.to_string(),
                    },
                )?;
                continue;
            }
        };
        let Value::Object(object) = value else {
            out.reject(line, Problem::NotAnObject)?;
            continue;
        };
        let fields = (|| -> std::result::Result<_, Problem> {
            let text = json_text(&object, &cols.text)?;
            let pair = cols
                .text_pair
                .as_deref()
                .map(|k| json_text(&object, k))
                .transpose()?;
            let label = cols
                .label
                .as_deref()
                .map(|k| json_label(&object, k))
                .transpose()?;
            Ok((text, pair, label))
        })();
        match fields {
            Ok((text, pair, label)) => out.row(line, text, pair, label)?,
            Err(problem) => out.reject(line, problem)?,
        }
    }
    Ok(())
}

fn json_take<'v>(
    object: &'v serde_json::Map<String, Value>,
    key: &str,
) -> std::result::Result<&'v Value, Problem> {
    match object.get(key) {
        None | Some(Value::Null) => Err(Problem::MissingKey {
            key: key.to_string(),
        }),
        Some(v) => Ok(v),
    }
}

fn json_text(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> std::result::Result<String, Problem> {
    match json_take(object, key)? {
        Value::String(s) => Ok(s.clone()),
        _ => Err(Problem::WrongType {
            key: key.to_string(),
            expected: "a string",
        }),
    }
}

fn json_label(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> std::result::Result<String, Problem> {
    match json_take(object, key)? {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Ok(n.to_string()),
        _ => Err(Problem::WrongType {
            key: key.to_string(),
            expected: "a string, an integer or a boolean",
        }),
    }
}
