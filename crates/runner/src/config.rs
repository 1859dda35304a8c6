//! The runner's TOML config: typed sections ([`schema`]), loading with one-line errors that name
//! the file, the dotted key and (for TOML syntax and type errors) the line, validation of
//! everything checkable without the models ([`validate`]), and conversion into the library
//! types: schedules, losses, optimiser, data reading ([`convert`]).
//!
//! **Paths.** Relative paths in a config file (`data.*`, `teacher.path`) resolve against the
//! folder of the config file, so a config and its data can move together and the run works from
//! any current directory. Configs parsed from a string ([`parse`], e.g. the embedded quickstart)
//! resolve against the current directory.
//!
//! **Errors.** One line each: `configs/x.toml: key `distill.lr`: must be positive, got -1`, or
//! `configs/x.toml: line 12: key `losses.attention.kind`: unknown variant `foo`, expected one of
//! …`. Stage keys use the TOML array's 0-based index: `distill.stages[2].losses`.

pub mod convert;
mod error;
pub mod schema;
#[cfg(test)]
mod tests;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use distillery_stages::terms;

// The API the commands use; the other section types are reached through `schema`.
pub use convert::{ScheduleChoice, StudentSource, TeacherSource};
pub use schema::{Config, DeviceSpec, DEFAULT_SPLIT};

/// Reads, parses and validates the config at `path`; relative paths inside it resolve against
/// its folder.
pub fn load(path: &Path) -> anyhow::Result<Config> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("{}: cannot read the config: {e}", path.display()))?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    parse_in(&text, path, base)
}

/// Parses and validates config text; `source` names it in errors (e.g. `quickstart.toml` for an
/// embedded config). Relative paths resolve against the current directory.
pub fn parse(text: &str, source: &Path) -> anyhow::Result<Config> {
    parse_in(text, source, PathBuf::new())
}

fn parse_in(text: &str, source: &Path, base_dir: PathBuf) -> anyhow::Result<Config> {
    let mut config: Config =
        toml::from_str(text).map_err(|e| error::toml_error(source, text, &e))?;
    config.source = source.to_path_buf();
    config.base_dir = base_dir;
    config.losses.terms = build_terms(text, source)?;
    config.validate()?;
    Ok(config)
}

/// Builds each `[losses.<name>]` table into its term, from the spanned document so that a
/// bad key or variant still names its line.
fn build_terms(
    text: &str,
    source: &Path,
) -> anyhow::Result<BTreeMap<String, distillery_stages::Weighted>> {
    use toml::de::{DeTable, DeValue, ValueDeserializer};
    let mut out = BTreeMap::new();
    let doc = DeTable::parse(text).map_err(|e| error::toml_error(source, text, &e))?;
    let Some(losses) = doc.get_ref().get("losses") else {
        return Ok(out);
    };
    // `Losses`' own deserializer has checked that this is a table of tables.
    let DeValue::Table(tables) = losses.get_ref() else {
        return Ok(out);
    };
    for (name, table) in tables.iter() {
        let name = name.get_ref().to_string();
        match terms::build(&name, Some(ValueDeserializer::from(table.clone()))) {
            Ok(term) => {
                out.insert(name, term);
            }
            Err(terms::TermError::Toml(e)) => return Err(error::toml_error(source, text, &e)),
            Err(terms::TermError::Key { key, message }) => {
                return Err(error::term_key_err(&name, &key, message).in_file(source))
            }
        }
    }
    Ok(out)
}

impl Config {
    /// Checks everything that does not need the models (see [`Config::check_models`] for the
    /// rest); the error names the file and the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.check().map_err(|e| e.in_file(&self.source))
    }

    /// Every parsed value, not where the file lives: what [`crate::fingerprint`] hashes.
    pub fn fingerprint_text(&self) -> String {
        let bare = Config {
            source: PathBuf::new(),
            base_dir: PathBuf::new(),
            ..self.clone()
        };
        format!("{bare:?}")
    }

    /// The file the config came from (its display name for a parsed string).
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The folder relative paths resolve against (empty: the current directory).
    #[allow(dead_code)] // API for commands that write beside the config
    pub fn base_dir(&self) -> &Path {
        &self.base_dir
    }

    /// `path` as written in the config, resolved against [`Config::base_dir`] when relative.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }
}
