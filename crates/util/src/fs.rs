//! Durable atomic writes: the content goes to a temporary file beside the target, is synced,
//! renamed over the target, and the folder is synced so that the rename survives a crash too.
//! A reader sees the old file or the new one, never a mix; a failure leaves the old one intact.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A write that failed, naming the file it was for.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn err(path: &Path, source: std::io::Error) -> WriteError {
    WriteError {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` atomically and durably (see the module doc). The file gets the
/// process's default permissions (0644 under the usual umask), like any output file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    write_atomic_with(path, |tmp| {
        let mut f = std::fs::File::create(tmp).map_err(|e| err(tmp, e))?;
        f.write_all(bytes).map_err(|e| err(tmp, e))
    })
}

/// As [`write_atomic`], with `write` producing the file at the temporary path it is given (for
/// writers that want a path, such as safetensors, or that stream). Its value is returned once
/// the file is in place; its error, after the temporary file is removed.
pub fn write_atomic_with<T, E: From<WriteError>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<T, E>,
) -> Result<T, E> {
    let dir = parent(path);
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    let tmp = temp_path(path);
    let value = match write(&tmp) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let synced = std::fs::File::open(&tmp).and_then(|f| f.sync_all());
    if let Err(e) = synced.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(path, e).into());
    }
    sync_dir(dir);
    Ok(value)
}

/// Makes renames and creations in `dir` durable. Best effort: not every file system can sync a
/// folder, and the data itself is already synced.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// `.NAME.PID-N.tmp` beside `path`: unique within the process and across processes, hidden,
/// and recognisable as a leftover.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}-{n}.tmp", std::process::id()))
}
